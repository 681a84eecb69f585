"""k (``cache.layer``) must be <= every interaction start the configured runs will use.

The train config check lives in :mod:`mitp.config` (``cache.layer`` vs
``model.interaction.start``); this module adds the sweep: every value of
``model.interaction.start`` in ``sweep.space``. A space entry is ``key -> {grid: [...]}``,
``{grid_search: [...]}``, ``{choice: [...]}``, ``{values: [...]}``, a plain list, a scalar, or a
range ``{randint: [low, high]}`` / ``{qrandint: [low, high, q]}`` (the low end is checked).
Keys are dotted (``model.interaction.start``) or nested dicts (``{model: {interaction: ...}}``).
"""

from __future__ import annotations

from typing import Any

from mitp.errors import ConfigError

START_KEY = "model.interaction.start"
LIST_FORMS = ("grid", "grid_search", "choice", "values")
RANGE_FORMS = ("randint", "qrandint", "uniform", "quniform", "lograndint", "qlograndint")


def _is_form(spec: Any) -> bool:
    return isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in LIST_FORMS + RANGE_FORMS


def flatten_space(space: dict, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"interaction": {"start": [1, 2]}}}`` -> ``{"model.interaction.start": [1, 2]}``."""
    out: dict[str, Any] = {}
    for key, spec in space.items():
        full = f"{prefix}{key}"
        if isinstance(spec, dict) and not _is_form(spec):
            out.update(flatten_space(spec, full + "."))
        else:
            out[full] = spec
    return out


def candidate_values(key: str, spec: Any) -> list[Any]:
    """The values a sweep may give ``key`` (the low end of a range), or a ConfigError naming it."""
    if isinstance(spec, dict):
        (form, values), = spec.items()
        if form in LIST_FORMS:
            if not isinstance(values, list | tuple):
                raise ConfigError(f"sweep.space.{key}: {{{form}: ...}} needs a list of values, got {values!r}")
            return list(values)
        if not isinstance(values, list | tuple) or not values:
            raise ConfigError(f"sweep.space.{key}: {{{form}: ...}} needs [low, high], got {values!r}")
        return [values[0]]
    if isinstance(spec, list | tuple):
        return list(spec)
    return [spec]


def check_cache_layer(params) -> None:
    """Raise ConfigError (naming the key) if a configured run would start below ``cache.layer``."""
    if not params.cache.enabled:
        return
    k = params.cache.layer
    if params.model.kind != "late_fusion" and k > params.model.interaction.start:
        raise ConfigError(f"cache.layer: {k} is above model.interaction.start {params.model.interaction.start}; "
                          "the cached layers must never see a prompt")
    space = flatten_space(params.sweep.space or {})
    for key, spec in space.items():
        if key == "cache.layer":
            raise ConfigError(f"sweep.space.{key}: the feature cache is built for one layer k; sweep "
                              "model.interaction.start instead and set cache.layer to its smallest value")
        if key != START_KEY:
            continue
        for value in candidate_values(key, spec):
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ConfigError(f"sweep.space.{key}: {value!r} is not a layer number")
            if value < k:
                raise ConfigError(
                    f"sweep.space.{key}: value {value} is below cache.layer {k}; the cached layers must "
                    f"never see a prompt (the cache serves the sweep too: set cache.layer to at most "
                    f"{min_start(space, params)}, or override sweep.space for a run that does not sweep)")


def min_start(space: dict[str, Any], params) -> int:
    """The smallest start any configured run uses: the largest k the cache may have."""
    values = [v for v in candidate_values(START_KEY, space[START_KEY]) if isinstance(v, int | float)]
    return int(min([*values, params.model.interaction.start]))
