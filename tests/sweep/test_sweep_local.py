"""Sweeps on a small real local Ray instance (2 CPUs) over the small synthetic set, tiny-random.

One Ray instance serves the whole module. Each sweep writes under the test's tmp folder:
its own MLflow sqlite store, Ray results, checkpoints.
"""

from __future__ import annotations

import json

import pytest
import sweep_hooks
from sweep_checks import epochs_logged, mlflow_runs, read_csv

RAY_BOOKKEEPING = {"training_iteration", "time_total_s", "time_this_iter_s", "timestamp", "iterations_since_restore",
                   "trial_done", "done", "pid", "checkpoint_dir_name"}


@pytest.mark.slow
def test_grid_of_four_trials_parent_and_children(ray_local, sweep_params, tmp_path):
    from mitp.sweep.runner import run_sweep

    params = sweep_params()
    csv_path, best_path = tmp_path / "metrics" / "sweep.csv", tmp_path / "metrics" / "sweep_best.json"
    outcome = run_sweep(params, "synthetic", outputs=(csv_path, best_path))

    # the results table: one row per trial, every grid point once, all completed
    rows = read_csv(csv_path)
    assert len(rows) == 4
    assert {(r["model.prompt_length"], r["model.hub_size"]) for r in rows} == {("4", "16"), ("4", "32"), ("8", "16"), ("8", "32")}
    assert all(r["status"] == "COMPLETED" for r in rows), rows
    for r in rows:
        assert 0.0 <= float(r["test_accuracy"]) <= 1.0 and 0.0 <= float(r["val_accuracy"]) <= 1.0
        assert float(r["train_time_s"]) > 0 and float(r["peak_memory_mb"]) > 0 and int(r["trainable_params"]) > 0
        assert r["mlflow_run_id"] and r["error"] == ""
        assert r["epochs"] == "2"  # sweep.train.epochs applied inside the trials
    assert not outcome.failed and not outcome.unfinished

    # the best config: the best validation score
    best = json.loads(best_path.read_text())
    top = max(rows, key=lambda r: float(r["val_accuracy"]))
    assert best["value"] == pytest.approx(float(top["val_accuracy"]))
    assert best["metric"] == "val_accuracy" and best["trials"] == 4 and best["errors"] == 0
    assert set(best["config"]) == {"model.prompt_length", "model.hub_size"}
    assert best["overrides"]["train.epochs"] == 2

    # MLflow: one parent, four children linked by mlflow.parentRunId, one per trial
    parents, children = mlflow_runs(params)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.info.run_id for c in children} == {r["mlflow_run_id"] for r in rows}
    assert all(c.info.status == "FINISHED" for c in children)
    # parent: the search space as params; dataset, backbone, git commit as tags; the best trial
    assert json.loads(parent.data.params["space.model.prompt_length"]) == {"grid": [4, 8]}
    assert parent.data.params["sweep.trials"] == "4"
    for tag in ("dataset", "backbone", "git_commit"):
        assert parent.data.tags[tag]
    assert parent.data.tags["dataset"] == "synthetic"
    # the chosen configuration (here one seed each) summarised with clean names, as the report does
    assert parent.data.metrics["best_trial_val_accuracy"] == pytest.approx(best["value"])
    assert parent.data.metrics["best_mean_val_accuracy"] == pytest.approx(best["config_stats"]["val_accuracy_mean"])
    assert parent.data.metrics["best_mean_test_accuracy"] == pytest.approx(best["config_stats"]["test_accuracy_mean"])
    assert parent.data.metrics["best_n_seeds"] == best["config_stats"]["n"] == 1
    assert not {"best_best_epoch", "best_epoch", "best_val_accuracy"} & set(parent.data.metrics)
    assert parent.data.tags["best.run_id"] == best["mlflow_run_id"]
    # children: the trial's config as params, per-epoch metrics, final metrics and cost figures,
    # and none of Ray's bookkeeping keys
    for child in children:
        row = next(r for r in rows if r["mlflow_run_id"] == child.info.run_id)
        assert child.data.params["model.prompt_length"] == row["model.prompt_length"]
        assert child.data.params["model.hub_size"] == row["model.hub_size"]
        assert child.data.params["train.epochs"] == "2"
        assert child.data.tags["sweep_trial_id"] == row["trial_id"]
        # the driver's source and commit, as a standalone run has them (not Ray's default_worker.py)
        for tag in ("mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit", "git_commit"):
            assert child.data.tags[tag] == parent.data.tags[tag], tag
        assert "default_worker" not in child.data.tags["mlflow.source.name"]
        assert epochs_logged(params, child.info.run_id) == [1, 2]
        for key in ("test_accuracy", "train_samples_per_s", "peak_memory_mb", "trainable_params", "trial_wall_s"):
            assert key in child.data.metrics
        assert not RAY_BOOKKEEPING & set(child.data.metrics)

    # --collect: the same outputs from the Ray experiment folder alone (a cluster job's, on shared storage)
    from mitp.sweep.runner import collect_sweep

    for where in (None, outcome.experiment_path):
        got_csv, got_best = tmp_path / "collected" / "sweep.csv", tmp_path / "collected" / "sweep_best.json"
        collected = collect_sweep(params, "synthetic", outputs=(got_csv, got_best), experiment_path=where)
        assert got_csv.read_text() == csv_path.read_text()
        assert json.loads(got_best.read_text()) == best
        assert collected.parent_run_id == parent.info.run_id

    # the same command again: the finished sweep is restored, nothing re-runs, no new runs
    again = run_sweep(params, "synthetic", outputs=(csv_path, best_path))
    assert again.resumed and again.parent_run_id == parent.info.run_id
    assert len(read_csv(csv_path)) == 4
    parents2, children2 = mlflow_runs(params)
    assert len(parents2) == 1 and len(children2) == 4


