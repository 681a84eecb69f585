"""Manifests: the one format every stage after ``prepare`` reads.

``data/prepared/<ds>/{train,val,test}.parquet`` with columns ``id``, ``image`` (path, absolute
or relative to the manifest folder), ``text``, ``label`` (class name, or a list of names for
multi-label sets), plus ``labels.json`` (the ordered label list).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mitp.atomic import atomic_path, write_json
from mitp.errors import UserError

SPLITS = ("train", "val", "test")
COLUMNS = ("id", "image", "text", "label")
DIGEST_COLUMN = "image_sha256"  # optional: each row's image sha256, recorded by prepare


class ManifestError(UserError, ValueError):
    """A manifest is missing or malformed."""


@dataclass(frozen=True)
class Manifest:
    """One split: a table plus the dataset's ordered label list."""

    frame: pd.DataFrame
    labels: list[str]
    root: Path  # folder holding the manifest (relative image paths resolve against it)
    multi_label: bool

    def __len__(self) -> int:
        return len(self.frame)

    def image_path(self, i: int) -> Path:
        p = Path(self.frame["image"].iat[i])
        return p if p.is_absolute() else self.root / p


def relative_image_path(image: str | Path, manifest_dir: str | Path) -> str:
    """Store image paths relative to the manifest folder, so a moved data root still works."""
    return os.path.relpath(Path(image).resolve(), Path(manifest_dir).resolve())


def write_split(out_dir: str | Path, split: str, frame: pd.DataFrame) -> Path:
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(f"manifest {split}: missing columns {missing}")
    target = Path(out_dir) / f"{split}.parquet"
    with atomic_path(target, ".parquet") as tmp:
        keep = [*COLUMNS, *([DIGEST_COLUMN] if DIGEST_COLUMN in frame.columns else [])]
        frame.loc[:, keep].reset_index(drop=True).to_parquet(tmp, index=False)
    return target


def write_labels(out_dir: str | Path, labels: list[str]) -> Path:
    target = Path(out_dir) / "labels.json"
    write_json(target, list(labels))
    return target


def _rerun(path: Path, what: str) -> ManifestError:
    return ManifestError(f"{path}: {what}; run `python -m pipeline.prepare` for this dataset again")


def read_labels(prepared_dir: str | Path) -> list[str]:
    path = Path(prepared_dir) / "labels.json"
    if not path.exists():
        raise ManifestError(f"{path}: not found; run `python -m pipeline.prepare` for this dataset first")
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _rerun(path, f"unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ManifestError(f"{path}: expected a non-empty list of label names")
    return labels


def read_split(prepared_dir: str | Path, split: str) -> Manifest:
    prepared_dir = Path(prepared_dir)
    path = prepared_dir / f"{split}.parquet"
    if not path.exists():
        raise ManifestError(f"{path}: not found; run `python -m pipeline.prepare` for this dataset first")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a cut-short or corrupt file
        detail = " ".join(str(exc).split())[:200]
        raise _rerun(path, f"truncated or corrupt parquet manifest ({type(exc).__name__}: {detail})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(f"{path}: missing columns {missing}")
    labels = read_labels(prepared_dir)
    multi = len(frame) > 0 and not isinstance(frame["label"].iat[0], str)
    known = set(labels)
    flat = (x for v in frame["label"] for x in (v if multi else [v]))
    unknown = sorted({x for x in flat if x not in known})
    if unknown:
        raise ManifestError(f"{path}: labels not in labels.json: {unknown[:5]}")
    return Manifest(frame=frame, labels=labels, root=prepared_dir, multi_label=multi)


def manifest_hash(prepared_dir: str | Path) -> str:
    """sha256 over the three split files and labels.json (the cache fingerprint uses it)."""
    h = hashlib.sha256()
    prepared_dir = Path(prepared_dir)
    for name in [f"{s}.parquet" for s in SPLITS] + ["labels.json"]:
        path = prepared_dir / name
        if path.exists():
            h.update(name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()
