"""The report builder: tables hold the numbers of the metrics files, comparisons carry Welch's
interval over seeds, summary sentences come from the numbers, plots are real PNGs."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from mitp.config.params import load_params
from mitp.reporting.report import ablation, build, readme_summary


def _write(metrics_dir, ds, kind, acc, trainable, **extra):
    d = metrics_dir / ds
    d.mkdir(parents=True, exist_ok=True)
    (d / f"train_{kind}.json").write_text(json.dumps({
        "test_accuracy": acc, "val_accuracy": acc + 0.01, "trainable_params": trainable, "total_params": 500_000,
        "trainable_ratio": trainable / 500_000, "peak_memory_mb": 812.0, "train_samples_per_s": 1234.5,
        "cache_fingerprint": "abc123", **extra}))
    (d / f"train_{kind}_history.json").write_text(json.dumps(
        [{"epoch": e, "val_accuracy": acc - 0.1 / e, "train_loss": 1.0 / e} for e in (1, 2, 3)]))


def test_report_tables_plots_and_summary(tmp_path):
    metrics = tmp_path / "metrics"
    _write(metrics, "synthetic", "mitp", 0.812, 27460)
    _write(metrics, "synthetic", "mitp_no_hub", 0.684, 27460)
    _write(metrics, "synthetic", "late_fusion", 0.641, 387)
    rows = [{"model.prompt_length": m, "model.hub_size": h, "test_accuracy": 0.6 + 0.01 * m + h / 1000,
             "val_accuracy": 0.7 - 0.01 * m + h / 1000, "train_time_s": 10.0 + m, "train_samples_per_s": 900.0, "peak_memory_mb": 700.0,
             "trainable_params": 1000 * m} for m in (4, 8) for h in (32, 64)]
    pd.DataFrame(rows).to_csv(metrics / "synthetic" / "sweep.csv", index=False)
    (metrics / "synthetic" / "sweep_best.json").write_text(json.dumps({"model.prompt_length": 8, "model.hub_size": 64}))

    out = tmp_path / "reports"
    summary = build(load_params(), ["synthetic"], metrics, out)
    md = (out / "report.md").read_text()
    # one run each: the mean alone (no "± 0.0"), n = 1, and no interval
    assert "| MITP | 81.2 | 1 | ? | (reference) |  |  | 27,460 |" in md
    assert "| Late fusion (frozen linear probe) | 64.1 | 1 | ? | 17.1 | - | n < 2: no interval | 387 |" in md
    assert "prompt length M" in md and "hub size h" in md
    gap = summary["synthetic"]["mitp_minus_late_fusion"]
    assert gap["mean"] == pytest.approx(0.812 - 0.641)
    assert gap["ci95"] is None and gap["n"] == [1, 1] and gap["verdict"] == "n < 2: no interval"
    assert summary["synthetic"]["mitp_minus_mitp_no_hub"]["mean"] == pytest.approx(0.812 - 0.684)
    assert summary["synthetic"]["mitp"]["test_accuracy_std"] is None  # undefined for one run
    assert "MITP's test accuracy minus that of late fusion is 17.1 points, with too few seeds" in md
    assert summary["synthetic"]["sweep"]["trials"] == 4
    # chosen on validation (M=4, h=64), not the maximum test score (M=8, h=64)
    assert abs(summary["synthetic"]["sweep"]["best_test_accuracy"] - (0.6 + 0.04 + 0.064)) < 1e-9
    assert "best (%)" not in md and "mean ± std (%)" in md
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert pngs == ["synthetic_ablation_hub_size.png", "synthetic_ablation_prompt_length.png", "synthetic_curves.png"]
    for p in pngs:
        assert (out / "figures" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{p}" in md
    assert json.loads((out / "summary.json").read_text()) == summary


def test_report_without_results_says_so(tmp_path):
    out = tmp_path / "reports"
    build(load_params(), ["synthetic"], tmp_path / "metrics", out)
    md = (out / "report.md").read_text()
    assert "_No training results for synthetic._" in md and "sweep.csv` missing" in md


def _seeds(metrics, accs: dict[str, tuple]):
    """Metrics of each kind at seed 0 (train_<kind>.json) and at seeds 1, 2, ... (seeds/ files)."""
    d = metrics / "synthetic" / "seeds"
    d.mkdir(parents=True, exist_ok=True)
    for kind, values in accs.items():
        _write(metrics, "synthetic", kind, values[0], 100, seed=0)
        for seed, acc in enumerate(values[1:], start=1):
            (d / f"train_{kind}_seed{seed}.json").write_text(json.dumps({"test_accuracy": acc, "seed": seed}))
            (d / f"train_{kind}_seed{seed}_history.json").write_text(json.dumps([{"epoch": 1, "val_accuracy": 0.1}]))


def test_main_table_over_seeds(tmp_path):
    """Each variant's mean ± sample std over its seed files (histories of other seeds are not
    runs), n and the seeds listed, and MITP − variant with Welch's interval and its verdict."""
    metrics = tmp_path / "metrics"
    # n = 3 a side with s = 0.02 everywhere: df = 4, t_{0.975, 4} = 2.776445,
    # se = sqrt(2 * 0.02^2 / 3) = 0.0163299, half-width 0.0453391 (4.5 points)
    _seeds(metrics, {"mitp": (0.84, 0.80, 0.82),  # mean 82.0
                     "pmf": (0.78, 0.82, 0.80),  # mean 80.0: 2.0 points, -2.5 to 6.5: not distinguishable
                     "late_fusion": (0.77, 0.75, 0.79),  # mean 77.0: 5.0 points, 0.5 to 9.5: MITP higher
                     "finetune": (0.66,)})  # one run: no std, no interval
    # `seed` set to one of extra_seeds: the same seed's run twice counts once
    (metrics / "synthetic" / "seeds" / "train_mitp_seed7.json").write_text(json.dumps({"test_accuracy": 0.99, "seed": 1}))

    out = tmp_path / "reports"
    summary = build(load_params(), ["synthetic"], metrics, out)
    md = (out / "report.md").read_text()
    assert "| MITP | 82.0 ± 2.0 | 3 | 0, 1, 2 | (reference) |  |  | 100 |" in md
    assert "| PMF (prompt-based baseline) | 80.0 ± 2.0 | 3 | 0, 1, 2 | 2.0 | -2.5 to 6.5 | not distinguishable | 100 |" in md
    assert "| Late fusion (frozen linear probe) | 77.0 ± 2.0 | 3 | 0, 1, 2 | 5.0 | 0.5 to 9.5 | MITP higher | 100 |" in md
    assert "| Full fine-tuning (upper bound) | 66.0 | 1 | 0 | 16.0 | - | n < 2: no interval | 100 |" in md
    assert "sample standard deviation (ddof = 1)" in md and "Welch" in md
    mitp = summary["synthetic"]["mitp"]
    assert mitp["seeds"] == 3 and mitp["test_accuracy_mean"] == pytest.approx(0.82)
    assert mitp["test_accuracy_std"] == pytest.approx(0.02)
    assert summary["synthetic"]["finetune"]["test_accuracy_std"] is None
    late = summary["synthetic"]["mitp_minus_late_fusion"]
    assert late["metric"] == "test_accuracy" and late["n"] == [3, 3] and late["verdict"] == "MITP higher"
    assert late["mean"] == pytest.approx(0.05) and late["df"] == pytest.approx(4.0)
    assert late["ci95"] == pytest.approx([0.0046609, 0.0953391], abs=1e-6)
    pmf = summary["synthetic"]["mitp_minus_pmf"]
    assert pmf["ci95"] == pytest.approx([-0.0253391, 0.0653391], abs=1e-6) and pmf["verdict"] == "not distinguishable"
    ft = summary["synthetic"]["mitp_minus_finetune"]
    assert ft["ci95"] is None and ft["n"] == [3, 1] and ft["verdict"] == "n < 2: no interval"
    assert json.loads((out / "summary.json").read_text()) == summary


