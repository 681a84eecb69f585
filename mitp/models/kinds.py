"""``model.kind`` -> the model class: MITP and its variants (:mod:`mitp.models.mitp`) or PMF
(:mod:`mitp.models.pmf`). Every caller that builds a model from ``params`` goes through here."""

from __future__ import annotations

from torch import nn

from mitp.models.mitp import MITP, MITPConfig, TwoTowers
from mitp.models.pmf import PMF, PMFConfig


def build_model(params, vision: nn.Module, text: nn.Module, num_labels: int, multi_label: bool,
                drop_below: int | None = None) -> TwoTowers:
    """The configured model on the given towers. ``drop_below=k``: built for hidden states
    entering layer k only, without the embeddings and layers below k (see :class:`TwoTowers`)."""
    if params.model.kind == "pmf":
        return PMF(PMFConfig.from_params(params, num_labels, multi_label), vision, text, drop_below)
    return MITP(MITPConfig.from_params(params, num_labels, multi_label), vision, text, drop_below)


def from_config(config: dict, vision: nn.Module, text: nn.Module) -> TwoTowers:
    """The model a saved ``dataclasses.asdict(model.config)`` describes (a trained model's card),
    with its full towers (inference runs from raw inputs)."""
    if config["kind"] == "pmf":
        return PMF(PMFConfig(**config), vision, text)
    return MITP(MITPConfig(**config), vision, text)
