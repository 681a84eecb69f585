"""Builders of tiny raw datasets in the three real layouts, each with the quirks the readers handle.

Every builder writes into a given folder and returns what the manifests should then hold, so a
test compares against an expectation written next to the data that causes it.
"""

from __future__ import annotations

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
