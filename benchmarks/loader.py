"""The cached loader at paper shapes: samples/s and GB/s that 0, 1, 2 reader threads deliver.

    python benchmarks/loader.py [--smoke] [--gb G] [--workers 1,2] [--seconds S] [--dir /tmp/...]
                                [--batch-size B] [--keep]

Writes a feature cache of random fp16 features with ViT-B/16 + BERT-base shapes (197 x 768 image
states per unique image, 64 x 768 text states + mask per sample, one image per sample as in
UPMC-Food101) through the cache's own shard writer (:func:`mitp.cache.storage.write_shard`, the
file names and layout of :mod:`mitp.cache.storage`), then reads it back with the real reader
(:class:`mitp.cache.reader.CachedSplit`) under the real training loader
(:func:`mitp.training.loaders.split_loader`: shuffled ``BatchSampler``, whole batches per
``__getitem__``, gathered ahead by reader threads; 0 threads: gathered when asked for, in the
consumer's thread). ``--gb`` sizes the cache on disk (default 4 GB: several shards, read through
the page cache; the benchmark checks free space first and deletes the folder after, unless
``--keep``). Each thread count reads for ``--seconds`` after one warm-up pass over a few batches.
With CUDA the batches are gathered into page-locked memory, as training does; without it they
are not (pinning needs CUDA).

The last output line is one JSON object: ``{"loader": [{"workers", "samples_per_s", "gb_per_s",
"batches_per_s"}], "bytes_per_sample", "gb_on_disk", "workers_for": {...}}`` with ``workers_for``
the reader threads a GPU needs at paper shapes (:func:`workers_needed`, from :mod:`mitp.models.flops`);
``workers`` counts reader threads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

IMAGE_TOKENS, WIDTH, TEXT_LENGTH = 197, 768, 64  # ViT-B/16 at 224 px; BERT-base, 64 tokens
SHARD = 4096  # cache.shard_size default


def bytes_per_sample(image_tokens: int = IMAGE_TOKENS, text_length: int = TEXT_LENGTH, width: int = WIDTH) -> int:
    """fp16 bytes one sample delivers (one image per sample: Food101's shape; SNLI-VE shares images)."""
    return 2 * width * (image_tokens + text_length) + text_length


def _tagged(block, first_row: int):
    """The noise block with each row's number in its first two values (every row differs)."""
    import numpy as np

    out = block.copy()
    rows = np.arange(first_row, first_row + len(out))
    out[:, 0, 0], out[:, 0, 1] = rows // 1024, rows % 1024
    return out


def write_cache(root: Path, n: int, shard_size: int = SHARD, seed: int = 0) -> dict:
    """A one-split (``train``) cache of ``n`` samples at paper shapes, in the cache's on-disk format;
    returns the index dict the reader takes."""
    import numpy as np

    from mitp.cache import storage

    layout = {"image_tokens": IMAGE_TOKENS, "image_width": WIDTH, "text_length": TEXT_LENGTH, "text_width": WIDTH,
              "dtype": "float16", "shard_size": shard_size, "batch_size": 64}
    rng = np.random.default_rng(seed)
    d = root / "train"
    d.mkdir(parents=True, exist_ok=True)
    units = storage.units_of("train", n, n, shard_size)
    block = 256
    noise = rng.standard_normal((block, max(IMAGE_TOKENS, TEXT_LENGTH), WIDTH), dtype=np.float32).astype(np.float16)
    files = {}
    for u in units:
        if u.kind == "meta":
            files[u.files[0]] = storage.write_file(root, u.files[0], storage.npy_payload(rng.integers(0, 101, n)))
            files[u.files[1]] = storage.write_file(root, u.files[1], storage.npy_payload(np.arange(n, dtype=np.int64)))
            files[u.files[2]] = storage.write_file(root, u.files[2], storage.json_payload([str(i) for i in range(n)]))
            continue
        shape = storage.shard_shape(u, layout)
        blocks = (_tagged(noise[:min(block, u.rows - a), :shape[1]], u.start + a) for a in range(0, u.rows, block))
        storage.write_shard(root / u.files[0], shape, np.float16, blocks)
        if u.kind == "text":
            lengths = rng.integers(8, TEXT_LENGTH + 1, u.rows)
            mask = (np.arange(TEXT_LENGTH)[None, :] < lengths[:, None]).astype(np.uint8)
            files[u.files[1]] = storage.write_file(root, u.files[1], storage.npy_payload(mask))
    info = {"n_samples": n, "n_images": n, "text_shards": -(-n // shard_size), "image_shards": -(-n // shard_size)}
    return {"layout": layout, "splits": {"train": info}, "files": files}


def measure(root: Path, index: dict, workers: int, batch_size: int, seconds: float) -> dict:
    """Batches from the training loader over the cache at ``root`` for ``seconds`` (after a warm-up)."""
    import torch

    from mitp.cache.reader import CachedSplit
    from mitp.training.loaders import split_loader

    split = CachedSplit(root, "train", index)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # pin_memory needs CUDA
    loader = split_loader(split, batch_size, True, workers, device)
    it = iter(loader)
    for _ in range(max(2, 2 * workers)):  # warm-up: threads started, first prefetches in
        next(it)
    n = nbytes = batches = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n += len(b["labels"])
        nbytes += sum(v.numel() * v.element_size() for v in b.values())
        batches += 1
    dt = time.perf_counter() - t0
    del it, loader
    return {"workers": workers, "samples_per_s": round(n / dt, 1), "gb_per_s": round(nbytes / dt / 1e9, 3),
            "batches_per_s": round(batches / dt, 2), "pinned": device.type == "cuda"}


def workers_needed(tflops: float, utilisation: float, samples_per_s_per_worker: float, start: int = 8,
                   cache_layer: int = 6) -> dict:
    """Reader threads a GPU of ``tflops`` bf16 peak at ``utilisation`` needs to train MITP from the
    cache at paper shapes (ViT-B/16 + BERT-base, layers ``start``..11 trained, the FLOP model of
    :mod:`mitp.models.flops`), given one thread's measured samples/s."""
    from mitp.models import flops

    vision = flops.vit_tower(12, WIDTH, 4 * WIDTH, 224, 16)
    text = flops.Tower(12, WIDTH, 4 * WIDTH, TEXT_LENGTH)
    per_sample = flops.step_flops(vision, text, start=start, interval=1, cache_layer=cache_layer, prompt_length=8,
                                  hub_size=384, num_labels=101)["cached"]
    gpu = tflops * 1e12 * utilisation / per_sample
    return {"tflops": tflops, "utilisation": utilisation, "train_gflops_per_sample": round(per_sample / 1e9, 2),
            "gpu_samples_per_s": round(gpu, 1), "workers": max(1, -(-int(gpu) // max(1, int(samples_per_s_per_worker))))}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="a ~0.2 GB cache, 2 s per thread count")
    p.add_argument("--gb", type=float, default=4.0, help="size of the cache on disk (GB)")
    p.add_argument("--workers", default="1,2", help="reader-thread counts to measure (0: gathered when asked for)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dir", default=None, help="parent folder of the cache (default: the temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the cache folder")
    return p


def run(gb: float, workers: list[int], seconds: float, batch_size: int, parent: str | None = None,
        keep: bool = False) -> dict:
    per = bytes_per_sample()
    n = max(256, int(gb * 1e9 / per))
    parent_dir = Path(parent or tempfile.gettempdir())
    free = shutil.disk_usage(parent_dir).free
    if n * per + (2 << 30) > free:
        raise SystemExit(f"loader benchmark: {n * per / 1e9:.1f} GB wanted at {parent_dir}, {free / 1e9:.1f} GB free")
    root = Path(tempfile.mkdtemp(prefix="mitp-loader-", dir=parent_dir)) / "cache"
    try:
        t0 = time.perf_counter()
        index = write_cache(root, n)
        write_s = time.perf_counter() - t0
        on_disk = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        rows = [measure(root, index, w, batch_size, seconds) for w in workers]
    finally:
        if not keep:
            shutil.rmtree(root.parent, ignore_errors=True)
    one = next((r["samples_per_s"] for r in rows if r["workers"] == 1), rows[0]["samples_per_s"])
    return {"loader": rows, "n_samples": n, "bytes_per_sample": per, "gb_on_disk": round(on_disk / 1e9, 3),
            "write_s": round(write_s, 1), "batch_size": batch_size, "cpus": os.cpu_count(),
            "workers_for": {name: workers_needed(tf, 0.4, one) for name, tf in (("H100", 989.0), ("H200", 989.0),
                                                                                 ("A100", 312.0))}}


def main() -> int:
    args = build_parser().parse_args()
    if args.smoke:
        args.gb, args.seconds = 0.2, 2.0
    result = run(args.gb, [int(w) for w in args.workers.split(",")], args.seconds, args.batch_size, args.dir, args.keep)
    for r in result["loader"]:
        print(f"reader threads {r['workers']}: {r['samples_per_s']:,.0f} samples/s, {r['gb_per_s']:.2f} GB/s", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
