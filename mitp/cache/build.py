"""The cache build: preprocessing, tokenization and frozen layers 0..k-1, once per split.

:func:`build_cache` plans the work as *units* - per split one ``meta`` unit (labels, image
index, ids), image shards over the unique images and text shards over the samples - skips the
units a previous run finished (their files verify against the index), and computes the rest in
a fixed order, with batches that never cross a shard boundary. A shard's bytes therefore depend
only on its rows, never on where a run stopped: a killed build, resumed, ends with exactly the
files an uninterrupted build writes.

Images are stored once per unique image (first appearance order); samples refer to them by row
(``meta-image_index.npy``). Texts are padded to ``max_text_length``; the masks are stored, and
the loader trims each batch to its longest text. Computation runs in float32 under
``torch.inference_mode`` on the backbones' device (a GPU when present) and is stored as
``cache.dtype``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mitp.cache import storage
from mitp.cache.errors import CacheError, build_command
from mitp.cache.estimate import Estimate, check_space, human, shapes_of
from mitp.cache.fingerprint import describe_diff, diff, fingerprint, short_hash
from mitp.data.dataset import encode_labels
from mitp.data.manifests import SPLITS, read_labels, read_split
from mitp.model import MITP, MITPConfig
from mitp.sweep.space import check_cache_layer

log = logging.getLogger(__name__)

ShardHook = Callable[["Unit"], None]


@dataclass
class SplitPlan:
    split: str
    image_paths: list[Path]  # unique images, first-appearance order
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


@dataclass(frozen=True)
class Unit:
    """One piece of work that ends in complete files: ``meta``, an image shard or a text shard."""

    split: str
    kind: str  # "meta" | "image" | "text"
    shard: int
    start: int
    stop: int

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


def plan_split(params, dataset: str, split: str) -> SplitPlan:
    """Read a manifest; find its unique images (by normalised path) and encode its labels."""
    import pandas as pd

    manifest = read_split(params.prepared_dir(dataset), split)
    codes, spellings = pd.factorize(manifest.frame["image"].astype(str))  # first-appearance order
    resolved = [os.path.normpath(p if os.path.isabs(p) else manifest.root / p) for p in spellings]
    rows, paths = pd.factorize(pd.Series(resolved))  # two spellings of one file are one image
    image_index = np.asarray(rows, dtype=np.int64)[codes] if len(codes) else np.empty(0, np.int64)
    labels = encode_labels(manifest.frame["label"].tolist(), manifest.labels, manifest.multi_label).numpy()
    return SplitPlan(split, [Path(p) for p in paths], image_index, manifest.frame["text"].astype(str).tolist(),
                     labels, [str(x) for x in manifest.frame["id"].tolist()], manifest.multi_label)


def units_of(plan: SplitPlan, shard_size: int) -> list[Unit]:
    out = [Unit(plan.split, "meta", 0, 0, plan.n_samples)]
    for kind, n in (("image", plan.n_images), ("text", plan.n_samples)):
        for j, a in enumerate(range(0, n, shard_size)):
            out.append(Unit(plan.split, kind, j, a, min(n, a + shard_size)))
    return out


def unit_bytes(unit: Unit, plan: SplitPlan, shapes) -> int:
    rows = unit.stop - unit.start
    if unit.kind == "image":
        return storage.npy_bytes((rows, shapes.image_tokens, shapes.image_width), shapes.dtype)
    if unit.kind == "text":
        return (storage.npy_bytes((rows, shapes.text_length, shapes.text_width), shapes.dtype)
                + storage.npy_bytes((rows, shapes.text_length), np.uint8))
    return (storage.npy_bytes(plan.labels.shape, plan.labels.dtype) + storage.npy_bytes((rows,), np.int64)
            + sum(len(i) + 3 for i in plan.ids) + 2)


class ImageFiles(Dataset):
    """Unique image files -> pixel values, exactly as the raw path preprocesses them."""

    def __init__(self, paths: list[Path], processor):
        self.paths, self.processor = paths, processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as img:
            return self.processor(images=img.convert("RGB"), return_tensors="pt")["pixel_values"][0]


def decode_workers(device: torch.device) -> int:
    """Image decoding workers: none on CPU (the model needs the cores), several feeding a GPU."""
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class BuildSummary:
    root: Path
    fingerprint_hash: str
    estimate: Estimate
    reused_files: int = 0
    written_files: int = 0
    bytes_written: int = 0
    images: int = 0
    texts: int = 0
    image_seconds: float = 0.0
    text_seconds: float = 0.0
    seconds: float = 0.0
    rebuilt: list[str] = field(default_factory=list)  # files that failed verification and were redone

    def describe(self) -> str:
        if not self.written_files:
            return f"feature cache {self.root} is up to date (fingerprint {self.fingerprint_hash})"
        ips = self.images / max(self.image_seconds, 1e-9)
        tps = self.texts / max(self.text_seconds, 1e-9)
        return (f"feature cache {self.root} (fingerprint {self.fingerprint_hash}): wrote {self.written_files} files, "
                f"{human(self.bytes_written)}, kept {self.reused_files} from before; {self.images:,} images at "
                f"{ips:,.1f} img/s, {self.texts:,} texts at {tps:,.1f} texts/s; {self.seconds:.1f} s in all")


class _Builder:
    def __init__(self, params, dataset: str, backbones, device, root: Path, layout: dict, fp: dict,
                 plans: dict[str, SplitPlan], labels: list[str], done: dict[str, dict], memo: dict,
                 on_shard: ShardHook | None, progress: bool, summary: BuildSummary):
        self.params, self.dataset, self.bb, self.device = params, dataset, backbones, device
        self.root, self.layout, self.fp, self.plans, self.labels = root, layout, fp, plans, labels
        self.done, self.memo, self.on_shard, self.progress, self.summary = done, memo, on_shard, progress, summary
        self.k = fp["layer"]
        self.dtype = np.dtype(layout["dtype"])
        self.torch_dtype = getattr(torch, layout["dtype"])
        self.prefix = MITP(MITPConfig(kind="late_fusion", num_labels=1), backbones.vision, backbones.text)
        self.prefix.eval()

    # -- index ---------------------------------------------------------------------------------
    def index(self, complete: bool) -> dict:
        order = [f for plan in self.plans.values() for u in units_of(plan, self.layout["shard_size"]) for f in u.files]
        return {
            "format": self.fp["format"],
            "dataset": self.dataset,
            "fingerprint_hash": short_hash(self.fp),
            "fingerprint": self.fp,
            "complete": complete,
            "layout": self.layout,
            "labels": self.labels,
            "splits": {s: {"n_samples": p.n_samples, "n_images": p.n_images, "multi_label": p.multi_label,
                           "image_shards": len([u for u in units_of(p, self.layout["shard_size"]) if u.kind == "image"]),
                           "text_shards": len([u for u in units_of(p, self.layout["shard_size"]) if u.kind == "text"])}
                       for s, p in self.plans.items()},
            "files": {f: self.done[f] for f in order if f in self.done},
        }

    def _finish_unit(self, unit: Unit, records: dict[str, dict]) -> None:
        for rel, rec in records.items():
            self.done[rel] = rec
            self.memo[rel] = storage.memo_entry(self.root / rel, rec["sha256"], written=True)
            self.summary.written_files += 1
            self.summary.bytes_written += rec["bytes"]
        storage.write_index(self.root, self.index(complete=False))
        storage.write_memo(self.root, self.memo)
        if self.on_shard is not None:
            self.on_shard(unit)

    # -- units ---------------------------------------------------------------------------------
    def meta(self, unit: Unit) -> None:
        plan = self.plans[unit.split]
        labels, image_index, ids = unit.files
        records = {
            labels: storage.write_small(self.root, labels, storage.npy_payload(plan.labels)),
            image_index: storage.write_small(self.root, image_index, storage.npy_payload(plan.image_index)),
            ids: storage.write_small(self.root, ids, storage.json_payload(plan.ids)),
        }
        self._finish_unit(unit, records)

    def images(self, split: str, units: list[Unit]) -> None:
        if not units:
            return
        plan, B, L = self.plans[split], self.layout["batch_size"], self.layout
        batches = [(u, a, min(a + B, u.stop)) for u in units for a in range(u.start, u.stop, B)]
        workers = decode_workers(self.device)
        loader = DataLoader(ImageFiles(plan.image_paths, self.bb.image_processor),
                            batch_sampler=[list(range(a, b)) for _, a, b in batches], num_workers=workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        total = sum(u.stop - u.start for u in units)
        bar = tqdm(total=total, desc=f"cache {split} images", unit="img", disable=not self.progress)
        writer, t0 = None, time.perf_counter()
        try:
            for (unit, a, b), pixels in zip(batches, loader, strict=True):
                if writer is None:
                    writer = storage.ShardWriter(self.root, unit.files[0], (unit.stop - unit.start,
                                                 L["image_tokens"], L["image_width"]), self.dtype)
                hidden = self.prefix.vision_prefix(pixels.to(self.device, non_blocking=True), self.k)
                self._check_shape(hidden, (L["image_tokens"], L["image_width"]), "image")
                writer.array[a - unit.start:b - unit.start] = hidden.to(self.torch_dtype).cpu().numpy()
                bar.update(b - a)
                if b == unit.stop:
                    record = writer.commit()
                    writer = None
                    self._finish_unit(unit, {unit.files[0]: record})
        finally:
            if writer is not None:
                writer.abort()
            bar.close()
        self.summary.images += total
        self.summary.image_seconds += time.perf_counter() - t0

    def texts(self, split: str, units: list[Unit]) -> None:
        if not units:
            return
        plan, B, L = self.plans[split], self.layout["batch_size"], self.layout
        total = sum(u.stop - u.start for u in units)
        bar = tqdm(total=total, desc=f"cache {split} texts", unit="text", disable=not self.progress)
        t0 = time.perf_counter()
        writer = None
        try:
            for unit in units:
                tok = self.bb.tokenizer(plan.texts[unit.start:unit.stop], padding="max_length", truncation=True,
                                        max_length=L["text_length"], return_tensors="pt")
                ids, mask = tok["input_ids"], tok["attention_mask"]
                writer = storage.ShardWriter(self.root, unit.files[0], (unit.stop - unit.start, L["text_length"],
                                             L["text_width"]), self.dtype)
                for a in range(0, len(ids), B):
                    hidden = self.prefix.text_prefix(ids[a:a + B].to(self.device), mask[a:a + B].to(self.device), self.k)
                    self._check_shape(hidden, (L["text_length"], L["text_width"]), "text")
                    writer.array[a:a + len(hidden)] = hidden.to(self.torch_dtype).cpu().numpy()
                    bar.update(len(hidden))
                record = writer.commit()
                writer = None
                mask_rec = storage.write_small(self.root, unit.files[1], storage.npy_payload(mask.numpy().astype(np.uint8)))
                self._finish_unit(unit, {unit.files[0]: record, unit.files[1]: mask_rec})
        finally:
            if writer is not None:
                writer.abort()
            bar.close()
        self.summary.texts += total
        self.summary.text_seconds += time.perf_counter() - t0

    @staticmethod
    def _check_shape(hidden: torch.Tensor, want: tuple[int, int], what: str) -> None:
        if tuple(hidden.shape[1:]) != tuple(want):
            raise CacheError(f"cache: {what} hidden states have shape {tuple(hidden.shape[1:])}, expected {want} "
                             "from the backbone configs (image processor size vs the ViT's image_size?)")

    def run(self, pending: list[Unit]) -> None:
        with torch.inference_mode():
            for split in self.plans:
                mine = [u for u in pending if u.split == split]
                for u in mine:
                    if u.kind == "meta":
                        self.meta(u)
                self.images(split, [u for u in mine if u.kind == "image"])
                self.texts(split, [u for u in mine if u.kind == "text"])


def build_cache(params, dataset: str, backbones, device: torch.device | str | None = None, *,
                force: bool = False, full_verify: bool = False, on_shard: ShardHook | None = None,
                progress: bool = True, say: Callable[[str], None] = log.info) -> BuildSummary:
    """Build (or resume, or verify) the feature cache of ``dataset`` under ``params.features_dir``.

    * A cache with another fingerprint is replaced (``say`` names the fields that changed);
      ``force`` rebuilds from scratch.
    * Files a previous run finished are kept if they verify (size, and sha256 unless the
      verification memo vouches for them; ``full_verify`` always hashes); others are redone.
    * Before writing, ``say`` gets the expected size on disk; too little free space raises
      :class:`~mitp.cache.errors.CacheSpaceError` before anything is written.
    * ``on_shard(unit)`` runs after each unit is complete (tests inject a "kill" there).
    """
    t_start = time.perf_counter()
    check_cache_layer(params)
    device = torch.device(device) if device is not None else next(backbones.vision.parameters()).device
    root = params.features_dir(dataset)
    fp = fingerprint(params, dataset, backbones)
    labels = read_labels(params.prepared_dir(dataset))
    with storage.build_lock(root):
        try:
            existing = storage.read_index(root)
        except ValueError as exc:
            say(f"{exc}; rebuilding the cache")
            existing = None
            storage.wipe(root, SPLITS)
        if existing is not None and (force or existing["fingerprint"] != fp):
            if not force:
                changed = diff(existing["fingerprint"], fp, dataset)
                say(f"the cache at {root} was built for another configuration; rebuilding it:\n{describe_diff(changed)}")
            storage.wipe(root, SPLITS)
            existing = None
        shapes = shapes_of(backbones, params.dataset(dataset).max_text_length, params.cache.dtype)
        layout = dict(existing["layout"]) if existing else {
            "shard_size": params.cache.shard_size, "batch_size": params.cache.batch_size,
            "image_tokens": shapes.image_tokens, "image_width": shapes.image_width,
            "text_length": shapes.text_length, "text_width": shapes.text_width, "dtype": params.cache.dtype}
        if existing and (layout["shard_size"], layout["batch_size"]) != (params.cache.shard_size, params.cache.batch_size):
            say(f"resuming with the layout the cache was started with (shard_size {layout['shard_size']}, "
                f"batch_size {layout['batch_size']}); use --force to rebuild with the configured one")

        plans = {s: plan_split(params, dataset, s) for s in SPLITS}
        memo = storage.read_memo(root)
        done: dict[str, dict] = {}
        summary = BuildSummary(root, short_hash(fp), Estimate(dataset, shapes))
        for rel, rec in (existing or {}).get("files", {}).items():
            problem = storage.check_file(root, rel, rec, memo, full=full_verify)
            if problem is None:
                done[rel] = rec
            else:
                say(f"{rel}: {problem}; rebuilding it")
                summary.rebuilt.append(rel)
                memo.pop(rel, None)

        units = [u for p in plans.values() for u in units_of(p, layout["shard_size"])]
        pending = [u for u in units if not all(f in done for f in u.files)]
        for f in [f for u in pending for f in u.files if f in done]:  # half-done unit: redo whole
            done.pop(f)
        summary.reused_files = len(done)
        for split, plan in plans.items():
            size = sum(unit_bytes(u, plan, shapes) for u in units if u.split == split)
            summary.estimate.splits[split] = (plan.n_samples, plan.n_images, size)
        summary.estimate.to_write = sum(unit_bytes(u, plans[u.split], shapes) for u in pending)
        say(summary.estimate.describe())
        if pending:
            check_space(root, summary.estimate.to_write)
        n_tmp = storage.clean_temp_files(root)
        if n_tmp:
            say(f"removed {n_tmp} temp files an interrupted cache run left behind")

        builder = _Builder(params, dataset, backbones, device, root, layout, fp, plans, labels, done, memo,
                           on_shard, progress, summary)
        if pending or not (existing or {}).get("complete"):
            storage.write_index(root, builder.index(complete=False))
            builder.run(pending)
            storage.write_index(root, builder.index(complete=True))
            storage.write_memo(root, memo)
        else:
            storage.write_memo(root, memo)
    summary.seconds = time.perf_counter() - t_start
    return summary


def missing_message(params, dataset: str) -> str:
    return (f"no feature cache for dataset {dataset!r} at {params.features_dir(dataset)}: build it with "
            f"`{build_command(dataset)}` (with the same -S overrides as this run), or set cache.enabled=false "
            "to train from raw images and text")
