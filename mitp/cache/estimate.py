"""How much disk a cache takes, printed before anything is written; and the free-space check.

Per unique image: N_v x d_v values; per sample: max_text_length x d_t values plus a uint8 mask
row; float16 is 2 bytes a value. For example UPMC-Food101 (90,704 pairs, one image each) with
ViT-B/16 at 224 px (N_v = 197, d_v = 768) and BERT-base at max_text_length 128 (d_t = 768) at
layer k: 90,704 x (197 x 768 + 128 x 768) x 2 B + masks = about 45.3 GB, whatever k is.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mitp.cache.errors import CacheSpaceError
from mitp.cache.storage import Unit, npy_bytes, shard_shape

SPACE_MARGIN = 64 << 20  # keep this much free beyond the estimate (index rewrites, temp files)


def shapes_of(backbones_or_configs, max_text_length: int, dtype: str) -> dict:
    """The layout's shape fields from the backbone configs (``Backbones``, or a ``(vision, text)``
    pair of models): ``image_tokens`` N_v (patches + CLS), ``image_width`` d_v, ``text_length``,
    ``text_width`` d_t, ``dtype``."""
    pair = backbones_or_configs
    vision, text = pair if isinstance(pair, tuple) else (pair.vision, pair.text)
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


def check_space(target: Path, needed: int) -> int:
    """Raise CacheSpaceError unless ``target``'s filesystem has ``needed`` bytes (+ a margin) free."""
    free = free_bytes(target)
    if needed + SPACE_MARGIN > free:
        raise CacheSpaceError(
            f"not enough disk for the feature cache: {human(needed)} still to write at {target}, but only "
            f"{human(free)} free on that filesystem. Free some space, or point cache.dir at a larger disk "
            f"(-S cache.dir=/path/with/space).")
    return free
