"""Fixtures of the sweep tests: a small synthetic set, sweep params, a shared local Ray."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest


def _root_conftest():
    """tests/conftest.py as a module (its name, ``conftest``, is taken by this file)."""
    spec = importlib.util.spec_from_file_location("_mitp_tests_root_conftest", Path(__file__).parent.parent / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SMALL_SYNTHETIC = _root_conftest().SMALL_SYNTHETIC

# Four trials over a 2 x 2 grid, two epochs each, two 1-CPU trials at a time; the feature cache
# is off until a test needs it (trials then read raw images and text).
SWEEP_SET = {
    **SMALL_SYNTHETIC,
    "cache.enabled": False,
    "train.eval_batch_size": 64,
    "sweep.space": {"model.prompt_length": [4, 8], "model.hub_size": [16, 32]},
    "sweep.train": {"epochs": 2},
    "sweep.max_concurrent_trials": 2,
    "sweep.resources_per_trial": {"cpu": 1, "gpu": 0},
    "sweep.max_failures": 1,
}


@pytest.fixture
def sweep_params(make_params):
    """``sweep_params(overrides)`` -> Params of a generated + prepared small synthetic set."""
    from mitp.data.prepare import prepare_dataset
    from mitp.data.synthetic import generate

    def _make(overrides: dict | None = None, root=None):
        params = make_params({**SWEEP_SET, **(overrides or {})}, root=root)
        if not (params.prepared_dir("synthetic") / "labels.json").exists():
            generate(params)
            prepare_dataset(params, "synthetic")
        return params

    return _make


@pytest.fixture(scope="module")
def ray_local():
    """One small real local Ray (2 CPUs) per test module, always shut down."""
    import ray
    import ray.cloudpickle
    import sweep_hooks

    ray.cloudpickle.register_pickle_by_value(sweep_hooks)  # trial processes cannot import tests/
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
