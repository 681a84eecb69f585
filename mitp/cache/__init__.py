"""Feature cache of the frozen layers: compute once, train many (contract: docs/design.md).

Layers below the first interaction layer never see a prompt, so their output is the same in
every epoch and every sweep trial. The cache stage (``python -m pipeline.cache --dataset NAME``)
runs preprocessing, tokenization and frozen layers 0..k-1 once and stores the hidden states
entering layer k (``cache.layer``) as memory-mapped float16 shards; training then starts at k.

Modules: :mod:`~mitp.cache.fingerprint` (the inputs - manifests, image digests - and what must
match), :mod:`~mitp.cache.storage` (units, files, sizes, index, checks, lock),
:mod:`~mitp.cache.build` (the stage's work, resumable), :mod:`~mitp.cache.reader` (opening and
reading a cache; the data loaders in :mod:`mitp.data.loaders` sit on top of it),
:mod:`~mitp.cache.errors`; the rule on k
(``check_cache_layer``: k <= every interaction start in use) lives in :mod:`mitp.sweep.space`.
"""

from mitp.cache.build import build_cache
from mitp.cache.errors import (
    CacheBusy,
    CacheCorrupt,
    CacheError,
    CacheIncomplete,
    CacheInputError,
    CacheMismatch,
    CacheMissing,
    CacheSpaceError,
)
from mitp.cache.reader import open_cache
from mitp.sweep.space import check_cache_layer

__all__ = ["CacheBusy", "CacheCorrupt", "CacheError", "CacheIncomplete", "CacheInputError", "CacheMismatch",
           "CacheMissing", "CacheSpaceError", "build_cache", "check_cache_layer", "open_cache"]
