"""Statistics over seeds for training and sweep results: group runs by configuration (or model
kind), mean / sample std (ddof = 1) / n per group, the difference of two groups' means with
Welch's t interval, and the best configuration picked on the validation mean alone (its test
figures are that configuration's, never a maximum over tests).

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
    """One configuration's figures over its seeds (``std`` is the sample std, ddof = 1; 0 when
    n = 1, where it is undefined: read ``n`` before ``std``)."""

    config: tuple  # the configuration's values, in the order of the keys it was grouped by
    mean: float
    std: float
    n: int


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


def same_value(a: Any, b: Any) -> bool:
    """Whether two values of a swept key name the same setting (4 and 4.0 do)."""
    return _key(a) == _key(b)


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


def table(rows: Any, keys: Sequence[str], metric: str) -> list[GroupStats]:
    """Mean / sample std / n of ``metric`` per configuration, in first-seen order (groups without
    a number for ``metric`` left out)."""
    out = []
    for cfg, members in group(rows, keys).items():
        mean, std, n = mean_std(r.get(metric) for r in members)
        if n:
            out.append(GroupStats(cfg, mean, std, n))
    return out


CI_LEVEL = 0.95
CI_METHOD = "Welch's t interval with Welch–Satterthwaite degrees of freedom"
NOT_DISTINGUISHABLE = "not distinguishable"
NO_INTERVAL = "n < 2: no interval"


@dataclass(frozen=True)
class Difference:
    """``mean`` = mean of A − mean of B over their seeds, with its ``CI_LEVEL`` Welch t interval
    (``ci``; None when either side has n < 2, where a sample std does not exist) and the
    Welch–Satterthwaite degrees of freedom (``df``; None without an interval, or when neither
    side has any spread and the interval is the point ``mean``)."""

    mean: float
    ci: tuple[float, float] | None
    df: float | None
    n: tuple[int, int]

    def verdict(self, name: str) -> str:
        """``"<name> higher"`` / ``"<name> lower"`` when the interval excludes 0 (``name``: side A),
        ``"not distinguishable"`` when it includes 0, ``"n < 2: no interval"`` without one."""
        if self.ci is None:
            return NO_INTERVAL
        lo, hi = self.ci
        if lo > 0:
            return f"{name} higher"
        if hi < 0:
            return f"{name} lower"
        return NOT_DISTINGUISHABLE


def welch(a: GroupStats, b: GroupStats, level: float = CI_LEVEL) -> Difference:
    """A − B: the difference of the means over seeds and Welch's t interval for it.

    With s the sample std (ddof = 1): se² = s_A²/n_A + s_B²/n_B,
    df = se⁴ / ((s_A²/n_A)²/(n_A − 1) + (s_B²/n_B)²/(n_B − 1)) (Welch–Satterthwaite), and the
    interval is (mean_A − mean_B) ± t_{(1 + level)/2}(df) · se. The t quantile with few degrees of
    freedom is what keeps the interval honest with 2 or 3 seeds a side."""
    diff = a.mean - b.mean
    n = (a.n, b.n)
    if a.n < 2 or b.n < 2:
        return Difference(diff, None, None, n)
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    se2 = va + vb
    if se2 == 0:  # identical runs on both sides: nothing to widen the point by
        return Difference(diff, (diff, diff), None, n)
    from scipy import stats  # imported here: the sweep uses this module and needs no scipy

    df = se2**2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    half = float(stats.t.ppf((1 + level) / 2, df)) * math.sqrt(se2)
    return Difference(diff, (diff - half, diff + half), df, n)


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
    val = table(rows, keys, val_metric)
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
    axis of the grid through the chosen configuration, so a row's spread is over seeds only."""
    others = {k: _key(v) for k, v in anchor.items() if k != key}
    return [r for r in records(rows) if all(_key(r.get(k)) == v for k, v in others.items())]
