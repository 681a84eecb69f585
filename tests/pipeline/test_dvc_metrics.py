"""The files dvc.yaml declares as `metrics` hold quality figures only (val_* / test_*, and the
sweep's mean / std of them), so `dvc metrics show / diff` and `dvc exp show` compare quality; run
ids, commits, machine tags, timings, memory and sizes live in the runs' records (plain outputs:
train_<kind>.json, seeds/, sweep_best.json, sweep.csv) and in MLflow.

Checked on the committed outputs with DVC's own reader, and on the writers: the main table's
quality files and the sweep's are written where dvc.yaml declares them, from the runs' records.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from mitp.config.params import REPO_ROOT, load_params
from mitp.sweep import results
from mitp.training import table

QUALITY = re.compile(r"^(val|test)_[a-z0-9_]+$")
# what the records hold besides quality: none of it may reach a metrics file
NOT_QUALITY = ("run_id", "git_commit", "backbone", "cache_fingerprint", "run.threads", "run.cpu_model", "seed",
               "train_time_s", "train_samples_per_s", "peak_memory_mb", "load_peak_memory_mb", "trainable_params",
               "total_params", "trainable_ratio", "materialised_params", "best_epoch", "epochs", "epochs_run")


def _declared_metrics(stage: str) -> list[str]:
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    body = stages[stage].get("do", stages[stage])
    return [next(iter(m)) if isinstance(m, dict) else m for m in body.get("metrics", [])]


def _leaves(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), obj


def test_metrics_declarations_name_the_quality_files_only():
    assert _declared_metrics("train") == ["metrics/${item}/quality"]
    assert _declared_metrics("sweep") == ["metrics/${item}/sweep_quality.json"]
    assert _declared_metrics("report") == []  # summary.json: derived figures with sizes and cost, a plain output
    assert "metrics" not in yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())


def test_the_table_writes_each_runs_quality_where_dvc_yaml_declares_it():
    params = load_params()
    runs = table.plan(params, "synthetic")
    quality_dir = params.resolve("metrics") / "synthetic" / table.QUALITY_DIR
    assert str(quality_dir.relative_to(params.resolve("."))) == _declared_metrics("train")[0].replace("${item}",
                                                                                                        "synthetic")
    names = {Path(r.quality_out).name for r in runs}
    assert all(Path(r.quality_out).parent == quality_dir for r in runs)
    assert len(names) == len(runs), "one quality file per run, extra seeds included"
    assert {Path(r.metrics_out).name for r in runs if r.seed == params.seed} <= names


def test_quality_keeps_the_figures_and_drops_lineage_and_cost():
    record = json.loads((REPO_ROOT / "metrics" / "synthetic" / "train_mitp.json").read_text())
    q = table.quality(record)
    assert q and all(QUALITY.match(k) for k in q)
    assert {k: record[k] for k in q} == q
    assert not set(q) & set(NOT_QUALITY)
    best = json.loads((REPO_ROOT / "metrics" / "synthetic" / "sweep_best.json").read_text())
    sq = results.quality(best)
    assert sq["val_accuracy"] == best["metrics"]["val_accuracy"]
    assert sq["test_accuracy_mean"] == best["config_stats"]["test_accuracy_mean"]
    assert all(QUALITY.match(k) for k in sq) and not {"trial_id", "mlflow_run_id", "trials", "config"} & set(sq)


def test_dvc_metrics_show_lists_quality_only():
    dvc = Path(sys.executable).with_name("dvc")
    out = subprocess.run([str(dvc), "metrics", "show", "--json"], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (rev,) = json.loads(out.stdout).values()  # the workspace (keyed "" by DVC 3)
    files = rev["data"]
    assert "metrics/synthetic/sweep_quality.json" in files
    assert any(f.startswith("metrics/synthetic/quality/train_mitp") for f in files)
    columns = set()
    for path, entry in files.items():
        assert "error" not in entry, (path, entry)
        for key, value in _leaves(entry["data"]):
            assert QUALITY.match(key), f"{path}: {key} is not a quality figure"
            assert isinstance(value, int | float), (path, key, value)
            columns.add(key)
    assert len(columns) <= 12, sorted(columns)
