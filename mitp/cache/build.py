"""The cache build: preprocessing, tokenization and frozen layers 0..k-1, once per split.

Work is a fixed list of units (:class:`~mitp.cache.storage.Unit`); finished units are kept,
batches never cross a shard, so a resumed build writes the same bytes as an uninterrupted one
(docs/design.md, "Resume"). Each image's bytes are checked against its planned digest.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mitp.atomic import atomic_path, write_json
from mitp.cache import storage
from mitp.cache.errors import CacheError, CacheInputError
from mitp.cache.fingerprint import SplitPlan, describe_diff, diff, fingerprint, plan_all, short_hash
from mitp.cache.storage import Estimate, check_space, human, shapes_of, unit_bytes
from mitp.data.dataset import cuda_workers, pixel_values
from mitp.data.manifests import SPLITS, read_labels
from mitp.models.mitp import MITP, MITPConfig
from mitp.models.rules import check_cache_layer

log = logging.getLogger(__name__)

ShardHook = Callable[[storage.Unit], None]
UNITS = {"meta": "row", "image": "img", "text": "text"}  # progress units


class ImageFiles(Dataset):
    """Unique image files -> (3, H, W) pixels as the raw path preprocesses them, bytes checked
    against their digest; a bad file is returned as its CacheInputError (a worker's traceback
    would bury the message)."""

    def __init__(self, paths: list[Path], digests: list[str], processor):
        self.paths, self.digests, self.processor = paths, digests, processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor | CacheInputError:
        path = self.paths[i]
        try:
            data = path.read_bytes()
        except OSError as exc:
            return CacheInputError(f"{path}: image disappeared during the cache build ({exc.strerror})")
        if hashlib.sha256(data).hexdigest() != self.digests[i]:
            return CacheInputError(f"{path}: the image's bytes no longer match the digest the cache was planned "
                                  "with (changed during the build, or since prepare recorded it); re-run prepare "
                                  "if the images were replaced, then the cache stage")
        return pixel_values(io.BytesIO(data), self.processor)


def stack_or_error(items: list) -> torch.Tensor | CacheInputError:
    """(B, 3, H, W) pixels, or the first item's error."""
    return next((x for x in items if isinstance(x, CacheInputError)), None) or torch.stack(items)


def _pixels(loader: DataLoader) -> Iterator[torch.Tensor]:
    for batch in loader:
        if isinstance(batch, CacheInputError):
            raise batch
        yield batch


@dataclass
class BuildSummary:
    root: Path
    fingerprint_hash: str
    estimate: Estimate
    reused_files: int = 0
    written_files: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    rebuilt: list[str] = field(default_factory=list)  # files that failed their check and were redone
    work: dict[str, list[float]] = field(default_factory=lambda: {"image": [0, 0.0], "text": [0, 0.0]})  # rows, s

    def describe(self) -> str:
        if not self.written_files:
            return f"feature cache {self.root} is up to date (fingerprint {self.fingerprint_hash})"
        rates = ", ".join(f"{n:,} {k}s at {n / max(t, 1e-9):,.1f} {UNITS[k]}/s" for k, (n, t) in self.work.items())
        return (f"feature cache {self.root} (fingerprint {self.fingerprint_hash}): wrote {self.written_files} files, "
                f"{human(self.bytes_written)}, kept {self.reused_files} from before; {rates}; {self.seconds:.1f} s in all")


def make_index(dataset: str, fp: dict, layout: dict, labels: list[str], plans: dict[str, SplitPlan],
               done: dict[str, dict], complete: bool) -> dict:
    """The index: everything the reader cross-checks (counts, files, records) in build order."""
    order = [f for plan in plans.values() for u in plan.units(layout["shard_size"]) for f in u.files]
    return {"format": fp["format"], "dataset": dataset, "fingerprint_hash": short_hash(fp), "fingerprint": fp,
            "complete": complete, "layout": layout, "labels": labels,
            "splits": {s: p.entry(layout["shard_size"]) for s, p in plans.items()},
            "files": {f: done[f] for f in order if f in done}}


