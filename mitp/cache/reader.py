"""Reading a cache: :func:`open_cache` checks it (fingerprint, index, completeness, files;
docs/design.md, "Trust") and :class:`CachedSplit` gathers whole batches from the
shards (positioned reads straight into the batch). The DataLoaders live in :mod:`mitp.training.loaders`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mitp.cache import storage
from mitp.cache.errors import CacheCorrupt, CacheIncomplete, CacheMismatch, CacheMissing, build_command
from mitp.cache.fingerprint import describe_diff, diff, fingerprint, plan_all
from mitp.data.manifests import read_labels


@dataclass
class OpenCache:
    root: Path
    index: dict

    @property
    def fingerprint_hash(self) -> str:
        return self.index["fingerprint_hash"]

    @property
    def layer(self) -> int:
        return int(self.index["fingerprint"]["layer"])

    @property
    def labels(self) -> list[str]:
        return list(self.index["labels"])

    def split(self, name: str) -> CachedSplit:
        return CachedSplit(self.root, name, self.index)


def open_cache(params, dataset: str, backbones, verify: bool = True, full: bool = False) -> OpenCache:
    """The cache of ``dataset``, checked against what ``params`` + ``backbones`` need, else
    CacheMissing / CacheMismatch / CacheIncomplete / CacheCorrupt. ``verify``: check every file
    (size, shape, small files' sha256); ``full``: hash every file."""
    root = params.features_dir(dataset)
    fix = f"`{build_command(dataset)}` (with the same -S overrides as this run)"
    try:
        index = storage.read_index(root)
    except ValueError as exc:
        raise CacheCorrupt(f"{exc}; rebuild the cache with {fix}") from None
    if index is None:
        raise CacheMissing(f"no feature cache for dataset {dataset!r} at {root}: build it with {fix}, or set "
                           "cache.enabled=false to train from raw images and text")
    plans = plan_all(params, dataset, "open")
    expected = fingerprint(params, dataset, backbones, plans)
    if index["fingerprint"] != expected:
        fields = diff(index["fingerprint"], expected, dataset)
        names = ", ".join(f for f, _, _ in fields)
        raise CacheMismatch(
            f"the feature cache at {root} does not match this configuration ({names} differ{'s' if len(fields) == 1 else ''}); "
            f"a stale cache is never used. Rebuild it with {fix}, or set cache.enabled=false.\n"
            + describe_diff(fields), fields)
    if not index.get("complete"):
        raise CacheIncomplete(f"the feature cache at {root} is incomplete (a cache run was interrupted); "
                              f"resume it with {fix}")
    layout = storage.shapes_of(backbones, params.dataset(dataset).max_text_length, params.cache.dtype)
    problems = storage.index_problems(index, plans, read_labels(params.prepared_dir(dataset)), layout)
    if problems:
        raise CacheCorrupt(f"{root / storage.INDEX}: does not agree with the manifests and the cache's files, "
                           f"never trusted: {storage.listed(problems)}. Rebuild the cache with {fix}.")
    if verify:
        units = [u for plan in plans.values() for u in plan.units(index["layout"]["shard_size"])]
        problems = storage.file_problems(root, units, index["files"], index["layout"], full)
        if problems:
            raise CacheCorrupt(f"the feature cache at {root} has damaged files, never read as data: "
                               f"{storage.listed([f'{rel}: {p}' for rel, p in problems.items()])}. "
                               f"Rebuild them with {fix} (it redoes only those).", list(problems))
    return OpenCache(root, index)


def _empty(shape: tuple[int, ...], dtype: torch.dtype, pin: bool) -> torch.Tensor:
    """An uninitialised tensor; ``pin``: in page-locked memory (CUDA's caching host allocator
    reuses freed blocks), so the copy to the GPU is asynchronous and no second copy pins it."""
    return torch.empty(shape, dtype=dtype, pin_memory=pin)


def _read_rows(fd: int, offset: int, row_bytes: int, rows: np.ndarray, out: memoryview, take: int, path: Path) -> None:
    """Read ``take`` bytes from the start of each of ``rows`` (file rows of ``row_bytes`` after a
    header of ``offset`` bytes) into consecutive ``take``-byte slots of ``out``, with positioned
    reads straight into the destination (no memory map to fault in, no temporary array). Runs of
    consecutive full rows are one read each (a sequential loader reads a shard in few calls)."""
    if take == row_bytes and len(rows) > 1:
        starts = np.r_[0, np.flatnonzero(np.diff(rows) != 1) + 1]
        stops = np.r_[starts[1:], len(rows)]
    else:
        starts = np.arange(len(rows))
        stops = starts + 1
    for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
        want = (b - a) * take
        got = os.preadv(fd, [out[a * take:a * take + want]], offset + int(rows[a]) * row_bytes)
        if got != want:
            raise CacheCorrupt(f"{path}: short read ({got} of {want} bytes at row {int(rows[a])}); the shard is "
                               f"truncated. Rebuild it with the cache stage (it redoes only damaged files).")


class _Shards:
    """One process's open shard files of a kind: descriptor and header size of each."""

    def __init__(self, files: list[Path]):
        self.files, self.pid = files, os.getpid()
        self.offsets: list[int] = []
        self.fds: list[int] = []
        for f in files:
            self.offsets.append(int(np.load(f, mmap_mode="r").offset))  # the .npy header's size
            self.fds.append(os.open(f, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []

    def __del__(self) -> None:
        if os.getpid() == self.pid:
            self.close()


class CachedSplit(Dataset):
    """One split of a cache; ``dataset[list_of_indices]`` -> a whole batch dict:

    ``hidden_v`` (B, N_v, d_v), ``hidden_t`` (B, N_t, d_t) with N_t the batch's longest text,
    ``attention_mask`` (B, N_t) int64, ``labels`` (B,) int64 or (B, K) float32.
    Samples come in sorted index order (one pass over each shard). Shards are read with
    positioned reads straight into the batch's tensors (page-locked when ``pin_memory``), opened
    lazily in each process; :meth:`open` before gathering from several threads at once (the
    reads themselves are thread-safe and release the GIL).
    """

    def __init__(self, root: Path, split: str, index: dict):
        info, layout = index["splits"][split], index["layout"]
        self.root, self.split = Path(root), split
        self.shard_size = int(layout["shard_size"])
        self.n, self.n_images = int(info["n_samples"]), int(info["n_images"])
        d = self.root / split
        self.labels = np.load(d / "meta-labels.npy")
        self.image_index = np.load(d / "meta-image_index.npy")
        self.text_files = [d / f"text-{j:05d}.npy" for j in range(info["text_shards"])]
        self.mask_files = [d / f"mask-{j:05d}.npy" for j in range(info["text_shards"])]
        self.image_files = [d / f"image-{j:05d}.npy" for j in range(info["image_shards"])]
        L = int(layout["text_length"])
        self.text_length = L
        self.mask = (np.concatenate([np.load(f) for f in self.mask_files]) if self.mask_files
                     else np.zeros((0, L), np.uint8))
        # length to keep = 1 + position of the last attended token (robust to any padding side)
        any_tok = self.mask.any(axis=1)
        last = L - np.argmax(self.mask[:, ::-1], axis=1)
        self.lengths = np.where(any_tok, last, 1).astype(np.int64)
        self.image_shape = (int(layout["image_tokens"]), int(layout["image_width"]))
        self.text_width = int(layout["text_width"])
        self.torch_dtype = getattr(torch, layout["dtype"])
        self.itemsize = np.dtype(layout["dtype"]).itemsize
        self.pin_memory = False
        self._text: _Shards | None = None
        self._image: _Shards | None = None

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict:  # never pickle open files
        state = dict(self.__dict__)
        state["_text"] = state["_image"] = None
        return state

    def open(self) -> None:
        """Open the shard files in this process (once; a forked process opens its own)."""
        if self._text is None or self._text.pid != os.getpid():
            self._text, self._image = _Shards(self.text_files), _Shards(self.image_files)

    def __getitem__(self, indices) -> dict:
        self.open()
        idx = np.sort(np.asarray(indices, dtype=np.int64).reshape(-1))
        B, S = len(idx), self.shard_size
        n_t = int(self.lengths[idx].max()) if B else 1
        hidden_t = _empty((B, n_t, self.text_width), self.torch_dtype, self.pin_memory)
        out = memoryview(hidden_t.numpy().reshape(-1).view(np.uint8))
        text_row = self.text_length * self.text_width * self.itemsize
        self._gather(self._text, idx, S, text_row, n_t * self.text_width * self.itemsize, out)
        rows = self.image_index[idx]
        order = np.argsort(rows, kind="stable")  # read each image shard in file order
        hidden_v = _empty((B, *self.image_shape), self.torch_dtype, self.pin_memory)
        image_row = self.image_shape[0] * self.image_shape[1] * self.itemsize
        if B and np.all(order == np.arange(B)):
            self._gather(self._image, rows, S, image_row, image_row, memoryview(hidden_v.numpy().reshape(-1).view(np.uint8)))
        elif B:  # images not in sample order (shared images): read sorted, then place
            tmp = np.empty((B, *self.image_shape), dtype=hidden_v.numpy().dtype)
            self._gather(self._image, rows[order], S, image_row, image_row, memoryview(tmp.reshape(-1).view(np.uint8)))
            hidden_v.numpy()[order] = tmp
        mask, labels = torch.from_numpy(self.mask[idx, :n_t].astype(np.int64)), torch.from_numpy(self.labels[idx])
        if self.pin_memory:
            mask, labels = mask.pin_memory(), labels.pin_memory()
        return {"hidden_v": hidden_v, "hidden_t": hidden_t, "attention_mask": mask, "labels": labels}

    @staticmethod
    def _gather(shards: _Shards, rows: np.ndarray, S: int, row_bytes: int, take: int, out: memoryview) -> None:
        """Rows (sorted) of the kind's shards -> consecutive ``take``-byte slots of ``out``."""
        shard = rows // S
        bounds = np.flatnonzero(np.diff(shard)) + 1  # sorted: each shard's rows are contiguous
        for a, b in zip(np.r_[0, bounds].tolist(), np.r_[bounds, len(rows)].tolist(), strict=True):
            if a == b:
                continue
            s = int(shard[a])
            _read_rows(shards.fds[s], shards.offsets[s], row_bytes, rows[a:b] - s * S, out[a * take:b * take], take,
                       shards.files[s])
