"""What the sweep tests read back: MLflow runs and metric histories, the results table."""

from __future__ import annotations

import csv
from pathlib import Path


def mlflow_runs(params):
    """All runs of the params' experiment: (parents, children) as MLflow Run objects."""
    from mlflow.tracking import MlflowClient

    from mitp.tracking import store as tracking

    client = MlflowClient(tracking.tracking_uri(params.mlflow))
    exp = client.get_experiment_by_name(params.mlflow.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def metric_history(params, run_id: str, key: str) -> list:
    from mlflow.tracking import MlflowClient

    from mitp.tracking import store as tracking

    return MlflowClient(tracking.tracking_uri(params.mlflow)).get_metric_history(run_id, key)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def epochs_logged(params, run_id: str) -> list[int]:
    """Steps of the per-epoch ``train_loss`` (fit logs the final metrics at step 0)."""
    return sorted(m.step for m in metric_history(params, run_id, "train_loss"))
