"""The sweep's outputs: one row per trial (config, final metrics, cost figures, MLflow run id),
the best trial and the ``sweep_best.json`` content, the CSV text (the runner writes both); and
what DVC reads (``pipeline.sweep`` writes them): the points of ``dvc plots`` under dot-free names
(:func:`plot_points`) and the quality figures of ``dvc metrics`` (:func:`quality`).

Row status: ``COMPLETED`` (every epoch and test), ``STOPPED`` (by the scheduler; last epoch's
metrics, no test), ``ERROR`` (after its retries), or Tune's status of a trial never ended.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from mitp.reporting import stats as ablation_stats

COMPLETED, STOPPED, ERROR = "COMPLETED", "STOPPED", "ERROR"

# Columns after the config: the metrics a report reads, then cost figures, then bookkeeping.
COST_KEYS = ("train_time_s", "trial_wall_s", "train_samples_per_s", "peak_memory_mb", "gpu_memory_fraction_peak",
             "gpu_total_memory_mb", "trainable_params", "total_params", "trainable_ratio")
EPOCH_KEYS = ("best_epoch", "epoch", "epochs", "epochs_run")
TAIL_KEYS = ("failures", "node_id", "mlflow_run_id", "error")


def status_of(tune_status: str, last_result: dict[str, Any]) -> str:
    if tune_status == "ERROR":
        return ERROR
    if tune_status == "TERMINATED":
        if last_result.get("error"):  # reported by a diverged trial, which then ends
            return ERROR
        return COMPLETED if last_result.get("trial_done") == 1 else STOPPED
    return tune_status


def first_line(error: Any) -> str:
    if error is None:
        return ""
    text = str(error).strip()
    # Tune wraps the trial's exception; its last line names the original error
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ": " in ln and not ln.startswith(("File ", "^", "~")):
            return ln[:500]
    return (lines[-1] if lines else text)[:500]


def make_row(trial_id: str, status: str, config: dict[str, Any], keys: list[str], last: dict[str, Any],
             failures: int, run_id: str | None, error: str) -> dict[str, Any]:
    """One row: id, status, the swept keys, test then val metrics, train loss, epochs, cost, bookkeeping."""
    metrics = sorted((k for k in last if k.startswith(("val_", "test_"))), key=lambda k: (not k.startswith("test_"), k))
    return {"trial_id": trial_id, "status": status, **{key: config.get(key) for key in keys},
            **{k: last[k] for k in [*metrics, "train_loss", *EPOCH_KEYS, *COST_KEYS] if k in last},
            "failures": failures, "node_id": last.get("node_id", ""),
            "mlflow_run_id": run_id or last.get("mlflow_run_id") or "", "error": error}


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def best_row(rows: list[dict[str, Any]], metric: str, mode: str, keys: list[str] | None = None) -> dict[str, Any] | None:
    """The best trial by ``metric`` (the best epoch's validation score); completed trials first.
    With the swept ``keys``, the trial comes from the configuration with the best mean of
    ``metric`` over its seeds (:func:`mitp.reporting.stats.select_best`), never from test scores."""
    scored = [r for r in rows if is_number(r.get(metric)) and not math.isnan(r[metric])
              and r["status"] in (COMPLETED, STOPPED)]
    if not scored:
        return None
    completed = [r for r in scored if r["status"] == COMPLETED]
    if keys and metric.startswith("val_"):
        scored = ablation_stats.select_best(completed or scored, keys, metric, None, mode).rows
    sign = 1 if mode == "max" else -1
    return max(scored, key=lambda r: (r["status"] == COMPLETED, sign * r[metric]))


def to_csv(rows: list[dict[str, Any]]) -> str:
    """Rows -> CSV text; columns in first-seen order, the bookkeeping columns last."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns and k not in TAIL_KEYS]
    columns += list(TAIL_KEYS)
    if not rows:
        columns = ["trial_id", "status", *TAIL_KEYS]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return out.getvalue()


def best_summary(best: dict[str, Any] | None, *, dataset: str, sweep: str, metric: str, mode: str,
                 swept_keys: list[str], overrides: dict[str, Any], rows: list[dict[str, Any]],
                 parent_run_id: str, experiment_path: str) -> dict[str, Any]:
    """The content of ``sweep_best.json``."""
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in (COMPLETED, STOPPED, ERROR)}
    out: dict[str, Any] = {"dataset": dataset, "sweep": sweep, "metric": metric, "mode": mode, "trials": len(rows),
                           "completed": counts[COMPLETED], "stopped": counts[STOPPED], "errors": counts[ERROR],
                           "parent_run_id": parent_run_id, "ray_experiment": experiment_path}
    if best is None:
        out["best"] = None
        return out
    out.update({
        "value": best[metric],
        "trial_id": best["trial_id"],
        "mlflow_run_id": best["mlflow_run_id"],
        "config": {k: best.get(k) for k in swept_keys},
        "overrides": overrides,
        "metrics": {k: v for k, v in best.items() if k.startswith(("val_", "test_")) or k in EPOCH_KEYS + COST_KEYS},
    })
    if metric.startswith("val_"):  # the chosen configuration over its seeds: val mean picks, test is its own
        done = [r for r in rows if r["status"] == COMPLETED]
        chosen = ablation_stats.select_best(done, swept_keys, metric, "test_" + metric.removeprefix("val_"), mode)
        if chosen is not None:
            out["config_stats"] = {"config": chosen.config, "n": chosen.n, f"{metric}_mean": chosen.val_mean,
                                   f"{metric}_std": chosen.val_std, f"test_{metric[4:]}_mean": chosen.test_mean,
                                   f"test_{metric[4:]}_std": chosen.test_std, "test_n": chosen.test_n}
    return out


