"""Ids and file names read from annotation files are untrusted: they become paths only when safe.

An annotation can hold ``../../../outside/secret``, an absolute path or a Windows drive where an
image id belongs; joined as it is, prepare would read (and put in a split) a file outside the
dataset. :func:`child_path` accepts a name only when it is one plain path component - letters,
digits, ``_``, ``-`` and ``.``, not starting with a dot (so no ``..``, no separator, no drive, no
hidden file) - and the joined path, normalised, is a direct child of the folder. Links that a
user put in their own copy are theirs to keep; archives cannot bring any (see
:mod:`mitp.data.archive`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")


def unsafe_reason(name: object) -> str | None:
    """Why ``name`` may not become a path component (None when it may)."""
    if not isinstance(name, str) or not name:
        return f"{name!r} is not a name"
    if SAFE_NAME.fullmatch(name) is None:
        return f"{name!r} is not a plain file name (letters, digits, _ - . ; no path, no leading dot)"
    return None


def child_path(folder: Path, name: str) -> Path | None:
    """``folder / name`` if ``name`` is a safe single component that stays in ``folder``, else None."""
    if unsafe_reason(name) is not None:
        return None
    path = folder / name
    if os.path.dirname(os.path.normpath(path)) != os.path.normpath(folder):
        return None
    return path
