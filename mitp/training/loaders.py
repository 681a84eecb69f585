"""DataLoaders for training: from the raw manifests, or from the feature cache.

Both paths yield the same batch dict (see ``mitp.data.dataset``); the cached one carries
``hidden_v``/``hidden_t`` and the layer ``k`` they enter, and the model starts there. The cache
side reads through :mod:`mitp.cache.reader` (which never imports this module).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from mitp.cache.reader import CachedSplit, open_cache
from mitp.config.params import Params
from mitp.data.dataset import RawDataset, TextImageCollator, cuda_workers
from mitp.data.manifests import SPLITS, read_labels, read_split


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    test: DataLoader
    labels: list[str]
    multi_label: bool
    start_layer: int  # k: the aligned layer the batches' hidden states enter (0 for raw inputs)
    source: str  # "raw" or "cache"
    info: dict = field(default_factory=dict)  # e.g. the cache fingerprint, for lineage tags


def raw_loaders(params: Params, dataset: str, backbones, device: torch.device) -> Loaders:
    """Images decoded and texts tokenized on the fly (the uncached baseline)."""
    prepared = params.prepared_dir(dataset)
    labels = read_labels(prepared)
    manifests = {s: read_split(prepared, s) for s in SPLITS}
    multi = params.dataset(dataset).task == "multi_label"
    collate = TextImageCollator(backbones.tokenizer, params.dataset(dataset).max_text_length)
    t = params.train
    common = dict(collate_fn=collate, num_workers=t.num_workers, pin_memory=device.type == "cuda",
                  persistent_workers=t.num_workers > 0)
    make = {s: DataLoader(RawDataset(manifests[s], backbones.image_processor),
                          batch_size=t.batch_size if s == "train" else t.eval_batch_size,
                          shuffle=s == "train", drop_last=False, **common) for s in SPLITS}
    return Loaders(make["train"], make["val"], make["test"], labels, multi, 0, "raw")


# Cached-loader workers on CUDA when ``train.num_workers`` is 0 (capped at the CPUs less one): at
# paper shapes (ViT-B/16 + BERT-base, k = 6, s = 8, M = 8, h = 384) a training step costs ~41 GFLOP
# per sample (mitp.models.flops), so an H100/H200 at 40% of its ~989 dense bf16 TFLOPs trains
# ~9,600 samples/s, and one worker delivers ~2,600 samples/s of 400 KB each (benchmarks/loader.py,
# measured on a 2-core VM: docs/results.md, "At the size of the real datasets") -> 4 workers.
CUDA_CACHE_WORKERS = 4


def split_loader(split: CachedSplit, batch_size: int, shuffle: bool, workers: int, device: torch.device) -> DataLoader:
    sampler = RandomSampler(range(len(split))) if shuffle else SequentialSampler(range(len(split)))
    extra = dict(persistent_workers=True, prefetch_factor=4) if workers > 0 else {}
    return DataLoader(split, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None,
                      num_workers=workers, pin_memory=device.type == "cuda", **extra)


def cached_loaders(params: Params, dataset: str, backbones, device: torch.device) -> Loaders:
    """The loaders ``train`` uses when ``cache.enabled``: whole batches gathered by
    :class:`~mitp.cache.reader.CachedSplit` under a ``BatchSampler`` (``batch_size=None``), starting
    at layer k. On CPU batches are gathered in the main process (``train.num_workers`` workers if
    set); on CUDA there are always workers, batches are pinned and copied non-blocking."""
    device = torch.device(device)
    cache = open_cache(params, dataset, backbones)
    splits = {s: cache.split(s) for s in SPLITS}
    workers = params.train.num_workers or cuda_workers(device, CUDA_CACHE_WORKERS)  # overlap the GPU's step
    t = params.train
    made = {s: split_loader(splits[s], t.batch_size if s == "train" else t.eval_batch_size, s == "train",
                            workers, device) for s in SPLITS}
    multi = params.dataset(dataset).task == "multi_label"
    return Loaders(made["train"], made["val"], made["test"], cache.labels, multi,
                   cache.layer, "cache", info={"cache_fingerprint": cache.fingerprint_hash})


def build(params: Params, dataset: str, backbones, device: torch.device) -> Loaders:
    """The loaders ``train`` uses: the feature cache when ``cache.enabled``, else raw inputs."""
    if params.cache.enabled:
        return cached_loaders(params, dataset, backbones, device)
    return raw_loaders(params, dataset, backbones, device)
