"""Where a training run writes: metrics JSON, per-epoch history, best weights, checkpoint.

The checkpoint folder is keyed by a hash of everything the run depends on, so an interrupted
run resumes only into the same configuration, never into a changed one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from mitp.config.params import Params
from mitp.tracking.store import run_params


def run_key(params: Params, dataset: str) -> str:
    blob = json.dumps(run_params(params, dataset), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TrainPaths:
    metrics: Path
    history: Path
    weights: Path
    checkpoint: Path

    def clear_checkpoint(self) -> None:
        shutil.rmtree(self.checkpoint, ignore_errors=True)


def train_paths(params: Params, dataset: str, metrics_out: str | None = None,
                history_out: str | None = None) -> TrainPaths:
    metrics_dir = params.resolve("metrics") / dataset
    key = run_key(params, dataset)
    runs = params.resolve(params.train.checkpoint_dir) / dataset
    return TrainPaths(
        metrics=Path(metrics_out) if metrics_out else metrics_dir / "train.json",
        history=Path(history_out) if history_out else metrics_dir / "train_history.json",
        weights=runs / f"{params.model.kind}-{key}" / "best.safetensors",
        checkpoint=runs / f"{params.model.kind}-{key}" / "checkpoint",
    )
