"""Reader of the UPMC-Food101 raw layout (the Kaggle ``gianmarco96/upmcfood101`` copy).

Layout (wrapper folders around it, and the extra ``images/images/`` level some copies have,
are found)::

    images/train/<class>/<file>.jpg     images/test/<class>/<file>.jpg
    texts/train_titles.csv              texts/test_titles.csv

The CSV files have no header and the columns ``image_filename,title,class``; fields may be
double-quoted (read with a real CSV parser). The class is taken from the CSV column and the
image is looked up in that class's folder - never parsed from the file name (some test names
are ``cheese_plate_717-10.jpg``). The text is the page title (``text_source: titles``).

Splits: the official train/test; ``val`` is a seeded, stratified ``val_fraction`` of train
(per class: ids sorted, shuffled with ``random.Random(seed)``, the first
``round(n * val_fraction)`` go to val). The seed and fraction are recorded in the report.
Ids are ``<source split>/<file stem>`` (``train/apple_pie_12``), so val ids say where they
came from. Rows rejected while reading train_titles.csv count as ``train`` skips in the report
(they are dropped before val is carved); image problems count in the split the record fell in.
The label list is the sorted class folders of ``images/train``.

Untrusted fields: an ``image_filename`` must be a plain file name (``../x`` or ``/x`` is an
``unsafe_path`` skip, see :mod:`mitp.data.safe_names`) and the class one of the folders;
a row with bytes that are not UTF-8 is ``not_utf8``; an unterminated quote is caught (see
:func:`read_titles`).
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from pathlib import Path

from mitp.config.params import shown_path
from mitp.data.layout import LayoutError, find_root
from mitp.data.records import (
    DUPLICATE_ID,
    EMPTY_TEXT,
    MALFORMED,
    NOT_UTF8,
    UNKNOWN_LABEL,
    UNSAFE_PATH,
    Record,
    SkipLog,
)
from mitp.data.safe_names import child_path, unsafe_reason

SOURCE_SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

KAGGLE_SLUG = "gianmarco96/upmcfood101"


def locate(base: str | Path) -> Path:
    """The folder holding ``images/`` and ``texts/``."""
    return find_root(base, ["images", "texts"], what="UPMC-Food101 (images/, texts/)")


def _images_root(root: Path) -> Path:
    for candidate in (root / "images", root / "images" / "images"):
        if (candidate / "train").is_dir():
            return candidate
    raise LayoutError(f"{root / 'images'}: no train/ folder of class folders (nor images/images/train)")


def _csv_path(root: Path, split: str) -> Path:
    for candidate in (root / "texts" / f"{split}_titles.csv", root / "texts" / "texts" / f"{split}_titles.csv"):
        if candidate.is_file():
            return candidate
    raise LayoutError(f"{root / 'texts'}: {split}_titles.csv not found")


def _is_utf8(field: str) -> bool:
    """False for text read with ``surrogateescape`` that held bytes which are not UTF-8."""
    try:
        field.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_titles(path: Path, split: str, images: Path, classes: set[str], log: SkipLog) -> list[Record]:
    """Records of one ``<split>_titles.csv``; bad rows go to ``log``.

    A row is one physical line: a field holding a line break means a quote was left open and
    swallowed the lines after it, each of which counts as a ``malformed_line`` skip (so the
    records read stay one per line). Bytes that are not UTF-8 make the row a ``not_utf8`` skip.
    """
    records: list[Record] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh)
        while True:
            first = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                log.add(split, MALFORMED, f"{path}:{reader.line_num}", detail=f"CSV error: {exc}")
                continue
            where = f"{path}:{reader.line_num}"
            if reader.line_num > first or any("\n" in c or "\r" in c for c in row):
                for line in range(first, reader.line_num + 1):
                    log.add(split, MALFORMED, f"{path}:{line}",
                            detail=f"inside a quote opened on line {first} and not closed before line {reader.line_num}")
                continue
            if not row or all(not c.strip() for c in row):
                continue
            if not all(_is_utf8(c) for c in row):
                log.add(split, NOT_UTF8, where, detail="bytes that are not UTF-8")
                continue
            if len(row) != 3:
                log.add(split, MALFORMED, where, detail=f"expected 3 fields (image_filename,title,class), got {len(row)}")
                continue
            fname, title, label = (c.strip() for c in row)
            if reader.line_num == 1 and not fname.lower().endswith(IMAGE_SUFFIXES):
                continue  # a header row, in copies that added one
            rid = f"{split}/{Path(fname).stem}"
            text = " ".join(title.split())
            if not text:
                log.add(split, EMPTY_TEXT, where, id=rid, detail="empty title")
                continue
            if label not in classes:
                log.add(split, UNKNOWN_LABEL, where, id=rid, detail=f"class {label!r} has no folder in {images}")
                continue
            image = child_path(images / split / label, fname)
            if image is None:
                log.add(split, UNSAFE_PATH, where, id=rid, detail=f"image_filename: {unsafe_reason(fname)}")
                continue
            if rid in seen:
                log.add(split, DUPLICATE_ID, where, id=rid, detail=f"{fname} listed twice")
                continue
            seen.add(rid)
            records.append(Record(id=rid, image=image, text=text, label=label, where=where))
    return records


def carve_val(train: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Seeded, stratified split of ``train`` into (train, val); order within each kept stable."""
    by_class: dict[str, list[Record]] = defaultdict(list)
    for rec in train:
        by_class[rec.label].append(rec)
    val_ids: set[str] = set()
    for label in sorted(by_class):
        ids = sorted(r.id for r in by_class[label])
        random.Random(f"{seed}:{label}").shuffle(ids)
        val_ids.update(ids[: round(len(ids) * fraction)])
    return [r for r in train if r.id not in val_ids], [r for r in train if r.id in val_ids]


def read(base: str | Path, log: SkipLog, val_fraction: float = 0.1, seed: int = 0) -> tuple[dict, list[str], dict]:
    """All splits: ``({split: [Record]}, sorted classes, info)``."""
    root = locate(base)
    images = _images_root(root)
    labels = sorted(p.name for p in (images / "train").iterdir() if p.is_dir() and not p.name.startswith("."))
    if not labels:
        raise LayoutError(f"{images / 'train'}: no class folders")
    classes = set(labels)
    source = {s: read_titles(_csv_path(root, s), s, images, classes, log) for s in SOURCE_SPLITS}
    train, val = carve_val(source["train"], val_fraction, seed)
    info = {
        "root": shown_path(root),
        "text": "titles",
        "val_from_train": {"fraction": val_fraction, "seed": seed, "stratified": True},
    }
    return {"train": train, "val": val, "test": source["test"]}, labels, info
