"""On-disk layout of a feature cache: shards, the index, checksums, the verification memo, the lock.

``data/features/<dataset>/``::

    index.json                 fingerprint, layout, per-split counts, every file's size + sha256;
                               "complete": false while a build runs (rewritten after each shard)
    <split>/meta-labels.npy    (n,) int64 class indices, or (n, K) float32 multi-hot
    <split>/meta-image_index.npy  (n,) int64: row of each sample's image in the image shards
    <split>/meta-ids.json      the manifest ids, in manifest order
    <split>/image-00000.npy    (rows, N_v, d_v) hidden states entering layer k, one row per
                               unique image (``layout.shard_size`` rows a shard)
    <split>/text-00000.npy     (rows, max_text_length, d_t) hidden states, padded
    <split>/mask-00000.npy     (rows, max_text_length) uint8 attention mask

and beside it (outside the folder, so the folder's content - what DVC hashes as the stage's
output - changes only when the cache does): ``.<dataset>.verified.json``, a memo of the files
whose checksum was verified (size, mtime, sha256, when), and ``.<dataset>.lock``, held by a
running build.

Every shard is an ``.npy`` file (memory-mapped for reading), written under a temp name
(``.<name>.<random>.tmp``), fsynced, hashed and renamed into place, then recorded in the index.
So a file under its final name is always complete; a killed build leaves at most temp files,
which the next build deletes. The index holds only deterministic content (no times), so an
interrupted-and-resumed build ends with the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mitp.atomic import write_json, write_text
from mitp.cache.errors import CacheBusy

INDEX = "index.json"
RACY_NS = 2_000_000_000  # a file modified within 2 s of its verification is re-hashed next time


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def npy_bytes(shape: tuple[int, ...], dtype) -> int:
    """Exact size of an ``.npy`` file holding an array of this shape and dtype."""
    import io

    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(x) for x in shape)}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.tell() + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


class ShardWriter:
    """An ``.npy`` file filled in place (memory-mapped) under a temp name; ``commit`` makes it real."""

    def __init__(self, root: Path, rel: str, shape: tuple[int, ...], dtype):
        self.root, self.rel = root, rel
        self.target = root / rel
        self.target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=self.target.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=dtype, shape=shape)

    def commit(self) -> dict:
        self.array.flush()
        del self.array
        with open(self.tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        record = {"bytes": self.tmp.stat().st_size, "sha256": sha256_file(self.tmp)}
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.target)
        fsync_dir(self.target.parent)
        return record

    def abort(self) -> None:
        with contextlib.suppress(AttributeError):
            del self.array
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def write_small(root: Path, rel: str, data: bytes) -> dict:
    """A small file (metadata arrays, ids), written atomically; returns its index record."""
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def npy_payload(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def json_payload(obj) -> bytes:
    return (json.dumps(obj, indent=None, separators=(",", ":")) + "\n").encode()


# --------------------------------------------------------------------------------------------
# index and memo
# --------------------------------------------------------------------------------------------


def read_index(root: Path) -> dict | None:
    """The index, or None if there is none; a damaged index raises ValueError."""
    path = root / INDEX
    if not path.exists():
        return None
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(index, dict) or "fingerprint" not in index or "files" not in index:
        raise ValueError(f"{path}: not a feature-cache index")
    return index


def write_index(root: Path, index: dict) -> None:
    write_json(root / INDEX, index)


def memo_path(root: Path) -> Path:
    return root.parent / f".{root.name}.verified.json"


def lock_path(root: Path) -> Path:
    return root.parent / f".{root.name}.lock"


def read_memo(root: Path) -> dict:
    try:
        memo = json.loads(memo_path(root).read_text())
        return memo if isinstance(memo, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def write_memo(root: Path, memo: dict) -> None:
    with contextlib.suppress(OSError):  # a read-only cache folder is fine: we just hash again
        write_text(memo_path(root), json.dumps(memo, sort_keys=True) + "\n")


def memo_entry(path: Path, sha256: str, written: bool = False) -> list:
    """``[size, mtime_ns, sha256, verified_at_ns, written]``; ``written``: the hash was taken by the
    writer from the complete temp file before the rename, so no earlier version can hide behind it."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, sha256, time.time_ns(), written]


def check_file(root: Path, rel: str, record: dict, memo: dict | None, full: bool = False) -> str | None:
    """None if ``rel`` holds what the index says, else what is wrong (missing / truncated / checksum).

    The size is always checked. The sha256 is checked unless ``memo`` vouches for the file: same
    size, mtime and sha256 as when it was hashed, and either this code wrote it (hashed before the
    rename) or the hash was taken more than 2 s after the file's last modification (so a change
    within the timestamp granularity is still caught: the "racy git" rule). Any later write
    changes the mtime and brings the file back to a full hash. ``full`` always hashes. A file
    that verifies is entered in ``memo``.
    """
    path = root / rel
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    if st.st_size != record["bytes"]:
        kind = "truncated" if st.st_size < record["bytes"] else "wrong size"
        return f"{kind}: {st.st_size} bytes, the index says {record['bytes']}"
    if not full and memo is not None:
        seen = memo.get(rel)
        if (isinstance(seen, list) and len(seen) >= 4 and seen[0] == st.st_size and seen[1] == st.st_mtime_ns
                and seen[2] == record["sha256"] and (seen[4:5] == [True] or seen[3] - st.st_mtime_ns > RACY_NS)):
            return None
    if sha256_file(path) != record["sha256"]:
        return "corrupted: sha256 does not match the index"
    if memo is not None:
        memo[rel] = memo_entry(path, record["sha256"])
    return None


def clean_temp_files(root: Path) -> int:
    """Delete temp files a killed build left behind; returns how many."""
    n = 0
    for tmp in list(root.glob(".*.tmp")) + list(root.glob("*/.*.tmp")):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink() if tmp.is_file() else shutil.rmtree(tmp)
            n += 1
    return n


def wipe(root: Path, splits) -> None:
    """Remove a cache's own files (index, memo, split folders); leaves anything else alone."""
    for path in (root / INDEX, memo_path(root)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for split in splits:
        shutil.rmtree(root / split, ignore_errors=True)


@contextlib.contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """One build at a time per cache folder (advisory ``flock``; released when the process dies)."""
    root.mkdir(parents=True, exist_ok=True)
    fh = open(lock_path(root), "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise CacheBusy(f"{root}: another cache run is building this cache (lock {lock_path(root)})") from None
            raise
        yield
    finally:
        fh.close()
