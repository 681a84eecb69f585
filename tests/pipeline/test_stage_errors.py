"""Bad input ends a stage process as its users meet it: exit status 2, no traceback, exactly one
``error:`` line naming the file or key, and nothing written. (The checks themselves are tested
in-process in tests/unit; these run the real entry points.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mitp.config.params import REPO_ROOT


def _stage(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)


def one_error_line(out: subprocess.CompletedProcess) -> str:
    """Exit status 2, no traceback, exactly one ``error:`` line: returned."""
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out.stderr[-3000:]
    return errors[0]


def _info(*args: str) -> str:
    return one_error_line(_stage("pipeline.info", "--dataset", "synthetic", *args))


# --- params, at a stage's entry --------------------------------------------------------------

def test_start_beyond_backbone_depth():
    assert "model.interaction.start: 4 must be below the backbone depth 4" in _info(
        "-S", "model.interaction.start=4", "-S", "cache.layer=0")


def test_cache_layer_above_the_start():
    line = _info("-S", "cache.layer=3", "-S", "model.interaction.start=1", "-S", "sweep.space={}")
    assert "cache.layer: 3 is above model.interaction.start 1" in line


def test_non_utf8_params_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_bytes((REPO_ROOT / "params.yaml").read_bytes() + "\n# caf\xe9\n".encode("latin-1"))
    line = _info("--params", str(bad))
    assert str(bad) in line and "not UTF-8" in line


def test_params_pointing_at_a_folder(tmp_path):
    line = _info("--params", str(tmp_path))
    assert str(tmp_path) in line and "folder" in line


def test_empty_dataset_list():
    line = _info("-S", "datasets=[]")
    assert "datasets" in line and "at least 1 item" in line


def test_out_of_range_seed():
    assert _info("-S", "seed=-1") == "error: params.yaml: seed: Input should be greater than or equal to 0 (got -1)"


# --- metrics read back by the report ----------------------------------------------------------

GOOD_RUN = {"test_accuracy": 0.8, "val_accuracy": 0.81, "trainable_params": 100, "total_params": 1000,
            "trainable_ratio": 0.1}
GOOD_HISTORY = [{"epoch": 1, "val_accuracy": 0.7, "train_loss": 1.0}]


def _report(tmp_path) -> str:
    out = tmp_path / "reports"
    line = one_error_line(_stage("pipeline.report", "--datasets", "synthetic", "--metrics-dir",
                                 str(tmp_path / "metrics"), "-S", f"report.dir={out}"))
    assert not out.exists(), "no partial report"
    return line


@pytest.mark.parametrize(("name", "content", "says"), [
    ("train_mitp.json", json.dumps(GOOD_RUN)[:30], "not valid JSON"),  # truncated
    ("seeds/train_mitp_seed1.json", '{"test_accuracy": NaN, "seed": 1}',
     "test_accuracy: NaN or Infinity, not a number (a diverged run?); re-run the stage that writes it"),
])
def test_a_bad_metrics_file_ends_the_report(tmp_path, name, content, says):
    d = tmp_path / "metrics" / "synthetic"
    (d / "seeds").mkdir(parents=True)
    if name != "train_mitp.json":
        (d / "train_mitp.json").write_text(json.dumps({**GOOD_RUN, "seed": 0}))
    (d / "train_mitp_history.json").write_text(json.dumps(GOOD_HISTORY))
    (d / name).write_text(content)
    line = _report(tmp_path)
    assert line.startswith(f"error: {d / name}") and says in line
