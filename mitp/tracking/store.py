"""MLflow tracking: where runs go, lineage tags, and one context manager to open a run.

Default store: ``sqlite:///<repo>/mlflow.db`` (absolute, so Ray workers in other folders write
to the same database); ``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri`` in params point at a
server on clusters. With a sqlite store, artifacts of the experiments this code creates go to
``mlartifacts/`` beside the database file (``<repo>/mlartifacts`` for the default store).
In a copy DVC made for ``dvc exp run --temp`` / ``--queue``, ``<repo>`` is the repository that
holds the copy (:func:`home_root`): the copy is deleted after the experiment.

MLflow records artifact locations as absolute paths (it resolves a relative one against the
working directory, and ``mlflow-artifacts:`` locations need a tracking server), so a copied or
moved project would go on writing into the old folder: opening a sqlite store re-points those
``mlartifacts/`` locations to the folder beside the database as it is now
(:func:`follow_store_folder`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from filelock import FileLock, Timeout

from mitp.config.params import REPO_ROOT, MlflowConfig, Params
from mitp.errors import UserError

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
STOPPED_TAG = "stopped_early"


class RunStopped(BaseException):
    """Raised inside :func:`start_run` when the run is stopped on purpose from outside (a sweep's
    scheduler ending a trial early): the run ends KILLED, not FAILED, and carries no error.
    A BaseException, like the SystemExit it stands for, so no ``except Exception`` swallows it."""


# where DVC copies the repository for `dvc exp run --temp / --queue / --dry`: <repo>/.dvc/tmp/exps/...
DVC_EXP_COPIES = (".dvc", "tmp", "exps")


def home_root(root: Path = REPO_ROOT) -> Path:
    """The repository whose history a run belongs to: ``root``, or, when ``root`` is a copy DVC
    made for an experiment (``<repo>/.dvc/tmp/exps/<copy>``, deleted once the experiment is
    committed), the repository that holds it. The default MLflow store lives there, so a queued
    experiment's runs and models are in the same ``mlflow.db`` as the workspace's."""
    parts = root.parts
    for i in range(len(parts) - len(DVC_EXP_COPIES)):
        if parts[i:i + len(DVC_EXP_COPIES)] == DVC_EXP_COPIES:
            return Path(*parts[:i])
    return root


def tracking_uri(cfg: MlflowConfig) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if cfg.tracking_uri:
        return cfg.tracking_uri
    # a `dvc exp run --temp/--queue` copy logs into its repository's store, not into the copy
    return f"sqlite:///{home_root() / 'mlflow.db'}"


# What the pipeline itself writes into the tree: a stage that rewrites them (dvc.lock after the
# first stage of a repro) does not make the code the run used any less the commit's.
PIPELINE_OUTPUTS = ("dvc.lock", "metrics", "reports")


def git_commit() -> str:
    """HEAD's commit, ``-dirty`` when tracked files other than the pipeline's outputs differ."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() or "unknown"
        excluded = [f":(exclude){p}" for p in PIPELINE_OUTPUTS]
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# The tags MLflow derives from the process that starts a run (its entry script, and the git
# commit of the repository that holds it).
SOURCE_TAGS = ("mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit",
               "mlflow.source.git.branch", "mlflow.source.git.repoURL")


def source_tags() -> dict[str, str]:
    """This process's source as MLflow would tag a run it starts (``mlflow.source.name``: the entry
    script, ``mlflow.source.type``, ``mlflow.source.git.*``); the commit is the project's HEAD when
    the entry script lies outside a git checkout (pytest, a Ray worker). A sweep computes these
    in its driver and gives them to its trials, whose own entry is Ray's ``default_worker.py``."""
    from mlflow.tracking.context.registry import resolve_tags

    tags = {k: str(v) for k, v in resolve_tags().items() if k in SOURCE_TAGS}
    if "mlflow.source.git.commit" not in tags:
        head = git_commit().removesuffix("-dirty")
        if head != "unknown":
            tags["mlflow.source.git.commit"] = head
    return tags


def lineage_tags(params: Params, dataset: str) -> dict[str, str]:
    from mitp.models.backbones import spec_from_config

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
    from mitp.config.params import to_flat_dict

    dump = params.model_dump()
    dump["data"] = {dataset: dump["data"][dataset]}
    keep = {k: dump[k] for k in ("seed", "backbone", "model", "cache", "train", "data")}
    flat = to_flat_dict(keep)
    flat["dataset"] = dataset
    return {k: ("null" if v is None else v) for k, v in flat.items()}


class TrackingError(UserError):
    """The tracking store cannot be opened, or lacks a run a checkpoint refers to."""


# Two processes creating the tables of a new sqlite store at once: the second's migration fails
# with "duplicate column name" (or "table ... already exists"); retried once, the store is complete.
_INIT_RACE = ("duplicate column name", "already exists")
STORE_LOCK_TIMEOUT_S = 300.0
_ready: set[str] = set()  # stores this process has opened


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory sqlite)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


ARTIFACTS_DIR = "mlartifacts"  # a sqlite store's artifacts: this folder beside the database

# The columns of a sqlite store that hold artifact locations: experiments, their runs, logged
# models (MLflow 3) and registered model versions.
_LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                     ("logged_models", "artifact_location"), ("model_versions", "source"),
                     ("model_versions", "storage_location"))


def artifacts_uri(db: Path) -> str:
    """Where a sqlite store at ``db`` keeps artifacts: ``file://<folder of db>/mlartifacts``."""
    return (db.parent.absolute() / ARTIFACTS_DIR).as_uri()


def _file_path(uri: str) -> Path | None:
    parts = urlsplit(uri)
    return Path(unquote(parts.path)) if parts.scheme == "file" and not parts.netloc else None


