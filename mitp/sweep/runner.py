"""Run a sweep: validate, connect to Ray, open the MLflow parent run, run or resume the Tuner,
collect the trials, and log the best one on the parent.

Where it runs: ``ray.address`` in params, else the ``RAY_ADDRESS`` environment variable, else a
local Ray sized to this machine (``ray.num_cpus`` CPUs, default all; GPUs detected). If Ray is
already initialised in this process (tests, notebooks) that instance is used as it is.

Where it writes: the Ray experiment folder ``<ray.storage_path>/<dataset>-<sweep.name>-<hash>``
(``ray.storage_path`` defaults to ``<repo>/ray_results``; a shared path or a URI on clusters).
The hash covers everything that defines the trials (the space, ``num_samples``, the scheduler,
the metric, ``sweep.train``, the base configuration and the code that computes a trial's result,
``RESULT_CODE``), so the same command resumes the same sweep and a changed sweep starts a new
folder. The folder also holds ``mitp_sweep.json`` with the MLflow parent run id, which a resumed
sweep reopens: no second parent, no duplicate children.

Resume: if the folder holds a Tune experiment, ``Tuner.restore`` continues it
(``resume_unfinished=True``, ``resume_errored=True``: unfinished and errored trials continue from
their last checkpoint; finished trials are never re-run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mitp import tracking
from mitp.config import REPO_ROOT, Params
from mitp.errors import ConfigError, UserError
from mitp.sweep import results as results_mod
from mitp.sweep.space import SweepSpace, base_raw_of, build_space, space_hash, validate_trials
from mitp.sweep.trainable import TRIAL_TAG, TrialHooks, TrialSpec, run_trial

log = logging.getLogger(__name__)

STATE_FILE = "mitp_sweep.json"
PER_EPOCH_METRICS = ("train_loss", "val_loss")


class SweepFailed(UserError):
    """Some trials ended in error after their retries (the message names them)."""


@dataclass
class SweepOutcome:
    dataset: str
    experiment_path: str
    parent_run_id: str
    metric: str
    mode: str
    rows: list[dict[str, Any]]
    best: dict[str, Any]  # the sweep_best.json content
    resumed: bool
    wall_s: float
    space: SweepSpace
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == results_mod.ERROR]

    @property
    def unfinished(self) -> list[dict[str, Any]]:
        done = (results_mod.COMPLETED, results_mod.STOPPED, results_mod.ERROR)
        return [r for r in self.rows if r["status"] not in done]

    def failure_message(self) -> str:
        lines = [f"{len(self.failed)} of {len(self.rows)} trials of the sweep on {self.dataset} ended in error "
                 "after their retries:"]
        for r in self.failed:
            cfg = ", ".join(f"{k}={r.get(k)}" for k in self.space.swept_keys)
            lines.append(f"  trial {r['trial_id']} ({cfg or 'base config'}), MLflow run {r['mlflow_run_id'] or '-'}: "
                         f"{r['error']}")
        lines.append(f"Ray experiment: {self.experiment_path} (error.txt in each trial folder); run the same command "
                     "again to retry them from their last checkpoint.")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Settings


def resolve_metric(params: Params, dataset: str) -> str:
    """``sweep.metric`` (``auto`` -> the validation score of the task's primary metric)."""
    from mitp.metrics import primary_metric

    multi = params.dataset(dataset).task == "multi_label"
    allowed = ["val_loss", "train_loss"] + [f"val_{m}" for m in
                                            (("f1_micro", "f1_macro", "f1_weighted", "f1_samples") if multi else ("accuracy",))]
    metric = params.sweep.metric
    if metric == "auto":
        return f"val_{primary_metric(multi)}"
    if metric not in allowed:
        raise ConfigError(f"sweep.metric: {metric!r} is not reported every epoch on {dataset} "
                          f"({'multi' if multi else 'single'}-label); choose one of auto, {', '.join(allowed)} "
                          "(test metrics never select a configuration)")
    return metric


def storage_root(params: Params) -> str:
    """``ray.storage_path`` as Tune takes it: an absolute local path or a URI."""
    raw = params.ray.storage_path
    if raw and "://" in raw:
        return raw.rstrip("/")
    return str(params.resolve(raw) if raw else REPO_ROOT / "ray_results")


def _fs(path: str):
    import pyarrow.fs

    if "://" not in path:
        return pyarrow.fs.LocalFileSystem(), path
    return pyarrow.fs.FileSystem.from_uri(path)


def read_state(exp_path: str) -> dict | None:
    fs, path = _fs(f"{exp_path}/{STATE_FILE}")
    try:
        with fs.open_input_stream(path) as fh:
            return json.loads(fh.read().decode())
    except (FileNotFoundError, OSError, ValueError):
        return None


def write_state(exp_path: str, state: dict) -> None:
    if "://" not in exp_path:
        from mitp.atomic import write_json

        write_json(Path(exp_path) / STATE_FILE, state)
        return
    fs, path = _fs(f"{exp_path}/{STATE_FILE}")
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as fh:
        fh.write(json.dumps(state, indent=2).encode())


def delete_experiment(exp_path: str) -> None:
    fs, path = _fs(exp_path)
    import pyarrow.fs

    if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(path)


def connect_ray(params: Params) -> bool:
    """Connect to (or start) Ray; returns True if this call did (so the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = params.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address)
    else:
        log.info("starting a local Ray (%s CPUs)", params.ray.num_cpus or "all")
        ray.init(num_cpus=params.ray.num_cpus, include_dashboard=False)
    return True


def check_resources(params: Params) -> None:
    res = params.sweep.resources_per_trial
    if params.train.device == "cuda" and res.gpu == 0:
        raise ConfigError("sweep.resources_per_trial.gpu: 0, but train.device is cuda: give each trial a GPU "
                          "share (e.g. 0.5) or set train.device=auto")
    if res.gpu > 1 and res.gpu != int(res.gpu):
        raise ConfigError(f"sweep.resources_per_trial.gpu: {res.gpu}: a trial takes a fraction of one GPU or "
                          "whole GPUs, not 1.5")


def ensure_cache(params: Params, dataset: str, say: Callable[[str], None]) -> str | None:
    """Build (or verify) the feature cache every trial reads; returns its fingerprint hash.

    It must exist before the trials start: they only ever read it.
    """
    if not params.cache.enabled:
        return None
    try:
        import mitp.cache as cache_mod
    except ImportError:
        cache_mod = None
    if cache_mod is None or not hasattr(cache_mod, "build_cache"):
        raise UserError(f"cache.enabled is true but this installation cannot build the feature cache: run "
                        f"`python -m pipeline.cache --dataset {dataset}` first, or set cache.enabled=false")
    from mitp import backbones
    from mitp.train import pick_device

    device = pick_device(params.train.device)
    bb = backbones.load(params, device)
    summary = cache_mod.build_cache(params, dataset, bb, device, progress=False, say=lambda m: log.info("%s", m))
    fingerprint = getattr(summary, "fingerprint_hash", None) or "unknown"
    say(f"feature cache of {dataset} ready (layer {params.cache.layer}, fingerprint {fingerprint})")
    return str(fingerprint)


# --------------------------------------------------------------------------------------------
# MLflow parent


def _parent_params(params: Params, dataset: str, space: SweepSpace, metric: str) -> dict[str, Any]:
    s = params.sweep
    flat: dict[str, Any] = {"dataset": dataset, "sweep.name": s.name, "sweep.num_samples": s.num_samples,
                            "sweep.trials": space.n_trials, "sweep.metric": metric, "sweep.mode": s.mode,
                            "sweep.scheduler": s.scheduler, "sweep.max_concurrent_trials": s.max_concurrent_trials,
                            "sweep.resources_per_trial.cpu": s.resources_per_trial.cpu,
                            "sweep.resources_per_trial.gpu": s.resources_per_trial.gpu,
                            "sweep.max_failures": s.max_failures}
    if s.scheduler == "asha":
        flat.update({"sweep.asha.grace_period": s.asha.grace_period, "sweep.asha.reduction_factor": s.asha.reduction_factor})
    for key, spec in space.describe().items():
        flat[f"space.{key}"] = json.dumps(spec)
    for key, value in space.train_overrides.items():
        flat[f"sweep.{key}"] = value
    return flat


def _open_parent(params: Params, dataset: str, state: dict | None) -> str | None:
    """The parent run id stored with the experiment, if that run still exists."""
    if not state or not state.get("parent_run_id"):
        return None
    mlflow = tracking.setup(params)
    try:
        run = mlflow.tracking.MlflowClient().get_run(state["parent_run_id"])
    except Exception:
        return None
    return None if run.info.lifecycle_stage == "deleted" else run.info.run_id


def _child_runs(params: Params, parent_run_id: str) -> dict[str, list]:
    """Child runs of the parent, by trial id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri(params))
    exp = client.get_experiment_by_name(params.mlflow.experiment)
    out: dict[str, list] = {}
    if exp is None:
        return out
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                  max_results=1000, page_token=token)
        for run in page:
            out.setdefault(run.data.tags.get(TRIAL_TAG, ""), []).append(run)
        token = page.token
        if not token:
            return out