@pytest.mark.slow
def test_failing_trials_are_retried_then_reported(ray_local, sweep_params, tmp_path):
    """Three epochs; lr 1e-3: fine; 2e-3: raises after epoch 1 once, recovers from its
    checkpoint; 3e-3: raises after every epoch (epoch 1, then epoch 2 of the retry); 1e30: the
    loss becomes NaN. max_failures = 1."""
    from mitp.sweep.runner import run_sweep

    params = sweep_params({"sweep.space": {"train.lr": [1e-3, 2e-3, 3e-3, 1e30]}, "sweep.train": {"epochs": 3}})
    hooks = sweep_hooks.FailOn(str(tmp_path / "markers"), "train.lr", always=(3e-3,), once=(2e-3,))
    outcome = run_sweep(params, "synthetic", hooks=hooks, outputs=(tmp_path / "sweep.csv", tmp_path / "best.json"))

    by_lr = {float(r["train.lr"]): r for r in read_csv(tmp_path / "sweep.csv")}
    assert len(by_lr) == 4
    ok, flaky, broken, nan = by_lr[1e-3], by_lr[2e-3], by_lr[3e-3], by_lr[1e30]
    assert ok["status"] == "COMPLETED" and ok["failures"] == "0"
    assert flaky["status"] == "COMPLETED" and flaky["failures"] == "1"
    assert broken["status"] == "ERROR" and broken["failures"] == "2" and "injected failure" in broken["error"]
    assert nan["status"] == "ERROR" and "TrainingDiverged" in nan["error"] and "nan" in nan["error"]

    # the stage reports them: failed trials named, with their error
    assert {r["trial_id"] for r in outcome.failed} == {broken["trial_id"], nan["trial_id"]}
    message = outcome.failure_message()
    assert broken["trial_id"] in message and nan["trial_id"] in message and "train.lr=0.003" in message

    # MLflow: still one child per trial; the retried trial kept its run and did every epoch once
    parents, children = mlflow_runs(params)
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].info.status == "FAILED" and broken["trial_id"] in parents[0].data.tags["error"]
    runs = {c.data.tags["sweep_trial_id"]: c for c in children}
    assert runs[flaky["trial_id"]].info.status == "FINISHED"
    assert epochs_logged(params, flaky["mlflow_run_id"]) == [1, 2, 3]  # no epoch twice
    starts = sorted((tmp_path / "markers").glob(f"start-{flaky['trial_id']}-*.json"))
    assert [json.loads(p.read_text())["resumed"] for p in starts] == [False, True]
    for bad in (broken, nan):
        run = runs[bad["trial_id"]]
        assert run.info.status == "FAILED"
        assert run.data.tags["error"]
    assert "injected failure" in runs[broken["trial_id"]].data.tags["error"]
    assert "TrainingDiverged" in runs[nan["trial_id"]].data.tags["error"]


