"""One tracked training run through the real entry point: metrics file, weights, MLflow record,
and resume after an interruption."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from mitp.config.params import REPO_ROOT
from mitp.tracking.store import tracking_uri
from mitp.training.fit import fit

RAW = {"cache.enabled": False}


def _cli_overrides(params, extra: dict) -> list[str]:
    flat = {
        "data.root": params.data.root, "backbone.dir": params.backbone.dir, "cache.dir": params.cache.dir,
        "train.checkpoint_dir": params.train.checkpoint_dir, "mlflow.tracking_uri": params.mlflow.tracking_uri,
        "data.synthetic.n_train": params.data.synthetic.n_train, "data.synthetic.n_val": params.data.synthetic.n_val,
        "data.synthetic.n_test": params.data.synthetic.n_test, "train.batch_size": params.train.batch_size,
        **extra,
    }
    out = []
    for k, v in flat.items():
        out += ["-S", f"{k}={json.dumps(v) if isinstance(v, bool) else v}"]
    return out


def test_train_entry_point_writes_metrics_and_mlflow_run(synthetic_prepared, tmp_path):
    params = synthetic_prepared
    metrics_out = tmp_path / "train.json"
    cmd = [sys.executable, "-m", "pipeline.train", "--dataset", "synthetic", "--metrics-out", str(metrics_out),
           "--history-out", str(tmp_path / "history.json"),
           *_cli_overrides(params, {"train.epochs": 2, "cache.enabled": "false"})]
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    m = json.loads(metrics_out.read_text())
    for key in ("test_accuracy", "val_accuracy", "trainable_params", "total_params", "trainable_ratio",
                "train_samples_per_s", "peak_memory_mb", "load_peak_memory_mb", "run_id"):
        assert key in m, key
    assert 0.0 <= m["test_accuracy"] <= 1.0 and m["trainable_params"] < m["total_params"]
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]

    client = MlflowClient(tracking_uri(params.mlflow))
    run = client.get_run(m["run_id"])
    assert run.info.status == "FINISHED"
    p, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert p["model.kind"] == "mitp" and p["model.hub_size"] == str(params.model.hub_size)
    assert p["train.lr"] and p["dataset"] == "synthetic" and p["data.synthetic.n_train"] == "96"
    for key in ("test_accuracy", "val_accuracy", "trainable_params", "total_params", "train_samples_per_s",
                "peak_memory_mb", "train_loss"):
        assert key in metrics, key
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2  # one point per epoch
    assert tags["dataset"] == "synthetic" and tags["backbone"].startswith("tiny-random")
    assert len(tags["git_commit"]) >= 7

    # the best epoch's trainable weights: prompts, hub, head only - never the backbone
    weights = list((tmp_path / "runs" / "synthetic").glob("mitp-*/best.safetensors"))
    assert len(weights) == 1
    names = set(load_file(str(weights[0])))
    assert names and all(n.startswith(("prompt_", "hub.", "head.")) for n in names)


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_into_the_same_mlflow_run(synthetic_prepared, tmp_path):
    params = synthetic_prepared.model_copy(deep=True)
    params.cache.enabled = False
    params.train.epochs = 3
    ckpt = tmp_path / "ckpt"

    def stop_after_first(epoch, row, _):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(params, "synthetic", checkpoint_dir=ckpt, on_epoch=stop_after_first)
    seen = []
    result = fit(params, "synthetic", checkpoint_dir=ckpt, on_epoch=lambda e, r, _: seen.append(e))
    assert seen == [2, 3], "epoch 1 must not run twice"
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    client = MlflowClient(tracking_uri(params.mlflow))
    runs = client.search_runs([client.get_experiment_by_name(params.mlflow.experiment).experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == result.run_id
    assert runs[0].info.status == "FINISHED"
    assert len(client.get_metric_history(result.run_id, "train_loss")) == 3
