"""One sweep trial: :func:`mitp.training.fit.fit` with a Tune reporting hook (no second training loop).

Every epoch is reported with ``fit``'s checkpoint; the last one once, after the test
evaluation. The child MLflow run's id travels in the checkpoint, so a resumed trial reopens it;
a stopped trial ends KILLED, a diverged one reports its error and ends (docs/cluster.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mitp.config.space import SweepSpace, describe_overrides, trial_params
from mitp.sweep.results import is_number
from mitp.tracking.store import RunStopped
from mitp.training import runtime

log = logging.getLogger(__name__)

TRIAL_TAG = "sweep_trial_id"
DONE_KEY = "trial_done"
DIVERGED = "TrainingDiverged"


@dataclass
class TrialInfo:
    """What a trial knows about itself (passed to test hooks)."""

    trial_id: str
    config: dict[str, Any]
    overrides: dict[str, Any]
    resumed: bool  # started from a Tune checkpoint (retry or resumed sweep)
    node_id: str
    gpu_ids: list[str] = field(default_factory=list)


class TrialHooks:
    """Optional callbacks inside a trial (tests inject faults through them); picklable."""

    def on_start(self, info: TrialInfo) -> None:  # before fit
        pass

    def on_epoch(self, info: TrialInfo, epoch: int, row: dict[str, float]) -> None:  # after Tune got the epoch
        pass


@dataclass
class TrialSpec:
    """Everything a trial needs besides its config (sent once through ``tune.with_parameters``)."""

    base_raw: dict
    space: SweepSpace
    dataset: str
    sweep_name: str
    experiment: str
    parent_run_id: str
    tracking_uri: str
    cpus: float
    gpus: float
    metric: str  # reported (as nan) by a diverged trial: Tune wants it in every result
    hooks: TrialHooks | None = None
    # the driver's source and commit (mitp.tracking.store.source_tags, git_commit): a trial's own
    # entry is Ray's default_worker.py, and on a cluster its copy of the code has no .git
    run_tags: dict[str, str] = field(default_factory=dict)


def _numeric(row: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in row.items() if is_number(v)}


# INFO lines every trial (or every epoch of every trial) would add to the driver's log; their
# warnings and errors still show
CHATTY_LOGGERS = ("mlflow.system_metrics", "mlflow.pyfunc", "ray.train._internal.storage")


def quiet_trial_logs() -> None:
    """Progress bars off (:func:`~mitp.training.runtime.quiet_progress_bars`), and the per-trial
    INFO chatter of MLflow's system-metrics monitor, its model validation and Tune's checkpoint
    writes down to warnings."""
    runtime.quiet_progress_bars()
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _first(metric: str, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with the sweep's metric, the epoch and the train loss first: Tune's status table
    shows the first four metrics of a result."""
    head = {k: row[k] for k in (metric, "epoch", "train_loss") if k in row}
    return {**head, **{k: v for k, v in row.items() if k not in head}}


