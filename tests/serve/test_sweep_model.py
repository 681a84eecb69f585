"""A real (small) sweep: every trial logs its pyfunc model; the best one is copied to
``model_out``, registered, and the parent run points at it."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from mitp.models import trained as trained_model
from tests.factories import SMALL_SYNTHETIC, prepare_synthetic


@pytest.mark.slow
def test_sweep_registers_and_writes_the_best_trials_model(make_params, tmp_path):
    from mitp.sweep.runner import run_sweep
    from mitp.tracking.store import tracking_uri

    params = make_params({**SMALL_SYNTHETIC, "cache.enabled": False, "sweep.space": {"model.prompt_length": [4, 8]},
                          "sweep.train": {"epochs": 1}, "sweep.max_concurrent_trials": 2, "ray.num_cpus": 2,
                          "mlflow.log_system_metrics": False})
    prepare_synthetic(params)
    best_out = tmp_path / "best.json"
    outcome = run_sweep(params, "synthetic", outputs=(tmp_path / "sweep.csv", best_out),
                        model_out=tmp_path / "models" / "sweep_best", register="mitp-sweep")
    assert not outcome.failed and not outcome.unfinished
    best = json.loads(best_out.read_text())
    client = MlflowClient(tracking_uri(params.mlflow))
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags["best.model_uri"] == f"runs:/{best['mlflow_run_id']}/model"
    assert parent.data.tags["best.registered_model"] == best["best.registered_model"] == "mitp-sweep/1"
    assert client.get_model_version("mitp-sweep", "1").run_id == best["mlflow_run_id"]
    card = trained_model.read_card(tmp_path / "models" / "sweep_best")
    assert card["training"]["run_id"] == best["mlflow_run_id"]
    assert card["model"]["prompt_length"] == best["config"]["model.prompt_length"]
    for row in outcome.rows:  # every trial holds its own model
        names = {a.path for a in client.list_artifacts(row["mlflow_run_id"])}
        assert "history.json" in names
        assert trained_model.load_uri(f"runs:/{row['mlflow_run_id']}/model", tracking_uri=tracking_uri(params.mlflow))
