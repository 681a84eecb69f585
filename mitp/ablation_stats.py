"""Statistics over seeds for sweep results: group trials by configuration, mean / std / n per
group, mark differences smaller than the seed noise, and pick the best configuration on the
validation mean alone (its test figures are that configuration's, never a maximum over tests).

Pure functions over trial rows: a list of dicts (the sweep's rows) or a pandas DataFrame (the
report's ``sweep.csv``). A row is one trial: the swept keys, ``seed`` when several seeds ran,
and ``val_*`` / ``test_*`` metrics (missing or NaN when the trial never reached them).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

SEED_KEY = "seed"


@dataclass(frozen=True)
class GroupStats:
    """One configuration's figures over its seeds (``std`` is the sample std; 0 when n = 1)."""

    config: tuple  # the configuration's values, in the order of the keys it was grouped by
    mean: float
    std: float
    n: int
    within_noise: bool = False  # its difference to the best group is within the seed noise


@dataclass(frozen=True)
class BestConfig:
    """The configuration with the best validation mean and that configuration's own figures."""

    config: dict[str, Any]
    val_mean: float
    val_std: float
    n: int
    test_mean: float | None  # None when none of its trials has the test metric
    test_std: float | None
    test_n: int
    rows: list[dict[str, Any]] = field(default_factory=list)  # its trials


def records(table: Any) -> list[dict[str, Any]]:
    """Rows as dicts, from a list of mappings or a DataFrame (without importing pandas)."""
    if hasattr(table, "to_dict"):
        return table.to_dict("records")
    return [dict(r) for r in table]


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)


def config_keys(keys: Iterable[str]) -> list[str]:
    """The keys that name a configuration: every swept key but the seed."""
    return [k for k in keys if k != SEED_KEY]


def _key(value: Any) -> Any:
    # 4 and 4.0 (a CSV round trip) are the same configuration
    return float(value) if is_number(value) else value


def group(rows: Any, keys: Sequence[str]) -> dict[tuple, list[dict[str, Any]]]:
    """Trials by configuration (``keys``: the configuration keys), in first-seen order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    originals: dict[tuple, tuple] = {}
    for row in records(rows):
        k = tuple(_key(row.get(key)) for key in keys)
        originals.setdefault(k, tuple(row.get(key) for key in keys))
        groups.setdefault(k, []).append(row)
    return {originals[k]: v for k, v in groups.items()}


def mean_std(values: Iterable[Any]) -> tuple[float, float, int]:
    """(mean, sample std, n) of the numbers among ``values``; (nan, nan, 0) when none."""
    xs = [float(v) for v in values if is_number(v)]
    if not xs:
        return math.nan, math.nan, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0), len(xs)


def seed_noise(stats: Iterable[GroupStats]) -> float:
    """The seed noise: the pooled std over groups with at least two seeds (nan when none)."""
    num = den = 0.0
    for s in stats:
        if s.n > 1 and is_number(s.std):
            num += (s.n - 1) * s.std**2
            den += s.n - 1
    return math.sqrt(num / den) if den else math.nan


def table(rows: Any, keys: Sequence[str], metric: str, mode: str = "max",
          noise: float | None = None) -> list[GroupStats]:
    """Mean / std / n of ``metric`` per configuration; each group's ``within_noise`` says whether
    its mean is within the seed noise of the best group's (the best group is never marked).
    ``noise``: the seed noise to compare with (default: the pooled std of these groups; pass the
    full configurations' :func:`seed_noise` when ``keys`` is one axis of a larger grid)."""
    raw = []
    for cfg, members in group(rows, keys).items():
        mean, std, n = mean_std(r.get(metric) for r in members)
        if n:
            raw.append(GroupStats(cfg, mean, std, n))
    if not raw:
        return []
    noise = seed_noise(raw) if noise is None else noise
    best = _best(raw, mode)
    return [GroupStats(s.config, s.mean, s.std, s.n,
                       within_noise=s is not best and is_number(noise) and abs(s.mean - best.mean) <= noise)
            for s in raw]


def _best(stats: list[GroupStats], mode: str) -> GroupStats:
    sign = 1.0 if mode == "max" else -1.0
    return max(stats, key=lambda s: sign * s.mean)


def select_best(rows: Any, keys: Sequence[str], val_metric: str, test_metric: str | None,
                mode: str = "max") -> BestConfig | None:
    """The configuration with the best mean of ``val_metric`` over its seeds; the test figures
    reported are that configuration's test mean / std. Test columns are read only after the
    choice, and only for the chosen configuration's trials."""
    if not val_metric.startswith("val_"):
        raise ValueError(f"selection must use a validation metric, got {val_metric!r}")
    rows = records(rows)
    keys = config_keys(keys)
    val = table(rows, keys, val_metric, mode)
    if not val:
        return None
    best = _best(val, mode)
    members = group(rows, keys)[best.config]
    test_mean, test_std, test_n = (mean_std(r.get(test_metric) for r in members) if test_metric
                                   else (math.nan, math.nan, 0))
    return BestConfig(config=dict(zip(keys, best.config, strict=True)), val_mean=best.mean, val_std=best.std,
                      n=best.n, test_mean=test_mean if test_n else None, test_std=test_std if test_n else None,
                      test_n=test_n, rows=members)


def along_axis(rows: Any, key: str, anchor: dict[str, Any]) -> list[dict[str, Any]]:
    """The trials that differ from the ``anchor`` configuration in ``key`` alone (any seed): one
    axis of the grid through the chosen configuration, so a row's spread is seed noise only."""
    others = {k: _key(v) for k, v in anchor.items() if k != key}
    return [r for r in records(rows) if all(_key(r.get(k)) == v for k, v in others.items())]
