"""Nested mappings <-> the dotted keys that ``-S key.path=value``, MLflow params and sweep
configs use: ``{"model": {"interaction": {"start": 8}}}`` is ``{"model.interaction.start": 8}``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def flatten(mapping: Mapping, prefix: str = "", *, is_leaf: Callable[[Any], bool] | None = None) -> dict[str, Any]:
    """Dotted keys of every value under ``mapping``, in order.

    A non-empty mapping is walked unless ``is_leaf`` says it is a value (the sweep space's
    ``{grid: [...]}`` forms); an empty mapping is a value (``sweep.space: {}`` stays a key).
    """
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and not (is_leaf and is_leaf(value)):
            out.update(flatten(value, full + ".", is_leaf=is_leaf))
        else:
            out[full] = value
    return out
