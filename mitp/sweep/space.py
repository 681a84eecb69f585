"""The search space of a sweep: ``sweep.space`` in params.yaml -> a Ray Tune ``param_space``
(forms: docs/cluster.md, "The search space"; ``num_samples > 1`` without ``seed`` in the space
becomes a seed grid ``seed, seed + 1, ...``; a key in the space wins over ``sweep.train``).

The one parser of the space and the one home of the rule "``cache.layer`` <= every interaction
start in use" (:func:`starts_in_use`, :func:`check_cache_layer`); :func:`validate_trials`
checks every trial configuration before launch.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from mitp.config import MODEL_KINDS, Params, TrainConfig, apply_overrides, to_flat_dict, validate
from mitp.dotted_keys import flatten
from mitp.errors import ConfigError

GRID_FORMS = ("grid", "grid_search")
CHOICE_FORMS = ("choice", "values")
# form -> (number of arguments, integer range whose high end is excluded)
RANGE_FORMS: dict[str, tuple[int, bool]] = {
    "uniform": (2, False), "loguniform": (2, False), "quniform": (3, False), "qloguniform": (3, False),
    "randint": (2, True), "lograndint": (2, True), "qrandint": (3, False), "qlograndint": (3, False)}
FORMS = GRID_FORMS + CHOICE_FORMS + tuple(RANGE_FORMS)
SWEEPABLE_ROOTS = ("seed", "model", "train")
START_KEY = "model.interaction.start"
FUSION_KEY = "model.pmf.n_fusion_layers"
MAX_VALIDATED_COMBINATIONS = 512  # above: each key's values are validated one at a time


@dataclass(frozen=True)
class Dim:
    """One swept key: ``form`` is ``grid``, ``choice``, a range form, or ``fixed``."""

    key: str
    form: str
    args: tuple  # grid/choice values, range arguments, or (value,) for fixed

    def candidates(self) -> list[Any]:
        """The values validation checks: every listed value, or both ends of a range."""
        if self.form in ("grid", "choice", "fixed"):
            return list(self.args)
        low, high = self.args[0], self.args[1] - (1 if RANGE_FORMS[self.form][1] else 0)  # randint: high excluded
        return [low] if low == high else [low, high]

    def describe(self) -> Any:
        """The spec as it is logged on the parent run (plain JSON)."""
        return self.args[0] if self.form == "fixed" else {self.form: list(self.args)}

    def to_tune(self):
        from ray import tune

        if self.form in ("fixed", "grid", "choice"):
            return {"fixed": lambda v: v[0], "grid": tune.grid_search, "choice": tune.choice}[self.form](list(self.args))
        return getattr(tune, self.form)(*self.args)


def _is_form(spec: Any) -> bool:
    return isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in FORMS


def _check_key_path(key: str) -> None:
    """The key names a value of the schema (not a section, not a typo)."""
    model: type[BaseModel] | None = Params
    parts = key.split(".")
    for i, part in enumerate(parts):
        here = ".".join(parts[: i + 1])
        if model is None:
            raise ConfigError(f"sweep.space.{key}: {'.'.join(parts[:i])} is a value, not a section "
                              f"(a search form is one of {', '.join(FORMS)})")
        if part not in model.model_fields:
            raise ConfigError(f"sweep.space.{key}: unknown key {here}")
        ann = model.model_fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    if model is not None:
        raise ConfigError(f"sweep.space.{key}: {key} is a section; sweep its keys ({key}.<name>)")


def parse_dim(key: str, spec: Any) -> Dim:
    where = f"sweep.space.{key}"
    if spec == {}:
        raise ConfigError(f"{where}: empty mapping (expected a value, a list or one of {', '.join(FORMS)})")
    root = key.split(".")[0]
    if root not in SWEEPABLE_ROOTS:
        raise ConfigError(f"{where}: only seed, model.* and train.* can be swept (the data, the backbones and "
                          "the feature cache are built once per sweep)")
    _check_key_path(key)
    if isinstance(spec, list | tuple):
        spec = {"grid": list(spec)}
    if not isinstance(spec, dict):
        return Dim(key, "fixed", (spec,))
    (form, args), = spec.items()
    if form in GRID_FORMS + CHOICE_FORMS:
        if not isinstance(args, list | tuple) or not args:
            raise ConfigError(f"{where}: {{{form}: ...}} needs a non-empty list of values, got {args!r}")
        return Dim(key, "grid" if form in GRID_FORMS else "choice", tuple(args))
    n_args, _ = RANGE_FORMS[form]
    if not isinstance(args, list | tuple) or len(args) != n_args:
        want = "[low, high]" if n_args == 2 else "[low, high, q]"
        raise ConfigError(f"{where}: {{{form}: ...}} needs {want}, got {args!r}")
    if not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
        raise ConfigError(f"{where}: {{{form}: ...}} needs numbers, got {args!r}")
    if not args[0] < args[1]:
        raise ConfigError(f"{where}: {{{form}: [low, high]}} needs low < high, got {list(args)!r}")
    if form.startswith(("log", "qlog")) and args[0] <= 0:
        raise ConfigError(f"{where}: {{{form}: ...}} needs a positive low end, got {args[0]!r}")
    return Dim(key, form, tuple(args))


def normalize_space(space: dict[str, Any]) -> dict[str, Dim]:
    """Parse ``sweep.space`` (shape and forms only; values are checked by :func:`validate_trials`)."""
    return {key: parse_dim(key, spec) for key, spec in flatten(space, is_leaf=_is_form).items()}


def normalize_train(train: dict | None) -> dict[str, Any]:
    """``sweep.train`` -> ``{"train.epochs": 3, ...}`` (keys relative to ``train``; a leading
    ``train.`` is accepted too); an unknown key is an error."""
    out: dict[str, Any] = {}
    for key, value in to_flat_dict(train or {}).items():
        key = key.removeprefix("train.")
        if key not in TrainConfig.model_fields:
            raise ConfigError(f"sweep.train: {key}: unknown train key")
        out[f"train.{key}"] = value
    return out


@dataclass
class SweepSpace:
    """The parsed space of one sweep, ready for Tune."""

    dims: dict[str, Dim]
    train_overrides: dict[str, Any]
    num_samples: int  # what Tune runs (1 when repeats became a seed grid)
    auto_seeds: list[int] | None = None
    swept_keys: list[str] = field(default_factory=list)

    @property
    def grid_size(self) -> int:
        return math.prod(len(d.args) for d in self.dims.values() if d.form == "grid")

    @property
    def n_trials(self) -> int:
        return self.grid_size * self.num_samples

    def param_space(self) -> dict[str, Any]:
        return {key: dim.to_tune() for key, dim in self.dims.items()}

    def describe(self) -> dict[str, Any]:
        return {key: dim.describe() for key, dim in self.dims.items()}

    def trial_overrides(self, config: dict[str, Any]) -> dict[str, Any]:
        """What a trial changes in the base configuration: ``sweep.train``, then its config."""
        return {**self.train_overrides, **{k: config[k] for k in self.dims if k in config}}

    def max_epochs(self, base_epochs: int) -> int:
        """The most epochs any trial trains (the ASHA horizon)."""
        dim = self.dims.get("train.epochs")
        if dim is not None:
            return int(max(dim.candidates()))
        return int(self.train_overrides.get("train.epochs", base_epochs))


def build_space(params: Params) -> SweepSpace:
    """Parse ``params.sweep`` into a :class:`SweepSpace` (repeats become seeds, see module doc)."""
    sweep = params.sweep
    dims = normalize_space(sweep.space)
    train = normalize_train(sweep.train)
    swept = [k for k, d in dims.items() if d.form != "fixed"]
    num_samples, seeds = sweep.num_samples, None
    if num_samples > 1 and "seed" not in dims:
        seeds = [params.seed + i for i in range(num_samples)]
        dims["seed"] = Dim("seed", "grid", tuple(seeds))
        swept.append("seed")
        num_samples = 1
    return SweepSpace(dims, train, num_samples, seeds, swept)


def trial_params(base_raw: dict, overrides: dict[str, Any], source: str = "sweep trial") -> Params:
    """Validated :class:`~mitp.config.Params` of one trial (the schema names a bad key)."""
    return validate(apply_overrides(base_raw, overrides), source)


def describe_overrides(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "no overrides"


def starts_in_use(params: Params) -> set[int]:
    """Every first changed layer a run can use, over the kinds in use (``MODEL_KINDS``): each
    ``model.interaction.start`` the config and space give (a range by its ends) for MITP, depth -
    ``model.pmf.n_fusion_layers`` for PMF; empty if no kind changes a cacheable layer."""
    dims = normalize_space(params.sweep.space)

    def in_use(key: str, configured: Any) -> list[Any]:  # the configured value and the space's candidates
        return [configured, *(dims[key].candidates() if key in dims else [])]

    changes = {MODEL_KINDS.get(kind, "interaction") for kind in in_use("model.kind", params.model.kind)}
    starts: set[int] = set()
    if "interaction" in changes:
        values = in_use(START_KEY, params.model.interaction.start)
        if bad := [v for v in values if not isinstance(v, int) or isinstance(v, bool)]:
            raise ConfigError(f"sweep.space.{START_KEY}: {bad[0]!r} is not a layer number")
        starts |= set(values)
    if "top" in changes:
        depth = min(_depths(params))
        fusion = in_use(FUSION_KEY, params.model.pmf.n_fusion_layers)
        starts |= {depth - f for f in fusion if isinstance(f, int)}
    return starts


def check_cache_layer(params: Params) -> None:
    """``cache.layer`` k <= every start in use (the cached layers must never see a prompt)."""
    if params.cache.enabled and params.model.kind == "finetune":
        raise ConfigError("cache.enabled: model.kind=finetune trains the backbones end to end, so it cannot "
                          "train from the feature cache; set cache.enabled=false")
    starts = starts_in_use(params)
    k = params.cache.layer
    if not params.cache.enabled or not starts or min(starts) >= k:
        return
    changes = MODEL_KINDS[params.model.kind]
    if changes == "interaction" and params.model.interaction.start < k:
        raise ConfigError(f"cache.layer: {k} is above model.interaction.start {params.model.interaction.start}; "
                          "the cached layers must never see a prompt")
    if changes == "top" and (first := params.model.first_interaction_layer(min(_depths(params)))) < k:
        raise ConfigError(f"cache.layer: {k} is above the first PMF fusion layer {first} (the depth minus "
                          "model.pmf.n_fusion_layers); the cached layers must never see a prompt")
    key = START_KEY if START_KEY in normalize_space(params.sweep.space) else FUSION_KEY
    raise ConfigError(f"sweep.space.{key}: value {min(starts)} is below cache.layer {k}; the cached layers "
                      f"must never see a prompt (the cache serves the sweep too: set cache.layer to at most "
                      f"{min(starts)} and rebuild the cache, or override sweep.space for a run that does not sweep)")


def _depths(params: Params) -> tuple[int, int]:
    from mitp.backbones import depths

    return depths(params.backbone)


def check_params(params: Params) -> None:
    """What every stage checks after loading: sweep settings, backbone depth, cache layer."""
    from mitp.backbones import check_depth

    normalize_train(params.sweep.train)
    check_depth(params)
    check_cache_layer(params)  # parses sweep.space


def combinations(space: SweepSpace) -> list[dict[str, Any]]:
    """The product of every key's candidates if small, else one key varied at a time."""
    keys = list(space.dims)
    values = [space.dims[k].candidates() for k in keys]
    if math.prod(map(len, values)) <= MAX_VALIDATED_COMBINATIONS:
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]
    first = {k: v[0] for k, v in zip(keys, values, strict=True)}
    out = [first]
    for k, vs in zip(keys, values, strict=True):
        out += [{**first, k: v} for v in vs[1:]]
    return out


def validate_trials(params: Params, space: SweepSpace, base_raw: dict) -> int:
    """Validate every trial configuration the space can produce (ConfigError naming the key
    and the trial); returns how many were checked."""
    from mitp.backbones import check_depth

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


def base_raw_of(params: Params) -> dict:
    """The validated params as a plain dict, the base every trial's overrides apply to."""
    return params.model_dump(mode="json")  # a fresh dict each call
