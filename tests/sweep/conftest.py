"""Fixtures of the sweep tests: a small synthetic set, sweep params, a shared local Ray."""

from __future__ import annotations

import os

import pytest

from tests.factories import SMALL_SYNTHETIC

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
def sweep_params(prepared_params):
    """``sweep_params(overrides)`` -> Params of a generated + prepared small synthetic set."""
    return lambda overrides=None, root=None: prepared_params({**SWEEP_SET, **(overrides or {})}, root=root, reuse=True)


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