@pytest.mark.slow
def test_asha_stops_trials_early(ray_local, sweep_params, tmp_path):
    from mitp.sweep.runner import run_sweep

    """One trial at a time: the first (a sane lr) sets the bar at epoch 1, the next two (huge lr,
    much higher validation loss) fall below it and are stopped there."""
    params = sweep_params({"sweep.scheduler": "asha", "sweep.asha": {"grace_period": 1, "reduction_factor": 2},
                           "sweep.metric": "val_loss", "sweep.mode": "min",
                           "sweep.space": {"train.lr": [1e-3, 3.0, 10.0]},
                           "sweep.train": {"epochs": 3}, "sweep.max_concurrent_trials": 1})
    outcome = run_sweep(params, "synthetic", outputs=(tmp_path / "sweep.csv", tmp_path / "best.json"))
    rows = read_csv(tmp_path / "sweep.csv")
    assert [r["trial_id"] for r in rows] == sorted(r["trial_id"] for r in rows)  # generation order
    assert [r["status"] for r in rows] == ["COMPLETED", "STOPPED", "STOPPED"] and not outcome.failed
    _, children = mlflow_runs(params)
    status = {c.info.run_id: c.info.status for c in children}
    tags = {c.info.run_id: c.data.tags for c in children}
    for r in rows:
        assert status[r["mlflow_run_id"]] == ("FINISHED" if r["status"] == "COMPLETED" else "KILLED")
        if r["status"] == "STOPPED":
            assert r["test_accuracy"] == "" and r["epoch"] == "1"
            run_tags = tags[r["mlflow_run_id"]]
            assert "error" not in run_tags, run_tags["error"]
            assert run_tags["stopped_early"]


@pytest.mark.slow
def test_early_stopped_trials_complete_with_their_best_epoch(ray_local, sweep_params, tmp_path):
    """train.patience inside the trials: a trial whose validation score stops improving ends
    COMPLETED after fewer epochs, with its test figures, its MLflow run and its epochs run."""
    from mitp.sweep.runner import run_sweep

    # lr so small the weights never move: epoch 1 is never beaten, so every trial stops after epoch 2
    params = sweep_params({"sweep.space": {"model.prompt_length": {"grid": [4, 8]}},
                           "sweep.train": {"epochs": 5, "patience": 1, "lr": 1e-12}})
    csv_path, best_path = tmp_path / "metrics" / "sweep.csv", tmp_path / "metrics" / "sweep_best.json"
    outcome = run_sweep(params, "synthetic", outputs=(csv_path, best_path))
    rows = read_csv(csv_path)
    assert len(rows) == 2 and not outcome.failed and not outcome.unfinished
    for r in rows:
        assert r["status"] == "COMPLETED" and r["epochs"] == "5"
        assert r["epoch"] == "2" and r["epochs_run"] == "2" and r["best_epoch"] == "1"
        assert r["mlflow_run_id"] and 0.0 <= float(r["test_accuracy"]) <= 1.0
    _, children = mlflow_runs(params)
    assert {c.info.run_id for c in children} == {r["mlflow_run_id"] for r in rows}
    assert all(c.info.status == "FINISHED" and c.data.metrics["epochs_run"] == 2 for c in children)
    assert json.loads(best_path.read_text())["mlflow_run_id"] in {r["mlflow_run_id"] for r in rows}
