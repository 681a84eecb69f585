"""The report refuses unreadable metrics files: one line naming the file, exit status 2, and no
report written (a partial one would be trusted by whoever reads reports/)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from mitp.config.params import REPO_ROOT, load_params
from mitp.reporting.report import ReportInputError, build

GOOD_RUN = {"test_accuracy": 0.8, "val_accuracy": 0.81, "trainable_params": 100, "total_params": 1000,
            "trainable_ratio": 0.1}
GOOD_HISTORY = [{"epoch": 1, "val_accuracy": 0.7, "train_loss": 1.0}]


def _metrics(root, bad_name: str, bad: bytes):
    d = root / "metrics" / "synthetic"
    d.mkdir(parents=True)
    (d / "train_late_fusion.json").write_text(json.dumps(GOOD_RUN))
    (d / "train_late_fusion_history.json").write_text(json.dumps(GOOD_HISTORY))
    (d / bad_name).write_bytes(bad)
    return d / bad_name


@pytest.mark.parametrize(("name", "content"), [
    ("train_mitp.json", b"[1, 2]"),  # valid JSON, not a metrics record
    ("train_mitp_history.json", json.dumps(GOOD_HISTORY).encode()[:-3]),  # truncated
    ("train_mitp.json", b'{"test_accuracy": "\xff\xfe"}'),  # not UTF-8
    ("sweep_best.json", b'{"model.hub_size": '),
    ("sweep.csv", b'model.hub_size,test_accuracy\n32,"0.5\n'),  # unterminated quote
])
def test_unreadable_metrics_file_is_refused_before_anything_is_written(tmp_path, name, content):
    bad = _metrics(tmp_path, name, content)
    out = tmp_path / "reports"
    with pytest.raises(ReportInputError, match=re.escape(str(bad))):
        build(load_params(), ["synthetic"], tmp_path / "metrics", out)
    assert not out.exists(), "no partial report"


def test_truncated_metrics_json_ends_the_report_stage_with_one_line(tmp_path):
    bad = _metrics(tmp_path, "train_mitp.json", json.dumps(GOOD_RUN).encode()[:30])
    out = tmp_path / "reports"
    run = subprocess.run([sys.executable, "-m", "pipeline.report", "--datasets", "synthetic",
                          "--metrics-dir", str(tmp_path / "metrics"), "-S", f"report.dir={out}"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in run.stderr and len(errors) == 1, run.stderr[-3000:]
    assert str(bad) in errors[0] and "not valid JSON" in errors[0]
    assert not out.exists(), "no partial report"
