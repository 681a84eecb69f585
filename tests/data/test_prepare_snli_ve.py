"""SNLI-VE reader and the prepare stage on a fixture with every SNLI-VE quirk."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from fixture_layouts import snli_ve_layout, write_image

from mitp.data.manifests import read_split
from mitp.data.prepare import prepare_dataset
from mitp.data.records import BadRecordError


def test_snli_ve_manifests(tmp_path, make_params):
    expect = snli_ve_layout(tmp_path / "copy")
    params = make_params({"data.snli_ve.local_path": str(tmp_path / "copy"), "data.snli_ve.max_skip_fraction": 1.0})
    report = prepare_dataset(params, "snli_ve")
    out = params.prepared_dir("snli_ve")

    assert json.loads((out / "labels.json").read_text()) == ["entailment", "neutral", "contradiction"]
    frames = {s: pd.read_parquet(out / f"{s}.parquet") for s in ("train", "val", "test")}
    assert {s: len(f) for s, f in frames.items()} == expect["counts"]
    rows = {r.id: r for f in frames.values() for r in f.itertuples()}
    for rid, text in expect["texts"].items():
        assert rows[rid].text == text
    for rid, label in expect["labels"].items():
        assert rows[rid].label == label
    assert not any("PREMISE" in t for f in frames.values() for t in f["text"])  # sentence1 never fed
    assert rows["t2"].image.endswith("flickr30k-images/1001.jpg")  # misspelt key Flikr30kID, int id
    # manifests load through the shared reader; relative image paths resolve
    manifest = read_split(out, "train")
    assert manifest.image_path(0).is_file()

    assert report["splits"]["train"]["skipped_by_reason"] == expect["skipped"]["train"]
    assert report["splits"]["val"]["skipped"] == 0
    assert report["splits"]["train"]["records"] == 12
    assert report["images"]["bad"] == 2  # 1006 (corrupt, used twice) + 1007 (missing): each checked once
    on_disk = json.loads((out / "prepare_report.json").read_text())
    assert on_disk["skipped_total"] == 8 and len(on_disk["skips"]) == 8
    assert {s["reason"] for s in on_disk["skips"]} == set(expect["skipped"]["train"])


def test_skip_fraction_fails_and_keeps_report(tmp_path, make_params):
    snli_ve_layout(tmp_path / "copy")
    params = make_params({"data.snli_ve.local_path": str(tmp_path / "copy")})
    with pytest.raises(BadRecordError, match="max_skip_fraction"):
        prepare_dataset(params, "snli_ve")
    assert not params.prepared_dir("snli_ve").exists()
    failed = params.prepared_dir("snli_ve").with_name("snli_ve.prepare_report.failed.json")
    assert json.loads(failed.read_text())["splits"]["train"]["skipped"] == 8


def test_fail_policy_names_file_and_line(tmp_path, make_params):
    snli_ve_layout(tmp_path / "copy", wrapper=None)
    params = make_params({"data.snli_ve.local_path": str(tmp_path / "copy"), "data.snli_ve.bad_records": "fail"})
    with pytest.raises(BadRecordError, match=r"snli_ve_train.jsonl:\d+"):
        prepare_dataset(params, "snli_ve")


def test_images_path_and_missing_images_message(tmp_path, make_params):
    ann = tmp_path / "ann"
    ann.mkdir()
    for fid, split in enumerate(("train", "dev", "test"), start=7):
        row = {"pairID": split, "Flickr30K_ID": str(fid), "sentence2": "A thing.", "gold_label": "neutral"}
        (ann / f"snli_ve_{split}.jsonl").write_text(json.dumps(row) + "\n")
    params = make_params({"data.snli_ve.local_path": str(ann)})
    with pytest.raises(Exception, match="images_path"):
        prepare_dataset(params, "snli_ve")
    for fid in (7, 8, 9):
        write_image(tmp_path / "imgs" / f"{fid}.jpg")
    params = make_params({"data.snli_ve.local_path": str(ann), "data.snli_ve.images_path": str(tmp_path / "imgs")})
    report = prepare_dataset(params, "snli_ve")
    assert {s: v["kept"] for s, v in report["splits"].items()} == {"train": 1, "val": 1, "test": 1}


def test_synthetic_uses_snli_ve_reader(tmp_path, make_params):
    snli_ve_layout(tmp_path / "data" / "raw" / "synthetic", wrapper=None)
    params = make_params({"data.synthetic.max_skip_fraction": 1.0})
    report = prepare_dataset(params, "synthetic")
    assert report["reader"] == "snli_ve"
    assert (params.prepared_dir("synthetic") / "train.parquet").exists()


def test_each_unique_image_is_decoded_once(tmp_path, make_params, monkeypatch):
    import mitp.data.images as images

    seen = []
    real = images.check_image

    def counting(path):
        seen.append(path)
        return real(path)

    monkeypatch.setattr(images, "check_image", counting)
    snli_ve_layout(tmp_path / "copy")
    params = make_params({"data.snli_ve.local_path": str(tmp_path / "copy"), "data.snli_ve.max_skip_fraction": 1.0})
    prepare_dataset(params, "snli_ve")
    assert len(seen) == len(set(seen)) == 8  # 1000-1007 once each, though 1000, 1002, 1006 are shared
