"""The download lock file: the sha256 of every file a dataset's download fetched.

Default location ``locks/<name>.lock.json`` at the repository root (``data.locks_dir``): tracked by git next to
``dvc.lock``, outside ``data/`` so it survives DVC removing ``data/raw/<name>/``;
``data.<name>.lock_file`` moves it. Format::

    {"dataset": "mmimdb",
     "files": {"mmimdb.tar.gz": {"sha256": "...", "size": 8123456789,
                                  "url": "https://...", "checksum": "published" | "first download",
                                  "final_url": "https://..."}}}   # only when the mirror redirected

``final_url`` is where a redirect led (query string dropped: CDNs sign it per request). An
entry is written by :mod:`mitp.data.download` only once the file passed its content check, was
unpacked and the dataset's layout was found, so a poisoned first download is never locked.

A published checksum (``sources[].sha256`` in params) is always checked; where none is
published, the first download's sha256 is recorded here (trust on first use) and every later
download must match it. No timestamps, so the file changes only when the data does.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

from mitp.atomic import write_json
from mitp.errors import UserError


class LockFileError(UserError):
    """The lock file exists but cannot be read."""


def lock_path(params, name: str) -> Path:
    cfg = params.dataset(name)
    if cfg.lock_file:
        return params.resolve(cfg.lock_file)
    return params.resolve(params.data.locks_dir) / f"{name}.lock.json"


class LockFile:
    """Read-modify-write access to one dataset's lock file."""

    def __init__(self, path: str | Path, dataset: str):
        self.path = Path(path)
        self.dataset = dataset
        self.files: dict[str, dict] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self.files = dict(data["files"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise LockFileError(
                    f"{self.path}: unreadable lock file ({exc}); fix it or delete it to trust the next download"
                ) from exc

    def expected(self, file: str) -> str | None:
        entry = self.files.get(file)
        return entry.get("sha256") if entry else None

    def record(
        self, file: str, sha256: str, size: int, url: str | None, published: bool, final_url: str | None = None
    ) -> None:
        entry = {"sha256": sha256, "size": size, "url": url, "checksum": "published" if published else "first download"}
        if final_url and final_url != url:
            entry["final_url"] = urllib.parse.urlsplit(final_url)._replace(query="", fragment="").geturl()
        if self.files.get(file) != entry:
            self.files[file] = entry
            self.save()

    def save(self) -> None:
        write_json(self.path, {"dataset": self.dataset, "files": dict(sorted(self.files.items()))})
