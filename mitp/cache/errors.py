"""Errors of the feature cache. All are :class:`~mitp.errors.UserError`: the entry points print
the message (which names the command that fixes it) without a traceback."""

from __future__ import annotations

from mitp.errors import UserError


def build_command(dataset: str) -> str:
    return f"python -m pipeline.cache --dataset {dataset}"


class CacheError(UserError):
    """Any problem with a feature cache."""


class CacheMissing(CacheError):
    """No cache (or no index) where the configuration says it is."""


class CacheIncomplete(CacheError):
    """A cache run was interrupted; the stage resumes it."""


class CacheMismatch(CacheError):
    """The cache was built for another configuration; ``fields``: ``(field, cached, needed)``."""

    def __init__(self, message: str, fields: list[tuple[str, object, object]]):
        super().__init__(message)
        self.fields = fields


class CacheCorrupt(CacheError):
    """A shard is missing, truncated or does not match its checksum."""

    def __init__(self, message: str, files: list[str] | None = None):
        super().__init__(message)
        self.files = files or []


class CacheSpaceError(CacheError):
    """The target filesystem lacks the space the cache needs."""


class CacheBusy(CacheError):
    """Another cache run holds the lock on this cache folder."""


class CacheInputError(CacheError):
    """An input of the cache (an image the manifests list) is missing, unreadable or changed."""
