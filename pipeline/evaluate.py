"""Evaluate a trained model on a prepared split from raw images and texts (not the feature cache).

    python -m pipeline.evaluate --model URI --dataset NAME [--split test] [--metrics-out PATH]

URI: ``runs:/<run id>/model``, ``models:/<name>/<version>`` or a local model folder (such as
``models/<dataset>/<kind>``). Writes the metrics JSON (default
``data/evaluations/<dataset>/<split>-<model>.json``) and prints the metrics as one JSON line,
last: ``{"test_accuracy": ...}`` (``test_f1_micro``, ... for multi-label sets). The model's own
logged value of the metric is in the JSON file (``logged``), to compare.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mitp.atomic import write_json
from mitp.models import inference
from mitp.models import trained as trained_model
from mitp.tracking.store import tracking_uri
from mitp.training.runtime import pick_device
from pipeline import cli


def _slug(uri: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", uri).strip("-.")[:120] or "model"


def main() -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="runs:/<id>/model, models:/<name>/<version> or a model folder")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--metrics-out", default=None, help="metrics JSON (default data/evaluations/<dataset>/...)")
    p.add_argument("--batch-size", type=int, default=None, help="default: train.eval_batch_size")
    args = p.parse_args()
    params, dataset = cli.load(args)
    tm = trained_model.load_uri(args.model, pick_device(params.train.device), tracking_uri(params.mlflow))
    result, _, manifest = inference.evaluate_split(tm, params.prepared_dir(dataset), args.split,
                                                   batch_size=args.batch_size or params.train.eval_batch_size)
    out = (Path(args.metrics_out) if args.metrics_out
           else params.resolve(f"data/evaluations/{dataset}/{args.split}-{_slug(args.model)}.json"))
    logged = {k: v for k, v in tm.card["training"]["metrics"].items() if k in result}
    write_json(out, {"model": args.model, "dataset": dataset, "split": args.split, "rows": len(manifest),
                     "run_id": tm.card["training"]["run_id"], **result, "logged": logged})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    cli.run(main)
