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
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mitp import backbones as backbones_mod
from mitp import checkpoint, metrics, tracking
from mitp.compiled import StepRunner, wants_compile
from mitp.config import Params
from mitp.data import loaders as loaders_mod
from mitp.errors import UserError
from mitp.model import MITP, MITPConfig

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


# --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda requested but no CUDA device is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated on GPU; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build_model(params: Params, backbones, num_labels: int, multi_label: bool) -> MITP:
    return MITP(MITPConfig.from_params(params, num_labels, multi_label), backbones.vision, backbones.text)


def make_optimizer(model: MITP, params: Params, total_steps: int):
    """AdamW on the trainable parameters only; no decay on norms, biases, prompts, tau."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and not name.startswith("prompt_") else no_decay).append(p)
    t = params.train
    # foreach: one multi-tensor kernel per update instead of a Python loop over the parameters
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=t.lr, foreach=True)
    warmup = max(1, int(t.warmup_ratio * total_steps))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


FINITE_CHECK_EVERY = 20  # steps between divergence checks (each one is a host sync)


def check_finite(loss_sum: torch.Tensor, epoch: int, step: int, scheduler) -> None:
    """Raise :class:`TrainingDiverged` when the epoch's summed loss is NaN or infinite."""
    if not torch.isfinite(loss_sum):
        raise TrainingDiverged(f"loss became {loss_sum.item()} by epoch {epoch + 1}, step {step + 1} "
                               f"(lr {scheduler.get_last_lr()[0]:.2e}); lower train.lr or check the data")


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def evaluate(model: MITP, loader, device: torch.device, start_layer: int, multi_label: bool,
             desc: str = "eval") -> dict[str, float]:
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
    result["loss"] = float(total_loss) / max(1, n)
    return result


# --------------------------------------------------------------------------------------------


def fit(
    params: Params,
    dataset: str,
    *,
    run_name: str | None = None,
    checkpoint_dir: str | Path | None = None,
    on_epoch: EpochHook | None = None,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    weights_out: str | Path | None = None,
) -> TrainResult:
    """Train one model on ``dataset``; returns the best epoch's val and test metrics.

    ``checkpoint_dir``: a folder for the per-epoch checkpoint; if it already holds one, the run
    resumes from it (same MLflow run, no epoch done twice).
    """
    seed_everything(params.seed)
    device = pick_device(params.train.device)
    bb = backbones_mod.load(params, device)
    loaders = loaders_mod.build(params, dataset, bb, device)
    model = build_model(params, bb, len(loaders.labels), loaders.multi_label).to(device)
    primary = metrics.primary_metric(loaders.multi_label)

    t = params.train
    steps_per_epoch = len(loaders.train) if t.max_steps_per_epoch is None else min(len(loaders.train), t.max_steps_per_epoch)
    optimizer, scheduler = make_optimizer(model, params, t.epochs * steps_per_epoch)

    start_epoch, history, best_state, best_val, best_epoch, run_id = 0, [], None, -math.inf, 0, None
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    if ckpt is not None and checkpoint.exists(ckpt):
        meta, best_state = checkpoint.restore(ckpt, model, optimizer, scheduler)
        start_epoch, history = meta["epoch"] + 1, meta["history"]
        best_val, best_epoch, run_id = meta["best_val"], meta["best_epoch"], meta.get("run_id")
        log.info("resuming %s from epoch %d (checkpoint %s)", dataset, start_epoch, ckpt)

    n_trainable = sum(p.numel() for p in model.trainable_parameters())
    n_total = sum(p.numel() for p in model.parameters())
    tags = {**tracking.lineage_tags(params, dataset), "data_source": loaders.source, **(extra_tags or {})}
    tags.update({k: str(v) for k, v in loaders.info.items()})

    with tracking.start_run(params, run_name=run_name or f"{dataset}-{params.model.kind}", tags=tags,
                            parent_run_id=parent_run_id, run_id=run_id) as run:
        mlflow = tracking.setup(params)
        if run_id is None:
            tracking.log_params(mlflow, tracking.run_params(params, dataset))
            mlflow.log_metrics({"trainable_params": n_trainable, "total_params": n_total,
                                "trainable_ratio": n_trainable / n_total})
        run_id = run.info.run_id

        train_time, train_samples = 0.0, 0
        for h in history:  # throughput of epochs done before a resume
            train_time += h.get("epoch_time_s", 0.0)
            train_samples += int(h.get("epoch_samples", 0))
        runner = StepRunner(model, wants_compile(t.compile, device))

        def forward_loss(module, batch):
            with autocast(device):
                return module(**batch, start_layer=loaders.start_layer).loss

        for epoch in range(start_epoch, t.epochs):
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
                optimizer.zero_grad(set_to_none=True)
                loss = runner(forward_loss, batch)
                torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), t.grad_clip, foreach=True)
                optimizer.step()
                scheduler.step()
                n = len(batch["labels"])
                seen += n
                loss_sum += loss.detach().float() * n
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
                best_state = checkpoint.trainable_state(model)
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
        checkpoint.load_weights(model, best_state)
        best_row = history[best_epoch - 1]
        test = evaluate(model, loaders.test, device, loaders.start_layer, loaders.multi_label, desc="test")
        final = {
            **{f"test_{k}": v for k, v in test.items()},
            **{k: v for k, v in best_row.items() if k.startswith("val_")},
            "best_epoch": best_epoch,
            "epochs": t.epochs,
            "trainable_params": n_trainable,
            "total_params": n_total,
            "trainable_ratio": n_trainable / n_total,
            "train_samples_per_s": train_samples / max(train_time, 1e-9),
            "train_time_s": train_time,
            "peak_memory_mb": peak_memory_mb(device),
        }
        mlflow.log_metrics(final)
        weights_path = None
        if weights_out is not None:
            weights_path = Path(weights_out)
            checkpoint.save_weights(weights_path, best_state, metadata={"dataset": dataset, "run_id": run_id,
                                                                        "best_epoch": str(best_epoch)})
            mlflow.log_artifact(str(weights_path))
    return TrainResult(final, history, best_epoch, run_id, weights_path, tags)