def run_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """The Tune function trainable (wrapped with ``tune.with_parameters(run_trial, spec=...)``)."""
    quiet_trial_logs()
    import ray
    import torch
    from ray import tune

    from mitp.training.fit import fit
    from mitp.training.steps import TrainingDiverged

    t_start = time.perf_counter()  # trial_wall_s: the trial's own work, after the imports a fresh process pays once
    # threads and kernels come from train.* inside fit (mitp.determinism), as in a standalone run:
    # a trial's numbers equal those of `pipeline.train` with the same configuration and seed
    os.environ["MLFLOW_TRACKING_URI"] = spec.tracking_uri
    overrides = spec.space.trial_overrides(config)
    params = trial_params(spec.base_raw, overrides, f"sweep trial ({describe_overrides(overrides)})")

    trial_id = tune.get_context().get_trial_id()
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    ckpt = tune.get_checkpoint()
    info = TrialInfo(trial_id, dict(config), overrides, ckpt is not None,
                     ray.get_runtime_context().get_node_id(), gpu_ids)
    workdir = Path(tempfile.mkdtemp(prefix=f"mitp-trial-{trial_id}-"))
    local_ckpt = workdir / "checkpoint"
    tags = {TRIAL_TAG: trial_id, "sweep": spec.sweep_name, "ray.experiment": spec.experiment,
            "ray.node_id": info.node_id, "ray.cpus": str(spec.cpus), "ray.gpu_fraction": str(spec.gpus),
            "ray.gpu_ids": ",".join(gpu_ids) or "none", **spec.run_tags}
    try:
        if ckpt is not None:
            ckpt.to_directory(str(local_ckpt))
        if spec.hooks is not None:
            spec.hooks.on_start(info)

        state: dict[str, Any] = {"run_id": None, "last_row": None}
        extra = {"node_id": info.node_id}

        def on_epoch(epoch: int, row: dict[str, float], ckpt_dir: Path | None) -> None:
            active = mlflow.active_run()
            state["run_id"] = active.info.run_id if active else state["run_id"]
            state["last_row"] = row  # the last epoch's train loss goes out with the final metrics
            if epoch >= params.train.epochs:  # the last one goes out with the final metrics
                return
            metrics = _first(spec.metric, {**_numeric(row), DONE_KEY: 0, "mlflow_run_id": state["run_id"], **extra})
            checkpoint = tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir is not None else None
            try:
                tune.report(metrics, checkpoint=checkpoint)
            except SystemExit as exc:  # Tune stops a trial by exiting in its next report
                # inside the run: it ends KILLED, tagged stopped_early, before the process may be ended
                raise RunStopped(f"stopped by the scheduler after epoch {epoch}") from exc
            if spec.hooks is not None:
                spec.hooks.on_epoch(info, epoch, row)

        run_name = f"{spec.sweep_name} {trial_id}: {describe_overrides({k: config[k] for k in spec.space.swept_keys if k in config})}"
        try:
            result = fit(params, spec.dataset, run_name=run_name[:250], checkpoint_dir=local_ckpt, on_epoch=on_epoch,
                         parent_run_id=spec.parent_run_id, extra_tags=tags)
        except RunStopped as stop:  # its run has ended KILLED; Tune's stop goes on as the exit it was
            raise SystemExit(0) from stop
        except TrainingDiverged as exc:  # final: the run ended FAILED with the error as a tag
            run = mlflow.last_active_run()
            tune.report({spec.metric: float("nan"), "error": f"{DIVERGED}: {exc}", DONE_KEY: 0, **extra,
                         "mlflow_run_id": run.info.run_id if run else state["run_id"]})
            return

        final = {**_numeric(state["last_row"] or {}), **_numeric(result.metrics)}
        # epoch: the epochs run (fewer than train.epochs when early stopping ended the trial)
        final.update({"epoch": len(result.history), DONE_KEY: 1, "mlflow_run_id": result.run_id,
                      "trial_wall_s": time.perf_counter() - t_start, **extra})
        cost = {"trial_wall_s": final["trial_wall_s"]}
        if torch.cuda.is_available() and params.train.device != "cpu":
            total = torch.cuda.get_device_properties(0).total_memory / 2**20
            cost.update({"gpu_total_memory_mb": total,
                         "gpu_memory_fraction_peak": result.metrics.get("peak_memory_mb", 0.0) / total})
            final.update(cost)
        try:
            MlflowClient(spec.tracking_uri).log_batch(result.run_id, metrics=[
                Metric(k, float(v), int(time.time() * 1000), 0) for k, v in cost.items()])
        except Exception as exc:  # cost figures are a bonus; never fail a finished trial for them
            log.warning("could not log cost figures on run %s: %s", result.run_id, exc)
        from mitp.training import checkpoint as checkpoint_mod

        last = tune.Checkpoint.from_directory(str(local_ckpt)) if checkpoint_mod.exists(local_ckpt) else None
        tune.report(_first(spec.metric, final), checkpoint=last)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
