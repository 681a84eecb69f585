"""Peak memory of a phase: what was freed before the reset does not count in the peak after it."""

from __future__ import annotations

import sys

import pytest
import torch

from mitp.training.memory import peak_memory_mb, reset_peak_memory

CPU = torch.device("cpu")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak RSS is resettable on Linux only")
def test_the_peak_after_a_reset_leaves_out_what_was_freed_before():
    big = torch.ones(300 * 2**20 // 4)  # 300 MB, touched
    with_big = peak_memory_mb(CPU)
    del big
    in_use = reset_peak_memory(CPU)
    # 64 MB after the reset: above glibc's largest mmap threshold (32 MB), so fresh pages, not a
    # reused heap; the margin leaves room for whatever else the process frees meanwhile
    small = torch.ones(64 * 2**20 // 4)
    after = peak_memory_mb(CPU)
    assert with_big - after > 150, (with_big, after)  # the 300 MB load is not in the new peak
    assert after >= in_use + 40, (in_use, after)  # the 64 MB allocated after the reset is
    del small
