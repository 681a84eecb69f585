"""Reading a cache: :func:`open_cache` checks it (fingerprint, index, completeness, files;
docs/design.md, "Trust") and :class:`CachedSplit` gathers whole batches from the memory-mapped
shards (one vectorised read per shard). The DataLoaders live in :mod:`mitp.training.loaders`.
"""

from __future__ import annotations

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


class CachedSplit(Dataset):
    """One split of a cache; ``dataset[list_of_indices]`` -> a whole batch dict:

    ``hidden_v`` (B, N_v, d_v), ``hidden_t`` (B, N_t, d_t) with N_t the batch's longest text,
    ``attention_mask`` (B, N_t) int64, ``labels`` (B,) int64 or (B, K) float32.
    Memory maps are opened lazily in each process (a DataLoader worker opens its own).
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
        self.mask = (np.concatenate([np.load(f) for f in self.mask_files]) if self.mask_files
                     else np.zeros((0, L), np.uint8))
        # length to keep = 1 + position of the last attended token (robust to any padding side)
        any_tok = self.mask.any(axis=1)
        last = L - np.argmax(self.mask[:, ::-1], axis=1)
        self.lengths = np.where(any_tok, last, 1).astype(np.int64)
        self.image_shape = (int(layout["image_tokens"]), int(layout["image_width"]))
        self.text_width = int(layout["text_width"])
        self.torch_dtype = getattr(torch, layout["dtype"])
        self._text: list[np.ndarray] | None = None
        self._image: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict:  # never pickle memory maps (that would copy the data)
        state = dict(self.__dict__)
        state["_text"] = state["_image"] = None
        return state

    def _open(self) -> None:
        if self._text is None:
            self._text = [np.load(f, mmap_mode="r") for f in self.text_files]
            self._image = [np.load(f, mmap_mode="r") for f in self.image_files]

    def __getitem__(self, indices) -> dict:
        self._open()
        idx = np.sort(np.asarray(indices, dtype=np.int64).reshape(-1))
        B, S = len(idx), self.shard_size
        n_t = int(self.lengths[idx].max()) if B else 1
        hidden_t = torch.empty((B, n_t, self.text_width), dtype=self.torch_dtype)
        ht = hidden_t.numpy()
        shard = idx // S
        bounds = np.flatnonzero(np.diff(shard)) + 1  # idx sorted: each shard's rows are contiguous
        for a, b in zip(np.r_[0, bounds], np.r_[bounds, B], strict=True):
            s = int(shard[a])
            ht[a:b] = self._text[s][idx[a:b] - s * S, :n_t]
        rows = self.image_index[idx]
        hidden_v = torch.empty((B, *self.image_shape), dtype=self.torch_dtype)
        hv = hidden_v.numpy()
        ishard = rows // S
        for s in np.unique(ishard):
            sel = np.flatnonzero(ishard == s)
            hv[sel] = self._image[int(s)][rows[sel] - int(s) * S]
        return {
            "hidden_v": hidden_v,
            "hidden_t": hidden_t,
            "attention_mask": torch.from_numpy(self.mask[idx, :n_t].astype(np.int64)),
            "labels": torch.from_numpy(self.labels[idx]),
        }
