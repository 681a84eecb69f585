"""Reader of the MM-IMDB raw layout (``mmimdb.tar.gz``).

Layout (wrapper folders around it are found)::

    split.json                    {"train": [ids], "dev": [ids], "test": [ids]}
    dataset/<id>.jpeg             the poster
    dataset/<id>.json             IMDb metadata: "plot" (a LIST of strings), "genres" (list)

Rules, as MMBT and the original code apply them:

* text = the longest string of ``plot`` (whitespace collapsed); a string plot is taken as is;
  none or an empty one: the movie is skipped (``empty_text``).
* label = the movie's genres that are among the 23 of :data:`GENRES`, in that order; genres
  outside them (News, Reality-TV, Talk-Show, ...) are ignored. A movie left with no genre is
  skipped (``no_label``). Genre names and ids are stripped of surrounding spaces.
* a missing or unparsable ``<id>.json`` is a ``malformed_line`` (the id's entry in split.json
  points to nothing usable); a missing poster is a ``missing_image``.
* ``dev`` becomes ``val``; an id listed in two splits is kept in the first (``duplicate_id``).
* an id must be a plain file name (:mod:`mitp.data.safe_names`): ``../x`` or ``/x`` is an
  ``unsafe_path`` skip, never joined; a metadata file that is not UTF-8 is ``not_utf8``.
"""

from __future__ import annotations

import json
from pathlib import Path

from mitp.config.params import shown_path
from mitp.data.layout import LayoutError, find_root
from mitp.data.records import (
    DUPLICATE_ID,
    EMPTY_TEXT,
    MALFORMED,
    NO_LABEL,
    NOT_UTF8,
    UNSAFE_PATH,
    Record,
    SkipLog,
)
from mitp.data.safe_names import child_path, unsafe_reason

GENRES = [
    "Drama", "Comedy", "Romance", "Thriller", "Crime", "Action", "Adventure", "Horror",
    "Documentary", "Mystery", "Sci-Fi", "Fantasy", "Family", "Biography", "War", "History",
    "Music", "Animation", "Musical", "Western", "Sport", "Short", "Film-Noir",
]
SPLIT_KEYS = {"train": ("train",), "val": ("dev", "val"), "test": ("test",)}
POSTER_SUFFIXES = (".jpeg", ".jpg")


def locate(base: str | Path) -> Path:
    """The folder holding ``split.json`` and ``dataset/``."""
    return find_root(base, ["split.json", "dataset"], what="MM-IMDB (split.json, dataset/)")


def _normalise_id(value) -> str:
    return f"{value:07d}" if isinstance(value, int) else str(value).strip()


def read_split_lists(path: Path) -> dict[str, list[str]]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayoutError(f"{path}: cannot read the split lists: {exc}") from exc
    if not isinstance(obj, dict):
        raise LayoutError(f"{path}: expected an object with train/dev/test id lists")
    out = {}
    for split, keys in SPLIT_KEYS.items():
        key = next((k for k in keys if k in obj), None)
        if key is None or not isinstance(obj[key], list):
            raise LayoutError(f"{path}: no {' or '.join(repr(k) for k in keys)} list of ids")
        out[split] = [_normalise_id(v) for v in obj[key]]
    return out


def longest_plot(plot) -> str:
    if isinstance(plot, str):
        plot = [plot]
    if not isinstance(plot, list):
        return ""
    texts = [" ".join(p.split()) for p in plot if isinstance(p, str)]
    return max(texts, key=len, default="")


def known_genres(genres) -> tuple[str, ...]:
    if isinstance(genres, str):
        genres = [genres]
    if not isinstance(genres, list):
        return ()
    present = {g.strip() for g in genres if isinstance(g, str)}
    return tuple(g for g in GENRES if g in present)


def read_movie(dataset: Path, mid: str, split: str, where: str, log: SkipLog) -> Record | None:
    meta_path = child_path(dataset, f"{mid}.json")
    if meta_path is None:
        log.add(split, UNSAFE_PATH, where, id=mid, detail=f"metadata file: {unsafe_reason(mid + '.json')}")
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        log.add(split, MALFORMED, where, id=mid, detail=f"{meta_path} not found")
        return None
    except UnicodeDecodeError as exc:
        log.add(split, NOT_UTF8, where, id=mid, detail=f"{meta_path}: byte {exc.start} is not UTF-8")
        return None
    except (OSError, json.JSONDecodeError) as exc:
        log.add(split, MALFORMED, where, id=mid, detail=f"{meta_path}: not readable JSON: {exc}")
        return None
    if not isinstance(meta, dict):
        log.add(split, MALFORMED, where, id=mid, detail=f"{meta_path}: not a JSON object")
        return None
    text = longest_plot(meta.get("plot"))
    if not text:
        log.add(split, EMPTY_TEXT, where, id=mid, detail=f"{meta_path}: no plot")
        return None
    label = known_genres(meta.get("genres"))
    if not label:
        log.add(split, NO_LABEL, where, id=mid, detail=f"genres {meta.get('genres')!r}: none among the 23")
        return None
    poster = next((dataset / f"{mid}{s}" for s in POSTER_SUFFIXES if (dataset / f"{mid}{s}").exists()),
                  dataset / f"{mid}.jpeg")
    return Record(id=mid, image=poster, text=text, label=label, where=where)


def read(base: str | Path, log: SkipLog) -> tuple[dict, list[str], dict]:
    """All three splits: ``({split: [Record]}, GENRES, info)``."""
    root = locate(base)
    dataset = root / "dataset"
    lists = read_split_lists(root / "split.json")
    splits: dict[str, list[Record]] = {}
    seen: set[str] = set()
    for split, ids in lists.items():
        splits[split] = []
        for i, mid in enumerate(ids):
            where = f"{root / 'split.json'}:{split}[{i}]"
            if mid in seen:
                log.add(split, DUPLICATE_ID, where, id=mid, detail="id listed in an earlier split or twice")
                continue
            seen.add(mid)
            rec = read_movie(dataset, mid, split, where, log)
            if rec is not None:
                splits[split].append(rec)
    info = {
        "root": shown_path(root),
        "text": "longest string of plot",
        "genres": "the 23 of MM-IMDB; others ignored, movies left with none dropped (no_label)",
    }
    return splits, list(GENRES), info
