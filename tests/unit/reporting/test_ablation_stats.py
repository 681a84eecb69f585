"""Seed statistics of sweep results: values on a hand-made table, Welch's interval for a difference
of means checked against hand-computed figures, and a best configuration chosen on validation
alone (test columns never steer it)."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest

from mitp.reporting import stats as st
from mitp.sweep import results

KEYS = ["model.prompt_length", "model.hub_size", "seed"]


def hand_table() -> list[dict]:
    """Three configurations x two seeds. Config (8, 64) has the best test scores but (4, 64) the
    best validation mean; (4, 32) is 0.5 points below (4, 64) on val."""
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
    assert s.std == pytest.approx(statistics.stdev([0.60, 0.64]))  # sample std, ddof = 1: 0.0283
    assert s.std == pytest.approx(0.02 * math.sqrt(2))


def _g(values: list[float]) -> st.GroupStats:
    mean, std, n = st.mean_std(values)
    return st.GroupStats((), mean, std, n)


# Equal spreads and n = 3 a side: Welch-Satterthwaite gives exactly df = 2 (n - 1) = 4, and the
# table value t_{0.975, 4} = 2.776445 (any t table). s = 0.02 on both sides, so
# se = sqrt(0.02^2/3 + 0.02^2/3) = sqrt(0.000266667) = 0.0163299 and the half-width is
# 2.776445 * 0.0163299 = 0.0453391.
A = [0.80, 0.82, 0.84]  # mean 0.82, s 0.02
B_FAR = [0.75, 0.77, 0.79]  # mean 0.77: difference 0.05, interval 0.0047 to 0.0953 -> excludes 0
B_NEAR = [0.78, 0.80, 0.82]  # mean 0.80: difference 0.02, interval -0.0253 to 0.0653 -> includes 0
HALF = 2.776445 * math.sqrt(2 * 0.02**2 / 3)


def test_welch_interval_by_hand_distinguishable():
    d = st.welch(_g(A), _g(B_FAR))
    assert HALF == pytest.approx(0.0453391, abs=1e-7)
    assert d.mean == pytest.approx(0.05)
    assert d.df == pytest.approx(4.0)
    assert d.ci == pytest.approx((0.05 - HALF, 0.05 + HALF), abs=1e-6)
    assert d.ci == pytest.approx((0.0046609, 0.0953391), abs=1e-6)
    assert d.n == (3, 3)
    assert d.verdict("MITP") == "MITP higher"
    assert st.welch(_g(B_FAR), _g(A)).verdict("MITP") == "MITP lower"


def test_welch_interval_by_hand_not_distinguishable():
    d = st.welch(_g(A), _g(B_NEAR))
    assert d.mean == pytest.approx(0.02)
    assert d.ci == pytest.approx((0.02 - HALF, 0.02 + HALF), abs=1e-6)
    assert d.ci == pytest.approx((-0.0253391, 0.0653391), abs=1e-6)
    assert d.verdict("MITP") == st.NOT_DISTINGUISHABLE == "not distinguishable"
    # two seeds a side with the spreads of MITP (2.4 points) and PMF (0.8) in the committed report:
    # a 9.1-point gap, yet df = 1.24 and an interval that still includes 0
    d2 = st.welch(st.GroupStats((), 0.775, 0.0236, 2), st.GroupStats((), 0.684, 0.0082, 2))
    assert d2.df == pytest.approx(1.24, abs=0.01)
    assert d2.ci[0] < 0 < d2.ci[1] and d2.verdict("MITP") == "not distinguishable"


def test_welch_degrees_of_freedom_with_unequal_spreads():
    # s_A = 0.02, s_B = 0.03, n = 3 a side: v_A = 0.0004/3 = 1.3333e-4, v_B = 0.0009/3 = 3e-4,
    # df = (v_A + v_B)^2 / (v_A^2/2 + v_B^2/2) = 1.87778e-7 / 5.38889e-8 = 3.4845
    d = st.welch(_g([0.80, 0.82, 0.84]), _g([0.70, 0.73, 0.76]))
    assert d.df == pytest.approx(3.4845, abs=1e-4)
    assert d.mean == pytest.approx(0.09)
    half = (d.ci[1] - d.ci[0]) / 2
    # between the table values for df 3 (3.182446) and df 4 (2.776445), times se = 0.0208167
    assert 2.776445 * 0.0208167 < half < 3.182446 * 0.0208167


def test_single_seed_gives_no_interval():
    d = st.welch(_g([0.81]), _g(A))
    assert d.mean == pytest.approx(0.81 - 0.82)
    assert d.ci is None and d.df is None and d.n == (1, 3)
    assert d.verdict("MITP") == st.NO_INTERVAL == "n < 2: no interval"


def test_identical_runs_on_both_sides_give_a_point_interval():
    d = st.welch(_g([0.8, 0.8]), _g([0.7, 0.7]))
    assert d.ci == pytest.approx((0.1, 0.1)) and d.verdict("MITP") == "MITP higher"
    assert st.welch(_g([0.8, 0.8]), _g([0.8, 0.8])).verdict("MITP") == "not distinguishable"


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


def test_sweep_parent_summarises_the_chosen_configuration_over_its_seeds():
    """The parent run's figures are the chosen configuration's means over its seeds (what the
    report gives), with clean names; the best trial's own value is named as such."""
    rows = hand_table()
    for r in rows:  # figures a trial reports besides the metrics: never on the parent
        r.update({"best_epoch": 1, "epoch": 2, "epochs_run": 2, "train_time_s": 1.0})
    best = results.best_row(rows, "val_accuracy", "max", keys=KEYS)
    summary = results.best_summary(best, dataset="synthetic", sweep="demo", metric="val_accuracy", mode="max",
                                   swept_keys=KEYS, overrides={}, rows=rows, parent_run_id="p",
                                   experiment_path="x")
    figures = results.parent_summary(summary, rows, KEYS)
    assert figures["best_mean_val_accuracy"] == pytest.approx(0.715)
    assert figures["best_std_val_accuracy"] == pytest.approx(statistics.stdev([0.71, 0.72]))
    assert figures["best_mean_test_accuracy"] == pytest.approx(0.66)
    assert figures["best_std_test_accuracy"] == pytest.approx(statistics.stdev([0.65, 0.67]))
    assert figures["best_n_seeds"] == 2
    assert figures["best_trial_val_accuracy"] == pytest.approx(best["val_accuracy"])
    assert set(figures) == {"best_mean_val_accuracy", "best_std_val_accuracy", "best_mean_test_accuracy",
                            "best_std_test_accuracy", "best_n_seeds", "best_trial_val_accuracy"}
    # one trial per configuration (random or optuna search): its own figures, no std
    single = [rows[0]]
    one = results.best_summary(rows[0], dataset="synthetic", sweep="demo", metric="val_accuracy", mode="max",
                               swept_keys=KEYS, overrides={}, rows=single, parent_run_id="p", experiment_path="x")
    assert results.parent_summary(one, single, KEYS) == {
        "best_mean_val_accuracy": 0.70, "best_mean_test_accuracy": 0.69, "best_n_seeds": 1.0,
        "best_trial_val_accuracy": 0.70}


def test_one_axis_through_the_chosen_configuration():
    rows = hand_table()
    line = st.along_axis(rows, "model.prompt_length", {"model.prompt_length": 4, "model.hub_size": 64})
    assert sorted((r["model.prompt_length"], r["seed"]) for r in line) == [(4, 0), (4, 1), (8, 0), (8, 1)]
    # values read back from a CSV as floats still match
    df = pd.DataFrame(rows).astype({"model.hub_size": float})
    assert len(st.along_axis(df, "model.prompt_length", {"model.prompt_length": 4, "model.hub_size": 64})) == 4
