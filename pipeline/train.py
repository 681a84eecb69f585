"""Train one model: ``python -m pipeline.train --dataset NAME [-S key=value ...]``.

Writes ``metrics/<dataset>/train.json`` (or ``--metrics-out``), the best epoch's trainable
weights, and one MLflow run. Resumes from its checkpoint if a previous run was interrupted (into
its MLflow run, or a new one, with a warning, if the tracking store no longer holds it). The
checkpoint folder is locked while the run lasts: the same training started twice stops the
second at once (exit status 2), naming the first.
"""

import json

from pipeline import cli


def main() -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--metrics-out", default=None, help="metrics JSON (default metrics/<dataset>/train.json)")
    p.add_argument("--history-out", default=None, help="per-epoch curves JSON (default metrics/<dataset>/train_history.json)")
    p.add_argument("--run-name", default=None, help="MLflow run name")
    p.add_argument("--fresh", action="store_true",
                   help="ignore an existing checkpoint and start over in a new MLflow run (without it, an "
                        "interrupted run resumes into its MLflow run, or into a new one with a warning if the "
                        "tracking store does not hold that run)")
    p.add_argument("--model-out", default=None, help="trained model folder (default: <run folder>/model)")
    p.add_argument("--register", default=None, metavar="NAME",
                   help="register the model under NAME in the MLflow model registry (default mlflow.register_model)")
    args = p.parse_args()
    # torch, transformers and MLflow load only once the arguments parse: `--help` and a bad
    # override answer at once
    from mitp.config.params import shown_path
    from mitp.training.fit import fit_and_record

    params, dataset = cli.load(args)
    result = fit_and_record(params, dataset, run_name=args.run_name, metrics_out=args.metrics_out,
                            history_out=args.history_out, model_out=args.model_out,
                            register=args.register or params.mlflow.register_model, fresh=args.fresh)
    shown = {k: v for k, v in result.metrics.items() if k.startswith(("test_", "val_")) or k.endswith("params")}
    print(json.dumps(shown, indent=2))
    if result.tags.get("registered_model"):
        print(f"registered model: {result.tags['registered_model']}")
    print(f"metrics: {shown_path(result.metrics_path)}")
    return 0


if __name__ == "__main__":
    cli.run(main)
