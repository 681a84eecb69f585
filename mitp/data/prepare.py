"""The prepare stage: a raw layout -> normalised manifests, label list and a report.

``prepare_dataset(params, name)`` reads the raw layout of dataset ``name`` from
``data.<name>.local_path`` if set, else ``params.raw_dir(name)``, with the reader for that
layout (``synthetic`` uses the SNLI-VE reader), verifies every unique image by decoding it
(thread pool, progress bar), and writes into ``params.prepared_dir(name)``, replacing the
folder as a whole only when everything succeeded:

* ``train.parquet``, ``val.parquet``, ``test.parquet`` (columns ``id``, ``image`` relative to
  the folder, ``text``, ``label``; see :mod:`mitp.data.manifests`),
* ``labels.json`` (the ordered label list),
* ``prepare_report.json``: records read / kept / skipped per split, skips counted by reason,
  every skip listed (split, reason, file:line, id, detail), and reader facts (source folder,
  text field, Food101 split seed, MM-IMDB genre rule).

An image used by two splits (an annotation pointing the same file into train and test) is kept
in the first of train, val, test and counted as an ``image_in_two_splits`` skip in the other.

Bad records follow ``data.<name>.bad_records``: ``skip`` (default) drops and counts them,
``fail`` stops at the first. A split that loses more than ``data.<name>.max_skip_fraction`` of
its records fails the stage; the full report is then written beside the prepared folder as
``<name>.prepare_report.failed.json`` so the user can see what went wrong.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from mitp.atomic import atomic_dir, write_json
from mitp.config.params import shown_path
from mitp.data.images import verify_images
from mitp.data.manifests import COLUMNS, DIGEST_COLUMN, SPLITS, relative_image_path, write_labels, write_split
from mitp.data.records import IN_TWO_SPLITS, BadRecordError, Record, SkipLog
from mitp.errors import ConfigError

log = logging.getLogger(__name__)

READERS = {"synthetic": "snli_ve", "snli_ve": "snli_ve", "food101": "food101", "mmimdb": "mmimdb"}


def source_dir(params, name: str) -> Path:
    """Where the raw layout is read from: ``data.<name>.local_path`` if set, else the raw dir."""
    cfg = params.dataset(name)
    if cfg.local_path:
        path = params.resolve(cfg.local_path)
        if not path.exists():
            raise ConfigError(f"data.{name}.local_path: {path} does not exist")
        return path
    return params.raw_dir(name)


def read_layout(params, name: str, base: Path, skips: SkipLog) -> tuple[dict[str, list[Record]], list[str], dict]:
    """Run the reader of ``name``'s layout: ``({split: [Record]}, labels, info)``."""
    cfg = params.dataset(name)
    reader = READERS.get(name)
    if reader == "snli_ve":
        from mitp.data import snli_ve

        images_path = getattr(cfg, "images_path", None)
        images_path = params.resolve(images_path) if images_path else None
        return snli_ve.read(base, skips, images_path=images_path)
    if reader == "food101":
        from mitp.data import food101

        return food101.read(base, skips, val_fraction=cfg.val_fraction, seed=cfg.split_seed)
    if reader == "mmimdb":
        from mitp.data import mmimdb

        return mmimdb.read(base, skips)
    raise ConfigError(f"dataset {name!r}: no reader for its raw layout (known: {', '.join(READERS)})")


def drop_cross_split_images(splits: dict[str, list[Record]], skips: SkipLog) -> None:
    """Keep each image in the first split (train, val, test) that uses it; later uses are skips."""
    owner: dict[str, str] = {}
    for split in SPLITS:
        kept = []
        for rec in splits.get(split, []):
            first = owner.setdefault(os.path.normpath(rec.image), split)
            if first == split:
                kept.append(rec)
            else:
                skips.add(split, IN_TWO_SPLITS, rec.where, id=rec.id, detail=f"{rec.image} is used by {first} already")
        splits[split] = kept


