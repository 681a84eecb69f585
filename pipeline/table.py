"""Train the main table: ``python -m pipeline.table --dataset NAME [--jobs N] [-S key=value ...]``.

Every model kind on ``seed`` and each of ``extra_seeds``, ``--jobs`` trainings at a time (default:
the CPUs over ``train.threads``), each exactly as ``python -m pipeline.train -S model.kind=K
-S seed=N --fresh`` trains it (mitp/training/table.py). Writes ``metrics/<dataset>/train_<kind>[_seed<N>].json``
and their histories, each run's quality figures in ``metrics/<dataset>/quality/`` (the DVC
metrics), and ``models/<dataset>/<kind>``; one MLflow run per training. A failed
training is named at the end (exit status 2) after the others finish.
"""

from pipeline import cli


def main() -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="trainings at a time (default: CPUs // train.threads; 1 on CUDA); the numbers do not depend on it")
    p.add_argument("--kinds", default=None, metavar="K1,K2",
                   help="only these model kinds (default: all of them)")
    p.add_argument("--metrics-dir", default="metrics", help="metrics root (default metrics/: <dir>/<dataset>/train_<kind>.json)")
    p.add_argument("--models-dir", default="models", help="models root (default models/: <dir>/<dataset>/<kind>)")
    args = p.parse_args()
    from mitp.errors import UserError
    from mitp.training import table

    params, dataset = cli.load(args)
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs: {args.jobs}; give at least 1")
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip()) if args.kinds else None
    runs = table.plan(params, dataset, kinds, metrics_dir=args.metrics_dir, models_dir=args.models_dir)
    outcome = table.run_table(params, dataset, runs, params_path=args.params, cli_overrides=args.overrides,
                              jobs=args.jobs or table.default_jobs(params), say=lambda m: print(m, flush=True))
    print(f"{len(outcome.done)} of {len(runs)} trainings done in {outcome.wall_s:.0f} s")
    if outcome.failed:
        raise UserError(table.failure_message(outcome))
    return 0


if __name__ == "__main__":
    cli.run(main)