class _Builder:
    def __init__(self, backbones, device, root: Path, layout: dict, k: int, plans: dict[str, SplitPlan],
                 write_index: Callable[[bool], None], done: dict[str, dict], on_shard: ShardHook | None,
                 progress: bool, summary: BuildSummary):
        self.bb, self.device, self.root, self.layout, self.k, self.plans = backbones, device, root, layout, k, plans
        self.write_index, self.done, self.on_shard = write_index, done, on_shard
        self.progress, self.summary = progress, summary
        self.dtype = np.dtype(layout["dtype"])
        self.torch_dtype = getattr(torch, layout["dtype"])
        self.prefix = MITP(MITPConfig(kind="late_fusion", num_labels=1), backbones.vision, backbones.text).eval()

    def _finish(self, unit: storage.Unit, records: dict[str, dict]) -> None:
        for rel, rec in records.items():
            self.done[rel] = rec
            self.summary.written_files += 1
            self.summary.bytes_written += rec["bytes"]
        self.write_index(False)
        if self.on_shard is not None:
            self.on_shard(unit)

    def _shard(self, unit: storage.Unit, blocks: Iterator[np.ndarray], bar) -> dict:
        """Fill ``unit``'s float shard from ``blocks`` of rows (counted on ``bar``); returns its record.
        Written with ordinary writes into reserved space, never through a memory map of a sparse
        file (a full disk would kill the process with SIGBUS): :func:`storage.write_shard`."""
        try:
            with atomic_path(self.root / unit.files[0]) as tmp:
                storage.write_shard(tmp, storage.shard_shape(unit, self.layout), self.dtype, blocks, bar.update)
                return storage.seal(tmp)
        except OSError as exc:
            if exc.errno in storage.DISK_FULL:
                raise storage.disk_full(self.root, unit.files[0], exc) from None
            raise

    def _states(self, hidden: torch.Tensor, what: str) -> np.ndarray:
        L = self.layout
        want = (L["image_tokens"], L["image_width"]) if what == "image" else (L["text_length"], L["text_width"])
        if tuple(hidden.shape[1:]) != want:
            raise CacheError(f"cache: {what} hidden states have shape {tuple(hidden.shape[1:])}, expected {want} "
                             "from the backbone configs (image processor size vs the ViT's image_size?)")
        return hidden.to(self.torch_dtype).cpu().numpy()

    def meta(self, plan: SplitPlan, units: list[storage.Unit], bar) -> None:
        payloads = (storage.npy_payload(plan.labels), storage.npy_payload(plan.image_index),
                    storage.json_payload(plan.ids))
        self._finish(units[0], {rel: storage.write_file(self.root, rel, data)
                                for rel, data in zip(units[0].files, payloads, strict=True)})

    def image(self, plan: SplitPlan, units: list[storage.Unit], bar) -> None:
        B = self.layout["batch_size"]
        batches = [list(range(a, min(a + B, u.stop))) for u in units for a in range(u.start, u.stop, B)]
        loader = DataLoader(ImageFiles(plan.image_paths, plan.image_sha256, self.bb.image_processor),
                            batch_sampler=batches, collate_fn=stack_or_error, num_workers=cuda_workers(self.device, 8),
                            pin_memory=self.device.type == "cuda")
        states = (self._states(self.prefix.vision_prefix(px.to(self.device, non_blocking=True), self.k), "image")
                  for px in _pixels(loader))
        for unit in units:  # batches never cross a shard: each shard takes its own number of them
            record = self._shard(unit, itertools.islice(states, -(-unit.rows // B)), bar)
            self._finish(unit, {unit.files[0]: record})

    def text(self, plan: SplitPlan, units: list[storage.Unit], bar) -> None:
        B, L = self.layout["batch_size"], self.layout["text_length"]
        for unit in units:
            tok = self.bb.tokenizer(plan.texts[unit.start:unit.stop], padding="max_length", truncation=True,
                                    max_length=L, return_tensors="pt")
            ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
            blocks = (self._states(self.prefix.text_prefix(ids[a:a + B], mask[a:a + B], self.k), "text")
                      for a in range(0, unit.rows, B))
            record = self._shard(unit, blocks, bar)
            mask_rec = storage.write_file(self.root, unit.files[1], storage.npy_payload(mask.cpu().numpy().astype(np.uint8)))
            self._finish(unit, {unit.files[0]: record, unit.files[1]: mask_rec})

    def run(self, pending: list[storage.Unit]) -> None:
        with torch.inference_mode():
            for split, plan in self.plans.items():
                for kind in ("meta", "image", "text"):
                    units = [u for u in pending if u.split == split and u.kind == kind]
                    if not units:
                        continue
                    rows, t0 = sum(u.rows for u in units), time.perf_counter()
                    with tqdm(total=rows, desc=f"cache {split} {kind}s", unit=UNITS[kind],
                              disable=not self.progress or kind == "meta") as bar:
                        getattr(self, kind)(plan, units, bar)
                    if kind != "meta":
                        self.summary.work[kind][0] += rows
                        self.summary.work[kind][1] += time.perf_counter() - t0


def build_cache(params, dataset: str, backbones, device: torch.device | str | None = None, *,
                force: bool = False, full_verify: bool = False, on_shard: ShardHook | None = None,
                progress: bool = True, say: Callable[[str], None] = log.info) -> BuildSummary:
    """Build, resume or verify the feature cache of ``dataset`` under ``params.features_dir``.

    Another fingerprint (or ``force``) rebuilds from scratch; finished files that check are
    kept (``full_verify``: hash them all). A missing image (CacheInputError) or too little disk
    (CacheSpaceError) stops it before anything is written. ``on_shard(unit)`` runs after each unit.
    """
    t_start = time.perf_counter()
    check_cache_layer(params)
    device = torch.device(device) if device is not None else next(backbones.vision.parameters()).device
    root = params.features_dir(dataset)
    plans = plan_all(params, dataset)
    fp = fingerprint(params, dataset, backbones, plans)
    labels = read_labels(params.prepared_dir(dataset))
    with storage.build_lock(root):
        shapes = shapes_of(backbones, params.dataset(dataset).max_text_length, params.cache.dtype)
        try:
            existing, why = storage.read_index(root), None
        except ValueError as exc:
            existing, why = {}, str(exc)
        if existing and force:
            why = "--force"
        elif existing and existing["fingerprint"] != fp:
            why = f"built for another configuration:\n{describe_diff(diff(existing['fingerprint'], fp, dataset))}"
        elif existing and (problems := storage.index_problems(existing, plans, labels, shapes)):
            why = f"{root / storage.INDEX}: {storage.listed(problems)}"  # edited: no record trusted
        if why is not None:
            say(f"rebuilding the cache at {root}: {why}")
            storage.wipe(root, SPLITS)
            existing = None
        configured = {"shard_size": params.cache.shard_size, "batch_size": params.cache.batch_size}
        layout = dict(existing["layout"]) if existing else {**configured, **shapes}
        if existing and {k: layout[k] for k in configured} != configured:
            say(f"resuming with the layout the cache was started with (shard_size {layout['shard_size']}, "
                f"batch_size {layout['batch_size']}); use --force to rebuild with the configured one")

        units = [u for p in plans.values() for u in p.units(layout["shard_size"])]
        recorded = (existing or {}).get("files", {})
        summary = BuildSummary(root, short_hash(fp), Estimate(dataset, layout))
        problems = storage.file_problems(root, units, recorded, layout, full_verify)
        for rel, problem in problems.items():
            say(f"{rel}: {problem}; rebuilding it")
        summary.rebuilt = list(problems)
        # a unit is kept only if all its files check: a half-done one is redone whole
        kept = {u: all(f in recorded and f not in problems for f in u.files) for u in units}
        done = {f: recorded[f] for u in units if kept[u] for f in u.files}
        pending = [u for u in units if not kept[u]]
        summary.reused_files = len(done)
        for plan in plans.values():
            summary.estimate.add(plan, plan.units(layout["shard_size"]))
        summary.estimate.to_write = sum(unit_bytes(u, plans[u.split], layout) for u in pending)
        say(summary.estimate.describe())
        if pending:
            check_space(root, summary.estimate.to_write)
        if n_tmp := storage.clean_temp_files(root):
            say(f"removed {n_tmp} temp files an interrupted cache run left behind")

        def write_index(complete: bool) -> None:
            write_json(root / storage.INDEX, make_index(dataset, fp, layout, labels, plans, done, complete))

        if pending or existing != make_index(dataset, fp, layout, labels, plans, done, True):  # (an edited index too)
            try:
                write_index(False)
                _Builder(backbones, device, root, layout, fp["layer"], plans, write_index, done, on_shard, progress,
                         summary).run(pending)
                write_index(True)
            except OSError as exc:  # a temp file is removed by atomic_path; the index says incomplete
                if exc.errno in storage.DISK_FULL:
                    raise storage.disk_full(root, Path(exc.filename).name if exc.filename else "a small file", exc) from None
                raise
    summary.seconds = time.perf_counter() - t_start
    return summary
