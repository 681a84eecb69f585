"""Builders of tiny raw datasets in the three real layouts, each with the quirks the readers handle.

Every builder writes into a given folder and returns what the manifests should then hold, so a
test compares against an expectation written next to the data that causes it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from PIL import Image

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def write_image(path: Path, i: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), COLOURS[i % len(COLOURS)]).save(path, format="JPEG")
    return path


def write_corrupt_image(path: Path) -> Path:
    """A JPEG cut short: the header parses, the pixels do not decode."""
    write_image(path, size=32)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# --------------------------------------------------------------------------------------------
# SNLI-VE
# --------------------------------------------------------------------------------------------


def snli_ve_layout(root: Path, wrapper: str | None = "SNLI-VE/data") -> dict:
    """SNLI-VE layout with: misspelt id keys, sentence1 present, a bad line of every kind."""
    base = root / wrapper if wrapper else root
    images = base / "flickr30k-images"
    for i in range(6):
        write_image(images / f"{1000 + i}.jpg", i)
    write_corrupt_image(images / "1006.jpg")
    # 1007.jpg is missing

    def pair(pid, fid, hyp, label, key="Flickr30K_ID"):
        return {"pairID": pid, key: fid, "sentence1": f"PREMISE {pid}", "sentence2": hyp, "gold_label": label}

    train = [
        pair("t0", "1000", "A dog runs.", "entailment"),
        pair("t1", "1000", "A cat sleeps.", "contradiction"),  # same image as t0
        pair("t2", 1001, "Someone is outside.", "neutral", key="Flikr30kID"),
        pair("t3", "1002", "  Two   people talk. ", "Entailment ", key="Flickr30kID"),
        pair("t4", "1006", "Corrupt image.", "neutral"),  # unreadable image
        pair("t5", "1007", "Missing image.", "neutral"),  # missing image
        pair("t6", "1002", "   ", "neutral"),  # empty text
        pair("t7", "1002", "Unknown label.", "-"),  # unknown label
        pair("t8", "1006", "Corrupt again, same file.", "entailment"),  # verified once
    ]
    dev = [pair("d0", "1003", "A man sings.", "neutral"), pair("d1", "1003", "A woman sings.", "entailment")]
    test = [pair("s0", "1004", "Kids play.", "contradiction"), pair("s1", "1005", "Nobody plays.", "neutral")]

    def dump(name, rows, extra=()):
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(r) for r in rows] + list(extra)
        path.write_text("\n".join(lines) + "\n")

    dump("snli_ve_train.jsonl", train, extra=["{not json", '"just a string"', json.dumps({"pairID": "t9", "sentence2": "no id", "gold_label": "neutral"}), ""])
    dump("snli_ve_dev.jsonl", dev)
    dump("snli_ve_test.jsonl", test)
    return {
        "base": base,
        "counts": {"train": 4, "val": 2, "test": 2},
        "texts": {"t0": "A dog runs.", "t3": "Two people talk.", "d0": "A man sings."},
        "labels": {"t0": "entailment", "t1": "contradiction", "t2": "neutral", "t3": "entailment"},
        "skipped": {
            "train": {"missing_image": 1, "unreadable_image": 2, "empty_text": 1, "unknown_label": 1, "malformed_line": 3},
        },
    }


# --------------------------------------------------------------------------------------------
# UPMC-Food101
# --------------------------------------------------------------------------------------------

FOOD_CLASSES = ["apple_pie", "cheese_plate", "ramen"]


def food101_layout(root: Path) -> dict:
    """Kaggle layout inside a wrapper folder, with the extra images/images level, quoted CSV
    fields, a ``-N`` suffixed name, a header-less CSV, and bad rows of every kind."""
    base = root / "upmcfood101"
    images = base / "images" / "images"
    train_rows, test_rows = [], []
    for c, cls in enumerate(FOOD_CLASSES):
        for n in range(10):
            name = f"{cls}_{n}.jpg"
            write_image(images / "train" / cls / name, n + c)
            train_rows.append([name, f"{cls} recipe {n}, the best", cls])
        for n in range(2):
            name = f"{cls}_{700 + n}-10.jpg" if cls == "cheese_plate" else f"{cls}_{700 + n}.jpg"
            write_image(images / "test" / cls / name, n)
            test_rows.append([name, f'"Quoted" {cls} title {n}', cls])
    write_image(images / "train" / "apple_pie" / "apple_pie_extra.jpg")
    train_rows += [
        ["ramen_missing.jpg", "missing picture", "ramen"],  # missing image
        ["ramen_0.jpg", "ramen listed twice", "ramen"],  # duplicate
        ["sushi_1.jpg", "unknown class", "sushi"],  # unknown label
        ["apple_pie_extra.jpg", "   ", "apple_pie"],  # empty text
    ]
    texts = base / "texts"
    texts.mkdir(parents=True)
    with open(texts / "train_titles.csv", "w", newline="") as fh:
        w = csv.writer(fh, quoting=csv.QUOTE_MINIMAL)
        w.writerows(train_rows)
        fh.write("only_two_fields.jpg,title\n")  # malformed
    with open(texts / "test_titles.csv", "w", newline="") as fh:
        csv.writer(fh, quoting=csv.QUOTE_ALL).writerows(test_rows)
    return {
        "base": base,
        # train records read: 30 good + ramen_missing = 31; at val_fraction 0.2, 2 per class go
        # to val (10, 10, 11 per class); ramen_missing then drops out of train or val
        "kept_train_plus_val": 30,
        "val_records": 6,
        "counts_test": 6,
        "skipped": {
            "train": {"missing_image": 1, "empty_text": 1, "unknown_label": 1, "malformed_line": 1, "duplicate_id": 1},
        },
        "texts": {"train/apple_pie_3": "apple_pie recipe 3, the best", "test/ramen_701": '"Quoted" ramen title 1'},
        "labels": {"test/cheese_plate_700-10": "cheese_plate"},
    }


# --------------------------------------------------------------------------------------------
# MM-IMDB
# --------------------------------------------------------------------------------------------


def mmimdb_layout(root: Path) -> dict:
    """mmimdb/{dataset,split.json} with list plots, trailing spaces, genres outside the 23,
    a movie with only such genres, no plot, no poster, broken JSON, a missing metadata file."""
    base = root / "mmimdb"
    ds = base / "dataset"
    ds.mkdir(parents=True)

    def movie(mid, plot, genres, poster=True, i=0):
        (ds / f"{mid}.json").write_text(json.dumps({"title": f"Movie {mid}", "plot": plot, "genres": genres, "year": 1999}))
        if poster:
            write_image(ds / f"{mid}.jpeg", i)

    movie("0000001", ["Short plot.", "A much longer plot about a heist."], ["Crime ", "Drama", "News"])
    movie("0000002", ["Only plot."], ["Comedy"], i=1)
    movie("0000003", "A plot given as a plain string.", ["Sci-Fi", "Talk-Show"], i=2)
    movie("0000004", ["A plot."], ["Reality-TV", "News"])  # no genre among the 23
    movie("0000005", [], ["Drama"])  # no plot
    movie("0000006", ["No poster here."], ["Horror"], poster=False)  # missing image
    (ds / "0000007.json").write_text("{broken")  # malformed
    write_image(ds / "0000007.jpeg")
    # 0000008 has no files at all
    movie("0000009", ["Dev plot."], ["Film-Noir", "Mystery "], i=3)
    movie("0000010", ["Test plot one."], ["Western"])
    movie("0000011", ["Test plot two."], ["Animation", "Family"], i=1)
    split = {
        "train": ["0000001", "0000002", 3, "0000004", "0000005", "0000006", "0000007", "0000008 "],
        "dev": ["0000009"],
        "test": ["0000010", "0000011", "0000002"],  # 0000002 also in train
    }
    (base / "split.json").write_text(json.dumps(split))
    return {
        "base": base,
        "counts": {"train": 3, "val": 1, "test": 2},
        "labels": {
            "0000001": ["Drama", "Crime"],
            "0000002": ["Comedy"],
            "0000003": ["Sci-Fi"],
            "0000009": ["Mystery", "Film-Noir"],
            "0000011": ["Family", "Animation"],
        },
        "texts": {"0000001": "A much longer plot about a heist.", "0000003": "A plot given as a plain string."},
        "skipped": {
            "train": {"missing_image": 1, "empty_text": 1, "no_label": 1, "malformed_line": 2},
            "test": {"duplicate_id": 1},
        },
    }