def plot_field(key: str) -> str:
    """A swept key's name in the files ``dvc plots`` reads: Vega-Lite reads ``model.hub_size`` as
    the field ``hub_size`` of an object ``model``, so every dot becomes ``_`` (``model_hub_size``)."""
    return key.replace(".", "_")


def plot_points(rows: list[dict[str, Any]], swept_keys: list[str]) -> list[dict[str, Any]]:
    """``sweep_points.json``: one point per trial that has a number for a metric (completed or
    stopped), with its swept keys under :func:`plot_field` names and its ``val_*`` / ``test_*``
    numbers; ``trial_id`` and ``status`` for the tooltip."""
    points = []
    for row in rows:
        figures = {k: v for k, v in row.items()
                   if k.startswith(("val_", "test_")) and is_number(v) and not math.isnan(v)}
        if not figures or row.get("status") not in (COMPLETED, STOPPED):
            continue
        points.append({"trial_id": row["trial_id"], "status": row["status"],
                       **{plot_field(k): row.get(k) for k in swept_keys}, **figures})
    return points


def quality(best: dict[str, Any]) -> dict[str, Any]:
    """``sweep_quality.json`` (a DVC metric): the quality figures of ``sweep_best.json`` only, the
    best trial's ``val_*`` / ``test_*`` (the same names as the main table's quality files, so
    ``dvc metrics show`` lines them up) and the chosen configuration's ``*_mean`` / ``*_std`` over
    its seeds; run ids, paths, counts and cost stay in ``sweep_best.json`` and ``sweep.csv``."""
    trial = {k: v for k, v in (best.get("metrics") or {}).items() if k.startswith(("val_", "test_"))}
    stats = {k: v for k, v in (best.get("config_stats") or {}).items()
             if k.startswith(("val_", "test_")) and k.endswith(("_mean", "_std")) and v is not None}
    return {**trial, **stats}


def parent_summary(summary: dict[str, Any], rows: list[dict[str, Any]], swept_keys: list[str]) -> dict[str, float]:
    """The sweep parent run's metrics, from ``summary`` (:func:`best_summary`) and the rows.

    The chosen configuration (the best mean of the validation metric over its seeds, as the
    report picks it) over its completed trials: ``best_mean_<m>`` for every ``val_*`` and
    ``test_*`` metric, ``best_std_<m>`` (sample std) when it has more than one trial, and
    ``best_n_seeds``; then ``best_trial_<metric>``, the value of the trial whose model is
    published (``best.run_id``). Without a validation metric to select on (``train_loss``), or
    without completed trials, the configuration is that trial alone."""
    metric, mode = summary["metric"], summary["mode"]
    members: list[dict[str, Any]] = []
    if metric.startswith("val_"):
        done = [r for r in rows if r["status"] == COMPLETED]
        chosen = ablation_stats.select_best(done, swept_keys, metric, None, mode) if done else None
        members = chosen.rows if chosen is not None else []
    if not members:
        members = [r for r in rows if r["trial_id"] == summary["trial_id"]]
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for r in members for k in r if k.startswith(("val_", "test_"))):
        mean, std, n = ablation_stats.mean_std(r.get(key) for r in members)
        if n:
            out[f"best_mean_{key}"] = mean
            if n > 1:
                out[f"best_std_{key}"] = std
    out["best_n_seeds"] = float(len(members))
    out[f"best_trial_{metric}"] = float(summary["value"])
    return out
