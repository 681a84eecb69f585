"""Feature cache of the frozen layers: compute once, train many (contract: docs/design.md).

Layers below the first interaction layer never see a prompt, so their output is the same in
every epoch and every sweep trial. The cache stage (``python -m pipeline.cache --dataset NAME``)
runs preprocessing, tokenization and frozen layers 0..k-1 once and stores the hidden states
entering layer k (``cache.layer``) as memory-mapped float16 shards; training then starts at k.

Modules: :mod:`~mitp.cache.build` (the stage's work, resumable), :mod:`~mitp.cache.storage`
(shards, index, checksums), :mod:`~mitp.cache.fingerprint` (what must match),
:mod:`~mitp.cache.dataset` (training from the cache), :mod:`~mitp.cache.estimate` (disk size),
:mod:`~mitp.cache.flops` (the benchmark's FLOP model), :mod:`~mitp.cache.errors`; the rule on k
(``check_cache_layer``: k <= every interaction start in use) lives in :mod:`mitp.sweep.space`.
"""

from mitp.cache.build import BuildSummary, build_cache
from mitp.cache.dataset import CachedSplit, OpenCache, cached_loaders, open_cache
from mitp.cache.errors import (
    CacheBusy,
    CacheCorrupt,
    CacheError,
    CacheIncomplete,
    CacheMismatch,
    CacheMissing,
    CacheSpaceError,
)
from mitp.cache.estimate import Estimate, Shapes, estimate_bytes
from mitp.cache.fingerprint import CACHE_FORMAT, fingerprint, short_hash
from mitp.sweep.space import check_cache_layer

__all__ = [
    "CACHE_FORMAT", "BuildSummary", "CacheBusy", "CacheCorrupt", "CacheError", "CacheIncomplete",
    "CacheMismatch", "CacheMissing", "CacheSpaceError", "CachedSplit", "Estimate", "OpenCache", "Shapes",
    "build_cache", "cached_loaders", "check_cache_layer", "estimate_bytes", "fingerprint", "open_cache",
    "short_hash",
]
