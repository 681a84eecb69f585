"""One training run: AdamW on prompts/hub/head, warm-up + cosine, clipping, best-epoch selection
on validation, test metrics of the best epoch, tracked in MLflow, resumable from checkpoints.

The same ``fit`` serves ``python -m pipeline.train`` and every Ray Tune trial (which passes an
``on_epoch`` hook that reports to Tune, and a checkpoint folder from ``tune.get_checkpoint``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from mitp.config.params import Params
from mitp.data.manifests import manifest_hash
from mitp.errors import UserError
from mitp.models import backbones as backbones_mod
from mitp.models import metrics, weights
from mitp.models import trained as trained_model
from mitp.models.kinds import build_model as build_kind
from mitp.models.mitp import TwoTowers
from mitp.models.rules import check_cache_layer
from mitp.tracking import pyfunc as mlflow_model
from mitp.tracking import store as tracking
from mitp.training import checkpoint, runtime
from mitp.training import loaders as loaders_mod
from mitp.training.compiled import StepRunner, wants_compile
from mitp.training.memory import peak_memory_mb, reset_peak_memory

log = logging.getLogger(__name__)

# (epoch, metrics of that epoch, folder holding a complete checkpoint) -> None
EpochHook = Callable[[int, dict[str, float], Path], None]


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    metrics: dict[str, float]  # test_* and val_* of the best epoch, plus cost figures
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    run_id: str | None = None
    weights_path: Path | None = None
    tags: dict[str, str] = field(default_factory=dict)  # lineage: git commit, backbone, cache fingerprint
    metrics_path: Path | None = None  # where fit_and_record wrote the metrics JSON


# --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(params: Params, backbones, num_labels: int, multi_label: bool,
                drop_below: int | None = None) -> TwoTowers:
    return build_kind(params, backbones.vision, backbones.text, num_labels, multi_label, drop_below)


def make_optimizer(model: TwoTowers, params: Params, total_steps: int):
    """AdamW on the trainable parameters only (no decay on norms, biases, prompts, tau), and a
    linear warm-up over ``train.warmup_ratio`` of ``total_steps`` followed by a cosine decay to 0.
    The backbones (``finetune``) form their own groups at ``train.backbone_lr``."""
    t = params.train
    # the decay group first, then no-decay, as before the backbone groups existed (old checkpoints load)
    groups = {(tower, decays): [] for tower in (False, True) for decays in (True, False)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = p.ndim >= 2 and not name.startswith("prompt_")
        groups[name.startswith(("vision.", "text.")), decays].append(p)
    opt = torch.optim.AdamW([{"params": ps, "weight_decay": t.weight_decay if decays else 0.0,
                              "lr": t.backbone_lr if tower else t.lr}
                             for (tower, decays), ps in groups.items() if ps], lr=t.lr,
                            foreach=True)  # one multi-tensor kernel per update, not a loop over tensors
    warmup = max(1, int(t.warmup_ratio * total_steps))
    return opt, get_cosine_schedule_with_warmup(opt, warmup, total_steps)


FINITE_CHECK_EVERY = 20  # steps between divergence checks (each one is a host sync)


def check_finite(loss_sum: torch.Tensor, epoch: int, step: int, scheduler) -> None:
    """Raise :class:`TrainingDiverged` when the epoch's summed loss is NaN or infinite."""
    if not torch.isfinite(loss_sum):
        raise TrainingDiverged(f"loss became {loss_sum.item()} by epoch {epoch + 1}, step {step + 1} "
                               f"(lr {scheduler.get_last_lr()[0]:.2e}); lower train.lr or check the data")


def stops_early(epochs_done: int, best_epoch: int, patience: int | None) -> bool:
    """Early stopping: ``patience`` epochs have ended since the best one (epochs count from 1).
    Read from the history alone, so a resumed run that had already stopped trains no further."""
    return patience is not None and epochs_done - best_epoch >= patience


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(model: TwoTowers, batch: dict, optimizer, scheduler, *, start_layer: int, grad_clip: float,
               device: torch.device, runner: StepRunner | None = None) -> torch.Tensor:
    """One optimisation step on a batch already on ``device``; returns the batch's mean loss,
    detached and still on the device (no host sync: the caller checks finiteness now and then,
    see :func:`check_finite`).

    Forward (bf16 autocast on CUDA) and backward (``runner``: compiled, see :mod:`mitp.training.compiled`;
    default eager), clip the trainable gradients to ``grad_clip``, optimizer and schedule step.
    """
    def forward(module, b):
        with autocast(device):
            return module(**b, start_layer=start_layer).loss

    optimizer.zero_grad(set_to_none=True)
    loss = (runner or StepRunner(model, enabled=False))(forward, batch)
    torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), grad_clip, foreach=True)
    optimizer.step()
    scheduler.step()
    return loss.detach()


