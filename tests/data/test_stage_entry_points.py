"""`python -m pipeline.download` / `pipeline.prepare` with `-S data.X.local_path=...` (run in-process)."""

from __future__ import annotations

import json
import sys

import pytest
from fixture_layouts import mmimdb_layout

import pipeline.download
import pipeline.prepare
from pipeline.cli import run


def _argv(monkeypatch, module, *args):
    monkeypatch.setattr(sys, "argv", [module, *args])


def test_download_then_prepare_from_a_local_copy(monkeypatch, tmp_path, capsys):
    mmimdb_layout(tmp_path / "copy")
    common = ["--dataset", "mmimdb", "-S", f"data.root={tmp_path / 'data'}",
              "-S", f"data.mmimdb.local_path={tmp_path / 'copy'}", "-S", "data.mmimdb.max_skip_fraction=1.0"]
    for _ in range(2):  # the second run is a no-op
        _argv(monkeypatch, "pipeline.download", *common)
        assert pipeline.download.main() == 0
    assert (tmp_path / "data" / "raw" / "mmimdb").is_symlink()
    _argv(monkeypatch, "pipeline.prepare", *common)
    assert pipeline.prepare.main() == 0
    out = tmp_path / "data" / "prepared" / "mmimdb"
    assert sorted(p.name for p in out.iterdir()) == [
        "labels.json", "prepare_report.json", "test.parquet", "train.parquet", "val.parquet"
    ]
    assert json.loads((out / "prepare_report.json").read_text())["splits"]["val"]["kept"] == 1


def test_user_errors_exit_2_with_a_message(monkeypatch, tmp_path, capsys):
    _argv(monkeypatch, "pipeline.prepare", "--dataset", "mmimdb", "-S", f"data.root={tmp_path / 'data'}",
          "-S", f"data.mmimdb.local_path={tmp_path / 'missing'}")
    with pytest.raises(SystemExit) as exc:
        run(pipeline.prepare.main)
    assert exc.value.code == 2
    assert "data.mmimdb.local_path" in capsys.readouterr().err
