"""Training checkpoints: trainable weights (safetensors, a few MB; never the backbones) plus the
optimizer, scheduler, RNG and loop state, written atomically so a killed run resumes cleanly.

One run at a time owns a checkpoint folder (:func:`locked`): a second identical training would
otherwise resume the first's checkpoint and MLflow run while the first is still writing them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout
from safetensors.torch import load_file, save_file

from mitp.atomic import atomic_dir, write_json
from mitp.errors import UserError
from mitp.models.weights import load_weights, trainable_state

WEIGHTS = "trainable.safetensors"
STATE = "state.pt"
META = "meta.json"


class CheckpointBusy(UserError):
    """Another run holds the checkpoint folder."""


def lock_paths(directory: str | Path) -> tuple[Path, Path]:
    """(lock file, owner note) beside the folder: the folder itself is replaced on every save."""
    d = Path(directory)
    return d.with_name(d.name + ".lock"), d.with_name(d.name + ".owner.json")


@contextlib.contextmanager
def locked(directory: str | Path) -> Iterator[None]:
    """Hold the checkpoint folder for this run, or raise :class:`CheckpointBusy` at once.

    An OS file lock (released by the kernel when its process dies, so a killed run never leaves a
    stale lock); re-entrant in the same process, so the stage and ``fit`` may both take it. The
    owner note beside it (pid, host, command, start) lets the refused run name the running one.
    """
    lock_file, owner = lock_paths(directory)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file), timeout=0, is_singleton=True)
    outermost = not lock.is_locked
    try:
        lock.acquire()
    except Timeout:
        raise CheckpointBusy(f"{Path(directory)}: another training holds this checkpoint folder "
                             f"({_describe_owner(owner)}; lock {lock_file}); wait for it to finish or stop it") from None
    try:
        if outermost:
            write_json(owner, {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                               "command": " ".join(sys.argv)[:500]})
        yield
    finally:
        if outermost:
            owner.unlink(missing_ok=True)
        lock.release()


def _describe_owner(owner: Path) -> str:
    try:
        info = json.loads(owner.read_text())
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info["started"]))
        return f"pid {info['pid']} on {info['host']}, started {started}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "owner unknown"


def save(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    meta: dict[str, Any],
    best_state: dict[str, torch.Tensor] | None,
) -> None:
    """Write a complete checkpoint folder (replaces the previous one only when complete)."""
    with atomic_dir(directory) as tmp:
        save_file(trainable_state(model), str(tmp / WEIGHTS))
        if best_state is not None:
            save_file(best_state, str(tmp / "best.safetensors"))
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        # only tensors, numbers, strings and containers: read back with weights_only=True (no code runs)
        torch.save({
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": {"python": random.getstate(), "torch": torch.get_rng_state(),
                    "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]},
        }, tmp / STATE)
        (tmp / META).write_text(json.dumps(meta, indent=2, default=str))


def exists(directory: str | Path) -> bool:
    d = Path(directory)
    return all((d / f).exists() for f in (WEIGHTS, STATE, META))


class CheckpointError(UserError):
    """A checkpoint folder that this code did not write, or that was edited since."""


def read_meta(directory: str | Path) -> dict[str, Any]:
    """``meta.json`` of a checkpoint, checked against itself: ``epoch`` (0-based, the last one
    done) matches the history's length, and the best epoch is one of those epochs."""
    path = Path(directory) / META
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc}); start over with --fresh") from None
    problems = []
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not a JSON object; start over with --fresh")
    epoch, history, best = meta.get("epoch"), meta.get("history"), meta.get("best_epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < -1:  # -1: started, no epoch done
        problems.append(f"epoch {epoch!r} is not a count")
    elif not isinstance(history, list) or len(history) != epoch + 1 or any(
            not isinstance(h, dict) or h.get("epoch") != i + 1 for i, h in enumerate(history)):
        problems.append(f"epoch {epoch} does not match the history of {len(history) if isinstance(history, list) else '?'} "
                        "epochs")
    if not problems and (not isinstance(best, int) or isinstance(best, bool) or not 0 <= best <= epoch + 1):
        problems.append(f"best_epoch {best!r} is not one of the epochs done")
    if not isinstance(meta.get("best_val"), int | float):
        problems.append(f"best_val {meta.get('best_val')!r} is not a number")
    if problems:
        raise CheckpointError(f"{path}: {'; '.join(problems)}: edited or not written by this code; start over "
                              "with --fresh")
    return meta


def restore(directory: str | Path, model: torch.nn.Module, optimizer, scheduler) -> tuple[dict, dict | None]:
    """Load a checkpoint folder into model/optimizer/scheduler; returns (meta, best_state).

    ``state.pt`` is read with ``weights_only=True``: tensors, numbers and containers only, so a
    replaced file cannot run code (a shared checkpoint folder is input like any other)."""
    d = Path(directory)
    meta = read_meta(d)
    load_weights(model, d / WEIGHTS)
    try:
        state = torch.load(d / STATE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in rng["python"]))
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(rng["torch"])
    except Exception as exc:  # refused to unpickle, or not the state this code writes
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise CheckpointError(f"{d / STATE}: not a training state this code wrote ({type(exc).__name__}: {first}); "
                              "start over with --fresh") from None
    best = load_file(str(d / "best.safetensors")) if (d / "best.safetensors").exists() else None
    return meta, best
