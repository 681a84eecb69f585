"""Stage ``sweep``: Ray Tune over ``sweep.space``, one MLflow parent run and a child per trial.

    python -m pipeline.sweep --dataset NAME [-S key=value ...] [--csv-out PATH] [--best-out PATH] [--fresh]

Writes ``metrics/<NAME>/sweep.csv`` (one row per trial: config, final metrics, cost figures,
MLflow run id), ``metrics/<NAME>/sweep_best.json`` (the best trial by ``sweep.metric``,
with ``best.model_uri``, lineage and cost), and for DVC ``sweep_points.json`` (each trial's swept
keys, dot-free, and metrics: what ``dvc plots`` draws) and ``sweep_quality.json`` (the best
trial's and configuration's quality figures only: the ``dvc metrics`` file).
``--model-out DIR`` copies the best trial's model folder there; ``--register NAME`` (or
``mlflow.register_model``) registers it in the MLflow model registry.
Runs on ``ray.address`` / ``RAY_ADDRESS`` if set, else on a local Ray sized to this machine.
With ``cache.enabled`` the feature cache is built (or verified) first; every trial reads it.

Killed? Run the same command again: the sweep resumes (finished trials are kept, the others
continue from their last checkpoint, the same MLflow parent run is reopened). ``--fresh``
discards the sweep's Ray experiment folder and starts over (a new MLflow parent run).

``--collect [DIR]`` writes the two outputs from a sweep's Ray experiment folder alone (a cluster
job's, on shared storage; default: the folder these params and this commit name under
``ray.storage_path``): nothing trains, no Ray starts (docs/cluster.md, "Results back into
metrics/").

Exit status: 0 when every trial finished; 1 when some ended in error after their retries
(named on stderr) or did not finish; 2 for configuration errors (nothing started).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mitp.atomic import write_json
from mitp.sweep import results
from mitp.sweep.runner import collect_sweep, run_sweep
from pipeline import cli


def main() -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--csv-out", default=None, help="results table (default metrics/<dataset>/sweep.csv)")
    p.add_argument("--best-out", default=None, help="best configuration (default metrics/<dataset>/sweep_best.json)")
    p.add_argument("--points-out", default=None,
                   help="the points of dvc plots, dot-free names (default: sweep_points.json beside --csv-out)")
    p.add_argument("--quality-out", default=None,
                   help="the DVC metric: quality figures only (default: sweep_quality.json beside --best-out)")
    p.add_argument("--fresh", action="store_true", help="discard this sweep's Ray experiment folder and start over")
    p.add_argument("--model-out", default=None, help="copy the best trial's model folder here")
    p.add_argument("--register", default=None, metavar="NAME",
                   help="register the best trial's model under NAME (default mlflow.register_model)")
    p.add_argument("--collect", nargs="?", const="", default=None, metavar="DIR",
                   help="write the outputs from a finished sweep's Ray experiment folder (default: this sweep's "
                        "under ray.storage_path); trains nothing")
    args = p.parse_args()
    params, dataset = cli.load(args)
    metrics_dir = params.resolve("metrics") / dataset
    csv_out = args.csv_out or metrics_dir / "sweep.csv"
    best_out = args.best_out or metrics_dir / "sweep_best.json"
    points_out = args.points_out or Path(csv_out).parent / "sweep_points.json"
    quality_out = args.quality_out or Path(best_out).parent / "sweep_quality.json"
    # Every checkpoint forces an experiment snapshot (so old checkpoints can be pruned safely);
    # with short epochs Tune would warn about that on every epoch.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if args.collect is not None:
        outcome = collect_sweep(params, dataset, outputs=(csv_out, best_out), experiment_path=args.collect or None,
                                say=print)
    else:
        outcome = run_sweep(params, dataset, fresh=args.fresh, outputs=(csv_out, best_out), say=print,
                            model_out=args.model_out,
                            register=args.register or params.mlflow.register_model)
    write_json(points_out, results.plot_points(outcome.rows, outcome.space.swept_keys))
    write_json(quality_out, results.quality(outcome.best))

    best = outcome.best
    if best.get("trial_id"):
        cfg = ", ".join(f"{k}={v}" for k, v in best["config"].items()) or "base config"
        test = {k: v for k, v in best["metrics"].items() if k.startswith("test_")}
        shown = ", ".join(f"{k} {v:.4f}" for k, v in test.items())
        print(f"best trial {best['trial_id']} ({cfg}): {outcome.metric} {best['value']:.4f}"
              + (f", {shown}" if shown else "") + f"; MLflow run {best['mlflow_run_id']}")
    print(f"{len(outcome.rows)} trials ({best['completed']} completed, {best['stopped']} stopped early, "
          f"{best['errors']} failed) in {outcome.wall_s:.1f} s; MLflow parent run {outcome.parent_run_id or '-'}")
    if best.get("best.registered_model"):
        print(f"best model registered as {best['best.registered_model']}")
    print(f"results: {csv_out}\nbest: {best_out}\nplot points: {points_out}\nquality (DVC metric): {quality_out}")
    if outcome.failed:
        print(f"error: {outcome.failure_message()}", file=sys.stderr)
        return 1
    if outcome.unfinished:
        print(f"error: {len(outcome.unfinished)} trials did not finish (interrupted); run the same command "
              "again to resume the sweep", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    cli.run(main)
