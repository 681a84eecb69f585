"""Where and how a run computes: its device, torch's CPU thread count, the CPU kernels, CUDA's
deterministic algorithms; all set from ``train.*``, because the numbers depend on them.

Float sums depend on their order. With 2 threads a matrix product or a reduction splits its sum
differently than with 1, and an AVX-512 kernel sums in other lanes than an AVX2 one, so the same
configuration and seed give different accuracies when started differently (a 1-CPU sweep trial
against a 2-thread standalone run differed by 1.7 points on the demo set). So the thread count
(``train.threads``) and the kernels (``train.cpu_kernels``) are params like any other: every
run applies them itself (:func:`apply`, called by ``fit`` and the cache build), whether it is
started by ``pipeline.train``, the main table, a Ray trial on any node, or a resume.

``cpu_kernels``:

* ``native``: the fastest kernels of this CPU. A configuration repeats bit for bit on the same
  CPU model and software; across CPU models the demo's accuracies move by up to a few tenths
  of a point per run (more where early stopping then picks another epoch).
* ``portable``: ATen's and oneDNN's kernels capped at AVX2 and MKL in strict conditional
  numerical reproducibility on its SSE2 branch (the only MKL branch Intel guarantees alike on
  Intel and AMD CPUs), so the numbers are the same on any x86-64 CPU with AVX2, at a cost in
  speed (docs/reproducibility.md gives the measured figures). These switches are read by the native
  libraries on their first use, so they must be set before the process computes anything:
  :func:`apply` refuses to run ``portable`` in a process that already computed with other kernels.

On CUDA, ``train.deterministic`` selects deterministic algorithms (cuBLAS workspace, no cuDNN
autotuning); bf16 autocast stays, so CUDA numbers are not those of the CPU.
"""

from __future__ import annotations

import functools
import os
import platform
from typing import Any

import torch

from mitp.errors import ConfigError, UserError

# Environment switches of the native libraries, read on their first use in a process.
PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (convolutions, some matmuls)
    "MKL_CBWR": "COMPATIBLE,STRICT",  # MKL's GEMMs: fixed branch, fixed blocking, any alignment
}
CUBLAS_WORKSPACE = ":4096:8"  # what deterministic cuBLAS needs (CUDA's reproducibility notes)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pick_device(choice: str) -> torch.device:
    """``train.device``: auto (CUDA when present), cpu or cuda."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda requested but no CUDA device is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def setup(train: Any) -> tuple[torch.device, dict[str, str]]:
    """The device of ``train`` (a :class:`~mitp.config.params.TrainConfig`) and :func:`apply` on it:
    the first call of every stage that computes, before anything runs."""
    device = pick_device(train.device)
    return device, apply(train, device)


def apply(train: Any, device: torch.device) -> dict[str, str]:
    """Set the thread count, kernels and deterministic switches of ``train`` (a
    :class:`~mitp.config.params.TrainConfig`) for this process; returns what ran, as lineage tags.

    Raises :class:`~mitp.errors.ConfigError` when ``cpu_kernels: portable`` comes too late (this
    process already computed with AVX-512 kernels)."""
    torch.set_num_threads(train.threads)
    if train.cpu_kernels == "portable":
        for key, value in PORTABLE_ENV.items():
            os.environ[key] = value
        capability = torch.backends.cpu.get_cpu_capability()
        if capability not in ("AVX2", "DEFAULT"):
            raise ConfigError(f"train.cpu_kernels: portable, but this process already computed with {capability} "
                              "kernels; set it before anything runs (start a new process, or export "
                              + " ".join(f"{k}={v}" for k, v in PORTABLE_ENV.items()) + ")")
    if device.type == "cuda" and train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        # warn_only: an op without a deterministic CUDA kernel warns instead of stopping the run
        torch.use_deterministic_algorithms(True, warn_only=True)
    return {
        "run.threads": str(torch.get_num_threads()),
        "run.cpu_kernels": train.cpu_kernels,
        "run.cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "run.cpu_model": _cpu_model(),
        "run.torch": torch.__version__,
        **({"run.cuda_deterministic": str(train.deterministic)} if device.type == "cuda" else {}),
    }


def quiet_progress_bars() -> None:
    """Turn tqdm's bars off in this process (a sweep trial, a worker of the main table): parallel
    runs' epoch bars would interleave in one log, which shows a line per finished run instead.
    ``TQDM_DISABLE`` counts only when tqdm is first imported, and such a process has imported it
    long before (mlflow does), so tqdm's default for ``disable`` becomes True here; a bar that
    passes ``disable`` keeps it."""
    from tqdm import std

    if not getattr(std.tqdm.__init__, "_mitp_quiet", False):
        quiet = functools.partialmethod(std.tqdm.__init__, disable=True)
        quiet._mitp_quiet = True  # type: ignore[attr-defined]
        std.tqdm.__init__ = quiet  # type: ignore[method-assign]
