"""One training run, in three steps that read and test alone: :func:`setup` (device, backbones,
loaders, model, optimizer, and the progress a checkpoint holds), :func:`train_epoch` (one epoch and
its validation), :func:`finish` (the best epoch's test metrics, the trained model, MLflow). :func:`fit`
runs them inside one MLflow run; after each epoch the checkpoint is written before MLflow hears of
the epoch, so a run killed anywhere resumes with every epoch logged exactly once.

The same ``fit`` serves ``python -m pipeline.train``, the main table and every Ray Tune trial (which
passes an ``on_epoch`` hook that reports to Tune, and a checkpoint folder from ``tune.get_checkpoint``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mitp.config.params import Params
from mitp.data.manifests import manifest_hash
from mitp.models import backbones as backbones_mod
from mitp.models import metrics, weights
from mitp.models import trained as trained_model
from mitp.models.rules import check_cache_layer
from mitp.tracking import epochs as epoch_log
from mitp.tracking import pyfunc as mlflow_model
from mitp.tracking import store as tracking
from mitp.training import checkpoint, runtime
from mitp.training import loaders as loaders_mod
from mitp.training.compiled import StepRunner, wants_compile
from mitp.training.memory import peak_memory_mb, reset_peak_memory
from mitp.training.steps import (
    FINITE_CHECK_EVERY,
    build_model,
    check_finite,
    evaluate,
    make_optimizer,
    seed_everything,
    stops_early,
    to_device,
    train_step,
)

log = logging.getLogger(__name__)

# (epoch, metrics of that epoch, folder holding a complete checkpoint) -> None
EpochHook = Callable[[int, dict[str, float], Path], None]


@dataclass
class TrainResult:
    metrics: dict[str, float]  # test_* and val_* of the best epoch, plus cost figures
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    run_id: str | None = None
    weights_path: Path | None = None
    tags: dict[str, str] = field(default_factory=dict)  # lineage: git commit, backbone, cache fingerprint
    metrics_path: Path | None = None  # where fit_and_record wrote the metrics JSON


@dataclass
class Progress:
    """What carries from one epoch to the next, and what a checkpoint holds of it."""

    epochs_done: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    best_val: float = -math.inf
    best_epoch: int = 0  # counts from 1; 0 = none yet
    run_id: str | None = None

    def meta(self) -> dict[str, Any]:
        return {"epoch": self.epochs_done - 1, "history": self.history, "best_val": self.best_val,
                "best_epoch": self.best_epoch, "run_id": self.run_id}


@dataclass
class Session:
    """One training between :func:`setup` and :func:`finish`."""

    params: Params
    dataset: str
    device: torch.device
    backbones: Any  # mitp.models.backbones.Backbones
    loaders: Any  # mitp.training.loaders.Loaders
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    steps_per_epoch: int
    tags: dict[str, str]
    counts: dict[str, float]  # trainable_params, total_params, trainable_ratio
    load_peak_mb: float
    checkpoint_dir: Path | None
    progress: Progress
    train_time: float = 0.0
    train_samples: int = 0

    @property
    def primary(self) -> str:
        return metrics.primary_metric(self.loaders.multi_label)

    def save_checkpoint(self) -> None:
        if self.checkpoint_dir is not None:
            checkpoint.save(self.checkpoint_dir, self.model, self.optimizer, self.scheduler, self.progress.meta(),
                            self.progress.best_state)


def setup(params: Params, dataset: str, checkpoint_dir: str | Path | None = None,
          extra_tags: dict[str, str] | None = None) -> Session:
    """Everything before the first step: run settings, backbones, loaders, the model, its optimizer,
    and the progress of an interrupted run if ``checkpoint_dir`` holds its checkpoint."""
    check_cache_layer(params)  # also refuses the cache for finetune
    # device, threads, kernels, CUDA determinism: before anything computes (mitp.training.runtime)
    device, run_tags = runtime.setup(params.train)
    # on the CPU: the model's layers run where they were loaded; on CUDA only the layers that run
    # move to the GPU (with the model, below), never the layers below k the cached path drops
    bb = backbones_mod.load(params.backbone, torch.device("cpu"))  # may build the tiny-random pair (random numbers)
    loaders = loaders_mod.build(params, dataset, bb, device)
    # Seeded here, after everything that may or may not draw random numbers depending on what is
    # already on disk: prompt init, dropout and shuffling are the same on a first run and a re-run.
    seed_everything(params.seed)
    # From the cache, the layers below k never run: the model is built without them (this
    # releases them from bb's towers too, which are the model's; a raw-input model needs a reload).
    drop_below = loaders.start_layer if loaders.source == "cache" else None
    n_backbones = sum(p.numel() for tower in (bb.vision, bb.text) for p in tower.parameters())  # before the drop
    model = build_model(params, bb, len(loaders.labels), loaders.multi_label, drop_below).to(device)

    t = params.train
    steps_per_epoch = len(loaders.train) if t.max_steps_per_epoch is None else min(len(loaders.train), t.max_steps_per_epoch)
    optimizer, scheduler = make_optimizer(model, t, t.epochs * steps_per_epoch)

    progress = Progress()
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    if ckpt is not None and checkpoint.exists(ckpt):
        meta, best_state = checkpoint.restore(ckpt, model, optimizer, scheduler)
        progress = Progress(meta["epoch"] + 1, meta["history"], best_state, meta["best_val"], meta["best_epoch"])
        if progress.epochs_done > t.epochs:
            raise checkpoint.CheckpointError(f"{ckpt}: {progress.epochs_done} epochs done, more than train.epochs "
                                             f"{t.epochs}: not this run's checkpoint; start over with --fresh")
        progress.run_id = tracking.resumable_run(params.mlflow, meta.get("run_id"), ckpt)
        log.info("resuming %s from epoch %d (checkpoint %s)", dataset, progress.epochs_done, ckpt)

    # training memory from here on: loading the backbones whole (the cached path then releases the
    # layers below k) is its own figure
    load_peak_mb = peak_memory_mb(device)
    reset_peak_memory(device)
    n_trainable = sum(p.numel() for p in model.trainable_parameters())
    # the model as the paper counts it (whole backbones), whatever the cached path left out of memory
    n_total = n_backbones + sum(p.numel() for name, p in model.named_parameters()
                                if not name.startswith(("vision.", "text.")))
    tags = {**tracking.lineage_tags(params, dataset), **run_tags, "data_source": loaders.source, **(extra_tags or {})}
    tags.update({k: str(v) for k, v in loaders.info.items()})
    session = Session(params, dataset, device, bb, loaders, model, optimizer, scheduler, steps_per_epoch, tags,
                      {"trainable_params": n_trainable, "total_params": n_total,
                       "trainable_ratio": n_trainable / n_total}, load_peak_mb, ckpt, progress)
    for h in progress.history:  # throughput of epochs done before a resume
        session.train_time += h.get("epoch_time_s", 0.0)
        session.train_samples += int(h.get("epoch_samples", 0))
    return session


def train_epoch(s: Session, epoch: int, runner: StepRunner) -> dict[str, float]:
    """Train epoch ``epoch`` (0-based) and validate; returns its history row (not yet recorded)."""
    t = s.params.train
    s.model.train()
    # the loss stays on the device: one host sync per FINITE_CHECK_EVERY steps, not per step
    t0, seen, loss_sum, step = time.perf_counter(), 0, torch.zeros((), device=s.device), 0
    bar = tqdm(s.loaders.train, total=s.steps_per_epoch, desc=f"epoch {epoch + 1}/{t.epochs}", unit="batch",
               leave=False)
    for step, batch in enumerate(bar):
        if step >= s.steps_per_epoch:
            break
        batch = to_device(batch, s.device)
        if epoch == s.progress.epochs_done and step == 0:  # start-up cost, read by benchmarks/train_speed.py
            log.info("first training step at %.3f", time.time())
        loss = train_step(s.model, batch, s.optimizer, s.scheduler, start_layer=s.loaders.start_layer,
                          grad_clip=t.grad_clip, device=s.device, runner=runner)
        n = len(batch["labels"])
        seen += n
        loss_sum += loss.float() * n
        if (step + 1) % FINITE_CHECK_EVERY == 0:
            check_finite(loss_sum, epoch, step, s.scheduler)
    check_finite(loss_sum, epoch, step, s.scheduler)
    epoch_time = time.perf_counter() - t0
    s.train_time += epoch_time
    s.train_samples += seen
    val = evaluate(s.model, s.loaders.val, s.device, s.loaders.start_layer, s.loaders.multi_label, desc="val")
    return {"epoch": epoch + 1, "train_loss": float(loss_sum) / max(1, seen), "epoch_time_s": epoch_time,
            "epoch_samples": seen, "samples_per_s": seen / max(epoch_time, 1e-9),
            **{f"val_{k}": v for k, v in val.items()}}


def record_epoch(s: Session, row: dict[str, float]) -> bool:
    """Add an epoch's row to the progress (keeping the best epoch's weights) and write the
    checkpoint; returns whether the epoch is the best so far. MLflow hears of it afterwards."""
    p = s.progress
    p.history.append(row)
    p.epochs_done = row["epoch"]
    improved = row[f"val_{s.primary}"] > p.best_val
    if improved:
        p.best_val, p.best_epoch = row[f"val_{s.primary}"], row["epoch"]
        p.best_state = weights.trainable_state(s.model)
    s.save_checkpoint()
    return improved


def finish(s: Session, mlflow, *, weights_out: str | Path | None = None, model_out: str | Path | None = None,
           register: str | None = None) -> TrainResult:
    """The best epoch's weights back in the model, its test metrics, and what a finished run
    leaves: the summary metrics, the weights file, the trained model, its MLflow model."""
    p, t = s.progress, s.params.train
    weights.load_weights(s.model, p.best_state)
    best_row = p.history[p.best_epoch - 1]
    test_out: dict = {}
    test = evaluate(s.model, s.loaders.test, s.device, s.loaders.start_layer, s.loaders.multi_label, desc="test",
                    keep=test_out)
    final = {
        **{f"test_{k}": v for k, v in test.items()},
        **{k: v for k, v in best_row.items() if k.startswith("val_")},
        "best_epoch": p.best_epoch,
        "epochs": t.epochs,
        "epochs_run": len(p.history),  # fewer than epochs when early stopping ended the run
        **s.counts,
        "materialised_params": sum(x.numel() for x in s.model.parameters()),  # held in memory
        "train_samples_per_s": s.train_samples / max(s.train_time, 1e-9),
        "train_time_s": s.train_time,
        "peak_memory_mb": peak_memory_mb(s.device),  # from the first step on (mitp.training.memory)
        "load_peak_memory_mb": s.load_peak_mb,  # loading and building, before the first step
    }
    mlflow.log_metrics(tracking.summary_metrics(final))
    weights_path = None
    if weights_out is not None:
        weights_path = Path(weights_out)
        weights.save_weights(weights_path, p.best_state, metadata={"dataset": s.dataset, "run_id": p.run_id,
                                                                     "best_epoch": str(p.best_epoch)})
        mlflow.log_artifact(str(weights_path))
    # the self-describing model, its MLflow model, figures and lineage (mitp.tracking.pyfunc)
    card = trained_model.make_card(
        s.params, s.dataset, s.backbones, s.model.config, s.loaders.labels, start_layer=s.loaders.start_layer,
        source=s.loaders.source, cache_fingerprint=s.loaders.info.get("cache_fingerprint"),
        manifest_sha256=manifest_hash(s.params.prepared_dir(s.dataset)), run_id=p.run_id, best_epoch=p.best_epoch,
        git_commit=s.tags.get("git_commit", "unknown"), metrics=final,
        autocast="bfloat16" if s.device.type == "cuda" else None)
    tags = dict(s.tags)
    registered = mlflow_model.log_training_outputs(
        s.params, s.dataset, card, p.best_state, p.history, test_out, model_out=model_out, register_as=register)
    if registered:
        tags["registered_model"] = registered
    return TrainResult(final, p.history, p.best_epoch, p.run_id, weights_path, tags)


def fit(params: Params, dataset: str, *, checkpoint_dir: str | Path | None = None, **kwargs) -> TrainResult:
    """Train one model on ``dataset`` (see :func:`_fit`), holding ``checkpoint_dir`` for the whole
    run: a second training on the same folder stops at once with
    :class:`~mitp.training.checkpoint.CheckpointBusy` naming the running one."""
    with checkpoint.locked(checkpoint_dir) if checkpoint_dir else contextlib.nullcontext():
        return _fit(params, dataset, checkpoint_dir=checkpoint_dir, **kwargs)


def _fit(
    params: Params,
    dataset: str,
    *,
    run_name: str | None = None,
    checkpoint_dir: str | Path | None = None,
    on_epoch: EpochHook | None = None,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    weights_out: str | Path | None = None,
    model_out: str | Path | None = None,
    register: str | None = None,
) -> TrainResult:
    """Train one model on ``dataset``; returns the best epoch's val and test metrics.

    ``checkpoint_dir``: a folder for the per-epoch checkpoint; if it already holds one, the run
    resumes from it (same MLflow run, no epoch done or logged twice; a new run, with a warning, if
    the tracking store no longer holds that one). The checkpoint is first written as soon as the
    MLflow run exists, so a run killed before its first epoch ends is resumed, not left RUNNING.
    ``model_out``: a folder for the trained model (weights + model card, ``mitp.models.trained``);
    the model is logged to MLflow as a pyfunc model either way, and registered in the model
    registry as ``register`` when a name is given.
    """
    s = setup(params, dataset, checkpoint_dir, extra_tags)
    p, t = s.progress, params.train
    with tracking.start_run(params.mlflow, run_name=run_name or f"{dataset}-{params.model.kind}", tags=s.tags,
                            parent_run_id=parent_run_id, run_id=p.run_id) as run:
        mlflow = tracking.setup(params.mlflow)
        if p.run_id is None:
            tracking.log_params(mlflow, tracking.run_params(params, dataset))
            mlflow.log_metrics(s.counts)
            p.run_id = run.info.run_id
            s.save_checkpoint()  # the run is known from here on: a kill now resumes it
        # epochs a checkpoint holds that the run has not logged (a kill between the two, or a new run)
        epoch_log.log_missing(mlflow, p.run_id, p.history)
        runner = StepRunner(s.model, wants_compile(t.compile, s.device))
        for epoch in range(p.epochs_done, t.epochs):
            if stops_early(epoch, p.best_epoch, t.patience):
                log.info("stopping early after epoch %d: no better val_%s for %d epochs (best: epoch %d)",
                         epoch, s.primary, t.patience, p.best_epoch)
                break
            row = train_epoch(s, epoch, runner)
            improved = record_epoch(s, row)
            epoch_log.log_epoch(mlflow, row)
            log.info("epoch %d/%d train_loss %.4f val_%s %.4f%s", epoch + 1, t.epochs, row["train_loss"],
                     s.primary, row[f"val_{s.primary}"], " (best)" if improved else "")
            if on_epoch is not None:
                on_epoch(epoch + 1, dict(row), s.checkpoint_dir)
        return finish(s, mlflow, weights_out=weights_out, model_out=model_out, register=register)


def fit_and_record(params: Params, dataset: str, *, run_name: str | None = None, metrics_out: str | Path | None = None,
                   history_out: str | Path | None = None, model_out: str | Path | None = None,
                   register: str | None = None, fresh: bool = False) -> TrainResult:
    """One training as ``python -m pipeline.train`` runs it (and each run of the main table,
    :mod:`mitp.training.table`): :func:`fit` on the run's checkpoint folder, then its metrics and history
    JSON. ``fresh`` drops an interrupted run's checkpoint first; otherwise the run resumes it."""
    from mitp.atomic import write_json
    from mitp.training.run_layout import train_paths

    paths = train_paths(params, dataset, metrics_out=metrics_out, history_out=history_out)
    # held from --fresh to the final clean-up, so a second identical training touches nothing
    with checkpoint.locked(paths.checkpoint):
        if fresh:
            paths.clear_checkpoint()
        result = fit(params, dataset, run_name=run_name, checkpoint_dir=paths.checkpoint, weights_out=paths.weights,
                     model_out=model_out or paths.weights.parent / "model", register=register)
        lineage = {k: v for k, v in result.tags.items()
                   if k in ("git_commit", "backbone", "cache_fingerprint") or k.startswith("run.")}
        write_json(paths.metrics, {"dataset": dataset, "model_kind": params.model.kind, "seed": params.seed,
                                   "run_id": result.run_id, **lineage, **result.metrics})
        write_json(paths.history, result.history)
        paths.clear_checkpoint()  # finished: only an interrupted run leaves a checkpoint to resume
    result.metrics_path = paths.metrics
    return result
