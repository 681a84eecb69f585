"""What ``train.cpu_kernels: portable`` costs, and what it buys: the demo ``mitp`` training step
with this CPU's fastest kernels against the portable ones, in alternating fresh processes.

    python benchmarks/cpu_kernels.py            # full: 3 rounds of 40 steps per setting
    python benchmarks/cpu_kernels.py --smoke    # a few steps, for tests (timings meaningless)

Each worker process applies ``train.threads: 1`` and the setting exactly as a run does
(:func:`mitp.training.runtime.apply`, before anything computes), trains the demo model (benchmarks/
train_speed.py: tiny-random towers, M = 8, h = 64, s = 0, batch 64, the path ``fit`` takes on
CPU) for the same steps from the same weights, and prints its step time, its CPU capability and
a digest of the trained weights. The switches are read by the native libraries at their first
use, so each setting runs in a process of its own; rounds alternate the two settings so a
shared machine loads both alike.

Reports the median step time of each setting, the portable/native speed ratio, whether each
setting repeated bit for bit across its processes, and whether the two settings give the same
weights (on a CPU with AVX-512 they do not: that is the cross-machine difference ``portable``
removes). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("native", "portable")


def worker(kernels: str, steps: int) -> dict:
    """One process: apply the setting, train ``steps`` steps, time them, digest the weights."""
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch

    from mitp.config.params import TrainConfig
    from mitp.training import runtime

    tags = runtime.apply(TrainConfig(threads=1, cpu_kernels=kernels), torch.device("cpu"))
    from train_speed import FastPath, batches, demo_model

    data = batches(steps + 2)
    path = FastPath(demo_model(), compile_setting="false")
    for b in data[:2]:  # warm-up steps, not timed
        path.step(b)
    t0 = time.perf_counter()
    for b in data[2:]:
        path.step(b)
    path.sync()
    elapsed = time.perf_counter() - t0
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in path.model.trainable_parameters()))
    return {"kernels": kernels, "step_ms": 1000 * elapsed / steps, "capability": tags["run.cpu_capability"],
            "digest": digest.hexdigest()[:16]}


def run_worker(kernels: str, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    proc = subprocess.run([sys.executable, __file__, "--worker", kernels, "--steps", str(steps)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"worker {kernels} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a few steps: checks the machinery, not the speed")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per process")
    ap.add_argument("--rounds", type=int, default=3, help="processes per setting, alternating")
    ap.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    return ap


def main() -> int:
    args = build_parser().parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps)))
        return 0
    steps, rounds = (3, 2) if args.smoke else (args.steps, args.rounds)
    runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    for r in range(rounds):
        for kernels in (SETTINGS if r % 2 == 0 else SETTINGS[::-1]):
            runs[kernels].append(run_worker(kernels, steps))
            print(f"round {r + 1}/{rounds} {kernels}: {runs[kernels][-1]['step_ms']:.1f} ms per step", file=sys.stderr)
    step_ms = {s: statistics.median(r["step_ms"] for r in runs[s]) for s in SETTINGS}
    result = {
        "native_step_ms": round(step_ms["native"], 2),
        "portable_step_ms": round(step_ms["portable"], 2),
        "portable_speed_ratio": round(step_ms["native"] / step_ms["portable"], 3),  # < 1: portable is slower
        "native_capability": runs["native"][0]["capability"],
        "portable_capability": runs["portable"][0]["capability"],
        "native_repeats_exactly": len({r["digest"] for r in runs["native"]}) == 1,
        "portable_repeats_exactly": len({r["digest"] for r in runs["portable"]}) == 1,
        "settings_agree": runs["native"][0]["digest"] == runs["portable"][0]["digest"],
        "steps": steps, "rounds": rounds, "threads": 1,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