def _settle_children(params: Params, rows: list[dict[str, Any]], parent_run_id: str) -> None:
    """Make each child's MLflow status match its trial's fate (a trial whose process died hard
    could not end its own run), and take the run ids from MLflow."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri(params))
    children = _child_runs(params, parent_run_id)
    for row in rows:
        runs = children.get(row["trial_id"], [])
        if not runs:
            continue
        reported = row.get("mlflow_run_id")
        run = next((r for r in runs if r.info.run_id == reported), runs[0])
        row["mlflow_run_id"] = run.info.run_id
        status = run.info.status
        try:
            if row["status"] == results_mod.ERROR and status != "FAILED":
                client.set_tag(run.info.run_id, "error", row["error"][:5000] or "trial failed")
                client.set_terminated(run.info.run_id, status="FAILED")
            elif row["status"] == results_mod.STOPPED and status != "KILLED":
                client.set_tag(run.info.run_id, "stopped_early", f"stopped by the scheduler after epoch {row.get('epoch')}")
                client.set_terminated(run.info.run_id, status="KILLED")
        except Exception as exc:
            log.warning("could not update the status of run %s: %s", run.info.run_id, exc)


def _log_best(mlflow, outcome_best: dict[str, Any], metric: str) -> None:
    if not outcome_best.get("trial_id"):
        return
    metrics = {f"best_{k}": float(v) for k, v in outcome_best.get("metrics", {}).items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    metrics[f"best_{metric}"] = float(outcome_best["value"])
    mlflow.log_metrics(metrics)
    tags = {"best.trial_id": outcome_best["trial_id"], "best.run_id": outcome_best["mlflow_run_id"],
            "best.config": json.dumps(outcome_best["config"], default=str)[:5000]}
    tags.update({f"best.{k}": str(v) for k, v in outcome_best["config"].items()})
    mlflow.set_tags(tags)


# --------------------------------------------------------------------------------------------
# Rows


def collect_rows(exp_path: str, grid, space: SweepSpace) -> list[dict[str, Any]]:
    """One row per trial, in Tune's trial order."""
    from ray import tune

    errors = {}
    for result in grid:
        if result.error is not None:
            errors[str(result.path)] = result.error
    analysis = tune.ExperimentAnalysis(exp_path)
    rows = []
    for trial in analysis.trials:
        last = dict(trial.last_result or {})
        status = results_mod.status_of(trial.status, last)
        error = ""
        if status == results_mod.ERROR:
            err = errors.get(str(trial.path))
            if err is None:
                try:
                    err = trial.get_error()
                except Exception:
                    err = "trial failed (see its error.txt)"
            error = results_mod.first_line(err)
        rows.append(results_mod.make_row(trial.trial_id, status, dict(trial.config), space.swept_keys, last,
                                         int(trial.num_failures), last.get("mlflow_run_id"), error))
    return rows


