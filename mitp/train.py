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
from mitp.config import Params
from mitp.data import loaders as loaders_mod
from mitp.errors import ConfigError, UserError
from mitp.model import TwoTowers
from mitp.model_kinds import build_model as build_kind

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


def build_model(params: Params, backbones, num_labels: int, multi_label: bool,
                drop_below: int | None = None) -> TwoTowers:
    return build_kind(params, backbones.vision, backbones.text, num_labels, multi_label, drop_below)


def refuse_cache_for_finetune(params: Params) -> None:
    if params.model.kind == "finetune" and params.cache.enabled:
        raise ConfigError("cache.enabled: model.kind=finetune trains the backbones end to end, so it cannot "
                          "train from the feature cache; set cache.enabled=false")


def make_optimizer(model: TwoTowers, params: Params, total_steps: int):
    """AdamW on the trainable parameters only; no decay on norms, biases, prompts, tau. The
    backbones (``finetune``) form their own groups at ``train.backbone_lr``."""
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
                             for (tower, decays), ps in groups.items() if ps], lr=t.lr)
    warmup = max(1, int(t.warmup_ratio * total_steps))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def evaluate(model: TwoTowers, loader, device: torch.device, start_layer: int, multi_label: bool,
             desc: str = "eval") -> dict[str, float]:
    model.eval()
    all_logits, all_labels, total_loss, n = [], [], 0.0, 0
    for batch in tqdm(loader, desc=desc, leave=False, unit="batch"):
        batch = to_device(batch, device)
        with autocast(device):
            out = model(**batch, start_layer=start_layer)
        total_loss += out.loss.float().item() * len(batch["labels"])
        n += len(batch["labels"])
        all_logits.append(out.logits.float().cpu())
        all_labels.append(batch["labels"].cpu())
    result = metrics.compute(torch.cat(all_logits), torch.cat(all_labels), multi_label)
    result["loss"] = total_loss / max(1, n)
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
    refuse_cache_for_finetune(params)
    seed_everything(params.seed)
    device = pick_device(params.train.device)
    bb = backbones_mod.load(params, device)
    loaders = loaders_mod.build(params, dataset, bb, device)
    # From the cache, the layers below k never run: the model is built without them (this
    # releases them from bb's towers too, which are the model's; a raw-input model needs a reload).
    drop_below = loaders.start_layer if loaders.source == "cache" else None
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
        for epoch in range(start_epoch, t.epochs):
            model.train()
            t0, seen, loss_sum = time.perf_counter(), 0, 0.0
            bar = tqdm(loaders.train, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{t.epochs}", unit="batch", leave=False)
            for step, batch in enumerate(bar):
                if step >= steps_per_epoch:
                    break
                batch = to_device(batch, device)
                with autocast(device):
                    out = model(**batch, start_layer=loaders.start_layer)
                loss = out.loss
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                                           f"(lr {scheduler.get_last_lr()[0]:.2e}); lower train.lr or check the data")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), t.grad_clip)
                optimizer.step()
                scheduler.step()
                n = len(batch["labels"])
                seen += n
                loss_sum += loss.item() * n
                bar.set_postfix(loss=f"{loss.item():.4f}")
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
