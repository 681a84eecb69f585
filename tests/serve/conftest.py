"""One small tracked training run from the feature cache, shared by the serving tests: its
model folder, MLflow run and Params."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.factories import params_under, prepare_synthetic

SERVE_SET = {
    "data.synthetic.n_train": 96,
    "data.synthetic.n_val": 48,
    "data.synthetic.n_test": 64,
    "cache.layer": 1,
    "model.interaction.start": 1,  # the model starts from cached hidden states entering layer 1
    "train.epochs": 2,
    "train.batch_size": 32,
    "train.eval_batch_size": 32,
    "mlflow.log_system_metrics": False,  # a sampling thread per run: noise for a two-epoch test
}


@dataclass
class TrainedRun:
    params: object
    folder: Path  # the model folder fit wrote
    run_id: str
    metrics: dict[str, float]
    tracking_uri: str


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, shared_root) -> TrainedRun:
    from mitp.cache import build_cache
    from mitp.models import backbones
    from mitp.tracking.store import tracking_uri
    from mitp.training.fit import fit

    root = tmp_path_factory.mktemp("serve")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    params = prepare_synthetic(params_under(root, shared_root / "backbones", SERVE_SET))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny towers are overhead-bound; one thread is faster on shared cores
    os.environ["DVC_EXP_NAME"] = "serve-exp"  # as `dvc exp run` sets it
    try:
        build_cache(params, "synthetic", backbones.load(params.backbone), "cpu", progress=False)
        result = fit(params, "synthetic", run_name="serve-test", model_out=root / "models" / "synthetic" / "mitp")
    finally:
        torch.set_num_threads(threads)
        os.environ.pop("DVC_EXP_NAME", None)
    return TrainedRun(params, root / "models" / "synthetic" / "mitp", result.run_id, result.metrics,
                      tracking_uri(params.mlflow))
