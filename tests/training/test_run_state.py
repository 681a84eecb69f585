"""Training run state under attack: the same training started twice, trainings racing to create a
new tracking store, a checkpoint resumed against another store, and the run summary in MLflow."""

from __future__ import annotations

import json
import logging
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from run_state_workers import open_new_store
from test_train_run import Interrupt, _cli_overrides

from mitp.config.params import REPO_ROOT
from mitp.tracking.store import tracking_uri
from mitp.training import checkpoint
from mitp.training import fit as train

WORKERS = Path(__file__).with_name("run_state_workers.py")


def _runs(params) -> list:
    client = MlflowClient(tracking_uri(params.mlflow))
    exp = client.get_experiment_by_name(params.mlflow.experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


@pytest.mark.parametrize("fresh", [False, True])
def test_second_identical_training_stops_naming_the_running_one(synthetic_prepared, tmp_path, fresh):
    params = synthetic_prepared.model_copy(deep=True)
    params.cache.enabled = False
    args = ["--dataset", "synthetic", *_cli_overrides(params, {"cache.enabled": "false", "train.epochs": 1})]
    holder = subprocess.Popen([sys.executable, str(WORKERS), *args], cwd=REPO_ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        ckpt = Path(holder.stdout.readline().strip())
        ckpt.mkdir(parents=True)
        (ckpt / "meta.json").write_text("{}")  # stands for the running training's checkpoint
        out = subprocess.run([sys.executable, "-m", "pipeline.train", *args, "--metrics-out", str(tmp_path / "m.json"),
                              "--history-out", str(tmp_path / "h.json"), *(["--fresh"] if fresh else [])],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    finally:
        holder.communicate("", timeout=60)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert str(ckpt) in errors[0] and f"pid {holder.pid}" in errors[0] and str(ckpt) + ".lock" in errors[0]
    assert (ckpt / "meta.json").read_text() == "{}", "the running training's checkpoint must stay untouched"
    assert not (tmp_path / "m.json").exists() and not _runs(params)


def test_fit_refuses_a_held_checkpoint_folder_before_loading_anything(synthetic_prepared, tmp_path, monkeypatch):
    params = synthetic_prepared
    ckpt = tmp_path / "ckpt"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from mitp.training import checkpoint\n"
                               f"with checkpoint.locked({str(ckpt)!r}):\n print('held', flush=True); sys.stdin.read()"],
                              cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    monkeypatch.setattr(train.backbones_mod, "load", lambda *a: pytest.fail("loaded backbones despite the lock"))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(checkpoint.CheckpointBusy, match=f"pid {holder.pid}"):
            train.fit(params, "synthetic", checkpoint_dir=ckpt)
    finally:
        holder.communicate("", timeout=60)
    assert not checkpoint.lock_paths(ckpt)[1].exists(), "the owner note goes with its lock"


def test_trainings_racing_on_a_new_tracking_store_all_start(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=open_new_store, args=(uri, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["ok"] * n, outcomes
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mitp")
    assert len(client.search_runs([exp.experiment_id])) == n


def test_resume_against_another_tracking_store_starts_a_new_run_and_says_so(synthetic_prepared, tmp_path, caplog,
                                                                           monkeypatch):
    params = synthetic_prepared.model_copy(deep=True)
    params.cache.enabled = False
    params.train.epochs = 2
    ckpt = tmp_path / "ckpt"

    def stop(epoch, row, _):
        raise Interrupt

    with pytest.raises(Interrupt):
        train.fit(params, "synthetic", checkpoint_dir=ckpt, on_epoch=stop)
    old_run = json.loads((ckpt / "meta.json").read_text())["run_id"]
    other = params.model_copy(deep=True)
    other.mlflow.tracking_uri = f"sqlite:///{tmp_path / 'other.db'}"
    # mlflow.set_tracking_uri exports the first store to the environment (which wins over params);
    # a later training in a new process does not inherit it
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with caplog.at_level(logging.WARNING, logger="mitp.tracking.store"):
        result = train.fit(other, "synthetic", checkpoint_dir=ckpt)
    assert result.run_id != old_run and [h["epoch"] for h in result.history] == [1, 2]
    assert any(old_run in r.getMessage() and "new run" in r.getMessage() for r in caplog.records), caplog.text
    client = MlflowClient(tracking_uri(other.mlflow))
    assert client.get_run(result.run_id).info.status == "FINISHED"
    # the new run holds the whole curve: the epoch done before the resume, then the resumed one
    assert [m.step for m in client.get_metric_history(result.run_id, "train_loss")] == [1, 2]
    assert client.get_run(result.run_id).data.params["dataset"] == "synthetic"


def test_run_summary_shows_the_selected_epoch_not_the_last(synthetic_prepared, monkeypatch):
    params = synthetic_prepared.model_copy(deep=True)
    params.cache.enabled = False
    params.train.epochs = 3
    scripted = iter([0.50, 0.90, 0.60])  # validation accuracy per epoch: the best is epoch 2
    real_evaluate = train.evaluate

    def evaluate(*args, desc="eval", **kwargs):
        out = real_evaluate(*args, desc=desc, **kwargs)
        if desc == "val":
            out["accuracy"] = next(scripted)
        return out

    monkeypatch.setattr(train, "evaluate", evaluate)
    result = train.fit(params, "synthetic")
    assert result.best_epoch == 2 and result.metrics["val_accuracy"] == pytest.approx(0.90)
    summary = MlflowClient(tracking_uri(params.mlflow)).get_run(result.run_id).data.metrics
    assert summary["best_val_accuracy"] == pytest.approx(result.metrics["val_accuracy"])
    assert summary["best_val_loss"] == pytest.approx(result.metrics["val_loss"])
    assert summary["test_accuracy"] == pytest.approx(result.metrics["test_accuracy"])
    assert summary["best_epoch"] == 2
    assert summary["val_accuracy"] == pytest.approx(0.60), "val_* stays the per-epoch curve"


def test_a_run_killed_mid_epoch_and_resumed_ends_as_one_never_interrupted(synthetic_prepared, tmp_path):
    """SIGKILL in the middle of epoch 2 (no clean-up), then the same training again: it resumes
    from the epoch-1 checkpoint and ends with exactly the metrics of an uninterrupted run."""
    from run_state_workers import train_killed_at_step

    params = synthetic_prepared.model_copy(deep=True)
    params.cache.enabled = False
    params.train.epochs, params.train.patience = 3, None
    steps_per_epoch = -(-params.data.synthetic.n_train // params.train.batch_size)

    outputs = {"metrics_out": tmp_path / "m.json", "history_out": tmp_path / "h.json", "model_out": tmp_path / "model"}
    whole = train.fit_and_record(params, "synthetic", fresh=True, **outputs)
    uninterrupted = json.loads(whole.metrics_path.read_text())

    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=train_killed_at_step, args=(params, "synthetic", steps_per_epoch + 2, outputs))
    child.start()
    child.join(timeout=600)
    assert child.exitcode == -9, "the training was not killed mid-epoch"
    from mitp.training.run_layout import train_paths

    ckpt = train_paths(params, "synthetic").checkpoint
    assert json.loads((ckpt / checkpoint.META).read_text())["epoch"] == 0, "epoch 1's checkpoint must be the last"

    resumed = train.fit_and_record(params, "synthetic", **outputs)  # no fresh: resume
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    after = json.loads(resumed.metrics_path.read_text())
    for key in ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "best_epoch"):
        assert after[key] == uninterrupted[key], key
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]


def _killed_then_resumed(params, tmp_path, module: str, name: str, nth: int):
    """Run a 3-epoch training killed by SIGKILL at the ``nth`` call of ``module.name``, then the
    same training again (it resumes); returns (the killed run's MLflow id, the resumed result)."""
    from run_state_workers import train_killed_at_call

    outputs = {"metrics_out": tmp_path / "m.json", "history_out": tmp_path / "h.json", "model_out": tmp_path / "model"}
    before = {r.info.run_id for r in _runs(params)}
    child = multiprocessing.get_context("spawn").Process(
        target=train_killed_at_call, args=(params, "synthetic", module, name, nth, outputs))
    child.start()
    child.join(timeout=600)
    assert child.exitcode == -9, f"the training was not killed at call {nth} of {name}"
    killed = [r.info.run_id for r in _runs(params) if r.info.run_id not in before]
    assert len(killed) == 1
    return killed[0], train.fit_and_record(params, "synthetic", **outputs)


def _three_epochs(params):
    params = params.model_copy(deep=True)
    params.cache.enabled = False
    params.train.epochs, params.train.patience = 3, None
    params.mlflow.experiment = "kills"
    return params


def test_a_run_killed_before_its_first_checkpoint_is_resumed_not_left_running(synthetic_prepared, tmp_path):
    """Killed during epoch 1 (no epoch checkpoint yet): the rerun continues the same MLflow run,
    so no run stays RUNNING forever and the experiment holds one run of the training."""
    params = _three_epochs(synthetic_prepared)
    killed, resumed = _killed_then_resumed(params, tmp_path, "mitp.training.fit", "train_step", 2)
    assert resumed.run_id == killed
    runs = {r.info.run_id: r.info.status for r in _runs(params)}
    assert runs == {killed: "FINISHED"}


@pytest.mark.parametrize(("module", "name", "nth"), [
    ("mitp.training.checkpoint", "save", 3),  # epoch 2's checkpoint (1: the run's start, 2: epoch 1)
    ("mitp.tracking.epochs", "log_epoch", 2),  # epoch 2 checkpointed, not yet logged
], ids=["before-checkpoint", "before-logging"])
def test_a_kill_around_an_epochs_end_logs_every_epoch_exactly_once(synthetic_prepared, tmp_path, module, name, nth):
    params = _three_epochs(synthetic_prepared)
    killed, resumed = _killed_then_resumed(params, tmp_path, module, name, nth)
    assert resumed.run_id == killed
    history = MlflowClient(tracking_uri(params.mlflow)).get_metric_history(killed, "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [h["val_accuracy"] for h in resumed.history]


class _Payload:
    """What a hostile ``state.pt`` holds: unpickling it would create ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _one_epoch_checkpoint(params, tmp_path) -> Path:
    params.cache.enabled = False
    params.train.epochs, params.train.patience = 2, None
    ckpt = tmp_path / "ckpt"

    def stop(epoch, row, _):
        raise Interrupt

    with pytest.raises(Interrupt):
        train.fit(params, "synthetic", checkpoint_dir=ckpt, on_epoch=stop)
    assert checkpoint.exists(ckpt)
    return ckpt


def test_a_replaced_training_state_is_refused_without_running_its_code(synthetic_prepared, tmp_path):
    """A checkpoint folder is read back like any input (sweep trials restore theirs from shared
    storage): a state.pt whose pickle would run code is refused with one error, and nothing runs."""
    import torch

    params = synthetic_prepared.model_copy(deep=True)
    ckpt = _one_epoch_checkpoint(params, tmp_path)
    marker = tmp_path / "payload-ran"
    torch.save({"optimizer": _Payload(str(marker))}, ckpt / checkpoint.STATE)
    with pytest.raises(checkpoint.CheckpointError, match=r"state\.pt: not a training state this code wrote"):
        train.fit(params, "synthetic", checkpoint_dir=ckpt)
    assert not marker.exists(), "the checkpoint's payload ran"


@pytest.mark.parametrize("edit", [{"epoch": 99}, {"best_epoch": 7}, {"epoch": "0"}, {"best_val": "x"}])
def test_an_edited_checkpoint_meta_is_refused(synthetic_prepared, tmp_path, edit):
    """An edited meta.json (epoch 99 once made a 2-epoch run 'finish' after one) stops the run."""
    params = synthetic_prepared.model_copy(deep=True)
    ckpt = _one_epoch_checkpoint(params, tmp_path)
    meta = json.loads((ckpt / checkpoint.META).read_text())
    (ckpt / checkpoint.META).write_text(json.dumps({**meta, **edit}))
    with pytest.raises(checkpoint.CheckpointError, match=r"meta\.json: .*start over with --fresh"):
        train.fit(params, "synthetic", checkpoint_dir=ckpt)


def test_an_untouched_checkpoint_resumes(synthetic_prepared, tmp_path):
    """The twin of the refusals above: the same folder, not edited, resumes at epoch 2."""
    params = synthetic_prepared.model_copy(deep=True)
    ckpt = _one_epoch_checkpoint(params, tmp_path)
    seen = []
    train.fit(params, "synthetic", checkpoint_dir=ckpt, on_epoch=lambda e, r, _: seen.append(e))
    assert seen == [2]
