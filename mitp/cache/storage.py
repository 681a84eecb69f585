"""On-disk layout of a feature cache: units of work, their files and sizes, the index, the
checks, the free-space estimate, the lock (write and trust rules: docs/design.md).

``data/features/<dataset>/``::

    index.json                 fingerprint, layout, labels, per-split counts, every file's size +
                               sha256; "complete": false while a build runs
    <split>/meta-labels.npy    (n,) int64 class indices, or (n, K) float32 multi-hot
    <split>/meta-image_index.npy  (n,) int64: row of each sample's image in the image shards
    <split>/meta-ids.json      the manifest ids, in manifest order
    <split>/image-00000.npy    (rows, N_v, d_v) hidden states entering layer k, one row per unique image
    <split>/text-00000.npy     (rows, max_text_length, d_t) hidden states, padded
    <split>/mask-00000.npy     (rows, max_text_length) uint8 attention mask

and beside it ``.<dataset>.lock`` (outside the folder, the cache stage's DVC output).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from mitp.atomic import remove_tree, write_bytes
from mitp.cache.errors import CacheBusy, CacheError, CacheSpaceError

INDEX = "index.json"
SPACE_MARGIN = 64 << 20  # keep this much free beyond the estimate (index rewrites, temp files)


@dataclass(frozen=True)
class Unit:
    """One piece of work that ends in complete files: ``meta``, an image shard or a text shard."""

    split: str
    kind: str  # "meta" | "image" | "text"
    shard: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def name(self) -> str:
        return f"{self.split}/{self.kind}" + ("" if self.kind == "meta" else f"-{self.shard:05d}")

    @property
    def files(self) -> tuple[str, ...]:
        if self.kind == "meta":
            return tuple(f"{self.split}/meta-{x}" for x in ("labels.npy", "image_index.npy", "ids.json"))
        if self.kind == "image":
            return (f"{self.split}/image-{self.shard:05d}.npy",)
        return (f"{self.split}/text-{self.shard:05d}.npy", f"{self.split}/mask-{self.shard:05d}.npy")


def units_of(split: str, n_samples: int, n_images: int, shard_size: int) -> list[Unit]:
    """A split's units in build order: meta, image shards, text shards."""
    out = [Unit(split, "meta", 0, 0, n_samples)]
    for kind, n in (("image", n_images), ("text", n_samples)):
        out += [Unit(split, kind, j, a, min(n, a + shard_size)) for j, a in enumerate(range(0, n, shard_size))]
    return out


def shard_shape(unit: Unit, layout: dict) -> tuple[int, ...] | None:
    """Shape of an image or text unit's float shard under ``layout`` (None for meta)."""
    if unit.kind == "image":
        return (unit.rows, layout["image_tokens"], layout["image_width"])
    if unit.kind == "text":
        return (unit.rows, layout["text_length"], layout["text_width"])
    return None


def npy_bytes(shape: tuple[int, ...], dtype) -> int:
    """Exact size of an ``.npy`` file holding an array of this shape and dtype."""
    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(x) for x in shape)}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.tell() + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NO_FALLOCATE = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


