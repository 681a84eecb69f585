"""GPU rehearsal: every CUDA path of the project in one command, within 10 minutes on one GPU.

    python benchmarks/gpu_rehearsal.py [--cpu] [--keep DIR]

Steps, each timed, in a temp workspace (nothing under the repo's data/, metrics/ or mlflow.db),
after the stages that make a small synthetic set and its feature cache (on the GPU):

1. ``pytest -m cuda``: bf16 training step, cached features pinned and copied non-blocking, peak
   GPU memory logged (tests/cluster/test_cuda.py);
2. a short tiny-random training on CUDA (``pipeline.train``, 2 epochs of a small synthetic set):
   throughput and peak GPU memory;
3. a 4-trial sweep sharing the GPU at 0.25 per trial (``pipeline.sweep``): all four must
   complete; wall time and the largest peak memory of a trial;
4. the cache speed-up benchmark on CUDA at its smoke size (``benchmarks/cache_speedup.py``).

Without CUDA, step 1 runs (its tests skip, saying why) and steps 2-4 are skipped with a message;
``--cpu`` runs them on the CPU anyway, to rehearse the script itself (slow on a small machine).
The last line printed is one JSON object: what was measured, ``"cuda": true`` or ``false``.
Exit status 0 when every step that ran passed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMALL = {"data.synthetic.n_train": 512, "data.synthetic.n_val": 128, "data.synthetic.n_test": 128,
         "train.batch_size": 64}
SWEEP = ["-S", "sweep.space={model.prompt_length: {grid: [4, 8]}, model.hub_size: {grid: [32, 64]}}",
         "-S", "sweep.resources_per_trial.cpu=1", "-S", "sweep.max_concurrent_trials=4", "-S", "sweep.train.epochs=1"]
GPU_PER_TRIAL = 0.25  # four trials share one GPU


def workspace_overrides(root: Path) -> list[str]:
    """-S flags sending every output of the stages under ``root``, on the small synthetic set."""
    paths = {"data.root": root / "data", "data.locks_dir": root / "locks", "backbone.dir": root / "backbones",
             "cache.dir": root / "features", "train.checkpoint_dir": root / "runs",
             "ray.storage_path": root / "ray_results", "mlflow.tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}
    flags = []
    for key, value in {**paths, **SMALL}.items():
        flags += ["-S", f"{key}={value}"]
    return flags


def run(cmd: list[str], log: Path, timeout: float) -> tuple[int, float, str]:
    """Run ``cmd`` in the repo, output to ``log``; (exit status, seconds, tail of the output)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        # its own process group: on a timeout the stage and the local Ray it started stop together
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)  # the sweep driver shuts its Ray down on SIGINT
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = 124
    tail = log.read_text()[-1500:]
    return rc, time.perf_counter() - t0, tail


def last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def step_tests(ws: Path, out: dict) -> bool:
    rc, secs, tail = run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "tests/cluster/test_cuda.py"],
                         ws / "pytest.log", 300)
    summary = next((line for line in reversed(tail.splitlines()) if " in " in line and ("passed" in line or "skipped" in line)), tail[-200:])
    out["cuda_tests"] = {"exit": rc, "seconds": round(secs, 1), "summary": summary.strip("= ")}
    print(f"[1/4] pytest -m cuda: {summary.strip('= ')} ({secs:.0f} s)")
    return rc == 0


