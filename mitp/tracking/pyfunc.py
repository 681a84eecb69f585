"""The MLflow side of a trained model: the pyfunc model, its signature, registration, and what
every training run logs beside its metrics (history, figures, per-class scores, input dataset).

``mlflow.pyfunc.load_model("runs:/<id>/model").predict(df)`` takes a DataFrame with an ``image``
column and a ``text`` column, and returns one row per input: ``label`` (the class; for
multi-label sets the classes at or above 0.5, joined by ``|``), ``prob_<class>`` for every
class, and ``error`` (why a row could not be scored); a failed row has ``None`` (JSON ``null``,
never NaN) in ``label`` and the probabilities.

The served model is reachable by anyone who can reach the server, so what it reads is bounded:
``image`` is the image's bytes (raw bytes, or a base64 string as JSON carries them, as in the
logged ``serving_input_example.json``); a file path is accepted only when the model's owner set
``image_root`` in the model config (``mlflow.pyfunc.load_model(uri, model_config={"image_root":
"/srv/images"})``, or ``MLFLOW_PYFUNC_INFERENCE_CONFIG='{"image_root": "/srv/images"}'`` for
``mlflow models serve``), relative to it and inside it; a path elsewhere gets a per-row error that does
not say whether the file exists. Texts are cut before tokenizing, images larger than
``inference.MAX_PIXELS`` are refused from their header, JPEGs decoded reduced
(:mod:`mitp.models.inference`).

The model folder (``mitp.models.trained``) travels as the pyfunc model's artifact ``model``:
tiny-random backbones are packed inside it; the preset hub backbones are fetched at their pinned
commits on first load. The logged model is self-contained: its ``code/`` holds the ``mitp``
modules it imports and its requirements list every package they import.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import shutil
import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch

from mitp.config.params import REPO_ROOT, Params, shown_path
from mitp.models import inference, metrics
from mitp.models import trained as trained_model
from mitp.models.inference import Prediction
from mitp.tracking import figures

log = logging.getLogger(__name__)

MODEL_NAME = "model"  # the pyfunc model's name in the run (runs:/<id>/model)
LABEL_JOIN = "|"
DVC_EXP_ENV = "DVC_EXP_NAME"
ENTRY = Path(__file__).with_name("pyfunc_entry.py")  # models from code: no pickled Python object
REQUIREMENTS = ("torch", "transformers", "safetensors", "pillow", "pandas", "mlflow")  # always listed
IMAGE_ROOT = "image_root"  # model_config key: the folder served paths may point into (none by default)
CODE_DATA = ("mitp/models/backbone_configs",)  # data files the logged code reads


def image_policy(model_config: dict[str, Any] | None) -> inference.ImagePolicy:
    """What a served row's ``image`` may be: bytes or base64 always, paths only under ``image_root``."""
    root = (model_config or {}).get(IMAGE_ROOT)
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"model_config {IMAGE_ROOT}: {root} is not a folder")
    return inference.ImagePolicy(root=root, decode_base64=True, private=True)


class MITPPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the model folder once (GPU when present); ``predict`` scores a DataFrame."""

    def load_context(self, context) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.policy = image_policy(getattr(context, "model_config", None))
        self.tm = trained_model.load(context.artifacts[trained_model.ARTIFACT_KEY], device)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        missing = [c for c in inference.INPUT_COLUMNS if c not in model_input.columns]
        if missing:
            raise ValueError(f"input DataFrame: missing columns {missing} (expected {list(inference.INPUT_COLUMNS)})")
        rows = zip(model_input["image"].tolist(), model_input["text"].tolist(), strict=True)
        preds, _ = inference.predict_rows(self.tm, rows, total=len(model_input), progress=False,
                                          policy=self.policy)
        return records_frame([prediction_record(self.tm.labels, p) for p in preds])


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Output rows as a DataFrame whose missing values stay ``None``: JSON ``null`` once the scoring
    server writes them (a float column would turn them into NaN, which is not JSON)."""
    return pd.DataFrame(records, dtype=object)