@torch.inference_mode()
def evaluate(model: TwoTowers, loader, device: torch.device, start_layer: int, multi_label: bool,
             desc: str = "eval", keep: dict | None = None) -> dict[str, float]:
    """Metrics on ``loader``; ``keep`` (a dict) receives ``logits`` (N, K) and ``labels``."""
    model.eval()
    all_logits, all_labels, total_loss, n = [], [], 0.0, 0
    for batch in tqdm(loader, desc=desc, leave=False, unit="batch"):
        batch = to_device(batch, device)
        with autocast(device):
            out = model(**batch, start_layer=start_layer)
        total_loss += out.loss.float() * len(batch["labels"])  # summed on the device, read once
        n += len(batch["labels"])
        all_logits.append(out.logits.float().cpu())
        all_labels.append(batch["labels"].cpu())
    result = metrics.compute(torch.cat(all_logits), torch.cat(all_labels), multi_label)
    if keep is not None:
        keep.update(logits=torch.cat(all_logits), labels=torch.cat(all_labels))
    result["loss"] = float(total_loss) / max(1, n)
    return result


# --------------------------------------------------------------------------------------------


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
    resumes from it (same MLflow run, no epoch done twice; a new run, with a warning, if the
    tracking store no longer holds that one).
    ``model_out``: a folder for the trained model (weights + model card, ``mitp.models.trained``);
    the model is logged to MLflow as a pyfunc model either way, and registered in the model
    registry as ``register`` when a name is given.
    """
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
    primary = metrics.primary_metric(loaders.multi_label)

    t = params.train
    steps_per_epoch = len(loaders.train) if t.max_steps_per_epoch is None else min(len(loaders.train), t.max_steps_per_epoch)
    optimizer, scheduler = make_optimizer(model, params, t.epochs * steps_per_epoch)

    start_epoch, history, best_state, best_val, best_epoch, run_id = 0, [], None, -math.inf, 0, None
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    if ckpt is not None and checkpoint.exists(ckpt):
        meta, best_state = checkpoint.restore(ckpt, model, optimizer, scheduler)
        start_epoch, history = meta["epoch"] + 1, meta["history"]
        if start_epoch > t.epochs:
            raise checkpoint.CheckpointError(f"{ckpt}: {start_epoch} epochs done, more than train.epochs {t.epochs}: "
                                             "not this run's checkpoint; start over with --fresh")
        best_val, best_epoch = meta["best_val"], meta["best_epoch"]
        run_id = tracking.resumable_run(params, meta.get("run_id"), ckpt)
        log.info("resuming %s from epoch %d (checkpoint %s)", dataset, start_epoch, ckpt)

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

    with tracking.start_run(params, run_name=run_name or f"{dataset}-{params.model.kind}", tags=tags,
                            parent_run_id=parent_run_id, run_id=run_id) as run:
        mlflow = tracking.setup(params)
        if run_id is None:
            tracking.log_params(mlflow, tracking.run_params(params, dataset))
            mlflow.log_metrics({"trainable_params": n_trainable, "total_params": n_total,
                                "trainable_ratio": n_trainable / n_total})
            for h in history:  # a new run resuming a checkpoint: the epochs done before it
                mlflow.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=h["epoch"])
        run_id = run.info.run_id

        train_time, train_samples = 0.0, 0
        for h in history:  # throughput of epochs done before a resume
            train_time += h.get("epoch_time_s", 0.0)
            train_samples += int(h.get("epoch_samples", 0))
        runner = StepRunner(model, wants_compile(t.compile, device))


        for epoch in range(start_epoch, t.epochs):
            if stops_early(epoch, best_epoch, t.patience):
                log.info("stopping early after epoch %d: no better val_%s for %d epochs (best: epoch %d)",
                         epoch, primary, t.patience, best_epoch)
                break
            model.train()
            # the loss stays on the device: one host sync per FINITE_CHECK_EVERY steps, not per step
            t0, seen, loss_sum, step = time.perf_counter(), 0, torch.zeros((), device=device), 0
            bar = tqdm(loaders.train, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{t.epochs}", unit="batch", leave=False)
            for step, batch in enumerate(bar):
                if step >= steps_per_epoch:
                    break
                batch = to_device(batch, device)
                if epoch == start_epoch and step == 0:  # start-up cost, read by benchmarks/train_speed.py
                    log.info("first training step at %.3f", time.time())
                loss = train_step(model, batch, optimizer, scheduler, start_layer=loaders.start_layer,
                                  grad_clip=t.grad_clip, device=device, runner=runner)
                n = len(batch["labels"])
                seen += n
                loss_sum += loss.float() * n
                if (step + 1) % FINITE_CHECK_EVERY == 0:
                    check_finite(loss_sum, epoch, step, scheduler)
            check_finite(loss_sum, epoch, step, scheduler)
            loss_sum = float(loss_sum)
            epoch_time = time.perf_counter() - t0
            train_time += epoch_time
            train_samples += seen

            val = evaluate(model, loaders.val, device, loaders.start_layer, loaders.multi_label, desc="val")
            row = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, seen), "epoch_time_s": epoch_time,
                   "epoch_samples": seen, "samples_per_s": seen / max(epoch_time, 1e-9),
                   **{f"val_{k}": v for k, v in val.items()}}
            history.append(row)
            improved = val[primary] > best_val
            if improved:
                best_val, best_epoch = val[primary], epoch + 1
                best_state = weights.trainable_state(model)
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
            log.info("epoch %d/%d train_loss %.4f val_%s %.4f%s", epoch + 1, t.epochs, row["train_loss"],
                     primary, val[primary], " (best)" if improved else "")
            if ckpt is not None:
                checkpoint.save(ckpt, model, optimizer, scheduler,
                                {"epoch": epoch, "history": history, "best_val": best_val,
                                 "best_epoch": best_epoch, "run_id": run_id}, best_state)
            if on_epoch is not None:
                on_epoch(epoch + 1, {k: v for k, v in row.items()}, ckpt)

        # best epoch -> test
        weights.load_weights(model, best_state)
        best_row = history[best_epoch - 1]
        test_out: dict = {}
        test = evaluate(model, loaders.test, device, loaders.start_layer, loaders.multi_label, desc="test",
                        keep=test_out)
        final = {
            **{f"test_{k}": v for k, v in test.items()},
            **{k: v for k, v in best_row.items() if k.startswith("val_")},
            "best_epoch": best_epoch,
            "epochs": t.epochs,
            "epochs_run": len(history),  # fewer than epochs when early stopping ended the run
            "trainable_params": n_trainable,
            "total_params": n_total,
            "trainable_ratio": n_trainable / n_total,
            "materialised_params": sum(p.numel() for p in model.parameters()),  # held in memory
            "train_samples_per_s": train_samples / max(train_time, 1e-9),
            "train_time_s": train_time,
            "peak_memory_mb": peak_memory_mb(device),  # from the first step on (mitp.training.memory)
            "load_peak_memory_mb": load_peak_mb,  # loading and building, before the first step
        }
        mlflow.log_metrics(tracking.summary_metrics(final))
        weights_path = None
        if weights_out is not None:
            weights_path = Path(weights_out)
            weights.save_weights(weights_path, best_state, metadata={"dataset": dataset, "run_id": run_id,
                                                                        "best_epoch": str(best_epoch)})
            mlflow.log_artifact(str(weights_path))
        # the self-describing model, its MLflow model, figures and lineage (mitp.tracking.pyfunc)
        card = trained_model.make_card(
            params, dataset, bb, model.config, loaders.labels, start_layer=loaders.start_layer,
            source=loaders.source, cache_fingerprint=loaders.info.get("cache_fingerprint"),
            manifest_sha256=manifest_hash(params.prepared_dir(dataset)), run_id=run_id, best_epoch=best_epoch,
            git_commit=tags.get("git_commit", "unknown"), metrics=final,
            autocast="bfloat16" if device.type == "cuda" else None)
        registered = mlflow_model.log_training_outputs(
            params, dataset, card, best_state, history, test_out, model_out=model_out, register_as=register)
        if registered:
            tags["registered_model"] = registered
    return TrainResult(final, history, best_epoch, run_id, weights_path, tags)


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
