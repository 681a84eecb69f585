"""Peak memory of a phase of a run: reset the count where the phase starts, read it at its end.

On CUDA the allocator's peak; on CPU the process's peak resident set size (Linux ``VmHWM``,
reset through ``/proc/self/clear_refs``; elsewhere the peak since the process started). A
training logs its peak from its first step on, so the load of the backbones (whole, before the
cached path releases the layers below k) is not counted as training memory.
"""

from __future__ import annotations

import gc
import re
import resource
from pathlib import Path

import torch


def _status_mb(field: str) -> float | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) / 1024 if m else None


def reset_peak_memory(device: torch.device) -> float:
    """Start counting the peak here; returns the memory in use now (MB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    gc.collect()
    try:  # Linux: "5" resets the peak resident set size (VmHWM) of this process
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_mb("VmRSS") or 0.0


def peak_memory_mb(device: torch.device) -> float:
    """The peak since :func:`reset_peak_memory` (MB): CUDA max allocated, or the peak RSS (the
    process's whole peak where it cannot be reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