# --------------------------------------------------------------------------------------------


# The code that computes a trial's result: the sweep stage's code deps in dvc.yaml, with the
# orchestration in mitp/sweep left out (tests/sweep/test_space.py keeps the two in step). A change
# to any of it must not resume an old sweep: finished trials would be kept with stale results.
RESULT_CODE = ("model.py", "train.py", "checkpoint.py", "metrics.py", "data/loaders.py", "data/dataset.py",
               "cache", "sweep/trainable.py", "sweep/space.py")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def code_fingerprint(root: Path = PACKAGE_ROOT, files: tuple[str, ...] = RESULT_CODE) -> str:
    """sha256 over the contents of ``files`` (paths under the ``mitp`` package; folders: their .py files)."""
    h = hashlib.sha256()
    for rel in files:
        path = root / rel
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def experiment_name(params: Params, dataset: str, space: SweepSpace, metric: str) -> str:
    base = tracking.run_params(params, dataset)
    for key in ("train.device", "train.num_workers", "train.checkpoint_dir"):  # where, not what
        base.pop(key, None)
    s = params.sweep
    digest = space_hash(dataset, base, space.describe(), space.train_overrides, space.num_samples, s.scheduler,
                        s.asha.model_dump() if s.scheduler == "asha" else None, metric, s.mode,
                        code_fingerprint())
    return f"{dataset}-{s.name}-{digest}"


