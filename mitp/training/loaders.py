"""Loaders for training: DataLoaders over the raw manifests, reader threads over the feature cache.

Both paths yield the same batch dict (see ``mitp.data.dataset``); the cached one carries
``hidden_v``/``hidden_t`` and the layer ``k`` they enter, and the model starts there. The cache
side reads through :mod:`mitp.cache.reader` (which never imports this module).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from mitp.cache.reader import CachedSplit, open_cache
from mitp.config.params import Params
from mitp.data.dataset import RawDataset, TextImageCollator, cuda_workers
from mitp.data.manifests import SPLITS, read_labels, read_split


@dataclass
class Loaders:
    train: DataLoader | ReaderThreads
    val: DataLoader | ReaderThreads
    test: DataLoader | ReaderThreads
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


class ReaderThreads:
    """Whole batches of a cached split, gathered by ``threads`` threads ahead of the consumer, in
    the batch sampler's order; ``threads`` 0 gathers each batch when it is asked for.

    Threads, not worker processes: a batch is a few positioned reads (``os.preadv``, which release
    the GIL) straight into its tensors, so threads overlap them with each other and with the
    training step with nothing to hand over. A worker process must hand each batch over in fresh shared
    memory, and faulting in those pages held one worker to ~1 GB/s where one thread delivers
    ~5.5 GB/s on the same machine (``benchmarks/loader.py``; docs/results.md). On CUDA the batches
    are gathered straight into page-locked memory.

    Each pass first draws one number from torch's global generator, as a ``DataLoader``'s iterator
    does (its base seed), so a run's random stream, and so its numbers, are those of the
    ``DataLoader`` this replaces.
    """

    def __init__(self, split: CachedSplit, sampler: BatchSampler, threads: int, prefetch: int = 4):
        self.split, self.sampler, self.threads, self.prefetch = split, sampler, threads, prefetch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict]:
        torch.empty((), dtype=torch.int64).random_()  # the base-seed draw of a DataLoader's iterator
        batches = iter(self.sampler)
        self.split.open()  # once, before the threads share the files
        if self.threads == 0:
            yield from map(self.split.__getitem__, batches)
            return
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="mitp-cache-reader")
        pending: deque[Future] = deque(pool.submit(self.split.__getitem__, b)
                                       for b in itertools.islice(batches, self.threads * self.prefetch))
        try:
            while pending:
                batch = pending.popleft().result()
                pending.extend(pool.submit(self.split.__getitem__, b) for b in itertools.islice(batches, 1))
                yield batch
        finally:  # a consumer that stops early (max_steps_per_epoch) leaves no reads running
            pool.shutdown(wait=True, cancel_futures=True)


# Cached-loader threads on CUDA when ``train.num_workers`` is 0 (capped at the CPUs less one): at
# paper shapes (ViT-B/16 + BERT-base, k = 6, s = 8, M = 8, h = 384) a training step costs ~41 GFLOP
# per sample (mitp.models.flops), so an H100/H200 at 40% of its ~989 dense bf16 TFLOPs trains
# ~9,600 samples/s, ~3.9 GB/s of 400 KB samples; one reader thread delivers ~5.5 GB/s
# (benchmarks/loader.py on a 2-core VM: docs/results.md, "At the size of the real datasets"), so
# one would do; the second is headroom for page-cache misses and the page-locked copy.
CUDA_CACHE_THREADS = 2


def split_loader(split: CachedSplit, batch_size: int, shuffle: bool, threads: int,
                 device: torch.device) -> ReaderThreads:
    """Batches of ``split`` (shuffled for training), gathered by ``threads`` reader threads."""
    sampler = RandomSampler(range(len(split))) if shuffle else SequentialSampler(range(len(split)))
    split.pin_memory = torch.device(device).type == "cuda"
    return ReaderThreads(split, BatchSampler(sampler, batch_size, drop_last=False), threads)


def cached_loaders(params: Params, dataset: str, backbones, device: torch.device) -> Loaders:
    """The loaders ``train`` uses when ``cache.enabled``: whole batches gathered by
    :class:`~mitp.cache.reader.CachedSplit` (:class:`ReaderThreads`), starting at layer k. On CPU
    batches are gathered when the step asks for them (``train.num_workers`` reader threads if
    set); on CUDA reader threads always read ahead, into page-locked memory copied non-blocking."""
    device = torch.device(device)
    cache = open_cache(params, dataset, backbones)
    splits = {s: cache.split(s) for s in SPLITS}
    workers = params.train.num_workers or cuda_workers(device, CUDA_CACHE_THREADS)  # overlap the GPU's step
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
