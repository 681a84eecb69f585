"""Food101 and MM-IMDB readers through prepare_dataset, on fixtures with each layout's quirks."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
from fixture_layouts import FOOD_CLASSES, food101_layout, mmimdb_layout

from mitp.data.mmimdb import GENRES
from mitp.data.prepare import prepare_dataset


def _frames(out):
    return {s: pd.read_parquet(out / f"{s}.parquet") for s in ("train", "val", "test")}


def _food_params(make_params, tmp_path, seed=0):
    return make_params({
        "data.food101.local_path": str(tmp_path / "copy"),
        "data.food101.val_fraction": 0.2,
        "data.food101.split_seed": seed,
        "data.food101.max_skip_fraction": 0.2,
    })


def test_food101_manifests(tmp_path, make_params):
    expect = food101_layout(tmp_path / "copy")
    params = _food_params(make_params, tmp_path)
    report = prepare_dataset(params, "food101")
    out = params.prepared_dir("food101")
    frames = _frames(out)

    assert json.loads((out / "labels.json").read_text()) == FOOD_CLASSES
    assert len(frames["train"]) + len(frames["val"]) == expect["kept_train_plus_val"]
    assert report["splits"]["val"]["records"] == expect["val_records"]
    assert len(frames["test"]) == expect["counts_test"]
    # stratified: every class gives 2 records to val (one may have dropped for its missing image)
    val_classes = Counter(frames["val"]["label"])
    assert set(val_classes) == set(FOOD_CLASSES) and sum(val_classes.values()) >= 5
    assert set(frames["train"]["id"]).isdisjoint(frames["val"]["id"])
    rows = {r.id: r for f in frames.values() for r in f.itertuples()}
    for rid, text in expect["texts"].items():
        assert rows[rid].text == text
    for rid, label in expect["labels"].items():
        assert rows[rid].label == label  # from the CSV/folder, not the -10 suffixed name
    assert rows["test/cheese_plate_700-10"].image.endswith("images/images/test/cheese_plate/cheese_plate_700-10.jpg")

    by_reason = Counter()
    for split in ("train", "val"):
        by_reason.update(report["splits"][split]["skipped_by_reason"])
    assert dict(by_reason) == expect["skipped"]["train"]
    assert report["info"]["val_from_train"] == {"fraction": 0.2, "seed": 0, "stratified": True}


def test_food101_split_is_seeded(tmp_path, make_params):
    food101_layout(tmp_path / "copy")
    val = []
    for seed in (0, 0, 1):
        params = _food_params(make_params, tmp_path, seed)
        prepare_dataset(params, "food101")
        val.append(sorted(_frames(params.prepared_dir("food101"))["val"]["id"]))
    assert val[0] == val[1]
    assert val[0] != val[2]


def test_mmimdb_manifests(tmp_path, make_params):
    expect = mmimdb_layout(tmp_path / "copy")
    params = make_params({"data.mmimdb.local_path": str(tmp_path / "copy"), "data.mmimdb.max_skip_fraction": 1.0})
    report = prepare_dataset(params, "mmimdb")
    out = params.prepared_dir("mmimdb")
    frames = _frames(out)

    assert json.loads((out / "labels.json").read_text()) == GENRES
    assert {s: len(f) for s, f in frames.items()} == expect["counts"]
    rows = {r.id: r for f in frames.values() for r in f.itertuples()}
    for mid, genres in expect["labels"].items():
        assert list(rows[mid].label) == genres
    for mid, text in expect["texts"].items():
        assert rows[mid].text == text
    for split, reasons in expect["skipped"].items():
        assert report["splits"][split]["skipped_by_reason"] == reasons
    assert report["splits"]["val"]["skipped"] == 0
