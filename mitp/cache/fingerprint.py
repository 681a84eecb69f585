"""What a cache is computed from - the manifests' splits and the image bytes - and its
fingerprint: everything that determines the cached bytes (list and rationale: docs/design.md).
Not in it: shard and batch size (layout, in the index) and the device the build ran on.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mitp.cache.errors import CacheInputError
from mitp.cache.storage import Unit, sha256_file, units_of
from mitp.config.dotted_keys import flatten
from mitp.data.dataset import encode_labels
from mitp.data.manifests import DIGEST_COLUMN, SPLITS, manifest_hash, read_split
from mitp.models.backbones import spec_from_config

CACHE_FORMAT = 1  # bump when the stored layout or the way the states are computed changes

_VISION_SHAPE = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "image_size", "patch_size", "num_channels")
_TEXT_SHAPE = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "vocab_size", "max_position_embeddings")


@dataclass
class SplitPlan:
    split: str
    image_paths: list[Path]  # unique images, first-appearance order
    image_sha256: list[str]  # content digest of each unique image, same order
    image_index: np.ndarray  # (n,) int64: sample -> row of its image
    texts: list[str]
    labels: np.ndarray  # (n,) int64 or (n, K) float32
    ids: list[str]
    multi_label: bool

    @property
    def n_samples(self) -> int:
        return len(self.texts)

    @property
    def n_images(self) -> int:
        return len(self.image_paths)

    def entry(self, shard_size: int) -> dict:
        """The split's entry in the index: counts the reader cross-checks against the manifests."""
        return {"n_samples": self.n_samples, "n_images": self.n_images, "multi_label": self.multi_label,
                "image_shards": -(-self.n_images // shard_size), "text_shards": -(-self.n_samples // shard_size)}

    def units(self, shard_size: int) -> list[Unit]:
        return units_of(self.split, self.n_samples, self.n_images, shard_size)


def _image_digest(path: Path, manifest: Path, stat_only: bool = False) -> str:
    """sha256 of an image file (or, ``stat_only``, just that it is there), naming it if it is not."""
    try:
        return str(path.stat().st_size) if stat_only else sha256_file(path)
    except OSError as exc:
        why = "is missing (deleted after prepare?)" if isinstance(exc, FileNotFoundError) else f"is unreadable ({exc.strerror})"
        raise CacheInputError(f"{path}: image listed in {manifest} {why}; restore it or re-run "
                              f"`python -m pipeline.prepare` for this dataset") from None


def plan_split(params, dataset: str, split: str, images: str = "build") -> SplitPlan:
    """A manifest's unique images (by normalised path) with their digests, and encoded labels.

    ``images``: ``"build"`` - every file must be there; ``"open"`` - digests only (prepare's
    ``image_sha256`` column when present, else hashed here); ``"count"`` - neither (an estimate).
    """
    import pandas as pd

    manifest = read_split(params.prepared_dir(dataset), split)
    frame, where = manifest.frame, manifest.root / f"{split}.parquet"
    codes, spellings = pd.factorize(frame["image"].astype(str))  # first-appearance order
    resolved = [os.path.normpath(p if os.path.isabs(p) else manifest.root / p) for p in spellings]
    rows, paths = pd.factorize(pd.Series(resolved))  # two spellings of one file are one image
    image_index = np.asarray(rows, dtype=np.int64)[codes] if len(codes) else np.empty(0, np.int64)
    paths = [Path(p) for p in paths]
    digests: list[str] = []
    if DIGEST_COLUMN in frame.columns and images != "count":
        recorded: dict[int, str] = {}
        for row, (i, digest) in enumerate(zip(image_index.tolist(), frame[DIGEST_COLUMN].astype(str), strict=True)):
            if recorded.setdefault(i, digest) != digest:
                raise CacheInputError(f"{where}: row {row} gives {paths[i]} another {DIGEST_COLUMN} than an earlier row")
        digests = [recorded[i] for i in range(len(paths))]
    if images == "build" or (images == "open" and not digests):
        with ThreadPoolExecutor(max_workers=8) as pool:  # hashing releases the GIL: overlap the reads
            found = list(pool.map(lambda p: _image_digest(p, where, stat_only=bool(digests)), paths))
        digests = digests or found
    labels = encode_labels(frame["label"].tolist(), manifest.labels, manifest.multi_label).numpy()
    return SplitPlan(split, paths, digests, image_index, frame["text"].astype(str).tolist(),
                     labels, [str(x) for x in frame["id"].tolist()], manifest.multi_label)


def plan_all(params, dataset: str, images: str = "build") -> dict[str, SplitPlan]:
    return {s: plan_split(params, dataset, s, images) for s in SPLITS}


def _plain(obj: Any) -> Any:
    """JSON round trip: tuples become lists, so a fingerprint compares equal to its stored copy."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def processor_settings(processor) -> dict:
    """The image processor's settings (resize, rescale, normalise), without bookkeeping keys."""
    raw = processor.to_dict() if hasattr(processor, "to_dict") else dict(vars(processor))
    return _plain({k: v for k, v in raw.items() if not k.startswith("_") and k != "processor_class"})


def tokenizer_settings(tokenizer) -> dict:
    kw = getattr(tokenizer, "init_kwargs", {}) or {}
    return _plain({
        "vocab_size": len(tokenizer),
        "do_lower_case": kw.get("do_lower_case"),
        "strip_accents": kw.get("strip_accents"),
        "padding_side": getattr(tokenizer, "padding_side", None),
        "truncation_side": getattr(tokenizer, "truncation_side", None),
    })


def images_hash(plans: dict[str, SplitPlan]) -> str:
    """sha256 over every split's image digests, in plan order (the paths are in the manifests)."""
    h = hashlib.sha256()
    for split in SPLITS:
        h.update(f"{split}:{','.join(plans[split].image_sha256)};".encode())
    return h.hexdigest()


def fingerprint(params, dataset: str, backbones, plans: dict[str, SplitPlan] | None = None) -> dict:
    """The fingerprint a cache of ``dataset`` must carry to serve ``params`` with ``backbones``
    (``plans`` from :func:`plan_all` saves hashing the images again)."""
    vcfg, tcfg = backbones.vision.config, backbones.text.config
    return _plain({
        "format": CACHE_FORMAT,
        "backbone": spec_from_config(params.backbone).fingerprint(),
        "backbone_resolved": backbones.spec.fingerprint(),  # commits fetched, image-processor backend
        "backbone_shapes": {
            "vision": {k: getattr(vcfg, k, None) for k in _VISION_SHAPE},
            "text": {k: getattr(tcfg, k, None) for k in _TEXT_SHAPE},
        },
        "layer": params.cache.layer,
        "max_text_length": params.dataset(dataset).max_text_length,
        "image_processor": processor_settings(backbones.image_processor),
        "tokenizer": tokenizer_settings(backbones.tokenizer),
        "manifest_hash": manifest_hash(params.prepared_dir(dataset)),
        "images_hash": images_hash(plans or plan_all(params, dataset, "open")),
        "dtype": params.cache.dtype,
    })


def short_hash(fp: dict) -> str:
    """12 hex digits of sha256 over the canonical JSON: the ``cache_fingerprint`` lineage tag."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]


def field_name(key: str, dataset: str) -> str:
    """A fingerprint key as the user knows it (the config key, where there is one)."""
    return {
        "layer": "cache.layer",
        "dtype": "cache.dtype",
        "max_text_length": f"data.{dataset}.max_text_length",
        "manifest_hash": f"manifest_hash (data/prepared/{dataset} changed: re-prepared data)",
        "images_hash": "images_hash (image files changed content since the cache was built)",
        "format": "format (the cache code's format version)",
    }.get(key, key)  # backbone.vision_revision, backbone.tiny_seed, ... are config keys already


def diff(stored: dict, expected: dict, dataset: str = "") -> list[tuple[str, Any, Any]]:
    """``[(field, value in cache, value needed)]`` for every leaf that differs."""
    a, b = flatten(stored), flatten(expected)
    order = {k: i for i, k in enumerate(b)}
    out = []
    for key in sorted(set(a) | set(b), key=lambda k: (order.get(k, len(b)), k)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            out.append((field_name(key, dataset), a.get(key, "<absent>"), b.get(key, "<absent>")))
    return out


def _short(value: Any) -> str:
    s = json.dumps(value, default=str) if not isinstance(value, str) else value
    return s if len(s) <= 70 else s[:67] + "..."


def describe_diff(fields: list[tuple[str, Any, Any]]) -> str:
    return "\n".join(f"  {name}: cache has {_short(old)}, this run needs {_short(new)}" for name, old, new in fields)
