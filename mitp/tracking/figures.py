"""Figures of one training run for MLflow: learning curves and the test confusion matrix.

Matplotlib's non-interactive Agg backend: runs work on headless machines and in Ray workers.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def learning_curves(history: Sequence[dict[str, float]], primary: str, best_epoch: int) -> Figure:
    """Train/val loss and the validation ``primary`` metric against epoch; the best epoch marked."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], marker="o", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_metric.plot(epochs, [h[f"val_{primary}"] for h in history], marker="o", color="tab:green")
    ax_metric.set(xlabel="epoch", ylabel=f"val {primary}", title=f"validation {primary}")
    for ax in (ax_loss, ax_metric):
        ax.axvline(best_epoch, color="grey", linestyle=":", label="best epoch")
        ax.grid(alpha=0.3)
    return fig


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> Figure:
    """Counts of (true class, predicted class), rows = true; single-label sets."""
    from sklearn.metrics import confusion_matrix as counts

    cm = counts(y_true, y_pred, labels=list(range(len(labels))))
    size = max(3.5, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size), layout="constrained")
    ax.imshow(cm, cmap="Blues")
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=90 if len(labels) > 6 else 0)
    ax.set_yticks(ticks, labels)
    ax.set(xlabel="predicted", ylabel="true", title="test confusion matrix (best epoch)")
    if len(labels) <= 20:  # numbers stay legible
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)
