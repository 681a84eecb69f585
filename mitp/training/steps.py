"""The leaves of training, each usable alone (``fit``, the benchmarks and the tests share them):
seeding, the optimizer and its schedule, one optimisation step, evaluation of a loader, and the
checks between steps (divergence, early stopping). Each takes only what it reads.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from mitp.config.params import Params, TrainConfig
from mitp.errors import UserError
from mitp.models import metrics
from mitp.models.kinds import build_model as build_kind
from mitp.models.mitp import TwoTowers
from mitp.training.compiled import StepRunner


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(params: Params, backbones, num_labels: int, multi_label: bool,
                drop_below: int | None = None) -> TwoTowers:
    return build_kind(params, backbones.vision, backbones.text, num_labels, multi_label, drop_below)


def make_optimizer(model: TwoTowers, t: TrainConfig, total_steps: int):
    """AdamW on the trainable parameters only (no decay on norms, biases, prompts, tau), and a
    linear warm-up over ``train.warmup_ratio`` of ``total_steps`` followed by a cosine decay to 0.
    The backbones (``finetune``) form their own groups at ``train.backbone_lr``."""
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
