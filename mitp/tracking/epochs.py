"""Per-epoch metrics of a training run, logged exactly once per epoch: the MLflow step is the
epoch (from 1), and a resumed run logs only the epochs its store does not hold yet."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MARKER = "train_loss"  # every epoch row has it; its steps tell which epochs the run holds


def log_epoch(mlflow, row: dict[str, Any]) -> None:
    """One history row (``epoch`` + figures) as metrics at step ``epoch``."""
    mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))


def logged_epochs(client, run_id: str) -> set[int]:
    return {m.step for m in client.get_metric_history(run_id, MARKER)}


def log_missing(mlflow, run_id: str, history: Iterable[dict[str, Any]]) -> int:
    """Log the rows of ``history`` whose epoch the run has no point for; returns how many."""
    history = list(history)
    if not history:
        return 0
    done = logged_epochs(mlflow.tracking.MlflowClient(), run_id)
    missing = [row for row in history if int(row["epoch"]) not in done]
    for row in missing:
        log_epoch(mlflow, row)
    return len(missing)
