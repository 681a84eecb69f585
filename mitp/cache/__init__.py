"""Feature cache of the frozen layers below k = ``cache.layer``: computed once, read by every
epoch and trial (``python -m pipeline.cache``; contract: docs/design.md). The rule on k lives in
:mod:`mitp.sweep.space`.
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
