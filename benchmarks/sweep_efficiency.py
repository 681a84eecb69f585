"""Sweep efficiency: N identical short trainings through the Ray Tune sweep vs the same trainings
one after another in a plain loop, side by side in one run.

    python benchmarks/sweep_efficiency.py [--smoke] [--trials N] [--epochs E] [--concurrency C]
                                          [--n-train K] [--cache | --no-cache]

The trainings: the synthetic set (``--n-train`` training examples, validation and test a fifth
of that each), tiny-random backbones, the default model; trial i trains with seed i, so the N
trainings cost the same. Both sides run exactly ``mitp.training.fit.fit`` with the same MLflow logging
(a run per training, in a temporary sqlite store) and the same per-training thread count: the
trial's CPU share (1 CPU, so ``torch.set_num_threads(1)``). With ``--cache`` (the default) the
feature cache is built first (not timed) and both sides train from it.

Definitions (C = concurrent trials = CPUs of the local Ray, each trial takes 1 CPU):

* ``serial_s`` (T_serial): wall time of a plain Python loop calling ``fit`` N times in this
  process, after the imports (nothing else runs then: Ray is started after the loop).
* ``sweep_s`` (T_sweep): wall time of ``mitp.sweep.runner.run_sweep`` for the same N trainings
  (a grid over the N seeds), on a local Ray with C CPUs started just before. It includes
  everything the sweep does around the trainings: validating every trial config, verifying the
  cache, the MLflow parent run, starting the trial processes (a fresh Python process per
  concurrent slot importing torch, transformers, MLflow and Ray Tune; Tune reuses it for the
  next trial), scheduling, per-epoch reports and checkpoint persistence, retries bookkeeping,
  collecting the results. Ray's own start-up is reported but not included: it happens once per
  cluster, not once per sweep. That is ``ray.init`` (``ray_init_s``) and then the seconds until
  Ray's processes are quiet (``ray_settle_s``: their CPU time grows by under 0.05 s in a second;
  ``ray.init`` returns while its agents are still starting, and on a small machine that start-up
  would otherwise slow the first trials).
* ``parallel_efficiency`` = T_serial / (C x T_sweep): the share of the C CPU slots the sweep
  spent on the trainings the loop does. 1.0 = perfect; C trainings sharing memory bandwidth,
  caches or a busy machine make it lower even with zero orchestration cost.
* ``overhead_s_per_trial`` = (C x T_sweep - T_serial) / N: CPU-slot seconds per trial spent on
  anything but those trainings: Ray + MLflow + process start-up, and any slowdown from running
  C trainings at once on shared CPUs.
* ``orchestration_s_per_trial`` = (C x T_sweep - sum of the trials' own wall time) / N: the
  slot time outside the trial functions (Ray scheduling and bookkeeping, trial process start-up
  and imports, the parent MLflow run, collecting results); a trial's own wall time
  (``trial_wall_s``) runs from after its imports to its last report.
* ``contention_slowdown``: mean training-loop time (``train_time_s``) of a trial in the sweep /
  in the loop; above 1 when the C trainings (or other load on the machine) compete for CPUs.
* ``pool_s`` (T_pool): the same N trainings on a plain ``multiprocessing`` pool of C processes
  (spawned, one thread each, each importing the stack once, no Ray, no parent run): what the
  machine allows for C trainings at once without any orchestration. ``hardware_efficiency`` =
  T_serial / (C x T_pool) is the ceiling the machine sets (on a machine that other jobs keep
  busy it is far below 1); ``sweep_vs_pool`` = T_pool / T_sweep is the efficiency of the sweep
  machinery itself (1.0: Ray Tune + MLflow cost nothing beyond a hand-written process pool), and
  ``ray_mlflow_s_per_trial`` = C x (T_sweep - T_pool) / N its cost per trial. ``--no-pool``
  skips this run.

Prints a breakdown and, as the last line, one JSON object with at least
``parallel_efficiency`` and ``overhead_s_per_trial``. ``--smoke``: 4 tiny trainings, about
two minutes on 2 cores. Other load on the machine skews both sides; the 1-minute load average
before and after is printed to show it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_params(root: Path, args, seed: int | None = None, sweep: bool = False):
    from mitp.config.params import load_params

    n = args.n_train
    overrides = {
        "data.root": str(root / "data"), "data.locks_dir": str(root / "locks"), "cache.dir": str(root / "features"),
        "backbone.dir": str(root / "backbones"), "train.checkpoint_dir": str(root / "runs"),
        "mlflow.tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "ray.storage_path": str(root / "ray_results"),
        "data.synthetic.n_train": n, "data.synthetic.n_val": max(32, n // 5), "data.synthetic.n_test": max(32, n // 5),
        "cache.enabled": args.cache, "cache.layer": 0, "model.interaction.start": 0,
        "train.epochs": args.epochs, "train.device": "cpu",
    }
    if seed is not None:
        overrides["seed"] = seed
    if sweep:
        overrides.update({"sweep.space": {"seed": {"grid": list(range(args.trials))}}, "sweep.train": {}, "sweep.num_samples": 1,
                          "sweep.max_concurrent_trials": args.concurrency, "sweep.max_failures": 0,
                          "sweep.resources_per_trial": {"cpu": 1, "gpu": 0}, "ray.num_cpus": args.concurrency,
                          "sweep.name": "bench"})
    return load_params(overrides=overrides)


_POOL_ROOT: Path | None = None
_POOL_ARGS = None


def _pool_init(root: str, args) -> None:
    global _POOL_ROOT, _POOL_ARGS
    import torch

    import mitp.training.fit  # noqa: F401  (each process pays its imports once, as a trial process does)

    torch.set_num_threads(1)
    _POOL_ROOT, _POOL_ARGS = Path(root), args


def _pool_train(seed: int) -> float:
    from mitp.training.fit import fit

    return fit(make_params(_POOL_ROOT, _POOL_ARGS, seed=seed), "synthetic", run_name=f"pool-{seed}").metrics["train_time_s"]


def load1() -> float:
    return os.getloadavg()[0]


def wait_until_quiet(timeout_s: float = 30.0, window_s: float = 1.0, busy_cpu_s: float = 0.05) -> float:
    """Wait until this process's children (after ``ray.init``: Ray's GCS, raylet, agents and log
    monitor) use less than ``busy_cpu_s`` CPU seconds in ``window_s``: ``ray.init`` returns while
    its agents are still importing and starting, which would otherwise be billed to the first
    trials. Returns the seconds waited (at most ``timeout_s``)."""
    import psutil

    def cpu_s() -> float:
        total = 0.0
        for proc in psutil.Process().children(recursive=True):
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.Error:  # ended meanwhile
                pass
        return total

    t0 = time.perf_counter()
    last = cpu_s()
    while time.perf_counter() - t0 < timeout_s:
        time.sleep(window_s)
        now = cpu_s()
        if now - last < busy_cpu_s:
            break
        last = now
    return time.perf_counter() - t0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="4 tiny trainings (about two minutes)")
    p.add_argument("--trials", type=int, default=None, help="N trainings (default 8; smoke 4)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per training (default 5; smoke 1)")
    p.add_argument("--n-train", type=int, default=None, help="training examples (default 3000; smoke 192)")
    p.add_argument("--concurrency", type=int, default=2, help="C: concurrent 1-CPU trials (default 2)")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True, help="train from the feature cache")
    p.add_argument("--keep", action="store_true", help="keep the work dir (data, MLflow store, Ray results)")
    p.add_argument("--pool", action=argparse.BooleanOptionalAction, default=True,
                   help="also time a plain multiprocessing pool (the machine's parallel ceiling)")
    return p


def main() -> int:
    args = build_parser().parse_args()
    args.trials = args.trials or (4 if args.smoke else 8)
    args.epochs = args.epochs or (1 if args.smoke else 5)
    args.n_train = args.n_train or (192 if args.smoke else 3000)
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("RAY_ADDRESS", None)

    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    from mitp.data.prepare import prepare_dataset
    from mitp.data.synthetic import generate
    from mitp.models import backbones
    from mitp.training.fit import fit

    root = Path(tempfile.mkdtemp(prefix="mitp-sweep-bench-"))
    print(f"sweep efficiency: {args.trials} trainings x {args.epochs} epochs, {args.n_train} training examples, "
          f"C = {args.concurrency} concurrent 1-CPU trials, cache {'on' if args.cache else 'off'}; work dir {root}",
          flush=True)
    base = make_params(root, args)
    generate(base)
    prepare_dataset(base, "synthetic")
    bb = backbones.load(base.backbone)
    if args.cache:
        from mitp.cache import build_cache

        build_cache(base, "synthetic", bb, progress=False, say=lambda m: None)

    # (a) the plain loop, one thread per training (the trial's CPU share)
    torch.set_num_threads(1)
    load_before = load1()
    fit(make_params(root, args, seed=10_000), "synthetic")  # warm-up (page cache, lazy imports); not timed
    serial_train = []
    t0 = time.perf_counter()
    for i in range(args.trials):
        result = fit(make_params(root, args, seed=i), "synthetic", run_name=f"serial-{i}")
        serial_train.append(result.metrics["train_time_s"])
    serial_s = time.perf_counter() - t0
    print(f"plain loop: {serial_s:.1f} s ({serial_s / args.trials:.1f} s per training)", flush=True)

    # (b) a plain process pool: C trainings at once, no orchestration
    pool_s = None
    if args.pool:
        import multiprocessing

        t0 = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(args.concurrency, initializer=_pool_init,
                                                       initargs=(str(root), args)) as pool:
            pool.map(_pool_train, list(range(args.trials)), chunksize=1)
        pool_s = time.perf_counter() - t0
        print(f"process pool: {pool_s:.1f} s on {args.concurrency} processes", flush=True)

    # (c) the sweep on a local Ray with C CPUs, started as the sweep stage starts it
    import ray

    from mitp.sweep.runner import connect_ray, run_sweep

    params = make_params(root, args, sweep=True)
    t0 = time.perf_counter()
    connect_ray(params.ray)
    ray_init_s = time.perf_counter() - t0
    ray_settle_s = wait_until_quiet()
    try:
        t0 = time.perf_counter()
        outcome = run_sweep(params, "synthetic", say=lambda m: None)
        sweep_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    load_after = load1()
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    if outcome.failed or len(outcome.rows) != args.trials:
        print(outcome.failure_message() if outcome.failed else f"{len(outcome.rows)} trials?", file=sys.stderr)
        return 1
    sweep_train = [float(r["train_time_s"]) for r in outcome.rows]
    trial_wall = [float(r["trial_wall_s"]) for r in outcome.rows]

    c, n = args.concurrency, args.trials
    efficiency = serial_s / (c * sweep_s)
    overhead = (c * sweep_s - serial_s) / n
    orchestration = (c * sweep_s - sum(trial_wall)) / n
    slowdown = statistics.mean(sweep_train) / statistics.mean(serial_train)
    print(f"sweep: {sweep_s:.1f} s wall on {c} slots (Ray start-up {ray_init_s:.1f} s + {ray_settle_s:.1f} s until "
          f"its processes were quiet, not counted); "
          f"ideal {serial_s / c:.1f} s")
    print(f"  mean training loop per trial: {statistics.mean(sweep_train):.2f} s in the sweep vs "
          f"{statistics.mean(serial_train):.2f} s in the loop (contention slowdown x{slowdown:.2f})")
    print(f"  mean trial wall time (fit + reports, in the trial process): {statistics.mean(trial_wall):.2f} s; "
          f"setup before the Tuner {outcome.timings.get('setup_s', 0):.1f} s, Tuner.fit {outcome.timings.get('tune_fit_s', 0):.1f} s")
    print(f"parallel efficiency {efficiency:.1%}  = T_serial / (C x T_sweep) = {serial_s:.1f} / ({c} x {sweep_s:.1f})")
    print(f"overhead per trial {overhead:.2f} s = (C x T_sweep - T_serial) / N; orchestration alone "
          f"{orchestration:.2f} s = (C x T_sweep - sum of trial wall times) / N")
    extra = {}
    if pool_s is not None:
        extra = {"pool_s": round(pool_s, 2), "hardware_efficiency": round(serial_s / (c * pool_s), 4),
                 "sweep_vs_pool": round(pool_s / sweep_s, 4),
                 "ray_mlflow_s_per_trial": round(c * (sweep_s - pool_s) / n, 3)}
        print(f"process pool {pool_s:.1f} s: hardware efficiency {extra['hardware_efficiency']:.1%} "
              f"= T_serial / (C x T_pool); sweep vs pool {extra['sweep_vs_pool']:.1%} = T_pool / T_sweep; "
              f"Ray + MLflow cost per trial {extra['ray_mlflow_s_per_trial']:.2f} s = C x (T_sweep - T_pool) / N")
    print(f"load average (1 min) before {load_before:.2f}, after {load_after:.2f} on {os.cpu_count()} CPUs")
    print(json.dumps({
        "parallel_efficiency": round(efficiency, 4), "overhead_s_per_trial": round(overhead, 3),
        "orchestration_s_per_trial": round(orchestration, 3),
        "serial_s": round(serial_s, 2), "sweep_s": round(sweep_s, 2), "ray_init_s": round(ray_init_s, 2),
        "ray_settle_s": round(ray_settle_s, 2),
        "trials": n, "concurrency": c, "epochs": args.epochs, "n_train": args.n_train, "cache": args.cache,
        "contention_slowdown": round(slowdown, 3), "mean_trial_wall_s": round(statistics.mean(trial_wall), 3),
        "load_avg_before": round(load_before, 2), "load_avg_after": round(load_after, 2), "smoke": args.smoke,
        **extra,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
