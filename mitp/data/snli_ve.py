"""Reader of the SNLI-VE raw layout (also the layout of the generated ``synthetic`` set).

Layout (any wrapper folders around it are found)::

    snli_ve_train.jsonl  snli_ve_dev.jsonl  snli_ve_test.jsonl
    flickr30k-images/<Flickr30K_ID>.jpg     (or flickr30k_images/, or data.snli_ve.images_path)

One JSON object per line. The text input is ``sentence2`` (the hypothesis) only: ``sentence1``
is the premise caption of the very image and leaks the answer, so it is never read. The image
id is ``Flickr30K_ID``; the misspellings ``Flikr30kID`` and ``Flickr30kID`` found in public
copies are accepted too. ``gold_label`` must be one of :data:`LABELS` (case and surrounding
spaces ignored). The example id is ``pairID`` when present, else ``<split>-<line>``.
Source split ``dev`` becomes ``val``.

Untrusted fields: the image id must be a plain file name (:mod:`mitp.data.safe_names`; an id
like ``../../outside/secret`` or ``/etc/x`` is an ``unsafe_path`` skip), and each line must be
valid UTF-8 (else a ``not_utf8`` skip, never a silent U+FFFD).
"""

from __future__ import annotations

import json
from pathlib import Path

from mitp.config.params import shown_path
from mitp.data.layout import LayoutError, find_dir, find_root
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

LABELS = ["entailment", "neutral", "contradiction"]
SPLIT_FILES = {"train": "snli_ve_train.jsonl", "val": "snli_ve_dev.jsonl", "test": "snli_ve_test.jsonl"}
ID_KEYS = ("Flickr30K_ID", "Flikr30kID", "Flickr30kID")
IMAGE_DIRS = ("flickr30k-images", "flickr30k_images", "Flickr30k-images", "Flickr30k_images")

FLICKR30K_HELP = (
    "SNLI-VE images are the Flickr30k images, which are not downloaded for you: they are "
    "distributed for non-commercial research use under the Flickr30k terms "
    "(request them at https://shannon.cs.illinois.edu/DenotationGraph/ ; the Kaggle copy "
    "`hsankesara/flickr-image-dataset` carries the same terms). Once you have the folder of "
    "<id>.jpg files, either set `data.snli_ve.images_path: /path/to/flickr30k-images` in "
    "params.yaml (or pass `-S data.snli_ve.images_path=/path/to/flickr30k-images`), or put the "
    "folder at {where}"
)


def locate(base: str | Path) -> Path:
    """The folder holding the three ``snli_ve_*.jsonl`` files."""
    return find_root(base, list(SPLIT_FILES.values()), what="SNLI-VE (snli_ve_{train,dev,test}.jsonl)")


def image_dir(root: str | Path, images_path: str | Path | None = None) -> Path:
    """The Flickr30k image folder: ``images_path`` if given, else one found under ``root``."""
    if images_path is not None:
        path = Path(images_path)
        if not path.is_dir():
            raise LayoutError(f"data.snli_ve.images_path: {path} is not a folder")
        inner = find_dir(path, IMAGE_DIRS, max_depth=0)
        return inner or path
    found = find_dir(root, IMAGE_DIRS, max_depth=2)
    if found is None:
        raise LayoutError(
            f"{root}: no flickr30k-images/ folder next to the annotations. "
            + FLICKR30K_HELP.format(where=Path(root) / "flickr30k-images")
        )
    return found


def _image_id(obj: dict) -> str | None:
    for key in ID_KEYS:
        if key in obj and obj[key] not in (None, ""):
            value = str(obj[key]).strip()
            return value[: -len(".jpg")] if value.endswith(".jpg") else value
    return None


def read_split(path: Path, split: str, images: Path, log: SkipLog) -> list[Record]:
    """Records of one ``snli_ve_<split>.jsonl`` file; bad lines go to ``log``."""
    records: list[Record] = []
    seen: set[str] = set()
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                log.add(split, NOT_UTF8, where, detail=f"byte {exc.start}: {raw[exc.start:exc.start + 4]!r}")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                log.add(split, MALFORMED, where, detail=f"not JSON: {exc.msg}")
                continue
            if not isinstance(obj, dict):
                log.add(split, MALFORMED, where, detail="not a JSON object")
                continue
            rid = str(obj["pairID"]).strip() if obj.get("pairID") not in (None, "") else f"{split}-{lineno}"
            fid = _image_id(obj)
            if fid is None:
                log.add(split, MALFORMED, where, id=rid, detail=f"no image id ({' / '.join(ID_KEYS)})")
                continue
            text = obj.get("sentence2")
            if not isinstance(text, str):
                log.add(split, MALFORMED if text is not None else EMPTY_TEXT, where, id=rid,
                        detail="no sentence2 (the hypothesis)")
                continue
            text = " ".join(text.split())
            if not text:
                log.add(split, EMPTY_TEXT, where, id=rid, detail="empty sentence2")
                continue
            label = obj.get("gold_label")
            label = label.strip().lower() if isinstance(label, str) else label
            if label not in LABELS:
                log.add(split, UNKNOWN_LABEL, where, id=rid, detail=f"gold_label {obj.get('gold_label')!r}")
                continue
            image = child_path(images, f"{fid}.jpg")
            if image is None:
                log.add(split, UNSAFE_PATH, where, id=rid, detail=f"image file: {unsafe_reason(fid + '.jpg')}")
                continue
            if rid in seen:
                log.add(split, DUPLICATE_ID, where, id=rid, detail="pairID seen before in this file")
                continue
            seen.add(rid)
            records.append(Record(id=rid, image=image, text=text, label=label, where=where))
    return records


def read(base: str | Path, log: SkipLog, images_path: str | Path | None = None) -> tuple[dict, list[str], dict]:
    """All three splits: ``({split: [Record]}, LABELS, info)``."""
    root = locate(base)
    images = image_dir(root, images_path)
    splits = {split: read_split(root / fname, split, images, log) for split, fname in SPLIT_FILES.items()}
    info = {"root": shown_path(root), "images": shown_path(images), "text": "sentence2 (hypothesis)"}
    return splits, list(LABELS), info