def test_summary_gaps_are_means_over_seeds_not_seed_0(tmp_path):
    metrics = tmp_path / "metrics"
    # seed 0 alone: MITP - PMF = 0.70 - 0.69 = 1 point; over the two seeds: 72.0 - 70.0 = 2 points
    _seeds(metrics, {"mitp": (0.70, 0.74), "pmf": (0.69, 0.71)})
    summary = build(load_params(), ["synthetic"], metrics, tmp_path / "reports")
    gap = summary["synthetic"]["mitp_minus_pmf"]
    assert gap["mean"] == pytest.approx(0.02) and gap["n"] == [2, 2]
    # n = 2 a side: v = 0.0008/2 = 4e-4 and 0.0002/2 = 1e-4, df = (5e-4)^2 / (4e-4^2 + 1e-4^2) = 1.4706
    assert gap["df"] == pytest.approx(0.25 / 0.17)
    assert gap["ci95"][0] < 0 < gap["ci95"][1] and gap["verdict"] == "not distinguishable"


def test_generated_sentences_follow_the_numbers(tmp_path):
    metrics = tmp_path / "metrics"
    _seeds(metrics, {"mitp": (0.84, 0.80, 0.82), "pmf": (0.78, 0.82, 0.80), "late_fusion": (0.77, 0.75, 0.79),
                     "finetune": (0.90, 0.88, 0.92)})
    out = tmp_path / "reports"
    summary = build(load_params(), ["synthetic"], metrics, out)
    block = readme_summary(json.loads((out / "summary.json").read_text()))
    assert block == readme_summary(summary)
    assert block in (out / "report.md").read_text()
    assert ("- MITP's test accuracy is higher than that of late fusion by 5.0 points "
            "(95% CI 0.5 to 9.5, 3 seeds each).") in block
    assert ("- MITP's test accuracy is not distinguishable from that of PMF "
            "(difference 2.0 points, 95% CI -2.5 to 6.5, 3 seeds each).") in block
    assert ("- MITP's test accuracy is lower than that of full fine-tuning by 8.0 points "
            "(95% CI -12.5 to -3.5, 3 seeds each).") in block
    assert "| PMF | 80.0 ± 2.0 | 3 | 2.0 | -2.5 to 6.5 | not distinguishable |" in block
    # the sentences move with the numbers: the same pair, one seed less for PMF
    summary["synthetic"]["mitp_minus_pmf"].update(ci95=None, n=[3, 1], verdict="n < 2: no interval")
    assert "MITP's test accuracy minus that of PMF is 2.0 points, with too few seeds for an interval (3 and 1 seeds)" \
        in readme_summary(summary)


