"""Serving a trained run: the MLflow pyfunc model, ``pipeline.evaluate`` and ``pipeline.predict``
on raw inputs, and registration."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from mitp.config.params import REPO_ROOT
from mitp.data.manifests import read_split
from mitp.models import inference
from mitp.models import trained as trained_model
from mitp.tracking import pyfunc as mlflow_model


def _cli(module: str, *args: str, run) -> subprocess.CompletedProcess:
    p = run.params
    overrides = ["-S", f"data.root={p.data.root}", "-S", f"mlflow.tracking_uri={p.mlflow.tracking_uri}",
                 "-S", f"backbone.dir={p.backbone.dir}"]
    return subprocess.run([sys.executable, "-m", module, *args, *overrides], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)


def test_run_holds_model_figures_history_and_input(trained_run):
    client = MlflowClient(trained_run.tracking_uri)
    names = {a.path for a in client.list_artifacts(trained_run.run_id)}
    assert {"history.json", "figures", "per_class_scores_test.json"} <= names
    figs = {a.path for a in client.list_artifacts(trained_run.run_id, "figures")}
    assert figs == {"figures/learning_curves.png", "figures/confusion_matrix_test.png"}
    run = client.get_run(trained_run.run_id)
    assert run.data.tags["dvc.exp_name"] == "serve-exp"
    inputs = run.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.name == "synthetic-train"
    digest = json.loads((trained_run.folder / trained_model.CARD).read_text())["dataset"]["manifest_sha256"]
    assert digest.startswith(inputs[0].dataset.digest)
    info = mlflow.models.get_model_info(f"runs:/{trained_run.run_id}/model")
    assert info.signature is not None and "prob_" + json.loads(
        (trained_run.folder / trained_model.CARD).read_text())["labels"][0] in info.signature.outputs.input_names()


def test_evaluate_cli_reproduces_the_logged_metric_from_the_run(trained_run, tmp_path):
    out = _cli("pipeline.evaluate", "--model", f"runs:/{trained_run.run_id}/model", "--dataset", "synthetic",
               "--metrics-out", str(tmp_path / "eval.json"), run=trained_run)
    assert out.returncode == 0, out.stderr[-3000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert abs(last["test_accuracy"] - trained_run.metrics["test_accuracy"]) <= 1e-3
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["logged"]["test_accuracy"] == pytest.approx(trained_run.metrics["test_accuracy"])


def test_pyfunc_predict_agrees_with_evaluate(trained_run):
    mlflow.set_tracking_uri(trained_run.tracking_uri)
    manifest = read_split(trained_run.params.prepared_dir("synthetic"), "test")
    root = manifest.image_path(0).parent
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{trained_run.run_id}/model", model_config={"image_root": str(root)})
    n = 32
    images: list = [base64.b64encode(manifest.image_path(i).read_bytes()).decode() for i in range(n)]
    images[1] = manifest.image_path(1).read_bytes()  # raw bytes work as well as base64
    images[2] = manifest.image_path(2).relative_to(root).as_posix()  # a path under the owner's image_root
    assert all(manifest.image_path(i).parent == root for i in range(n))
    df = pd.DataFrame({"image": pd.Series(images, dtype=object), "text": manifest.frame["text"].iloc[:n].tolist()})
    got = pyfunc.predict(df)
    tm = trained_model.load(trained_run.folder)
    _, preds, _ = inference.evaluate_split(tm, trained_run.params.prepared_dir("synthetic"), "test", progress=False)
    assert got["label"].tolist() == [p.label for p in preds[:n]]
    probs = got[[f"prob_{name}" for name in tm.labels]].to_numpy(dtype=float)
    assert probs.sum(axis=1) == pytest.approx([1.0] * n, abs=1e-5)
    assert np.allclose(probs, np.array([p.probabilities for p in preds[:n]]), atol=1e-5)
    assert got["error"].isna().all()


def _predict_input(trained_run, tmp_path, broken: set[int]) -> tuple:
    manifest = read_split(trained_run.params.prepared_dir("synthetic"), "test")
    (tmp_path / "imgs").mkdir()
    lines = []
    for i in range(10):
        name = f"imgs/{i}.png"
        shutil.copy(manifest.image_path(i), tmp_path / name)
        row = {"id": f"r{i}", "image": name, "text": manifest.frame["text"].iat[i]}
        if i in broken and i % 2 == 0:
            row["image"] = "imgs/missing.png"
        elif i in broken:
            row["text"] = "  "
        lines.append(json.dumps(row))
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    return src, tmp_path / "out.jsonl"


def test_predict_writes_one_row_per_input_with_per_row_errors(trained_run, tmp_path):
    src, dst = _predict_input(trained_run, tmp_path, broken={2, 5})
    out = _cli("pipeline.predict", "--model", str(trained_run.folder), "--input", str(src), "--output", str(dst),
               run=trained_run)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(10)]
    errors = {i: r["error"] for i, r in enumerate(rows) if r["error"]}
    assert set(errors) == {2, 5}
    assert "not found" in errors[2] and "text" in errors[5]
    labels = json.loads((trained_run.folder / trained_model.CARD).read_text())["labels"]
    for i, r in enumerate(rows):
        assert (r["label"] in labels) == (i not in errors)


def test_predict_with_every_row_broken_fails_and_writes_nothing(trained_run, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("image,text\nnope.png,a text\n../outside.png,another\n")
    dst = tmp_path / "out.csv"
    out = _cli("pipeline.predict", "--model", str(trained_run.folder), "--input", str(src), "--output", str(dst),
               run=trained_run)
    assert out.returncode == 1 and "every row failed" in out.stderr
    assert not dst.exists() and not list(tmp_path.glob(".out.csv*"))


def test_predict_csv_missing_column_and_bad_lines(trained_run, tmp_path):
    src, _ = _predict_input(trained_run, tmp_path, broken=set())
    lines = src.read_text().splitlines()
    lines[3] = "{not json"
    lines[4] = json.dumps({"image": "imgs/4.png"})  # no text column
    src.write_text("\n".join(lines) + "\n")
    dst = tmp_path / "out.csv"
    out = _cli("pipeline.predict", "--model", str(trained_run.folder), "--input", str(src), "--output", str(dst),
               run=trained_run)
    assert out.returncode == 0, out.stderr[-3000:]
    frame = pd.read_csv(dst)
    assert len(frame) == 10
    assert "not valid JSON" in frame["error"].iat[3] and "missing columns ['text']" in frame["error"].iat[4]
    assert frame["error"].isna().sum() == 8


def test_register_creates_a_registry_version(trained_run):
    mlflow.set_tracking_uri(trained_run.tracking_uri)
    ref = mlflow_model.register(trained_run.run_id, "mitp-serve-test")
    name, version = ref.split("/")
    mv = MlflowClient(trained_run.tracking_uri).get_model_version(name, version)
    assert mv.run_id == trained_run.run_id
    tm = trained_model.load_uri(f"models:/{name}/{version}", tracking_uri=trained_run.tracking_uri)
    assert tm.card["training"]["run_id"] == trained_run.run_id


@pytest.mark.slow
def test_train_cli_register_and_model_out_from_raw_inputs(trained_run, tmp_path):
    """``pipeline.train --register NAME --model-out DIR``: a registry version pointing at the run,
    and a model folder trained from raw inputs that ``pipeline.evaluate`` reproduces."""
    model_out = tmp_path / "model"
    out = _cli("pipeline.train", "--dataset", "synthetic", "--register", "mitp-train-cli", "--model-out",
               str(model_out), "--metrics-out", str(tmp_path / "train.json"), "--history-out", str(tmp_path / "h.json"),
               "-S", "cache.enabled=false", "-S", "train.epochs=1", "-S", f"train.checkpoint_dir={tmp_path / 'runs'}",
               "-S", "mlflow.log_system_metrics=false", *_size_overrides(trained_run), run=trained_run)
    assert out.returncode == 0, out.stderr[-3000:]
    logged = json.loads((tmp_path / "train.json").read_text())
    versions = MlflowClient(trained_run.tracking_uri).search_model_versions("name='mitp-train-cli'")
    assert [v.run_id for v in versions] == [logged["run_id"]]
    card = json.loads((model_out / trained_model.CARD).read_text())
    assert card["trained_from"] == {"source": "raw", "layer": 0, "dtype": None, "cache_fingerprint": None}
    ev = _cli("pipeline.evaluate", "--model", "models:/mitp-train-cli/1", "--dataset", "synthetic",
              "--metrics-out", str(tmp_path / "eval.json"), *_size_overrides(trained_run), run=trained_run)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert abs(json.loads(ev.stdout.strip().splitlines()[-1])["test_accuracy"] - logged["test_accuracy"]) <= 1e-3


def test_sweep_parent_points_at_the_registered_best_model(trained_run, tmp_path):
    """What the sweep runner does with its best trial (here: the trained run as the best)."""
    from mitp.tracking import store as tracking

    with tracking.start_run(trained_run.params.mlflow, run_name="sweep parent") as parent:
        tags = mlflow_model.publish_best(trained_run.run_id, tmp_path / "best", "mitp-sweep-best")
    run = MlflowClient(trained_run.tracking_uri).get_run(parent.info.run_id)
    assert run.data.tags["best.model_uri"] == f"runs:/{trained_run.run_id}/model"
    assert run.data.tags["best.registered_model"] == tags["best.registered_model"] == "mitp-sweep-best/1"
    assert trained_model.read_card(tmp_path / "best")["training"]["run_id"] == trained_run.run_id


def _size_overrides(run) -> list[str]:
    s = run.params.data.synthetic
    return ["-S", f"data.synthetic.n_train={s.n_train}", "-S", f"data.synthetic.n_val={s.n_val}",
            "-S", f"data.synthetic.n_test={s.n_test}"]
