"""A parsed :class:`~mitp.config.space.SweepSpace` as Ray Tune sees it: each dimension as a Tune
search form (:func:`param_space`), and every trial configuration checked before launch
(:func:`validate_trials`)."""

from __future__ import annotations

from typing import Any

from mitp.config.params import Params
from mitp.config.space import Dim, SweepSpace, combinations, describe_overrides, trial_params
from mitp.errors import ConfigError
from mitp.models.backbones import check_depth
from mitp.models.rules import check_cache_layer


def to_tune(dim: Dim):
    """One dimension as a Tune form (``fixed``: the value itself)."""
    from ray import tune

    if dim.form in ("fixed", "grid", "choice"):
        return {"fixed": lambda v: v[0], "grid": tune.grid_search, "choice": tune.choice}[dim.form](list(dim.args))
    return getattr(tune, dim.form)(*dim.args)


def param_space(space: SweepSpace) -> dict[str, Any]:
    """Tune's ``param_space`` of the sweep."""
    return {key: to_tune(dim) for key, dim in space.dims.items()}


def validate_trials(params: Params, space: SweepSpace, base_raw: dict) -> int:
    """Validate every trial configuration the space can produce (ConfigError naming the key
    and the trial); returns how many were checked."""
    check_cache_layer(params)  # over every start the space can give: the clearest message first
    combos = combinations(space)
    for combo in combos:
        overrides = space.trial_overrides(combo)
        source = f"sweep trial ({describe_overrides(overrides)})"
        try:
            check_depth(trial_params(base_raw, overrides, source))
        except ConfigError as exc:
            raise ConfigError(exc if str(exc).startswith(source) else f"{source}: {exc}") from None
    return len(combos)
