"""The trainable weights of a model as safetensors (prompts, hub, head; never the backbones):
what a checkpoint and a trained-model folder store, and how they are put back."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mitp.atomic import atomic_path


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
