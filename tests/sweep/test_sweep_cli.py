"""The stage entry point ``python -m pipeline.sweep``: exit codes, outputs, the feature cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from overrides import params_overrides, set_args
from sweep_checks import mlflow_runs, read_csv

from mitp.config.params import REPO_ROOT


def _cli(params, *extra: str, overrides: dict | None = None, timeout: int = 600, bars: bool = False):
    """Run the stage with every setting of ``params`` as -S (``bars``: without TQDM_DISABLE, as a
    user runs it)."""
    args = set_args(params_overrides(params, **(overrides or {})))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "TQDM_DISABLE")}
    if not bars:
        env["TQDM_DISABLE"] = "1"
    return subprocess.run([sys.executable, "-m", "pipeline.sweep", "--dataset", "synthetic", *args, *extra],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_bad_trial_value_exits_2_before_anything_starts(make_params, tmp_path):
    params = make_params({"cache.enabled": False})
    out = _cli(params, overrides={"sweep.space": {"model.prompt_length": [4, 0]}}, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "model.prompt_length" in out.stderr and "greater than or equal to 1" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "ray_results").exists()  # no Ray experiment was started


def test_collect_without_a_sweep_folder_exits_2(make_params, tmp_path):
    params = make_params({"cache.enabled": False})
    out = _cli(params, "--collect", str(tmp_path / "nowhere"), "--csv-out", str(tmp_path / "sweep.csv"), timeout=300)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "--collect: no Ray experiment at" in out.stderr and "nowhere" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "sweep.csv").exists()


@pytest.mark.slow
def test_stage_runs_the_sweep_on_the_feature_cache(sweep_params, tmp_path):
    """cache.enabled: the stage builds the cache first, every trial reads it (same fingerprint
    on the parent and the children); outputs land where the flags say."""
    params = sweep_params({"cache.enabled": True, "cache.layer": 0, "model.interaction.start": 0, "ray.num_cpus": 2})
    csv_out, best_out = tmp_path / "out" / "table.csv", tmp_path / "out" / "best.json"
    out = _cli(params, "--csv-out", str(csv_out), "--best-out", str(best_out))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "best trial" in out.stdout
    rows = read_csv(csv_out)
    assert len(rows) == 4 and all(r["status"] == "COMPLETED" for r in rows)
    best = json.loads(best_out.read_text())
    assert best["trial_id"] in {r["trial_id"] for r in rows}

    parents, children = mlflow_runs(params)
    assert len(parents) == 1 and len(children) == 4
    fingerprint = parents[0].data.tags["cache_fingerprint"]
    assert fingerprint and fingerprint != "unknown"
    for child in children:
        assert child.data.tags["data_source"] == "cache"
        assert child.data.tags["cache_fingerprint"] == fingerprint


@pytest.mark.slow
def test_optuna_search_runs_a_small_budget_under_one_parent(sweep_params, tmp_path):
    """sweep.search=optuna: Optuna's TPE proposes three trials from a space of choices and a range
    (the grid list becomes a choice), ASHA schedules them; every trial nests under one MLflow
    parent, carries the driver's source and commit, and the log has no epoch progress bars."""
    params = sweep_params({"ray.num_cpus": 2})
    space = {"model.prompt_length": [4, 8], "train.lr": {"loguniform": [1e-4, 1e-2]}}
    out = _cli(params, "--csv-out", str(tmp_path / "sweep.csv"), "--best-out", str(tmp_path / "best.json"),
               overrides={"sweep.search": "optuna", "sweep.scheduler": "asha", "sweep.num_samples": 3,
                          "sweep.space": space, "sweep.train": {"epochs": 1}}, bars=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = read_csv(tmp_path / "sweep.csv")
    assert len(rows) == 3 and all(r["status"] == "COMPLETED" for r in rows), rows
    assert {r["model.prompt_length"] for r in rows} <= {"4", "8"}
    assert all(1e-4 <= float(r["train.lr"]) <= 1e-2 for r in rows)
    assert len({r["train.lr"] for r in rows}) == 3  # sampled, not a grid

    parents, children = mlflow_runs(params)
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.data.params["sweep.search"] == "optuna"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.info.run_id for c in children} == {r["mlflow_run_id"] for r in rows}
    for child in children:
        for tag in ("mlflow.source.name", "mlflow.source.git.commit", "git_commit"):
            assert child.data.tags[tag] == parent.data.tags[tag], tag
        assert child.data.tags["mlflow.source.name"].endswith("pipeline/sweep.py")
    assert parent.data.metrics["best_n_seeds"] == 1 and "best_mean_test_accuracy" in parent.data.metrics

    # quiet trials: no tqdm bars ("epoch 1/1", "batch/s") in the stage's output (without the fix the
    # trials' train and val bars were there); Tune's status table shows the metric
    log = out.stdout + out.stderr
    assert "epoch 1/1" not in log and "batch/s" not in log, log[-3000:]
    chatter = [ln for ln in log.splitlines() if "run_trial pid=" in ln
               and ("system_metrics" in ln or "Checkpoint successfully created" in ln)]
    assert not chatter, chatter[:5]
    assert [ln for ln in out.stdout.splitlines() if "Trial name" in ln and "val_accuracy" in ln], out.stdout[-3000:]
