"""The MLflow side of a trained model: the pyfunc model, its signature, registration, and what
every training run logs beside its metrics (history, figures, per-class scores, input dataset).

``mlflow.pyfunc.load_model("runs:/<id>/model").predict(df)`` takes a DataFrame with an ``image``
column (a file path or the image's bytes) and a ``text`` column, and returns one row per input:
``label`` (the class; for multi-label sets the classes at or above 0.5, joined by ``|``),
``prob_<class>`` for every class, and ``error`` (why a row could not be scored, else empty).

The model folder (``mitp.models.trained``) travels as the pyfunc model's artifact ``model``:
tiny-random backbones are packed inside it; hub backbones are referenced by id and pinned
revision and fetched on first load. Loading needs this project importable (``pip install -e .``).
"""

from __future__ import annotations

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

from mitp.config.params import Params, shown_path
from mitp.models import inference, metrics
from mitp.models import trained as trained_model
from mitp.models.inference import Prediction
from mitp.tracking import figures

log = logging.getLogger(__name__)

MODEL_NAME = "model"  # the pyfunc model's name in the run (runs:/<id>/model)
LABEL_JOIN = "|"
DVC_EXP_ENV = "DVC_EXP_NAME"
ENTRY = Path(__file__).with_name("pyfunc_entry.py")  # models from code: no pickled Python object
REQUIREMENTS = ("torch", "transformers", "safetensors", "pillow", "pandas", "mlflow")


class MITPPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the model folder once (GPU when present); ``predict`` scores a DataFrame."""

    def load_context(self, context) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tm = trained_model.load(context.artifacts[trained_model.ARTIFACT_KEY], device)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        missing = [c for c in inference.INPUT_COLUMNS if c not in model_input.columns]
        if missing:
            raise ValueError(f"input DataFrame: missing columns {missing} (expected {list(inference.INPUT_COLUMNS)})")
        rows = zip(model_input["image"].tolist(), model_input["text"].tolist(), strict=True)
        preds, _ = inference.predict_rows(self.tm, rows, total=len(model_input), progress=False)
        return pd.DataFrame([prediction_record(self.tm.labels, p) for p in preds])


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
    """One row with a grey PNG (bytes: the example must not depend on a file on this machine)."""
    from PIL import Image

    size = card["preprocessing"]["image_size"] or {"height": 32, "width": 32}
    buf = io.BytesIO()
    Image.new("RGB", (size.get("width", 32), size.get("height", 32)), (128, 128, 128)).save(buf, format="PNG")
    return pd.DataFrame({"image": [buf.getvalue()], "text": ["a photo of something"]})


def _requirements() -> list[str]:
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            out.append(name)
    return out


def log_pyfunc(folder: Path, card: dict[str, Any]):
    """Log the model folder as the active run's pyfunc model ``model``; returns MLflow's ModelInfo."""
    return mlflow.pyfunc.log_model(
        name=MODEL_NAME, python_model=str(ENTRY), artifacts={trained_model.ARTIFACT_KEY: str(folder)},
        signature=signature(card["labels"]), input_example=input_example(card),
        pip_requirements=_requirements(),  # explicit: inferring them would load the model in a subprocess
        metadata={"mitp_card_format": card["format"], "dataset": card["dataset"]["name"]},
    )


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
