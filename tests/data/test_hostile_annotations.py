"""Annotation files written as the attack: ids and file names that climb out of the dataset
folder, an image pointed into two splits, bytes that are not UTF-8, an unterminated CSV quote,
and a manifest cut short. Nothing outside the dataset folder is read into a split, each bad
record is counted under its reason (or stops prepare under ``bad_records: fail``, exit 2, one
line naming the file and line), and only the prepared folder appears beside the others."""

from __future__ import annotations

import json
import os
import sys

import pandas as pd
import pytest
from fixture_layouts import food101_layout, mmimdb_layout, snli_ve_layout, write_image

import pipeline.prepare
from mitp.data.manifests import ManifestError, read_split
from mitp.data.prepare import prepare_dataset
from mitp.data.records import BadRecordError
from mitp.errors import UserError
from pipeline.cli import run

SECRET_TEXT = "THE SECRET PLOT OUTSIDE THE DATASET"


@pytest.fixture
def outside(tmp_path):
    """A readable image and metadata file outside every dataset folder."""
    folder = tmp_path / "outside"
    write_image(folder / "secret.jpg", 3)
    write_image(folder / "secret.jpeg", 3)
    (folder / "secret.json").write_text(json.dumps({"plot": [SECRET_TEXT], "genres": ["Drama"]}))
    return folder


def _manifest_rows(params, name) -> pd.DataFrame:
    out = params.prepared_dir(name)
    return pd.concat([pd.read_parquet(out / f"{s}.parquet") for s in ("train", "val", "test")])


def _assert_nothing_outside(params, name, dataset_root):
    out = params.prepared_dir(name)
    rows = _manifest_rows(params, name)
    root = os.path.realpath(dataset_root)
    for image in rows["image"]:
        assert os.path.commonpath([root, os.path.realpath(out / image)]) == root, image
    assert SECRET_TEXT not in " ".join(rows["text"])
    assert sorted(p.name for p in out.parent.iterdir()) == [name]  # nothing else beside it


def _append(path, data: bytes):
    with open(path, "ab") as fh:
        fh.write(data)


# ---- SNLI-VE --------------------------------------------------------------------------------


def _snli(tmp_path, make_params, **extra):
    expect = snli_ve_layout(tmp_path / "ds", wrapper=None)
    params = make_params({"data.snli_ve.local_path": str(expect["base"]), "data.snli_ve.max_skip_fraction": 1.0, **extra})
    return expect["base"], params


def _pair(pid, fid, text="A hostile hypothesis.") -> bytes:
    return (json.dumps({"pairID": pid, "Flickr30K_ID": fid, "sentence2": text, "gold_label": "neutral"}) + "\n").encode()


def test_snli_ve_escaping_and_absolute_image_ids_are_refused(tmp_path, make_params, outside):
    base, params = _snli(tmp_path, make_params)
    _append(base / "snli_ve_train.jsonl", _pair("esc1", "../../outside/secret") + _pair("esc2", str(outside / "secret")))
    _append(base / "snli_ve_test.jsonl", _pair("esc3", "../../outside/secret.jpg"))
    report = prepare_dataset(params, "snli_ve")
    assert report["splits"]["train"]["skipped_by_reason"]["unsafe_path"] == 2
    assert report["splits"]["test"]["skipped_by_reason"]["unsafe_path"] == 1
    assert {s["id"] for s in report["skips"] if s["reason"] == "unsafe_path"} == {"esc1", "esc2", "esc3"}
    _assert_nothing_outside(params, "snli_ve", base)


def test_snli_ve_escaping_id_fails_the_stage_under_bad_records_fail(tmp_path, make_params, monkeypatch, capsys, outside):
    expect = snli_ve_layout(tmp_path / "ds", wrapper=None)
    base = expect["base"]
    for name, fid in (("snli_ve_train.jsonl", "1000"), ("snli_ve_dev.jsonl", "1003"), ("snli_ve_test.jsonl", "1004")):
        (base / name).write_bytes(_pair(f"ok-{fid}", fid))  # one clean line each ...
    _append(base / "snli_ve_train.jsonl", _pair("esc", "../../outside/secret"))  # ... and the attack
    monkeypatch.setattr(sys, "argv", [
        "pipeline.prepare", "--dataset", "snli_ve", "-S", f"data.root={tmp_path / 'data'}",
        "-S", f"data.snli_ve.local_path={base}", "-S", "data.snli_ve.bad_records=fail",
    ])
    with pytest.raises(SystemExit) as exc:
        run(pipeline.prepare.main)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert exc.value.code == 2 and len(err) == 1
    assert "snli_ve_train.jsonl:2" in err[0] and "unsafe_path" in err[0]
    assert not (tmp_path / "data" / "prepared" / "snli_ve").exists()  # nothing a later stage would trust


def test_snli_ve_image_in_two_splits_is_kept_in_the_first(tmp_path, make_params):
    base, params = _snli(tmp_path, make_params)
    _append(base / "snli_ve_test.jsonl", _pair("leak", "1000"))  # 1000.jpg is a train image
    report = prepare_dataset(params, "snli_ve")
    assert report["splits"]["test"]["skipped_by_reason"] == {"image_in_two_splits": 1}
    rows = {s: pd.read_parquet(params.prepared_dir("snli_ve") / f"{s}.parquet") for s in ("train", "test")}
    assert not set(rows["train"]["image"]) & set(rows["test"]["image"])


