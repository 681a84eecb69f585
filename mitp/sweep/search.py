"""A parsed :class:`~mitp.config.space.SweepSpace` as Ray Tune sees it: each dimension as a Tune
search form (:func:`param_space`), the search algorithm of ``sweep.search`` (:func:`search_alg`),
and every trial configuration checked before launch (:func:`validate_trials`)."""

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


def search_alg(params: Params, space: SweepSpace):
    """Tune's ``search_alg`` for ``sweep.search``: None (Tune's variant generator, which enumerates
    the grid and draws choices and ranges at random) for grid and random; for optuna, Ray Tune's
    OptunaSearch with Optuna's TPE sampler seeded by ``seed`` (metric and mode come from the
    TuneConfig). :func:`mitp.config.space.build_space` has already made grid lists choices."""
    if params.sweep.search != "optuna":
        return None
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one INFO line per trial otherwise
    return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=params.seed))


def validate_trials(params: Params, space: SweepSpace, base_raw: dict) -> int:
    """Validate every trial configuration the space can produce (ConfigError naming the key
    and the trial); returns how many were checked."""
    if params.sweep.search == "optuna" and not space.swept_keys:
        raise ConfigError("sweep.search: optuna needs something to search, but sweep.space has no key with a list, "
                          "a choice or a range (search: grid runs the base configuration)")
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
