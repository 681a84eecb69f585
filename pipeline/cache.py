"""Stage ``cache``: run the frozen layers below k once and store their output for training.

    python -m pipeline.cache --dataset NAME [--verify] [--force] [--estimate-only] [-S key=value ...]

Writes ``data/features/<NAME>/`` (float16 shards, memory-mapped when read, ``index.json`` with the
fingerprint and every file's sha256). Prints the expected size on disk first and stops early if
the filesystem lacks the space (a disk that fills up during the build stops it with one line;
the shard being written is not kept); an image the manifests list that is missing stops it before
anything is written. Resumable: a killed run keeps its finished shards and the next run
continues where it stopped; damaged shards are rebuilt. Existing files are checked by size and
shard shape, the small ones by sha256; ``--verify`` hashes every file. ``--force`` rebuilds from
scratch, ``--estimate-only`` prints the size and exits (reads the manifests and the backbone
configs only). With ``cache.enabled: false`` there is nothing to do.
"""

from __future__ import annotations

from mitp.cache import build_cache
from mitp.cache.fingerprint import plan_split
from mitp.cache.storage import Estimate, free_bytes, human, shapes_of
from mitp.data.manifests import SPLITS
from mitp.models import backbones
from mitp.models.rules import check_cache_layer
from pipeline import cli


def estimate_only(params, dataset: str) -> Estimate:
    shapes = shapes_of(backbones.config_only(params.backbone), params.dataset(dataset).max_text_length, params.cache.dtype)
    est = Estimate(dataset, shapes)
    for split in SPLITS:
        plan = plan_split(params, dataset, split, "count")
        est.add(plan, plan.units(params.cache.shard_size))
    est.to_write = est.total
    return est


def main() -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--verify", action="store_true", help="also hash the large shards (always: sizes, shapes, small files)")
    p.add_argument("--force", action="store_true", help="rebuild from scratch")
    p.add_argument("--estimate-only", action="store_true", help="print the expected size on disk and exit")
    args = p.parse_args()
    params, dataset = cli.load(args)
    if not params.cache.enabled:
        params.features_dir(dataset).mkdir(parents=True, exist_ok=True)  # the DVC output exists
        print("cache.enabled is false: training reads raw images and text; nothing to build")
        return 0
    check_cache_layer(params)
    if args.estimate_only:
        est = estimate_only(params, dataset)
        print(est.describe())
        print(f"free at {params.features_dir(dataset)}: {human(free_bytes(params.features_dir(dataset)))}")
        return 0
    from mitp.training import runtime

    device, _ = runtime.setup(params.train)  # the features depend on threads and kernels too
    bb = backbones.load(params.backbone, device)
    print(f"caching {dataset}: hidden states entering layer {params.cache.layer} on {device}")
    summary = build_cache(params, dataset, bb, device, force=args.force, full_verify=args.verify, say=print)
    print(summary.describe())
    return 0


if __name__ == "__main__":
    cli.run(main)
