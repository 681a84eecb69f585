"""Seed statistics of sweep results: values on a hand-made table, noise marking, and a best
configuration chosen on validation alone (test columns never steer it)."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest

from mitp import ablation_stats as st
from mitp.sweep import results

KEYS = ["model.prompt_length", "model.hub_size", "seed"]


def hand_table() -> list[dict]:
    """Three configurations x two seeds. Config (8, 64) has the best test scores but (4, 64) the
    best validation mean; (4, 32) is 0.5 points below (4, 64) on val, well within the seed noise."""
    vals = {(4, 32): ([0.700, 0.720], [0.690, 0.700]),
            (4, 64): ([0.710, 0.720], [0.650, 0.670]),
            (8, 64): ([0.600, 0.640], [0.900, 0.880])}
    rows = []
    for (m, h), (val, test) in vals.items():
        for seed in (0, 1):
            rows.append({"trial_id": f"m{m}h{h}s{seed}", "status": results.COMPLETED, "mlflow_run_id": "", "model.prompt_length": m,
                         "model.hub_size": h, "seed": seed, "val_accuracy": val[seed], "test_accuracy": test[seed]})
    return rows


def test_group_statistics_values():
    table = {s.config: s for s in st.table(hand_table(), ["model.prompt_length", "model.hub_size"], "val_accuracy")}
    assert set(table) == {(4, 32), (4, 64), (8, 64)}
    s = table[(8, 64)]
    assert s.n == 2
    assert s.mean == pytest.approx(0.62)
    assert s.std == pytest.approx(statistics.stdev([0.60, 0.64]))
    # pooled std of three pairs: sqrt(mean of the variances), each pair with one degree of freedom
    variances = [statistics.variance(p) for p in ([0.70, 0.72], [0.71, 0.72], [0.60, 0.64])]
    assert st.seed_noise(table.values()) == pytest.approx(math.sqrt(sum(variances) / 3))


def test_differences_within_seed_noise_are_marked():
    table = {s.config: s for s in st.table(hand_table(), ["model.prompt_length", "model.hub_size"], "val_accuracy")}
    assert not table[(4, 64)].within_noise  # the best is never marked
    assert table[(4, 32)].within_noise  # 0.5 points below the best, noise about 1.7 points
    assert not table[(8, 64)].within_noise  # 9.5 points below
    # with a single seed there is no noise estimate: nothing is marked
    one_seed = [r for r in hand_table() if r["seed"] == 0]
    assert not any(s.within_noise for s in st.table(one_seed, ["model.prompt_length", "model.hub_size"], "val_accuracy"))


def test_best_configuration_is_chosen_on_validation_and_reports_its_own_test():
    best = st.select_best(hand_table(), KEYS, "val_accuracy", "test_accuracy")
    assert best.config == {"model.prompt_length": 4, "model.hub_size": 64}
    assert best.val_mean == pytest.approx(0.715) and best.n == 2
    assert best.test_mean == pytest.approx(0.66)  # its own test mean, not the 0.90 of the best-test config
    assert best.test_std == pytest.approx(statistics.stdev([0.65, 0.67]))


def test_selection_never_reads_a_test_metric():
    df = pd.DataFrame(hand_table())
    poisoned = df.assign(test_accuracy=math.nan)
    a = st.select_best(df, KEYS, "val_accuracy", "test_accuracy")
    b = st.select_best(poisoned, KEYS, "val_accuracy", "test_accuracy")
    assert a.config == b.config == {"model.prompt_length": 4, "model.hub_size": 64}
    assert b.test_mean is None and b.test_n == 0
    with pytest.raises(ValueError, match="validation"):
        st.select_best(df, KEYS, "test_accuracy", None)


def test_sweep_best_row_and_summary_follow_the_validation_mean():
    rows = hand_table()
    # the single best val trial (0.72) exists in two configs; the best config by mean is (4, 64)
    best = results.best_row(rows, "val_accuracy", "max", keys=KEYS)
    assert (best["model.prompt_length"], best["model.hub_size"]) == (4, 64)
    summary = results.best_summary(best, dataset="synthetic", sweep="demo", metric="val_accuracy", mode="max",
                                   swept_keys=KEYS, overrides={}, rows=rows, parent_run_id="p",
                                   experiment_path="x")
    stats = summary["config_stats"]
    assert stats["config"] == {"model.prompt_length": 4, "model.hub_size": 64}
    assert stats["test_accuracy_mean"] == pytest.approx(0.66) and stats["n"] == 2


def test_one_axis_through_the_chosen_configuration():
    rows = hand_table()
    line = st.along_axis(rows, "model.prompt_length", {"model.prompt_length": 4, "model.hub_size": 64})
    assert sorted((r["model.prompt_length"], r["seed"]) for r in line) == [(4, 0), (4, 1), (8, 0), (8, 1)]
    # values read back from a CSV as floats still match
    df = pd.DataFrame(rows).astype({"model.hub_size": float})
    assert len(st.along_axis(df, "model.prompt_length", {"model.prompt_length": 4, "model.hub_size": 64})) == 4
