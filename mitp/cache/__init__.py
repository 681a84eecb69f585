"""Feature cache of the frozen layers below k = ``cache.layer``: computed once, read by every
epoch and trial (``python -m pipeline.cache``; contract: docs/design.md). The rule on k lives with the
kinds, in :mod:`mitp.models.rules`.
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

__all__ = ["CacheBusy", "CacheCorrupt", "CacheError", "CacheIncomplete", "CacheInputError", "CacheMismatch",
           "CacheMissing", "CacheSpaceError", "build_cache", "open_cache"]