def _frame(records: list[Record], out_dir: Path, digests: dict[Path, str]) -> pd.DataFrame:
    rel: dict[Path, str] = {}  # many records share an image (SNLI-VE): resolve each path once
    for r in records:
        if r.image not in rel:
            rel[r.image] = relative_image_path(r.image, out_dir)
    return pd.DataFrame(
        {
            "id": [r.id for r in records],
            "image": [rel[r.image] for r in records],
            "text": [r.text for r in records],
            "label": [r.label if isinstance(r.label, str) else list(r.label) for r in records],
            DIGEST_COLUMN: [digests[r.image] for r in records],
        },
        columns=[*COLUMNS, DIGEST_COLUMN],
    )


def _check_losses(name: str, report: dict, max_fraction: float, failed_path: Path) -> None:
    problems = []
    for split, stats in report["splits"].items():
        total = stats["records"]
        if stats["kept"] == 0:
            problems.append(f"split {split}: no usable records out of {total}")
        elif total and stats["skipped"] / total > max_fraction:
            problems.append(
                f"split {split}: {stats['skipped']} of {total} records skipped "
                f"({stats['skipped'] / total:.1%} > data.{name}.max_skip_fraction {max_fraction:.1%}); "
                f"by reason: {stats['skipped_by_reason']}"
            )
    if problems:
        write_json(failed_path, report)
        raise BadRecordError(
            f"prepare {name}: too many bad records - " + "; ".join(problems)
            + f". Every skip is listed in {failed_path}"
        )


def prepare_dataset(params, name: str) -> dict:
    """Read, verify and write the manifests of dataset ``name``; returns the report dict."""
    cfg = params.dataset(name)
    base = source_dir(params, name)
    out_dir = params.prepared_dir(name)
    skips = SkipLog(policy=cfg.bad_records, dataset=name)

    splits, labels, info = read_layout(params, name, base, skips)
    drop_cross_split_images(splits, skips)
    read_counts = {s: len(splits.get(s, [])) + skips.count(s) for s in SPLITS}

    all_images = [r.image for s in SPLITS for r in splits.get(s, [])]
    problems, digests = verify_images(all_images, workers=cfg.verify_workers, desc=f"{name}: verify images")
    kept: dict[str, list[Record]] = {}
    for split in SPLITS:
        kept[split] = []
        for rec in splits.get(split, []):
            problem = problems.get(rec.image)
            if problem is None:
                kept[split].append(rec)
            else:
                skips.add(split, problem[0], rec.where, id=rec.id, detail=problem[1])

    report = {
        "dataset": name,
        "reader": READERS[name],
        "source": shown_path(base),
        "bad_records": cfg.bad_records,
        "max_skip_fraction": cfg.max_skip_fraction,
        "labels": len(labels),
        "splits": {
            s: {
                "records": read_counts[s],
                "kept": len(kept[s]),
                "skipped": skips.count(s),
                "skipped_by_reason": skips.by_reason(s),
            }
            for s in SPLITS
        },
        "skipped_total": skips.count(),
        "skipped_by_reason": skips.by_reason(),
        "images": {"unique": len(set(all_images)), "bad": len(problems)},
        "info": info,
        "skips": [s.as_dict() for s in skips.skips],
    }
    _check_losses(name, report, cfg.max_skip_fraction, out_dir.with_name(f"{name}.prepare_report.failed.json"))

    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            # image paths are made relative to the final folder (a sibling of tmp)
            write_split(tmp, split, _frame(kept[split], out_dir, digests))
        write_labels(tmp, labels)
        write_json(tmp / "prepare_report.json", report)
    out_dir.with_name(f"{name}.prepare_report.failed.json").unlink(missing_ok=True)
    log.info(
        "prepared %s: %s kept, %d skipped %s -> %s",
        name, {s: len(kept[s]) for s in SPLITS}, skips.count(), skips.by_reason(), out_dir,
    )
    return report