def follow_store_folder(db: Path) -> dict[str, str]:
    """Re-point the artifact locations a copied or moved sqlite store recorded in its old folder.

    Every experiment whose location is an ``mlartifacts`` folder (what :func:`setup` creates
    beside a database) other than the one beside ``db`` now is moved to that one, with the
    locations of its runs, logged models and model versions under it (the artifacts copied or
    moved along with the project are found again; new ones land in the project as it is now).
    Other locations (a server's, a bucket) are left alone. Returns ``{old: new}`` of what moved.
    Call it holding the store's lock (:func:`ensure_store` does)."""
    new = artifacts_uri(db)
    if not db.exists():
        return {}
    con = sqlite3.connect(str(db), timeout=60)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return {}
        moved = {}
        for (old,) in con.execute("SELECT DISTINCT artifact_location FROM experiments WHERE artifact_location IS NOT NULL"):
            path = _file_path(old)
            if path is not None and path.name == ARTIFACTS_DIR and old != new:
                moved[old] = new
        with con:
            for old, target in moved.items():
                for table, column in _LOCATION_COLUMNS:
                    if table in tables:
                        con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 (fixed names)
                                    f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                                    (target, len(old) + 1, old, len(old) + 1, old + "/"))
    finally:
        con.close()
    for old, target in moved.items():
        log.warning("tracking store %s was copied or moved: artifact locations re-pointed from %s to %s",
                    db, old, target)
    return moved


def ensure_store(uri: str) -> None:
    """Open the store once so that a new sqlite database gets its tables under a file lock
    (``<db>.lock`` beside it): concurrent first runs (trainings, sweep trials, the report) would
    otherwise race in MLflow's schema migration. A known race error is retried once. A sqlite
    store's artifact locations then follow its folder (:func:`follow_store_folder`)."""
    from mlflow.tracking import MlflowClient

    if uri in _ready:
        return
    db = sqlite_path(uri)
    lock: contextlib.AbstractContextManager = contextlib.nullcontext()
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(db) + ".lock", timeout=STORE_LOCK_TIMEOUT_S)
    try:
        with lock:
            for attempt in (1, 2):
                try:
                    MlflowClient(uri).search_experiments(max_results=1)
                    break
                except Exception as exc:
                    if attempt == 2 or not any(m in str(exc) for m in _INIT_RACE):
                        raise
                    log.info("tracking store %s was being initialised concurrently; retrying", uri)
            if db is not None:
                follow_store_folder(db)
    except Timeout as exc:
        raise TrackingError(f"{exc.lock_file}: another process has held the tracking store's lock for "
                            f"{STORE_LOCK_TIMEOUT_S:.0f} s; is it stuck?") from None
    _ready.add(uri)


def client(cfg: MlflowConfig):
    """An MlflowClient on the store ``mlflow:`` names, initialised (see :func:`ensure_store`)."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    ensure_store(uri)
    return MlflowClient(uri)


def setup(cfg: MlflowConfig):
    """Point MLflow at the store (initialised under a lock) and make sure the experiment exists;
    returns the module."""
    import mlflow

    ensure_store(tracking_uri(cfg))
    mlflow.set_tracking_uri(tracking_uri(cfg))
    name = cfg.experiment
    if mlflow.get_experiment_by_name(name) is None:
        db = sqlite_path(tracking_uri(cfg))
        artifacts = artifacts_uri(db) if db is not None else None
        try:
            mlflow.create_experiment(name, artifact_location=artifacts)
        except Exception:  # created concurrently by another process (sweep trials)
            if mlflow.get_experiment_by_name(name) is None:
                raise
    mlflow.set_experiment(name)
    return mlflow


@contextlib.contextmanager
def start_run(
    cfg: MlflowConfig,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    run_id: str | None = None,
) -> Iterator[Any]:
    """Open (or re-open, given ``run_id``) a run; a parent id nests it in the MLflow UI.

    An exception inside ends the run as FAILED with the error as the tag ``error``; a
    :class:`RunStopped` ends it KILLED with the reason as the tag ``stopped_early``.
    """
    mlflow = setup(cfg)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=all_tags or None,
                           nested=mlflow.active_run() is not None,
                           log_system_metrics=cfg.log_system_metrics)
    try:
        yield run
    except RunStopped as exc:
        mlflow.set_tag(STOPPED_TAG, str(exc))
        mlflow.end_run(status="KILLED")
        raise
    except BaseException as exc:
        mlflow.set_tag("error", f"{type(exc).__name__}: {exc}"[:5000])
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def resumable_run(cfg: MlflowConfig, run_id: str | None, checkpoint_dir: Path) -> str | None:
    """``run_id`` if the tracking store holds it (not deleted); otherwise None, with a warning:
    the checkpoint was written against another store (or its run was deleted), so the resumed
    training logs to a new run."""
    if run_id is None:
        return None
    from mlflow.exceptions import MlflowException

    try:
        run = client(cfg).get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        run = None
    if run is not None and run.info.lifecycle_stage != "deleted":
        return run_id
    log.warning("checkpoint %s belongs to MLflow run %s, which the tracking store %s does not hold (written "
                "against another store, or deleted): resuming into a new run", checkpoint_dir, run_id,
                tracking_uri(cfg))
    return None


def summary_metrics(final: dict[str, float]) -> dict[str, float]:
    """The selected figures of a finished run as MLflow metrics: the best epoch's ``val_*`` go
    under ``best_val_*``, because MLflow shows the latest step of ``val_*``, the last epoch's."""
    return {f"best_{k}" if k.startswith("val_") else k: v for k, v in final.items()}


def log_params(mlflow, flat: dict[str, Any]) -> None:
    """Log params in batches (MLflow caps a batch at 100); values as strings."""
    items = [(k, str(v)[:6000]) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i : i + 100]))
