"""Predict labels for new image + text pairs with a trained model.

    python -m pipeline.predict --model URI --input FILE --output FILE [--batch-size N]

``--input``: CSV (a header with ``image`` and ``text``) or JSONL (one object per line with
``image`` and ``text``); image paths are relative to the input file's folder and must stay in
it. Other columns (an ``id``, ...) are copied to the output. ``--output``: CSV or JSONL (by its
extension), one row per input row, in order: ``label`` (multi-label: the classes at or above
0.5, joined by ``|``), ``prob_<class>`` for every class, and ``error`` naming what was wrong
with a row that could not be scored (missing or unreadable image, empty text, missing columns,
a line that is not JSON, a name the file system cannot take). Texts are cut before tokenizing
and images above 8.4 megapixels are refused from their header, JPEGs decoded reduced
(``mitp.models.inference``).
The output is written at once (temp file, then rename).

Exit status: 0 when at least one row was scored; 1 when every row failed (no output written);
2 for a bad command line, model or input file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from mitp.atomic import atomic_path
from mitp.errors import UserError
from mitp.models import inference
from mitp.models import trained as trained_model
from mitp.tracking.pyfunc import prediction_record
from mitp.tracking.store import tracking_uri
from mitp.training.runtime import pick_device
from pipeline import cli

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
MISSING = object()  # a row that lacks a required column


def _format(path: Path, what: str) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{what} {path}: unknown format {path.suffix!r} (use .csv or .jsonl)")
    return fmt


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Input rows as dicts; a JSONL line that is not an object becomes ``{"__error__": ...}``."""
    if not path.is_file():
        raise UserError(f"--input {path}: not found")
    if _format(path, "--input") == "csv":
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise UserError(f"--input {path}: not a readable CSV: {exc}") from None
        return frame.to_dict("records")
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            obj = {"__error__": f"line {n}: not valid JSON ({exc.msg})"}
        rows.append(obj if isinstance(obj, dict) else {"__error__": f"line {n}: not a JSON object"})
    return rows


def _inputs(rows: list[dict[str, Any]]):
    """``(image, text)`` per row; a row lacking a column yields MISSING (scored as an error)."""
    for row in rows:
        if "__error__" in row or any(c not in row for c in inference.INPUT_COLUMNS):
            yield MISSING, MISSING
        else:
            yield row["image"], row["text"]


def row_errors(rows: list[dict[str, Any]]) -> list[str | None]:
    """The errors a row has before any preprocessing (malformed line, missing columns)."""
    out = []
    for row in rows:
        missing = [c for c in inference.INPUT_COLUMNS if c not in row]
        out.append(row.get("__error__") or (f"missing columns {missing}" if missing else None))
    return out


def write_rows(path: Path, records: list[dict[str, Any]]) -> None:
    with atomic_path(path, path.suffix) as tmp:
        if _format(path, "--output") == "csv":
            pd.DataFrame(records).to_csv(tmp, index=False)
        else:
            tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in records), encoding="utf-8")


def main() -> int:
    p = cli.parser(__doc__.splitlines()[0], dataset=False)
    p.add_argument("--model", required=True, help="runs:/<id>/model, models:/<name>/<version> or a model folder")
    p.add_argument("--input", required=True, type=Path, help="CSV or JSONL with image and text columns")
    p.add_argument("--output", required=True, type=Path, help="CSV or JSONL (by extension)")
    p.add_argument("--batch-size", type=int, default=None, help="default: train.eval_batch_size")
    args = p.parse_args()
    params, _ = cli.load(args)
    _format(args.output, "--output")
    rows = read_rows(args.input)
    if not rows:
        raise UserError(f"--input {args.input}: no rows")
    tm = trained_model.load_uri(args.model, pick_device(params.train.device), tracking_uri(params.mlflow))
    preds, _ = inference.predict_rows(tm, _inputs(rows), base=args.input.resolve().parent,
                                      batch_size=args.batch_size or params.train.eval_batch_size, total=len(rows))
    records = []
    for row, early, pred in zip(rows, row_errors(rows), preds, strict=True):
        if early:
            pred = inference.Prediction(error=early)
        kept = {k: v for k, v in row.items() if k != "__error__"}
        records.append({**kept, **prediction_record(tm.labels, pred)})
    failed = sum(1 for r in records if r["error"])
    if failed == len(records):
        first = records[0]["error"]
        print(f"error: every row failed ({len(records)}); first: {first}. Nothing written to {args.output}",
              file=sys.stderr)
        return 1
    write_rows(args.output, records)
    print(f"{len(records)} rows, {failed} with errors -> {args.output}")
    return 0


if __name__ == "__main__":
    cli.run(main)
