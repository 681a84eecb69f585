"""The grammar of a sweep's search space: ``sweep.space`` in params.yaml -> :class:`SweepSpace`
(forms: docs/cluster.md, "The search space"; ``num_samples > 1`` without ``seed`` in the space
becomes a seed grid ``seed, seed + 1, ...``; a key in the space wins over ``sweep.train``).
With ``sweep.search: optuna`` the space is sampled, never enumerated: a grid list becomes a
choice TPE picks from, and ``num_samples`` is the number of trials it proposes (no seed grid).

The one parser of the space. It knows no Ray (:mod:`mitp.sweep.search` turns a space into Tune's
``param_space``) and no model: the rule on ``cache.layer`` that reads the space lives with the
kinds, in :mod:`mitp.models.rules`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from mitp.config.dotted_keys import flatten
from mitp.config.params import Params, TrainConfig, apply_overrides, to_flat_dict, validate
from mitp.errors import ConfigError

GRID_FORMS = ("grid", "grid_search")
CHOICE_FORMS = ("choice", "values")
# form -> (number of arguments, integer range whose high end is excluded)
RANGE_FORMS: dict[str, tuple[int, bool]] = {
    "uniform": (2, False), "loguniform": (2, False), "quniform": (3, False), "qloguniform": (3, False),
    "randint": (2, True), "lograndint": (2, True), "qrandint": (3, False), "qlograndint": (3, False)}
FORMS = GRID_FORMS + CHOICE_FORMS + tuple(RANGE_FORMS)
SWEEPABLE_ROOTS = ("seed", "model", "train")
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
    if sweep.search == "optuna":  # a searcher samples the space: Tune's grid_search cannot go to it
        dims = {k: Dim(k, "choice", d.args) if d.form == "grid" else d for k, d in dims.items()}
        return SweepSpace(dims, train, num_samples, None, swept)
    if num_samples > 1 and "seed" not in dims:
        seeds = [params.seed + i for i in range(num_samples)]
        dims["seed"] = Dim("seed", "grid", tuple(seeds))
        swept.append("seed")
        num_samples = 1
    return SweepSpace(dims, train, num_samples, seeds, swept)


def trial_params(base_raw: dict, overrides: dict[str, Any], source: str = "sweep trial") -> Params:
    """Validated :class:`~mitp.config.params.Params` of one trial (the schema names a bad key)."""
    return validate(apply_overrides(base_raw, overrides), source)


def describe_overrides(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "no overrides"


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


def base_raw_of(params: Params) -> dict:
    """The validated params as a plain dict, the base every trial's overrides apply to."""
    return params.model_dump(mode="json")  # a fresh dict each call
