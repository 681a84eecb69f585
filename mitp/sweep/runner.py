"""Run a sweep: validate, connect to Ray, open the MLflow parent run, run or resume the Tuner,
collect the trials, log the best one. The Ray folder ``<ray.storage_path>/<dataset>-<sweep.name>-
<hash>`` (the hash covers all that defines the trials, :func:`result_code` too) tags the parent
run (``ray.experiment_path``), so the same command resumes both (docs/cluster.md).
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

from mitp.atomic import write_json, write_text
from mitp.code_closure import closure
from mitp.config.params import REPO_ROOT, Params, RayConfig, shown_path, to_flat_dict
from mitp.config.space import SweepSpace, base_raw_of, build_space
from mitp.errors import ConfigError
from mitp.sweep import results as results_mod
from mitp.sweep.search import param_space, search_alg, validate_trials
from mitp.sweep.trainable import TrialHooks, TrialSpec, run_trial
from mitp.tracking import store as tracking

log = logging.getLogger(__name__)

PARENT_TAG = "ray.experiment_path"


@dataclass
class SweepOutcome:
    dataset: str
    experiment_path: str
    parent_run_id: str
    metric: str
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


def resolve_metric(params: Params, dataset: str) -> str:
    """``sweep.metric`` (``auto`` -> the validation score of the task's primary metric)."""
    from mitp.models.metrics import primary_metric

    multi, metric = params.dataset(dataset).task == "multi_label", params.sweep.metric
    scores = ("f1_micro", "f1_macro", "f1_weighted", "f1_samples") if multi else ("accuracy",)
    allowed = ["val_loss", "train_loss", *(f"val_{m}" for m in scores)]
    if metric == "auto":
        return f"val_{primary_metric(multi)}"
    if metric not in allowed:
        raise ConfigError(f"sweep.metric: {metric!r} is not reported every epoch on {dataset} "
                          f"({'multi' if multi else 'single'}-label); choose one of auto, {', '.join(allowed)} "
                          "(test metrics never select a configuration)")
    return metric


def storage_root(ray_cfg: RayConfig) -> str:
    """``ray.storage_path`` as Tune takes it: an absolute local path or a URI."""
    raw = ray_cfg.storage_path
    if raw and "://" in raw:
        return raw.rstrip("/")
    return str(REPO_ROOT / raw if raw else REPO_ROOT / "ray_results")  # REPO_ROOT / an absolute path: that path


def delete_experiment(exp_path: str) -> None:
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(exp_path) if "://" in exp_path else (pyarrow.fs.LocalFileSystem(), exp_path)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(path)


def connect_ray(ray_cfg: RayConfig) -> bool:
    """Connect to (or start) Ray; returns True if this call did (so the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS")  # the param wins over the environment
    log.info("Ray: %s", f"the cluster at {address}" if address else f"local, {ray_cfg.num_cpus or 'all'} CPUs")
    if address:  # a submitted job's runtime_env (cluster/runtime_env.yaml) already sets the environment
        ray.init(address=address)
    else:  # trial processes start with tqdm's bars off (run_trial also turns them off, for any Ray)
        # no idle workers prestarted for this driver: Tune gives its trial actors a runtime_env of
        # their own, so those workers never run a trial; they only compete with the first trials
        # for the CPUs while they start (2 of them on 2 cores)
        os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
        ray.init(num_cpus=ray_cfg.num_cpus, include_dashboard=False,
                 runtime_env={"env_vars": {"TQDM_DISABLE": "1"}})
    return True


def check_resources(params: Params) -> None:
    res = params.sweep.resources_per_trial
    if res.cpu < params.train.threads:
        raise ConfigError(f"sweep.resources_per_trial.cpu: {res.cpu:g} is below train.threads {params.train.threads}: a "
                          "trial runs train.threads torch threads, as a standalone run does (so their numbers agree); "
                          "give each trial at least that many CPUs or lower train.threads")
    if params.train.device == "cuda" and res.gpu == 0:
        raise ConfigError("sweep.resources_per_trial.gpu: 0, but train.device is cuda: give each trial a GPU "
                          "share (e.g. 0.5) or set train.device=auto")
    if res.gpu > 1 and res.gpu != int(res.gpu):
        raise ConfigError(f"sweep.resources_per_trial.gpu: {res.gpu}: a trial takes a fraction of one GPU or "
                          "whole GPUs, not 1.5")


def ensure_cache(params: Params, dataset: str, say: Callable[[str], None]) -> str | None:
    """Build (or verify) the feature cache every trial reads; returns its fingerprint hash."""
    if not params.cache.enabled:
        return None
    from mitp.cache import build_cache
    from mitp.models import backbones
    from mitp.training import runtime

    device, _ = runtime.setup(params.train)  # the features depend on threads and kernels too
    summary = build_cache(params, dataset, backbones.load(params.backbone, device), device, progress=False,
                          say=lambda m: log.info("%s", m))
    say(f"feature cache of {dataset} ready (layer {params.cache.layer}, fingerprint {summary.fingerprint_hash})")
    return str(summary.fingerprint_hash)


def _parent_params(params: Params, dataset: str, space: SweepSpace, metric: str) -> dict[str, Any]:
    s = params.sweep
    skip = {"space", "train", "metric", "name"} | ({"asha"} if s.scheduler != "asha" else set())
    flat: dict[str, Any] = {"dataset": dataset, "sweep.name": s.name, "sweep.trials": space.n_trials,
                            "sweep.metric": metric, **to_flat_dict(s.model_dump(mode="json", exclude=skip), "sweep.")}
    flat.update({f"space.{key}": json.dumps(spec) for key, spec in space.describe().items()})
    flat.update({f"sweep.{key}": value for key, value in space.train_overrides.items()})
    return flat


def find_parent(params: Params, exp_path: str) -> str | None:
    """The MLflow parent run of the sweep in ``exp_path`` (the latest, if ``--fresh`` made several)."""
    runs = tracking.setup(params.mlflow).search_runs(
        experiment_names=[params.mlflow.experiment], output_format="list", max_results=1,
        filter_string=f"tags.`{PARENT_TAG}` = '{exp_path}' and tags.`mitp.role` = 'sweep-parent'",
        order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def _log_best(mlflow, outcome_best: dict[str, Any], rows: list[dict[str, Any]], swept_keys: list[str]) -> None:
    """The parent's summary: the chosen configuration's mean (and std) over its seeds, as the
    report gives it (:func:`mitp.sweep.results.parent_summary`), and which trial and run hold
    its published model (tags ``best.*``)."""
    if not outcome_best.get("trial_id"):
        return
    mlflow.log_metrics(results_mod.parent_summary(outcome_best, rows, swept_keys))
    tags = {"best.trial_id": outcome_best["trial_id"], "best.run_id": outcome_best["mlflow_run_id"],
            "best.config": json.dumps(outcome_best["config"], default=str)[:5000]}
    tags.update({f"best.{k}": str(v) for k, v in outcome_best["config"].items()})
    mlflow.set_tags(tags)


def collect_rows(exp_path: str, grid, space: SweepSpace) -> list[dict[str, Any]]:
    """One row per trial, in the order the trials were generated (their ids), whatever order Tune
    lists them in (it varies between runs of the same sweep)."""
    from ray import tune

    errors = {str(result.path): result.error for result in grid if result.error is not None}
    analysis = tune.ExperimentAnalysis(exp_path)
    rows = []
    for trial in sorted(analysis.trials, key=lambda t: t.trial_id):
        last = dict(trial.last_result or {})
        status = results_mod.status_of(trial.status, last)
        error = last.get("error", "")  # a diverged trial reports its error and ends
        if status == results_mod.ERROR and not error:
            error = results_mod.first_line(errors.get(str(trial.path)) or "trial failed (see its error.txt)")
        rows.append(results_mod.make_row(trial.trial_id, status, dict(trial.config), space.swept_keys, last,
                                         int(trial.num_failures), last.get("mlflow_run_id"), error))
    return rows


def settle_stopped_runs(uri: str, rows: list[dict[str, Any]], grace_s: float = 20.0) -> int:
    """End the MLflow runs of the trials the scheduler stopped as KILLED, without an error tag.

    A stopped trial ends its own run so (:class:`mitp.tracking.store.RunStopped`), but Tune may
    end the trial's process first (seen on a loaded machine): its run then stays RUNNING, or
    FAILED with Tune's ``SystemExit`` as its ``error`` tag (runs of older versions). A trial's
    process may also still be ending its run when the sweep returns, so a RUNNING run gets
    ``grace_s`` seconds to end itself before the driver writes over it. Returns how many runs
    the driver changed."""
    from mlflow.tracking import MlflowClient

    client, changed = MlflowClient(uri), 0
    stopped = [r for r in rows if r["status"] == results_mod.STOPPED and r.get("mlflow_run_id")]
    deadline = time.monotonic() + grace_s
    for r in stopped:
        run_id = r["mlflow_run_id"]
        try:
            run = client.get_run(run_id)
            while run.info.status == "RUNNING" and time.monotonic() < deadline:
                time.sleep(0.5)
                run = client.get_run(run_id)
            stray_error = run.data.tags.get("error", "").startswith("SystemExit")
            if run.info.status == "KILLED" and not stray_error:
                continue
            if run.info.status != "KILLED":
                client.set_terminated(run_id, status="KILLED")
            if tracking.STOPPED_TAG not in run.data.tags:
                client.set_tag(run_id, tracking.STOPPED_TAG, f"stopped by the scheduler after epoch {r.get('epoch')}")
            if stray_error:
                client.delete_tag(run_id, "error")
            changed += 1
        except Exception as exc:  # bookkeeping: never fail the sweep for it
            log.warning("could not mark run %s of stopped trial %s as KILLED: %s", run_id, r["trial_id"], exc)
    return changed


# The sweep's entry module: its import closure is the code behind a trial's numbers.
SWEEP_ENTRY = "pipeline.sweep"

# Orchestration in that closure: it starts trials, resumes them and collects their rows, but
# cannot change a trial's numbers, so editing it must resume (not restart) an existing sweep.
# Keep this list explicit and short: a file wrongly here lets a code change reuse stale trials.
ORCHESTRATION = ("mitp/sweep/runner.py", "mitp/sweep/results.py", "pipeline/sweep.py")


def result_code(repo: Path = REPO_ROOT) -> list[Path]:
    """The code that computes a trial's result (a change must not resume an old sweep): every
    project file importing ``pipeline.sweep`` can load (:func:`mitp.code_closure.closure`, the
    same closure the sweep stage's ``deps`` in ``dvc.yaml`` must cover), less ORCHESTRATION."""
    return [repo / f for f in closure([SWEEP_ENTRY], repo) if f not in ORCHESTRATION]


def code_fingerprint(repo: Path = REPO_ROOT) -> str:
    """sha256 over the paths and contents of :func:`result_code` (16 hex digits)."""
    h = hashlib.sha256()
    for f in result_code(repo):
        h.update(f.relative_to(repo).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def experiment_name(params: Params, dataset: str, space: SweepSpace, metric: str) -> str:
    base = tracking.run_params(params, dataset)
    for key in ("train.device", "train.num_workers", "train.checkpoint_dir"):  # where, not what
        base.pop(key, None)
    s = params.sweep
    parts = (dataset, base, space.describe(), space.train_overrides, space.num_samples, s.scheduler,
             s.asha.model_dump() if s.scheduler == "asha" else None, metric, s.mode, code_fingerprint())
    if s.search == "optuna":  # grid and random are the same generator (and grid's folder names stay)
        parts = (*parts, s.search, params.seed)
    return f"{dataset}-{s.name}-{hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:8]}"


def _legacy_reporter(space: SweepSpace, metric: str):
    """Tune's status table with the sweep's metric: Ray 2.60's default output shows a result's
    first four metrics (a trial reports the metric, epoch and train loss first) and ignores any
    ``progress_reporter``; with ``RAY_AIR_NEW_OUTPUT=0`` (the older output) a CLIReporter names
    the columns."""
    if os.environ.get("RAY_AIR_NEW_OUTPUT", "1") != "0":
        return None
    from ray.tune import CLIReporter

    return CLIReporter(metric_columns=[metric, "epoch", "train_loss"], parameter_columns=space.swept_keys)


def _tuner(params: Params, space: SweepSpace, spec: TrialSpec, exp_name: str, storage: str, exp_path: str,
           metric: str, say: Callable[[str], None]):
    from ray import tune

    resources = params.sweep.resources_per_trial.model_dump()  # {"cpu": ..., "gpu": ...}
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
                                  search_alg=search_alg(params, space), scheduler=scheduler,
                                  max_concurrent_trials=params.sweep.max_concurrent_trials, reuse_actors=True)
    run_config = tune.RunConfig(
        name=exp_name, storage_path=storage,
        failure_config=tune.FailureConfig(max_failures=params.sweep.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        verbose=1,
        progress_reporter=_legacy_reporter(space, metric),
    )
    return tune.Tuner(trainable, param_space=param_space(space), tune_config=tune_config,
                      run_config=run_config), False


def collect_sweep(
    params: Params,
    dataset: str,
    *,
    outputs: tuple[str | Path, str | Path],
    experiment_path: str | None = None,
    say: Callable[[str], None] = log.info,
) -> SweepOutcome:
    """Write the results table and the best configuration (``outputs``: csv, best JSON) of a sweep
    that ran elsewhere, from its Ray experiment folder alone: a cluster job's folder on shared
    storage (``experiment_path``, default ``<ray.storage_path>/<the sweep's folder name>`` for
    these params and this code). Nothing trains and no Ray starts; the MLflow parent run's id is
    filled in when the tracking store holds it. An unfinished sweep is collected as it stands
    (its rows say which trials did not finish). A missing folder is a ConfigError."""
    from ray import tune

    t0 = time.perf_counter()
    space, metric, s = build_space(params), resolve_metric(params, dataset), params.sweep
    exp_path = (experiment_path or f"{storage_root(params.ray)}/{experiment_name(params, dataset, space, metric)}").rstrip("/")
    if "://" not in exp_path:
        exp_path = str(Path(exp_path).absolute())
    if not tune.Tuner.can_restore(exp_path):
        raise ConfigError(f"--collect: no Ray experiment at {exp_path}: pass the sweep's folder "
                          "(<ray.storage_path>/<dataset>-<sweep.name>-<hash>, named in the sweep's log and in its "
                          "sweep_best.json as ray_experiment), or the same params and commit the sweep ran with")
    rows = collect_rows(exp_path, [], space)
    try:
        parent_id = find_parent(params, exp_path) or ""
    except Exception as exc:  # the cluster's tracking server may be out of reach: the table does not need it
        log.warning("could not look up the sweep's MLflow parent run: %s", exc)
        parent_id = ""
    best = results_mod.best_row(rows, metric, s.mode, keys=space.swept_keys)
    summary = results_mod.best_summary(best, dataset=dataset, sweep=s.name, metric=metric, mode=s.mode,
                                       swept_keys=space.swept_keys, rows=rows, parent_run_id=parent_id,
                                       overrides=space.trial_overrides(best) if best else {},
                                       experiment_path=shown_path(exp_path))
    if summary.get("mlflow_run_id"):  # as the sweep itself records it (publish_best); nothing is registered
        from mitp.tracking.pyfunc import MODEL_NAME

        summary["best.model_uri"] = f"runs:/{summary['mlflow_run_id']}/{MODEL_NAME}"
    write_text(outputs[0], results_mod.to_csv(rows))
    write_json(outputs[1], summary)
    say(f"collected {len(rows)} trials of {exp_path}")
    return SweepOutcome(dataset, exp_path, parent_id, metric, rows, summary, True, time.perf_counter() - t0, space)


def run_sweep(
    params: Params,
    dataset: str,
    *,
    fresh: bool = False,
    hooks: TrialHooks | None = None,
    outputs: tuple[str | Path, str | Path] | None = None,
    say: Callable[[str], None] = log.info,
    model_out: str | Path | None = None,
    register: str | None = None,
) -> SweepOutcome:
    """Run (or resume) the sweep ``params.sweep`` on ``dataset``.

    ``outputs``: (csv path, best JSON path), written also when trials failed (``outcome.failed``;
    never raised). ``model_out``/``register``: copy / register the best trial's model. A bad trial
    configuration raises ConfigError before anything starts."""
    t0 = time.perf_counter()
    space, metric, s = build_space(params), resolve_metric(params, dataset), params.sweep
    check_resources(params)
    uri = tracking.tracking_uri(params.mlflow)
    base_raw = base_raw_of(params)
    base_raw["mlflow"]["tracking_uri"] = uri  # trials on other nodes do not see this process's environment
    n_checked = validate_trials(params, space, base_raw)
    say(f"sweep {s.name} on {dataset}: {space.n_trials} trials ({n_checked} configurations validated), metric "
        f"{metric} ({s.mode}), {s.resources_per_trial.cpu:g} CPU + {s.resources_per_trial.gpu:g} GPU per trial")
    fingerprint = ensure_cache(params, dataset, say)
    storage = storage_root(params.ray)
    exp_name = experiment_name(params, dataset, space, metric)
    exp_path = f"{storage}/{exp_name}"
    if fresh:
        delete_experiment(exp_path)
    timings = {"setup_s": time.perf_counter() - t0}

    started = connect_ray(params.ray)
    try:
        import ray

        alive = [n for n in ray.nodes() if n.get("Alive")]
        if len(alive) > 1 and "://" not in storage and not params.ray.storage_path:
            say(f"warning: {len(alive)} Ray nodes but ray.storage_path is not set: trial checkpoints go to "
                f"{storage} on this node; set it to a path every node mounts (or a URI) so retries on other "
                "nodes can resume")
        parent_id = None if fresh else find_parent(params, exp_path)
        source = tracking.source_tags()  # the parent's, given to every trial run as well
        tags = {**tracking.lineage_tags(params, dataset), **source, "sweep": s.name, PARENT_TAG: exp_path,
                "mitp.role": "sweep-parent", **({"cache_fingerprint": fingerprint} if fingerprint else {})}
        if "model.kind" in space.swept_keys:
            tags.pop("model.kind", None)
        with tracking.start_run(params.mlflow, run_name=f"sweep {dataset}-{s.name}", tags=tags, run_id=parent_id) as parent:
            mlflow = tracking.setup(params.mlflow)
            if parent_id is None:
                tracking.log_params(mlflow, _parent_params(params, dataset, space, metric))
            parent_id = parent.info.run_id
            spec = TrialSpec(base_raw, space, dataset, s.name, exp_name, parent_id, uri, s.resources_per_trial.cpu,
                             s.resources_per_trial.gpu, metric, hooks,
                             run_tags={**source, "git_commit": tags["git_commit"]})
            tuner, resumed = _tuner(params, space, spec, exp_name, storage, exp_path, metric, say)
            t_fit = time.perf_counter()
            grid = tuner.fit()
            timings["tune_fit_s"] = time.perf_counter() - t_fit
            rows = collect_rows(exp_path, grid, space)
            settle_stopped_runs(uri, rows)
            best = results_mod.best_row(rows, metric, s.mode, keys=space.swept_keys)
            summary = results_mod.best_summary(best, dataset=dataset, sweep=s.name, metric=metric, mode=s.mode,
                                               swept_keys=space.swept_keys, rows=rows, parent_run_id=parent_id,
                                               overrides=space.trial_overrides(best) if best else {},
                                               experiment_path=shown_path(exp_path))
            _log_best(mlflow, summary, rows, space.swept_keys)
            if summary.get("mlflow_run_id"):  # the best trial's model: tagged, copied, registered
                from mitp.tracking.pyfunc import publish_best

                summary.update(publish_best(summary["mlflow_run_id"], model_out, register))
            mlflow.log_metrics({"trials": len(rows), "trials_failed": summary["errors"],
                                "trials_completed": summary["completed"], "trials_stopped": summary["stopped"]})
            outcome = SweepOutcome(dataset, exp_path, parent_id, metric, rows, summary, resumed, 0.0, space, timings)
            if outputs is not None:
                write_text(outputs[0], results_mod.to_csv(rows))
                write_json(outputs[1], summary)
            if outcome.failed or outcome.unfinished:
                mlflow.set_tag("error", outcome.failure_message()[:5000] if outcome.failed else
                               f"{len(outcome.unfinished)} trials did not finish (interrupted); run the same "
                               "command again to resume")
        if outcome.failed or outcome.unfinished:
            from mlflow.tracking import MlflowClient

            MlflowClient(uri).set_terminated(parent_id, status="FAILED" if outcome.failed else "KILLED")
        outcome.wall_s = time.perf_counter() - t0
        return outcome
    finally:
        if started:
            ray.shutdown()
