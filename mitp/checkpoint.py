"""Training checkpoints: trainable weights (safetensors, a few MB; never the backbones) plus the
optimizer, scheduler, RNG and loop state, written atomically so a killed run resumes cleanly."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mitp.atomic import atomic_dir, atomic_path

WEIGHTS = "trainable.safetensors"
STATE = "state.pt"
META = "meta.json"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only the parameters that train (prompts, hub, head), detached and contiguous on CPU."""
    return {n: p.detach().to("cpu").contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_weights(path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path, ".safetensors") as tmp:
        save_file(state, str(tmp), metadata=metadata)


def load_weights(model: torch.nn.Module, path_or_state: str | Path | dict) -> None:
    state = load_file(str(path_or_state)) if not isinstance(path_or_state, dict) else path_or_state
    missing, unexpected = model.load_state_dict(state, strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lost = sorted(trainable & set(missing))
    if lost or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {lost[:5]}, unexpected {list(unexpected)[:5]}")


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
        torch.save({
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        }, tmp / STATE)
        (tmp / META).write_text(json.dumps(meta, indent=2, default=str))


def exists(directory: str | Path) -> bool:
    d = Path(directory)
    return all((d / f).exists() for f in (WEIGHTS, STATE, META))


def restore(directory: str | Path, model: torch.nn.Module, optimizer, scheduler) -> tuple[dict, dict | None]:
    """Load a checkpoint folder into model/optimizer/scheduler; returns (meta, best_state)."""
    d = Path(directory)
    load_weights(model, d / WEIGHTS)
    state = torch.load(d / STATE, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    best = load_file(str(d / "best.safetensors")) if (d / "best.safetensors").exists() else None
    return json.loads((d / META).read_text()), best
