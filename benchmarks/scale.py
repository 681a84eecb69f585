"""Every stage at the size of the real datasets: seconds, seconds per 1,000 samples, peak RSS, disk.

    python benchmarks/scale.py [--smoke] [--sizes 5650,56500] [--max-samples N] [--shape snli_ve|food101]
                               [--no-sweep] [--no-loader] [--loader-gb G] [--keep] [--dir DIR]

For each size (samples over train/val/test, 80/10/10) it generates the synthetic set in the shape
of a real one (``--shape snli_ve``: 18 hypotheses per image, SNLI-VE's ~565,000 pairs over ~32,000
images; ``food101``: one text per image, as UPMC-Food101 and MM-IMDB), then runs the stages as
the pipeline runs them, each ``python -m pipeline.<stage>`` in its own process with the
tiny-random backbones: ``generate`` (the synthetic download), ``prepare``, ``cache`` (the build),
``train`` (one epoch from the cache), ``evaluate`` (the test split, as ``pipeline.evaluate``
reads it: raw images and texts), ``sweep`` (two trials of one epoch on a local Ray; ``--no-sweep``
skips it) and ``report``. Per stage: wall seconds, seconds per 1,000 samples, the process's
peak RSS (``os.wait4``: the stage process and the children it waited for; Ray's workers are not
counted) and the disk its outputs take; for the cache, its own estimate
(:class:`mitp.cache.storage.Estimate`, as ``pipeline.cache --estimate-only`` prints it) beside the
bytes written. Then the cached loader at paper shapes (``benchmarks/loader.py``).

Default sizes: 5,650, 56,500, 565,000 (SNLI-VE); ``--max-samples`` drops the larger ones. The last
output line is one JSON object ``{"rows": [{"stage", "n_samples", "seconds", "per_1k_s",
"peak_rss_mb", "disk_mb", "disk_estimate_mb"}], "loader": [{"workers", "samples_per_s", "gb_per_s"}],
...}``. ``--smoke`` (600 samples, no sweep, a 0.2 GB loader cache) runs in well under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHAPES = {"snli_ve": 18, "food101": 1}  # texts per image
DEFAULT_SIZES = [5_650, 56_500, 565_000]
STAGES = ["generate", "prepare", "cache", "train", "evaluate", "sweep", "report"]


def disk_bytes(*paths: Path) -> int:
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return total


def run_stage(argv: list[str], log: Path, env: dict) -> tuple[float, float, str]:
    """Run one stage process; (seconds, peak RSS MB, stdout). Its rusage comes from wait4 (its own
    peak, not the largest of every child this process ever had)."""
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True,
                                env=env)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, out


def overrides(work: Path, n: int, per_image: int, threads: int) -> list[str]:
    n_val = n_test = max(1, n // 10)
    sets = {
        "data.root": work / "data", "data.locks_dir": work / "locks", "cache.dir": work / "features",
        "train.checkpoint_dir": work / "runs", "backbone.dir": work / "backbones", "report.dir": work / "reports",
        "mlflow.tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "ray.storage_path": work / "ray",
        "data.synthetic.n_train": n - n_val - n_test, "data.synthetic.n_val": n_val, "data.synthetic.n_test": n_test,
        "data.synthetic.hypotheses_per_image": per_image, "train.epochs": 1, "train.threads": threads,
        "mlflow.log_system_metrics": "false", "datasets": "[synthetic]",
        "sweep.space": json.dumps({"model.hub_size": {"grid": [16, 64]}}), "sweep.num_samples": 1,
        "sweep.max_concurrent_trials": 2, "ray.num_cpus": 2,
    }
    out = []
    for k, v in sets.items():
        out += ["-S", f"{k}={v}"]
    return out


def one_size(n: int, per_image: int, parent: Path, sweep: bool, threads: int, keep: bool) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix=f"scale-{n}-", dir=parent))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))},
           "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    S = overrides(work, n, per_image, threads)
    ds = ["--dataset", "synthetic"]
    metrics, models = work / "metrics" / "synthetic", work / "models"
    data = work / "data"
    rows = []
    try:
        run_stage(["-m", "pipeline.backbone", *S], work / "backbone.log", env)  # once per size, not measured
        plan = [
            ("generate", ["-m", "pipeline.download", *ds, *S], [data / "raw"]),
            ("prepare", ["-m", "pipeline.prepare", *ds, *S], [data / "prepared"]),
            ("cache", ["-m", "pipeline.cache", *ds, *S], [work / "features"]),
            ("train", ["-m", "pipeline.train", *ds, *S, "--metrics-out", str(metrics / "train_mitp.json"),
                       "--history-out", str(metrics / "train_history.json"), "--model-out", str(models / "mitp")],
             [work / "runs", models / "mitp"]),
            ("evaluate", ["-m", "pipeline.evaluate", *ds, *S, "--model", str(models / "mitp"),
                          "--metrics-out", str(work / "evaluations" / "test.json")], [work / "evaluations"]),
            ("sweep", ["-m", "pipeline.sweep", *ds, *S, "--csv-out", str(metrics / "sweep.csv"),
                       "--best-out", str(metrics / "sweep_best.json"), "--points-out", str(metrics / "sweep_points.json"),
                       "--quality-out", str(metrics / "sweep_quality.json")], [work / "ray"]),
            ("report", ["-m", "pipeline.report", *S, "--metrics-dir", str(work / "metrics")], [work / "reports"]),
        ]
        for stage, argv, outputs in plan:
            if stage == "sweep" and not sweep:
                continue
            estimate = None
            if stage == "cache":
                _, _, out = run_stage(["-c", ESTIMATE, *S], work / "estimate.log", env)
                estimate = int(out.strip().splitlines()[-1])
            seconds, rss, _ = run_stage(argv, work / f"{stage}.log", env)
            disk = disk_bytes(*outputs)
            row = {"stage": stage, "n_samples": n, "seconds": round(seconds, 2),
                   "per_1k_s": round(seconds / n * 1000, 3), "peak_rss_mb": round(rss, 1),
                   "disk_mb": round(disk / 1e6, 2), "disk_estimate_mb": None}
            if stage == "cache":
                written = disk_bytes(work / "features" / "synthetic")
                row["disk_estimate_mb"] = round(estimate / 1e6, 3)
                row["disk_mb"] = round(written / 1e6, 3)
                row["estimate_error"] = round(estimate / written - 1, 4)
            print(f"{n:>8,} {stage:<9} {seconds:8.1f} s {row['per_1k_s']:8.3f} s/1k {rss:8.0f} MB RSS "
                  f"{row['disk_mb']:9.1f} MB disk" + (f" (estimate {row['disk_estimate_mb']:.1f} MB)" if estimate else ""),
                  file=sys.stderr, flush=True)
            rows.append(row)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return rows


# the cache stage's own estimate (what `pipeline.cache --estimate-only` prints, in bytes)
ESTIMATE = """
import sys
from mitp.config.params import load_params
from pipeline.cache import estimate_only
print(estimate_only(load_params(overrides=sys.argv[2::2]), "synthetic").total)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="600 samples, no sweep, a 0.2 GB loader cache")
    p.add_argument("--sizes", default=None, help="comma-separated sample counts (default 5650,56500,565000)")
    p.add_argument("--max-samples", type=int, default=None, help="drop sizes above this")
    p.add_argument("--shape", choices=sorted(SHAPES), default="snli_ve", help="texts per image as in this set")
    p.add_argument("--no-sweep", action="store_true", help="skip the sweep stage (a local Ray start-up per size)")
    p.add_argument("--no-loader", action="store_true", help="skip the paper-shape loader benchmark")
    p.add_argument("--loader-gb", type=float, default=4.0)
    p.add_argument("--loader-seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=1, help="train.threads of the stages")
    p.add_argument("--dir", default=None, help="parent of the work folders (default: the temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work folders")
    return p


def main() -> int:
    args = build_parser().parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(DEFAULT_SIZES)
    if args.smoke:
        sizes, args.no_sweep, args.loader_gb, args.loader_seconds = [600], True, 0.2, 2.0
    if args.max_samples:
        sizes = [s for s in sizes if s <= args.max_samples]
    parent = Path(args.dir or tempfile.gettempdir())
    rows = []
    for n in sizes:
        rows += one_size(n, SHAPES[args.shape], parent, not args.no_sweep, args.threads, args.keep)
    loader = {"loader": []}
    if not args.no_loader:
        import importlib.util

        spec = importlib.util.spec_from_file_location("_loader_bench", REPO / "benchmarks" / "loader.py")
        loader_bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loader_bench)

        loader = loader_bench.run(args.loader_gb, [1, 2], args.loader_seconds, 64, args.dir)
    print(json.dumps({"rows": rows, "loader": loader["loader"], "shape": args.shape, "sizes": sizes,
                      "texts_per_image": SHAPES[args.shape], "cpus": os.cpu_count(),
                      "workers_for": loader.get("workers_for"), "loader_gb_on_disk": loader.get("gb_on_disk")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