def test_snli_ve_non_utf8_line_is_counted_not_replaced(tmp_path, make_params):
    base, params = _snli(tmp_path, make_params)
    _append(base / "snli_ve_dev.jsonl", _pair("latin", "1003", "Caf\u00e9 ol\u00e9.").replace(b"\\u00e9", b"\xe9"))
    report = prepare_dataset(params, "snli_ve")
    assert report["splits"]["val"]["skipped_by_reason"] == {"not_utf8": 1}
    assert report["splits"]["val"]["records"] == 3
    assert "\ufffd" not in " ".join(_manifest_rows(params, "snli_ve")["text"])


# ---- Food101 --------------------------------------------------------------------------------


def _food(tmp_path, make_params):
    expect = food101_layout(tmp_path / "copy")
    params = make_params({"data.food101.local_path": str(tmp_path / "copy"), "data.food101.max_skip_fraction": 1.0})
    return expect["base"], params


def test_food101_file_names_with_dotdot_are_refused(tmp_path, make_params, outside):
    base, params = _food(tmp_path, make_params)
    class_dir = base / "images" / "images" / "test" / "ramen"
    climb = os.path.relpath(outside / "secret.jpg", class_dir)
    _append(base / "texts" / "test_titles.csv", f'"{climb}","{SECRET_TEXT}","ramen"\n"/etc/passwd","x","ramen"\n'.encode())
    report = prepare_dataset(params, "food101")
    assert report["splits"]["test"]["skipped_by_reason"] == {"unsafe_path": 2}
    _assert_nothing_outside(params, "food101", base)


def test_food101_unterminated_quote_counts_every_swallowed_row(tmp_path, make_params):
    base, params = _food(tmp_path, make_params)
    csv_path = base / "texts" / "test_titles.csv"
    before = prepare_dataset(params, "food101")["splits"]["test"]
    _append(csv_path, b'ramen_700.jpg,"an open quote,ramen\nramen_701.jpg,swallowed row,ramen\n')
    after = prepare_dataset(params, "food101")["splits"]["test"]
    assert after["records"] == before["records"] + 2  # two lines, two records
    assert after["skipped_by_reason"] == {"malformed_line": 2}
    assert after["kept"] == before["kept"]


def test_food101_non_utf8_title_is_counted(tmp_path, make_params):
    base, params = _food(tmp_path, make_params)
    _append(base / "texts" / "test_titles.csv", b'"ramen_700.jpg","Ramen \xe0 la cr\xe8me","ramen"\n')
    report = prepare_dataset(params, "food101")
    assert report["splits"]["test"]["skipped_by_reason"]["not_utf8"] == 1
    assert "\ufffd" not in " ".join(_manifest_rows(params, "food101")["text"])


# ---- MM-IMDB --------------------------------------------------------------------------------


def _mmimdb(tmp_path, make_params, edit):
    expect = mmimdb_layout(tmp_path / "copy")
    base = expect["base"]
    split = json.loads((base / "split.json").read_text())
    edit(base, split)
    (base / "split.json").write_text(json.dumps(split))
    params = make_params({"data.mmimdb.local_path": str(tmp_path / "copy"), "data.mmimdb.max_skip_fraction": 1.0})
    return base, prepare_dataset(params, "mmimdb"), params


def test_mmimdb_ids_with_dotdot_are_refused(tmp_path, make_params, outside):
    def edit(base, split):
        climb = os.path.relpath(outside / "secret", base / "dataset")
        split["train"].append(climb)
        split["test"].append("./" + climb)  # a second spelling of the same outside file
        split["dev"].append(str(outside / "secret"))

    base, report, params = _mmimdb(tmp_path, make_params, edit)
    assert report["skipped_by_reason"]["unsafe_path"] == 3
    _assert_nothing_outside(params, "mmimdb", base)


def test_mmimdb_non_utf8_metadata_is_counted(tmp_path, make_params):
    def edit(base, split):
        (base / "dataset" / "0000012.json").write_bytes(b'{"plot": ["Caf\xe9"], "genres": ["Drama"]}')
        write_image(base / "dataset" / "0000012.jpeg")
        split["dev"].append("0000012")

    base, report, params = _mmimdb(tmp_path, make_params, edit)
    assert report["splits"]["val"]["skipped_by_reason"] == {"not_utf8": 1}
    (base / "split.json").write_bytes(b'{"train": ["caf\xe9"], "dev": [], "test": []}')
    with pytest.raises(UserError, match=r"split\.json: cannot read the split lists"):
        prepare_dataset(params, "mmimdb")


# ---- manifests ------------------------------------------------------------------------------


def test_truncated_parquet_manifest_is_one_clear_error(tmp_path, make_params):
    _, params = _food(tmp_path, make_params)
    prepare_dataset(params, "food101")
    out = params.prepared_dir("food101")
    data = (out / "train.parquet").read_bytes()
    (out / "train.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(ManifestError) as err:
        read_split(out, "train")
    msg = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in msg
    assert str(out / "train.parquet") in msg and "pipeline.prepare" in msg
    (out / "labels.json").write_text('["apple_pie", ')
    with pytest.raises(ManifestError, match="labels.json"):
        read_split(out, "val")


def test_bad_records_fail_names_the_unsafe_row(tmp_path, make_params, outside):
    base, _ = _food(tmp_path, make_params)
    params = make_params({"data.food101.local_path": str(tmp_path / "copy"), "data.food101.bad_records": "fail"})
    (base / "texts" / "test_titles.csv").write_text('"../../../x.jpg","t","ramen"\n')
    (base / "texts" / "train_titles.csv").write_text('"apple_pie_1.jpg","t","apple_pie"\n')
    with pytest.raises(BadRecordError, match=r"test_titles\.csv:1.*unsafe_path"):
        prepare_dataset(params, "food101")
