"""Fixtures of the cache tests: a small synthetic set whose images are shared by several
hypotheses, with small shards (several per split), and a built cache of it."""

from __future__ import annotations

import pytest
import torch

CACHE_SET = {
    "data.synthetic.n_train": 48,
    "data.synthetic.n_val": 24,
    "data.synthetic.n_test": 24,
    "data.synthetic.hypotheses_per_image": 3,  # 16 / 8 / 8 unique images
    "cache.layer": 2,
    "model.interaction.start": 2,
    "cache.shard_size": 10,  # several shards per split, the last one short
    "cache.batch_size": 4,  # several batches per shard, the last one short
    "train.epochs": 1,
    "train.batch_size": 16,
    "train.eval_batch_size": 16,
}


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny-random towers are overhead-bound: one intra-op thread is faster than two, and
    stays fast when other processes share the two cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cache_params(prepared_params):
    """``cache_params(**overrides)`` -> Params of a generated + prepared small synthetic set."""
    return lambda overrides=None, root=None: prepared_params({**CACHE_SET, **(overrides or {})}, root=root)


@pytest.fixture
def built_cache(cache_params, tiny_backbones):
    """Params of the small set with its cache built (k = 2)."""
    from mitp.cache import build_cache

    params = cache_params()
    build_cache(params, "synthetic", tiny_backbones, progress=False)
    return params
