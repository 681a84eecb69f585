"""The training forward/backward under ``torch.compile``, with a clean fallback to eager mode.

Why: the demo model is small (h = 64), so a step is many tiny ops; compiling the model fuses
its elementwise work (GELU, layer norms, bias adds, masks) and removes per-op dispatch in the
backward pass too. ``train.compile``: ``true`` compiles (failure -> one warning, eager);
``false`` never does; ``auto`` compiles on CUDA where Triton is present, and runs eagerly on
CPU. Why not on CPU (``benchmarks/train_speed.py``, one thread): the demo step is bound by its
matrix products, so inductor makes it only about 1.2x faster (59 -> 51 ms), while a cold
compile takes about 30 s per graph (the full batch and the epoch's shorter last batch each
need one), more than a 30-epoch demo run saves (about 12 s). ``true`` pays off for long CPU
runs or with a warm inductor cache. Compilation is lazy: a failure shows at the first step, and
that step is then re-run eagerly, before any optimizer update.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)


def compiler_available(device: torch.device) -> bool:
    """Whether inductor can build kernels here: Triton on CUDA, a C++ compiler on CPU."""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def wants_compile(setting: str | bool, device: torch.device) -> bool:
    """``train.compile`` (``auto`` | ``true`` | ``false``) -> compile or not (see the module doc)."""
    setting = str(setting).lower()
    if setting == "false":
        return False
    if setting == "true":
        return True
    return device.type == "cuda" and compiler_available(device)


class StepRunner:
    """Runs ``loss = forward(model, batch); loss.backward()`` compiled when asked, eager after a
    compiler failure (one warning). ``forward(module, batch) -> loss`` receives either the
    compiled module or the model itself; both share the same parameters."""

    def __init__(self, model: torch.nn.Module, enabled: bool):
        self.model = model
        self.compiled: Any = None
        if enabled:
            try:
                self.compiled = torch.compile(model, dynamic=False)
            except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
                self._fall_back(exc)
        self.proven = False  # one compiled step went through forward and backward

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def _fall_back(self, exc: BaseException) -> None:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        warnings.warn(f"train.compile: torch.compile failed ({type(exc).__name__}: {first}); training in eager mode",
                      RuntimeWarning, stacklevel=3)
        self.compiled = None

    def __call__(self, forward: Callable[[torch.nn.Module, Any], torch.Tensor], batch: Any) -> torch.Tensor:
        """Forward and backward of one batch; returns the (attached) loss."""
        if self.compiled is not None:
            try:
                loss = forward(self.compiled, batch)
                loss.backward()
                self.proven = True
                return loss
            except Exception as exc:  # noqa: BLE001
                if self.proven:  # it compiled and ran before: this is not a compiler problem
                    raise
                self._fall_back(exc)
                self.model.zero_grad(set_to_none=True)
        loss = forward(self.model, batch)
        loss.backward()
        return loss