def setup(ws: Path, flags: list[str], device: str, out: dict) -> bool:
    """The small synthetic set generated and prepared, its feature cache built on ``device``."""
    t0 = time.perf_counter()
    for stage in ("download", "prepare", "cache"):
        extra = ["-S", f"train.device={device}"] if stage == "cache" else []
        rc, _, tail = run([sys.executable, "-m", f"pipeline.{stage}", "--dataset", "synthetic", *flags, *extra],
                          ws / f"{stage}.log", 300)
        if rc != 0:
            print(f"[setup] pipeline.{stage} FAILED (exit {rc}):\n{tail}")
            return False
    out["setup_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"[setup] synthetic set prepared and cached on {device} ({out['setup_seconds']:.0f} s)")
    return True


def step_train(ws: Path, flags: list[str], device: str, out: dict) -> bool:
    metrics = ws / "train.json"
    rc, secs, tail = run([sys.executable, "-m", "pipeline.train", "--dataset", "synthetic", *flags,
                          "-S", f"train.device={device}", "-S", "train.epochs=2", "--fresh",
                          "--metrics-out", str(metrics), "--history-out", str(ws / "train_history.json")],
                         ws / "train.log", 300)
    if rc != 0:
        print(f"[2/4] training FAILED (exit {rc}):\n{tail}")
        out["train"] = {"exit": rc}
        return False
    m = json.loads(metrics.read_text())
    out["train"] = {"seconds": round(secs, 1), **{k: m.get(k) for k in (
        "peak_memory_mb", "train_samples_per_s", "test_accuracy", "train_time_s")}}
    print(f"[2/4] training on {device}: {m.get('train_samples_per_s', 0):.0f} samples/s, peak memory "
          f"{m.get('peak_memory_mb', 0):.0f} MB, test accuracy {m.get('test_accuracy', 0):.3f} ({secs:.0f} s)")
    return True


def step_sweep(ws: Path, flags: list[str], device: str, out: dict) -> bool:
    table = ws / "sweep.csv"
    gpu = GPU_PER_TRIAL if device == "cuda" else 0
    rc, secs, tail = run([sys.executable, "-m", "pipeline.sweep", "--dataset", "synthetic", *flags, *SWEEP,
                          "-S", f"sweep.resources_per_trial.gpu={gpu}", "-S", f"train.device={device}", "--csv-out", str(table), "--best-out", str(ws / "best.json")],
                         ws / "sweep.log", 420)
    rows = list(csv.DictReader(open(table, newline=""))) if table.exists() else []
    done = [r for r in rows if r.get("status") == "COMPLETED"]
    peaks = [float(r["peak_memory_mb"]) for r in done if r.get("peak_memory_mb")]
    out["sweep"] = {"exit": rc, "seconds": round(secs, 1), "trials": len(rows), "completed": len(done),
                    "gpu_per_trial": gpu, "peak_memory_mb_max": max(peaks) if peaks else None,
                    "nodes": len({r.get("node_id") for r in rows})}
    ok = rc == 0 and len(done) == 4
    print(f"[3/4] 4-trial sweep at {gpu} GPU each: {len(done)}/4 completed, max peak memory "
          f"{out['sweep']['peak_memory_mb_max']} MB ({secs:.0f} s)" + ("" if ok else f" FAILED:\n{tail}"))
    return ok


def step_cache_bench(ws: Path, device: str, out: dict) -> bool:
    rc, secs, tail = run([sys.executable, "benchmarks/cache_speedup.py", "--smoke", "-S", f"train.device={device}",
                          "--workdir", str(ws / "cache_speedup")], ws / "cache_speedup.log", 300)
    result = last_json(tail) if rc == 0 else {}
    out["cache_speedup"] = {"exit": rc, "seconds": round(secs, 1), **{k: result.get(k) for k in (
        "measured_speedup", "predicted_speedup", "device", "preset")}}
    print(f"[4/4] cache speed-up (smoke) on {device}: measured {result.get('measured_speedup')}, "
          f"predicted {result.get('predicted_speedup')} ({secs:.0f} s)" + ("" if rc == 0 else f" FAILED:\n{tail}"))
    return rc == 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="without CUDA, run steps 2-4 on the CPU anyway")
    ap.add_argument("--keep", default=None, help="workspace folder to keep (default: a temp folder, removed)")
    return ap


def main() -> int:
    args = build_parser().parse_args()

    import torch

    cuda = torch.cuda.is_available()
    out: dict = {"cuda": cuda, "torch": torch.__version__,
                 "gpu": torch.cuda.get_device_name(0) if cuda else None}
    ws = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gpu_rehearsal-"))
    ws.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ok = True
    try:
        ok &= step_tests(ws, out)
        if cuda or args.cpu:
            device = "cuda" if cuda else "cpu"
            flags = workspace_overrides(ws)
            if setup(ws, flags, device, out):
                ok &= step_train(ws, flags, device, out)
                ok &= step_sweep(ws, flags, device, out)
            else:
                ok = False
            ok &= step_cache_bench(ws, device, out)
        else:
            print("[2-4/4] skipped: no CUDA device (torch.cuda.is_available() is False). Run this script on a "
                  "machine with an NVIDIA GPU, or pass --cpu to rehearse these steps on the CPU.")
            out["skipped"] = ["train", "sweep", "cache_speedup"]
    finally:
        if not args.keep:
            shutil.rmtree(ws, ignore_errors=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["ok"] = bool(ok)
    print(json.dumps(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
