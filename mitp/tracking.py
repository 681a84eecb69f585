"""MLflow tracking: where runs go, lineage tags, and one context manager to open a run.

Default store: ``sqlite:///<repo>/mlflow.db`` (absolute, so Ray workers in other folders write
to the same database); ``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri`` in params point at a
server on clusters. Artifacts go to ``<repo>/mlartifacts`` for experiments this code creates.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from typing import Any

from mitp.config import REPO_ROOT, Params

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"


def tracking_uri(params: Params) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if params.mlflow.tracking_uri:
        return params.mlflow.tracking_uri
    return f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lineage_tags(params: Params, dataset: str) -> dict[str, str]:
    from mitp.backbones import spec_from_config

    spec = spec_from_config(params.backbone)
    return {
        "git_commit": git_commit(),
        "dataset": dataset,
        "backbone": spec.name,
        "backbone.vision": spec.vision,
        "backbone.text": spec.text,
        "model.kind": params.model.kind,
    }


def run_params(params: Params, dataset: str) -> dict[str, Any]:
    """The flat params of one training run: the sections it reads (data only of its dataset)."""
    from mitp.config import to_flat_dict

    dump = params.model_dump()
    dump["data"] = {dataset: dump["data"][dataset]}
    keep = {k: dump[k] for k in ("seed", "backbone", "model", "cache", "train", "data")}
    flat = to_flat_dict(keep)
    flat["dataset"] = dataset
    return {k: ("null" if v is None else v) for k, v in flat.items()}


def setup(params: Params):
    """Point MLflow at the store and make sure the experiment exists; returns the module."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(params))
    name = params.mlflow.experiment
    if mlflow.get_experiment_by_name(name) is None:
        artifacts = None
        if tracking_uri(params).startswith("sqlite:"):
            artifacts = (REPO_ROOT / "mlartifacts").as_uri()
        try:
            mlflow.create_experiment(name, artifact_location=artifacts)
        except Exception:  # created concurrently by another process (sweep trials)
            if mlflow.get_experiment_by_name(name) is None:
                raise
    mlflow.set_experiment(name)
    return mlflow


@contextlib.contextmanager
def start_run(
    params: Params,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    run_id: str | None = None,
) -> Iterator[Any]:
    """Open (or re-open, given ``run_id``) a run; a parent id nests it in the MLflow UI.

    An exception inside ends the run as FAILED with the error as the tag ``error``.
    """
    mlflow = setup(params)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=all_tags or None,
                           nested=mlflow.active_run() is not None)
    try:
        yield run
    except BaseException as exc:
        mlflow.set_tag("error", f"{type(exc).__name__}: {exc}"[:5000])
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def log_params(mlflow, flat: dict[str, Any]) -> None:
    """Log params in batches (MLflow caps a batch at 100); values as strings."""
    items = [(k, str(v)[:6000]) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i : i + 100]))
