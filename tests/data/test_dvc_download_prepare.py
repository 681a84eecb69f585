"""`dvc repro` of download + prepare for a real-layout dataset whose source is a local copy:
the stages run through dvc.yaml as written, and a second repro is a no-op."""

from __future__ import annotations

import json

import pytest
from dvc_workspace import copy_repo, edit_params, repro
from fixture_layouts import mmimdb_layout

pytestmark = pytest.mark.slow


def test_dvc_repro_download_prepare_from_a_local_copy(tmp_path):
    layout = mmimdb_layout(tmp_path / "copy")
    repo = copy_repo(tmp_path / "repo")
    edit_params(repo, {("datasets",): ["mmimdb"],
                       ("data", "mmimdb", "local_path"): str(tmp_path / "copy"),
                       ("data", "mmimdb", "max_skip_fraction"): 1.0})

    assert repro(repo, "prepare@mmimdb") == ["download@mmimdb", "prepare@mmimdb"]
    assert (repo / "data" / "raw" / "mmimdb").is_symlink()  # linked, never copied
    prepared = repo / "data" / "prepared" / "mmimdb"
    report = json.loads((prepared / "prepare_report.json").read_text())
    assert {s: report["splits"][s]["kept"] for s in ("train", "val", "test")} == layout["counts"]
    assert (repo / "dvc.lock").is_file()

    assert repro(repo, "prepare@mmimdb") == [], "a second repro must run nothing"
    assert sorted(p.name for p in (tmp_path / "copy" / "mmimdb").iterdir()) == ["dataset", "split.json"]