def _tuner(params: Params, space: SweepSpace, spec: TrialSpec, exp_name: str, storage: str, exp_path: str,
           metric: str, say: Callable[[str], None]):
    from ray import tune

    res = params.sweep.resources_per_trial
    resources = {"cpu": res.cpu, "gpu": res.gpu}
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec), resources)
    if tune.Tuner.can_restore(exp_path):
        say(f"resuming the sweep in {exp_path} (finished trials are kept, the others continue from their "
            "last checkpoint)")
        return tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True), True
    scheduler = None
    if params.sweep.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        horizon = space.max_epochs(params.train.epochs)
        grace = params.sweep.asha.grace_period
        if grace > horizon:
            raise ConfigError(f"sweep.asha.grace_period: {grace} is more than the {horizon} epochs of a trial")
        scheduler = ASHAScheduler(time_attr="epoch", max_t=horizon, grace_period=grace,
                                  reduction_factor=params.sweep.asha.reduction_factor)
    tune_config = tune.TuneConfig(metric=metric, mode=params.sweep.mode, num_samples=space.num_samples,
                                  scheduler=scheduler, max_concurrent_trials=params.sweep.max_concurrent_trials,
                                  reuse_actors=True)
    run_config = tune.RunConfig(
        name=exp_name, storage_path=storage,
        failure_config=tune.FailureConfig(max_failures=params.sweep.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        verbose=1,
    )
    return tune.Tuner(trainable, param_space=space.param_space(), tune_config=tune_config,
                      run_config=run_config), False


def run_sweep(
    params: Params,
    dataset: str,
    *,
    fresh: bool = False,
    hooks: TrialHooks | None = None,
    outputs: tuple[str | Path, str | Path] | None = None,
    say: Callable[[str], None] = log.info,
) -> SweepOutcome:
    """Run (or resume) the sweep ``params.sweep`` on ``dataset``; see the module docstring.

    ``outputs``: (csv path, best-config JSON path), written atomically before returning, also
    when trials failed. Does not raise for failed trials: check ``outcome.failed`` (the stage
    exits non-zero, naming them); raises :class:`~mitp.errors.ConfigError` before anything
    starts if a trial configuration is invalid.
    """
    t0 = time.perf_counter()
    params.dataset(dataset)
    space = build_space(params)
    metric = resolve_metric(params, dataset)
    check_resources(params)
    uri = tracking.tracking_uri(params)
    base_raw = base_raw_of(params)
    base_raw["mlflow"]["tracking_uri"] = uri  # trials on other nodes do not see this process's environment
    n_checked = validate_trials(params, space, base_raw)
    say(f"sweep {params.sweep.name} on {dataset}: {space.n_trials} trials ({n_checked} configurations validated), "
        f"metric {metric} ({params.sweep.mode}), {params.sweep.resources_per_trial.cpu:g} CPU + "
        f"{params.sweep.resources_per_trial.gpu:g} GPU per trial")
    fingerprint = ensure_cache(params, dataset, say)

    storage = storage_root(params)
    exp_name = experiment_name(params, dataset, space, metric)
    exp_path = f"{storage}/{exp_name}"
    if fresh:
        delete_experiment(exp_path)
    timings = {"setup_s": time.perf_counter() - t0}

    started = connect_ray(params)
    try:
        import ray

        alive = [n for n in ray.nodes() if n.get("Alive")]
        if len(alive) > 1 and "://" not in storage and not params.ray.storage_path:
            say(f"warning: {len(alive)} Ray nodes but ray.storage_path is not set: trial checkpoints go to "
                f"{storage} on this node; set it to a path every node mounts (or a URI) so retries on other "
                "nodes can resume")
        state = read_state(exp_path) or {}
        parent_id = _open_parent(params, dataset, state)
        tags = {**tracking.lineage_tags(params, dataset), "sweep": params.sweep.name, "ray.experiment_path": exp_path,
                "mitp.role": "sweep-parent"}
        if "model.kind" in space.swept_keys:
            tags.pop("model.kind", None)
        if fingerprint:
            tags["cache_fingerprint"] = fingerprint
        with tracking.start_run(params, run_name=f"sweep {dataset}-{params.sweep.name}", tags=tags,
                                run_id=parent_id) as parent:
            mlflow = tracking.setup(params)
            if parent_id is None:
                tracking.log_params(mlflow, _parent_params(params, dataset, space, metric))
            parent_id = parent.info.run_id
            write_state(exp_path, {"parent_run_id": parent_id, "dataset": dataset, "sweep": params.sweep.name,
                                   "experiment": exp_name, "tracking_uri": uri, "space": space.describe()})
            spec = TrialSpec(base_raw, space, dataset, params.sweep.name, exp_name, parent_id, uri,
                             params.sweep.resources_per_trial.cpu, params.sweep.resources_per_trial.gpu, hooks)
            tuner, resumed = _tuner(params, space, spec, exp_name, storage, exp_path, metric, say)
            t_fit = time.perf_counter()
            grid = tuner.fit()
            timings["tune_fit_s"] = time.perf_counter() - t_fit
            rows = collect_rows(exp_path, grid, space)
            _settle_children(params, rows, parent_id)
            best = results_mod.best_row(rows, metric, params.sweep.mode, keys=space.swept_keys)
            best_overrides = space.trial_overrides(best) if best else {}
            summary = results_mod.best_summary(best, dataset=dataset, sweep=params.sweep.name, metric=metric,
                                               mode=params.sweep.mode, swept_keys=space.swept_keys,
                                               overrides=best_overrides, rows=rows, parent_run_id=parent_id,
                                               experiment_path=exp_path)
            _log_best(mlflow, summary, metric)
            mlflow.log_metrics({"trials": len(rows), "trials_failed": summary["errors"],
                                "trials_completed": summary["completed"], "trials_stopped": summary["stopped"]})
            outcome = SweepOutcome(dataset, exp_path, parent_id, metric, params.sweep.mode, rows, summary, resumed,
                                   time.perf_counter() - t0, space, timings)
            if outputs is not None:
                results_mod.write_outputs(rows, summary, *outputs)
            if outcome.failed:
                mlflow.set_tag("error", outcome.failure_message()[:5000])
            elif outcome.unfinished:
                mlflow.set_tag("error", f"{len(outcome.unfinished)} trials did not finish (interrupted); run the "
                                        "same command again to resume")
        if outcome.failed or outcome.unfinished:
            from mlflow.tracking import MlflowClient

            MlflowClient(uri).set_terminated(parent_id, status="FAILED" if outcome.failed else "KILLED")
        outcome.wall_s = time.perf_counter() - t0
        return outcome
    finally:
        if started:
            import ray

            ray.shutdown()
