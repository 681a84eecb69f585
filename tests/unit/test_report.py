"""The report builder: tables hold the numbers of the metrics files, plots are real PNGs."""

from __future__ import annotations

import json

import pandas as pd

from mitp.config import load_params
from mitp.report import build


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
    assert "| MITP | 81.2 | 27,460 |" in md
    assert "| Late fusion (frozen linear probe) | 64.1 | 387 |" in md
    assert "prompt length M" in md and "hub size h" in md
    assert abs(summary["synthetic"]["mitp_minus_late_fusion"] - (0.812 - 0.641)) < 1e-9
    assert abs(summary["synthetic"]["mitp_minus_mitp_no_hub"] - (0.812 - 0.684)) < 1e-9
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


def test_main_table_over_seeds(tmp_path):
    """Each variant's mean ± std over its seed files (histories of other seeds are not runs), the
    seeds listed, and a mark on the variants within the pooled seed noise of the best one."""
    metrics = tmp_path / "metrics"
    accs = {"mitp": (0.70, 0.74), "pmf": (0.69, 0.71), "late_fusion": (0.50, 0.52)}
    for kind, (a0, a1) in accs.items():
        _write(metrics, "synthetic", kind, a0, 100, seed=0)
        d = metrics / "synthetic"
        (d / f"train_{kind}_seed1.json").write_text(json.dumps({"test_accuracy": a1, "seed": 1}))
        (d / f"train_{kind}_seed1_history.json").write_text(json.dumps([{"epoch": 1, "val_accuracy": 0.1}]))

    # `seed` set to one of extra_seeds: the same seed's run twice counts once
    (metrics / "synthetic" / "train_mitp_seed7.json").write_text(json.dumps({"test_accuracy": 0.99, "seed": 1}))

    out = tmp_path / "reports"
    summary = build(load_params(), ["synthetic"], metrics, out)
    md = (out / "report.md").read_text()
    # mitp 72.0 ± 2.8; pmf 70.0 ± 1.4 is 2 points below: within the pooled noise (sqrt((8+2+2)/3) = 2.0 points)
    assert "| MITP | 72.0 ± 2.8 | 0, 1 |  | 100 |" in md
    assert "| PMF (prompt-based baseline) | 70.0 ± 1.4 | 0, 1 | ≈ (within seed noise) | 100 |" in md
    assert "| Late fusion (frozen linear probe) | 51.0 ± 1.4 | 0, 1 |  | 100 |" in md
    assert "Seed noise (pooled std over seeds of one variant): 2.0 points" in md
    mitp = summary["synthetic"]["mitp"]
    assert mitp["seeds"] == 2 and abs(mitp["test_accuracy_mean"] - 0.72) < 1e-9
    assert abs(mitp["test_accuracy_std"] - 0.0282842712) < 1e-9
