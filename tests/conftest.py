"""Shared fixtures: params pointed at a temp folder, tiny-random backbones, a small synthetic set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")


def tmp_overrides(root: Path) -> dict:
    """Overrides that send every output of a run under ``root`` (never the repo's data/)."""
    return {
        "data.root": str(root / "data"),
        "data.locks_dir": str(root / "locks"),
        "backbone.dir": str(root / "backbones"),
        "cache.dir": str(root / "features"),
        "train.checkpoint_dir": str(root / "runs"),
        "mlflow.tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "ray.storage_path": str(root / "ray_results"),
        # independent of the demo sweep in params.yaml (which also sweeps the interaction start)
        "sweep.space": {"model.prompt_length": {"grid": [4, 8]}},
        "sweep.num_samples": 1,
        # compiling takes longer than these tiny runs train; benchmarks/train_speed.py covers it
        "train.compile": False,
    }


SMALL_SYNTHETIC = {
    "data.synthetic.n_train": 96,
    "data.synthetic.n_val": 48,
    "data.synthetic.n_test": 48,
    "train.epochs": 1,
    "train.batch_size": 32,
}


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory) -> Path:
    """A session-wide folder: tiny-random backbones are built once and reused."""
    return tmp_path_factory.mktemp("shared")


@pytest.fixture
def make_params(tmp_path, shared_root):
    """``make_params(**{"model.hub_size": 8})`` -> validated Params writing under tmp_path."""
    from mitp.config.params import load_params

    def _make(overrides: dict | None = None, root: Path | None = None):
        root = root or tmp_path
        merged = {**tmp_overrides(root), "backbone.dir": str(shared_root / "backbones"), **(overrides or {})}
        if "MLFLOW_TRACKING_URI" in os.environ:
            del os.environ["MLFLOW_TRACKING_URI"]
        return load_params(overrides=merged)

    return _make


@pytest.fixture(scope="session")
def tiny_backbones(shared_root):
    """The tiny-random pair, built once per session through the real save/load path."""
    from mitp.config.params import load_params
    from mitp.models import backbones

    params = load_params(overrides={"backbone.dir": str(shared_root / "backbones")})
    return backbones.load(params.backbone)


@pytest.fixture
def synthetic_prepared(make_params):
    """A small synthetic set, generated and prepared under tmp_path; returns its Params."""
    from mitp.data.prepare import prepare_dataset
    from mitp.data.synthetic import generate

    params = make_params(SMALL_SYNTHETIC)
    generate(params)
    prepare_dataset(params, "synthetic")
    return params