def reserve(fd: int, size: int) -> None:
    """Allocate ``size`` bytes of the open file now (``posix_fallocate``), so a disk that cannot
    hold the shard fails here with ENOSPC; filesystems without it are skipped (the writes report
    ENOSPC themselves, they never fault like a memory-mapped sparse file would)."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None or size <= 0:
        return
    try:
        fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in _NO_FALLOCATE:
            raise


def write_shard(path: Path, shape: tuple[int, ...], dtype, blocks: Iterable[np.ndarray],
                on_rows: Callable[[int], None] | None = None) -> None:
    """Write an ``.npy`` of ``shape`` at ``path`` from ``blocks`` of rows, with ordinary writes into
    space reserved first (:func:`reserve`). The bytes are those ``np.lib.format.open_memmap`` wrote
    (header 1.0, C order), but a full disk is an OSError (ENOSPC), not a SIGBUS that kills the
    process without a word."""
    dtype = np.dtype(dtype)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                   "fortran_order": False, "shape": tuple(int(x) for x in shape)})
    total = npy_bytes(shape, dtype)
    with open(path, "wb") as fh:
        reserve(fh.fileno(), total)
        fh.write(header.getvalue())
        rows = 0
        for block in blocks:
            array = np.ascontiguousarray(block, dtype=dtype)
            if array.shape[1:] != tuple(shape[1:]) or rows + len(array) > shape[0]:
                raise CacheError(f"{path.name}: a block of shape {array.shape} does not fit the shard {tuple(shape)} "
                                 f"at row {rows}")
            fh.write(array.data)
            rows += len(array)
            if on_rows is not None:
                on_rows(len(array))
        if rows != shape[0]:
            raise CacheError(f"{path.name}: {rows} rows computed, the shard holds {shape[0]}")
        fh.flush()


def disk_full(root: Path, what: str, exc: OSError) -> CacheSpaceError:
    """The one-line error of a disk that filled up during a build (another writer took the space
    the estimate saw free)."""
    return CacheSpaceError(
        f"disk full while writing the feature cache at {root} ({what}: {exc.strerror or exc}); the file was not "
        f"kept, finished shards are and the next run resumes. Free some space, or point cache.dir at a larger "
        f"disk (-S cache.dir=/path/with/space).")


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def seal(tmp: Path) -> dict:
    """The index record of a complete temp file, taken before it is renamed into place."""
    return {"bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}


def write_file(root: Path, rel: str, data: bytes) -> dict:
    """A small file (metadata arrays, ids, masks), written atomically; returns its index record."""
    write_bytes(root / rel, data)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def npy_payload(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def json_payload(obj) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def listed(problems: list[str]) -> str:
    """The first five problems, joined, and how many more there are."""
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return "; ".join(problems[:5]) + more


def read_index(root: Path) -> dict | None:
    """The index, or None if there is none; a damaged index raises ValueError."""
    path = root / INDEX
    if not path.exists():
        return None
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(index, dict) or not all(isinstance(index.get(k), dict) for k in ("fingerprint", "files", "layout", "splits")):
        raise ValueError(f"{path}: not a feature-cache index")
    return index


def lock_path(root: Path) -> Path:
    return root.parent / f".{root.name}.lock"


def check_file(root: Path, rel: str, record: dict, shape: tuple[int, ...] | None, full: bool) -> str | None:
    """None if ``rel`` has its recorded size, shard ``shape`` and (small files, or ``full``)
    sha256, else what is wrong. Float shards reach their name complete: hashing tens of GB at
    every start would cost more than it defends."""
    path = root / rel
    if not isinstance(record, dict):
        return "the index holds no record of it"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != record.get("bytes"):
        kind = "truncated" if size < record.get("bytes", 0) else "wrong size"
        return f"{kind}: {size} bytes, the index says {record.get('bytes')}"
    if shape is not None:
        try:
            got = np.load(path, mmap_mode="r").shape
        except (OSError, ValueError) as exc:
            return f"not a readable array ({exc})"
        if got != shape:
            return f"shape {got}, the index implies {shape}"
    if (full or shape is None) and sha256_file(path) != record.get("sha256"):
        return "corrupted: sha256 does not match the index"
    return None


def file_problems(root: Path, units: list[Unit], records: dict[str, dict], layout: dict, full: bool) -> dict[str, str]:
    """``{file: what is wrong}`` for each recorded file of ``units`` that does not check (:func:`check_file`)."""
    out = {}
    for unit in units:
        for rel in (f for f in unit.files if f in records):
            shape = shard_shape(unit, layout) if rel == unit.files[0] else None
            if problem := check_file(root, rel, records[rel], shape, full):
                out[rel] = problem
    return out


def index_problems(index: dict, plans: dict, labels: list[str], shapes: dict) -> list[str]:
    """What in ``index`` disagrees with the manifests (``plans``: split -> ``SplitPlan``, ``labels``)
    and the backbones (``shapes``: the layout's shape fields), e.g.
    ``["splits.train.n_samples: 40, the manifests give 48"]``. Unrecorded files count once complete."""
    problems = [f"layout.{k}: {index['layout'].get(k)!r}, the backbones give {v!r}"
                for k, v in shapes.items() if index["layout"].get(k) != v]
    sizes = {k: index["layout"].get(k) for k in ("shard_size", "batch_size")}
    bad = [f"layout.{k}: {v!r} is not a positive integer" for k, v in sizes.items()
           if not isinstance(v, int) or isinstance(v, bool) or v < 1]
    if bad:
        return problems + bad
    shard_size = sizes["shard_size"]
    if index.get("labels") != labels:
        problems.append("labels: differ from labels.json")
    for split, plan in plans.items():
        got, want = index["splits"].get(split) or {}, plan.entry(shard_size)
        problems += [f"splits.{split}.{k}: {got.get(k)!r}, the manifests give {v!r}" for k, v in want.items()
                     if got.get(k) != v]
    expected = {f for plan in plans.values() for u in plan.units(shard_size) for f in u.files}
    extra, missing = sorted(set(index["files"]) - expected), sorted(expected - set(index["files"]))
    problems += [f"files: {rel} is not a file of this cache" for rel in extra[:3]]
    problems += [f"files: {rel} is not recorded" for rel in missing[:3] if index.get("complete")]
    return problems


def clean_temp_files(root: Path) -> int:
    """Delete temp files a killed build left behind; returns how many."""
    n = 0
    for tmp in list(root.glob(".*.tmp")) + list(root.glob("*/.*.tmp")):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink() if tmp.is_file() else remove_tree(tmp)
            n += 1
    return n


def wipe(root: Path, splits) -> None:
    """Remove a cache's own files (index, split folders); leaves anything else alone."""
    with contextlib.suppress(FileNotFoundError):
        (root / INDEX).unlink()
    for split in splits:
        remove_tree(root / split, ignore_errors=True)


@contextlib.contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """One build at a time per cache folder (an OS file lock, released when the process dies)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        held = FileLock(lock_path(root), timeout=0).acquire()
    except Timeout:
        raise CacheBusy(f"{root}: another cache run is building this cache (lock {lock_path(root)})") from None
    with held:
        yield


def shapes_of(models, max_text_length: int, dtype: str) -> dict:
    """The layout's shape fields from the backbone configs (``Backbones``, or a ``(vision, text)``
    pair of models): ``image_tokens`` N_v (patches + CLS), ``image_width`` d_v, ``text_length``,
    ``text_width`` d_t, ``dtype``."""
    vision, text = models if isinstance(models, tuple) else (models.vision, models.text)
    v, t = vision.config, text.config
    return {"image_tokens": (v.image_size // v.patch_size) ** 2 + 1, "image_width": v.hidden_size,
            "text_length": max_text_length, "text_width": t.hidden_size, "dtype": dtype}


def unit_bytes(unit: Unit, plan, layout: dict) -> int:
    """Exact bytes of one unit's files (``plan``: its split's :class:`~mitp.cache.fingerprint.SplitPlan`)."""
    if unit.kind == "meta":
        return (npy_bytes(plan.labels.shape, plan.labels.dtype) + npy_bytes((unit.rows,), np.int64)
                + sum(len(i) + 3 for i in plan.ids) + 2)
    mask = npy_bytes((unit.rows, layout["text_length"]), np.uint8) if unit.kind == "text" else 0
    return npy_bytes(shard_shape(unit, layout), layout["dtype"]) + mask


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


@dataclass
class Estimate:
    dataset: str
    layout: dict  # shapes_of(...), optionally with the shard size
    splits: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # split -> (samples, images, bytes)
    to_write: int = 0  # bytes still to write (a resumed build has some already)

    def add(self, plan, units: list[Unit]) -> None:
        """Count one split: its samples, images and the bytes of its ``units``."""
        self.splits[plan.split] = (plan.n_samples, plan.n_images, sum(unit_bytes(u, plan, self.layout) for u in units))

    @property
    def total(self) -> int:
        return sum(b for _, _, b in self.splits.values())

    def describe(self) -> str:
        s = self.layout
        parts = ", ".join(f"{k} {human(b)} ({n:,} samples, {m:,} images)" for k, (n, m, b) in self.splits.items())
        return (f"feature cache for {self.dataset}: image {s['image_tokens']}x{s['image_width']} per unique image, "
                f"text {s['text_length']}x{s['text_width']} per sample, {s['dtype']} -> expected size on disk "
                f"{human(self.total)} [{parts}]; {human(self.to_write)} still to write")


def free_bytes(path: Path) -> int:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_space(target: Path, needed: int) -> None:
    """Raise CacheSpaceError unless ``target``'s filesystem has ``needed`` bytes (+ a margin) free."""
    free = free_bytes(target)
    if needed + SPACE_MARGIN > free:
        raise CacheSpaceError(
            f"not enough disk for the feature cache: {human(needed)} still to write at {target}, but only "
            f"{human(free)} free on that filesystem. Free some space, or point cache.dir at a larger disk "
            f"(-S cache.dir=/path/with/space).")