def prediction_record(labels: list[str], pred: Prediction) -> dict[str, Any]:
    """One output row: ``label``, ``prob_<class>`` (None for a failed row), ``error``."""
    if pred.labels is not None:
        label = LABEL_JOIN.join(pred.labels)
    else:
        label = pred.label
    probs = pred.probabilities or [None] * len(labels)
    return {"label": label, **{f"prob_{n}": p for n, p in zip(labels, probs, strict=True)}, "error": pred.error}


def signature(labels: list[str]):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    inputs = Schema([ColSpec(AnyType(), "image"), ColSpec("string", "text")])
    outputs = Schema([ColSpec("string", "label", required=False),
                      *[ColSpec("double", f"prob_{n}", required=False) for n in labels],
                      ColSpec("string", "error", required=False)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(card: dict[str, Any]) -> pd.DataFrame:
    """One row with a grey PNG as a base64 string, as JSON clients send it (the example must not
    depend on a file on this machine); MLflow writes it as ``serving_input_example.json``."""
    from PIL import Image

    size = card["preprocessing"]["image_size"] or {"height": 32, "width": 32}
    buf = io.BytesIO()
    Image.new("RGB", (size.get("width", 32), size.get("height", 32)), (128, 128, 128)).save(buf, format="PNG")
    return pd.DataFrame({"image": [base64.b64encode(buf.getvalue()).decode("ascii")],
                         "text": ["a photo of something"]})


def third_party_imports(files: list[str], repo: Path = REPO_ROOT) -> set[str]:
    """Top-level names of the non-standard-library modules the given project files import."""
    import ast
    import sys

    names: set[str] = set()
    for rel in files:
        for node in ast.walk(ast.parse((repo / rel).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("mitp", "pipeline", "__future__")}


def requirements(files: list[str]) -> list[str]:
    """Pinned requirements: every distribution the logged code imports, plus ``REQUIREMENTS``."""
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    wanted = set(REQUIREMENTS)
    for name in third_party_imports(files):
        wanted.update(dists.get(name, [name]))
    out = []
    for name in sorted(wanted, key=str.lower):
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            out.append(name)
    return out


def code_files() -> list[str]:
    """The project files the pyfunc model imports (repo-relative), from the static import closure."""
    from mitp.code_closure import closure

    return closure([ENTRY.relative_to(REPO_ROOT).with_suffix("").as_posix().replace("/", ".")])


def _pack_code(dest: Path, files: list[str]) -> Path:
    """A ``mitp`` folder holding ``files`` and ``CODE_DATA``: the logged model's ``code/mitp``."""
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, dest / rel)
    for rel in CODE_DATA:
        shutil.copytree(REPO_ROOT / rel, dest / rel, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest / "mitp"


def log_pyfunc(folder: Path, card: dict[str, Any]):
    """Log the model folder as the active run's pyfunc model ``model``; returns MLflow's ModelInfo."""
    files = code_files()
    with tempfile.TemporaryDirectory(prefix="mitp-code-") as code:
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=str(ENTRY), artifacts={trained_model.ARTIFACT_KEY: str(folder)},
            code_paths=[str(_pack_code(Path(code), files))],
            model_config={IMAGE_ROOT: None},  # the owner's to set at load (no paths by default)
            signature=signature(card["labels"]), input_example=input_example(card),
            pip_requirements=requirements(files),  # explicit: inferring them would load the model in a subprocess
            metadata={"mitp_card_format": card["format"], "dataset": card["dataset"]["name"]},
            # the logged model keeps the name `model` (runs:/<id>/model); these describe it in lists
            model_type=f"mitp-{card['model']['kind']}", tags=model_tags(card),
        )


def model_tags(card: dict[str, Any]) -> dict[str, str]:
    """What the logged model is, for MLflow's model lists (its name stays ``model``)."""
    return {"mitp.kind": card["model"]["kind"], "mitp.dataset": card["dataset"]["name"],
            "mitp.backbone": card["backbone"]["config"]["preset"], "mitp.labels": str(len(card["labels"])),
            "mitp.task": card["task"]["type"]}


def register(run_id: str, name: str) -> str:
    """Register ``runs:/<run_id>/model`` as a new version of ``name``; returns ``"name/version"``
    (also tagged on the run as ``registered_model``)."""
    mv = mlflow.register_model(f"runs:/{run_id}/{MODEL_NAME}", name)
    ref = f"{name}/{mv.version}"
    mlflow.MlflowClient().set_tag(run_id, "registered_model", ref)
    return ref


# --------------------------------------------------------------------------------------------
# What a finished training run logs
# --------------------------------------------------------------------------------------------


def _log_figures(card: dict[str, Any], history: list[dict[str, float]], test_out: dict) -> None:
    multi = card["task"]["type"] == "multi_label"
    fig = figures.learning_curves(history, metrics.primary_metric(multi), card["training"]["best_epoch"])
    mlflow.log_figure(fig, "figures/learning_curves.png")
    figures.close(fig)
    if not test_out:
        return
    logits, gold = test_out["logits"], test_out["labels"]
    if not multi:
        fig = figures.confusion_matrix(gold.tolist(), logits.argmax(dim=-1).tolist(), card["labels"])
        mlflow.log_figure(fig, "figures/confusion_matrix_test.png")
        figures.close(fig)
    mlflow.log_dict(metrics.per_class(logits, gold, multi, card["labels"]), "per_class_scores_test.json")


def _log_input(params: Params, dataset: str, card: dict[str, Any]) -> None:
    """The training manifest as the run's input dataset, identified by the manifest digest."""
    from mitp.data.manifests import read_split

    prepared = params.prepared_dir(dataset)
    frame = read_split(prepared, "train").frame
    source = shown_path(prepared)
    digest = card["dataset"]["manifest_sha256"]
    with warnings.catch_warnings():  # MLflow registers its local-path source twice and warns about it
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        ds = mlflow.data.from_pandas(frame, source=source, name=f"{dataset}-train", digest=digest[:32])
    mlflow.log_input(ds, context="training", tags={"manifest_sha256": digest})


def log_training_outputs(params: Params, dataset: str, card: dict[str, Any], state: dict[str, torch.Tensor],
                         history: list[dict[str, float]], test_out: dict, *, model_out: str | Path | None = None,
                         register_as: str | None = None) -> str | None:
    """Inside the training run: history, figures, per-class scores, input dataset, DVC experiment
    tag, the model folder (written to ``model_out`` if given) and the pyfunc model; registered
    as ``register_as`` if given. Returns ``"name/version"`` when registered."""
    run_id = mlflow.active_run().info.run_id
    mlflow.log_dict(history, "history.json")
    _log_figures(card, history, test_out)
    _log_input(params, dataset, card)
    if os.environ.get(DVC_EXP_ENV):
        mlflow.set_tag("dvc.exp_name", os.environ[DVC_EXP_ENV])
    tmp = None
    if model_out is None:
        tmp = Path(tempfile.mkdtemp(prefix="mitp-model-"))
        model_out = tmp / "model"
    try:
        folder = trained_model.save(model_out, state, card, params)
        log_pyfunc(folder, card)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return register(run_id, register_as) if register_as else None


def publish_best(best_run_id: str, model_out: str | Path | None, register_as: str | None) -> dict[str, str]:
    """Inside a sweep's parent run: point it at the best trial's model (tag ``best.model_uri``),
    copy that model folder to ``model_out`` and register it as ``register_as`` when given."""
    uri = f"runs:/{best_run_id}/{MODEL_NAME}"
    tags = {"best.model_uri": uri}
    if model_out is not None:
        with trained_model.fetched(uri) as folder:
            trained_model.copy(folder, model_out)
    if register_as:
        tags["best.registered_model"] = register(best_run_id, register_as)
    mlflow.set_tags(tags)
    return tags