def test_ablation_compares_each_value_with_the_chosen_one():
    # two seeds per value on the line through the chosen configuration (h = 64, s = 0)
    rows = [{"model.hub_size": h, "model.interaction.start": 0, "seed": seed, "test_accuracy": acc}
            for h, accs in {16: (0.60, 0.62), 32: (0.70, 0.74), 64: (0.71, 0.73)}.items()
            for seed, acc in enumerate(accs)]
    rows.append({"model.hub_size": 64, "model.interaction.start": 2, "seed": 0, "test_accuracy": 0.1})  # off the line
    table, pooled = ablation(pd.DataFrame(rows), "model.hub_size", "test_accuracy",
                             anchor={"model.hub_size": 64.0, "model.interaction.start": 0})
    assert not pooled and list(table["runs"]) == [2, 2, 2]
    assert table.loc[64, "verdict"] == "(chosen)" and table.loc[64, "reference"]
    # 72 - 61 = 11 points; s = 1.41 both sides, df = 2, t_{0.975, 2} = 4.302653, se = 1.41 -> 11 ± 6.1
    assert table.loc[16, "diff"] == pytest.approx(0.11)
    assert table.loc[16, "ci95"] == "4.9 to 17.1" and table.loc[16, "verdict"] == "chosen higher"
    # 72 - 72 = 0 points: s = 2.83 and 1.41, interval wide around 0
    assert table.loc[32, "diff"] == pytest.approx(0.0, abs=1e-12) and table.loc[32, "verdict"] == "not distinguishable"
    assert math.isnan(table.loc[64, "diff"])


def test_sweep_sentences_come_from_the_ablation_records():
    from mitp.reporting.report import sweep_sentences

    sweep = {"ablations": {"model.hub_size": {"pooled": False, "fixed": {"model.interaction.start": 0}, "rows": [
        {"value": 16, "mean": 0.70, "std": 0.02, "n": 3, "reference": False, "diff": 0.06, "ci95": [0.01, 0.11],
         "verdict": "chosen higher"},
        {"value": 64, "mean": 0.76, "std": 0.02, "n": 3, "reference": True, "diff": None, "ci95": None,
         "verdict": None}]}}}
    lines = [ln for ln in sweep_sentences(sweep) if ln]
    assert lines == ["- Sweep, hub size h (model.interaction.start = 0): 70.0 ± 2.0% at 16 (3 seeds) against "
                     "76.0 ± 2.0% at the chosen 64 (3 seeds): chosen − this 6.0 points (95% CI 1.0 to 11.0), "
                     "chosen higher."]
    assert sweep_sentences({}) == []
