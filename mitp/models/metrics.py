"""Task metrics: accuracy for single-label sets; F1 (micro, macro, weighted, samples) at a
0.5 threshold for multi-label sets (MM-IMDB), computed from logits without extra dependencies."""

from __future__ import annotations

import torch
from torch import Tensor


def primary_metric(multi_label: bool) -> str:
    """The paper's headline metric for a task (the one model selection uses)."""
    return "f1_micro" if multi_label else "accuracy"


def single_label(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """logits (N, K), labels (N,) -> {"accuracy"}."""
    return {"accuracy": (logits.argmax(dim=-1) == labels).float().mean().item()}


def multi_label(logits: Tensor, labels: Tensor, threshold: float = 0.5) -> dict[str, float]:
    """logits (N, K), labels (N, K) multi-hot -> F1 micro / macro / weighted / samples."""
    pred = (torch.sigmoid(logits.float()) >= threshold).float()
    gold = labels.float()
    tp = (pred * gold).sum(0)
    fp = (pred * (1 - gold)).sum(0)
    fn = ((1 - pred) * gold).sum(0)

    def f1(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
        denom = 2 * tp + fp + fn
        return torch.where(denom > 0, 2 * tp / denom.clamp(min=1e-12), torch.zeros_like(denom))

    per_class = f1(tp, fp, fn)
    support = gold.sum(0)
    tp_s, fp_s, fn_s = (pred * gold).sum(1), (pred * (1 - gold)).sum(1), ((1 - pred) * gold).sum(1)
    return {
        "f1_micro": f1(tp.sum(), fp.sum(), fn.sum()).item(),
        "f1_macro": per_class.mean().item(),
        "f1_weighted": ((per_class * support).sum() / support.sum().clamp(min=1)).item(),
        "f1_samples": f1(tp_s, fp_s, fn_s).mean().item(),
    }


def compute(logits: Tensor, labels: Tensor, is_multi_label: bool) -> dict[str, float]:
    return multi_label(logits, labels) if is_multi_label else single_label(logits, labels)


def per_class(logits: Tensor, labels: Tensor, is_multi_label: bool, names: list[str]) -> dict[str, dict[str, float]]:
    """logits (N, K), labels (N,) or (N, K) -> ``{class: {precision, recall, f1, support}}``
    (multi-label: at the 0.5 threshold)."""
    from sklearn.metrics import precision_recall_fscore_support

    if is_multi_label:
        gold, pred = labels.int().numpy(), (torch.sigmoid(logits.float()) >= 0.5).int().numpy()
        kw = {}
    else:
        gold, pred = labels.numpy(), logits.argmax(dim=-1).numpy()
        kw = {"labels": list(range(len(names)))}
    p, r, f, s = precision_recall_fscore_support(gold, pred, average=None, zero_division=0, **kw)
    return {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, n in enumerate(names)}
