"""The report refuses unreadable metrics files: one line naming the file, exit status 2, and no
report written (a partial one would be trusted by whoever reads reports/)."""

from __future__ import annotations

import json
import re

import pytest

from mitp.config.params import load_params
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


# --------------------------------------------------------------------------------------------
# Issue 21: values the report wrote figures for and then crashed on (or silently dropped)
# --------------------------------------------------------------------------------------------


def _run_with(**changes) -> bytes:
    run = {**GOOD_RUN, **changes}
    return json.dumps({k: v for k, v in run.items() if v is not ...}).encode()


@pytest.mark.parametrize(("name", "content", "key"), [
    ("train_mitp.json", _run_with(test_accuracy="0.8"), "test_accuracy: '0.8' is not a number"),
    ("train_mitp.json", _run_with(test_accuracy=float("inf")), "test_accuracy: NaN or Infinity"),
    ("train_mitp.json", _run_with(test_accuracy=...), "test_accuracy: missing"),
    ("train_mitp.json", _run_with(test_accuracy=81.2), "test_accuracy: 81.2 is not a fraction in [0, 1]"),
    ("train_mitp.json", _run_with(trainable_params="lots"), "trainable_params: 'lots' is not a number"),
    ("train_mitp.json", _run_with(seed=-3), "seed: -3 is not a non-negative integer"),
    ("seeds/train_late_fusion_seed1.json", b'{"test_accuracy": NaN, "seed": 1}', "test_accuracy: NaN or Infinity"),
    ("train_mitp_history.json", json.dumps([{"epoch": 1, "val_accuracy": "high"}]).encode(),
     "[0].val_accuracy: 'high' is not a number"),
    ("train_mitp_history.json", json.dumps([{"val_accuracy": 0.5}]).encode(), "[0].epoch: None is not an epoch"),
    ("sweep.csv", b"model.hub_size,test_accuracy,val_accuracy\n32,0.5,0.5\n64,abc,0.6\n",
     "column 'test_accuracy', line 3: 'abc' is not a usable number"),
    ("sweep.csv", b"model.hub_size,test_accuracy,val_accuracy\n32,0.5,0.5\n64,inf,0.6\n",
     "column 'test_accuracy', line 3"),
    ("sweep.csv", b"model.hub_size,test_accuracy,val_accuracy\n32,0.5,7.5\n64,0.5,0.6\n",
     "column 'val_accuracy', line 2"),
    ("sweep_best.json", b'{"value": Infinity}', "value: NaN or Infinity"),
])
def test_bad_values_are_refused_naming_file_and_key_before_anything_is_written(tmp_path, name, content, key):
    d = tmp_path / "metrics" / "synthetic"
    (d / "seeds").mkdir(parents=True)
    (d / "train_late_fusion.json").write_text(json.dumps({**GOOD_RUN, "seed": 0}))
    (d / "train_late_fusion_history.json").write_text(json.dumps(GOOD_HISTORY))
    (d / "train_mitp.json").write_text(json.dumps(GOOD_RUN))
    (d / name).write_bytes(content)
    out = tmp_path / "reports"
    with pytest.raises(ReportInputError) as err:
        build(load_params(), ["synthetic"], tmp_path / "metrics", out)
    message = str(err.value)
    assert message.startswith(f"{d / name}: ") and key in message and "\n" not in message, message
    assert not out.exists(), "no figure, no partial report"


def test_summary_json_is_strict_json_with_null_for_missing_figures(tmp_path):
    """The twin: good inputs give a report whose summary.json a strict parser reads; a figure that
    does not exist (the std of one run, an interval with n < 2) is null, never NaN."""
    d = tmp_path / "metrics" / "synthetic"
    d.mkdir(parents=True)
    for kind, acc in (("mitp", 0.8), ("late_fusion", 0.7)):
        (d / f"train_{kind}.json").write_text(json.dumps({**GOOD_RUN, "test_accuracy": acc, "seed": 0}))
        (d / f"train_{kind}_history.json").write_text(json.dumps(GOOD_HISTORY))
    out = tmp_path / "reports"
    summary = build(load_params(), ["synthetic"], tmp_path / "metrics", out)

    def refuse(token):
        raise AssertionError(f"summary.json holds {token}")

    text = (out / "summary.json").read_text()
    assert json.loads(text, parse_constant=refuse) == summary
    assert summary["synthetic"]["mitp"]["test_accuracy_std"] is None
    assert summary["synthetic"]["mitp_minus_late_fusion"]["ci95"] is None


def test_strict_json_turns_non_finite_numbers_into_null():
    import math

    import numpy as np

    from mitp.reporting.report import strict_json

    got = strict_json({"a": math.nan, "b": [1.0, math.inf, np.float64(2.5)], "c": (np.int64(3), None, "x")})
    assert got == {"a": None, "b": [1.0, None, 2.5], "c": [3, None, "x"]}
    json.dumps(got, allow_nan=False)
