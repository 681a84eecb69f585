"""Where a sqlite tracking store keeps its artifacts: beside the database, never in the repo."""

from __future__ import annotations

from pathlib import Path


def test_artifacts_live_beside_the_sqlite_database(make_params, tmp_path):
    from mitp import tracking

    params = make_params({"mlflow.experiment": "artifacts-here"})
    mlflow = tracking.setup(params)
    location = mlflow.get_experiment_by_name("artifacts-here").artifact_location
    assert location == (tmp_path / "mlartifacts").as_uri()
    assert Path(tracking.sqlite_path(tracking.tracking_uri(params))).parent == tmp_path
