"""`dvc plots show` on the committed outputs: the kinds' validation curves overlaid, a scatter of
the sweep metric against each swept key, the report's figures; no warning, nothing stale."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from mitp.config.params import MODEL_KINDS, REPO_ROOT, load_params
from mitp.config.space import normalize_space


def _top_level_plots() -> dict[str, dict]:
    plots = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["plots"]
    return {name: spec for entry in plots if isinstance(entry, dict) for name, spec in entry.items()}


def test_every_kind_and_every_swept_key_has_its_plot():
    params = load_params()
    plots = _top_level_plots()
    overlay = plots["variants_val_accuracy"]["y"]
    trained = {Path(f).name.removeprefix("train_").removesuffix("_history.json") for f in overlay}
    assert trained == set(MODEL_KINDS)
    scatters = {spec["x"] for spec in plots.values() if spec.get("template") == "scatter"}
    assert scatters == set(normalize_space(params.sweep.space)), "a sweep scatter per swept key, no stale one"


def test_dvc_plots_show_renders_without_warnings(tmp_path):
    dvc = Path(sys.executable).with_name("dvc")
    # -o: the rendered images go to the test's folder, never into the repository
    out = subprocess.run([str(dvc), "plots", "show", "--json", "-o", str(tmp_path / "plots")], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "WARNING" not in out.stderr.upper(), out.stderr[-2000:]
    data = json.loads(out.stdout)["data"]
    for name in ("variants_val_accuracy", "variants_val_loss", "sweep_hub_size", "sweep_interaction_start"):
        assert data[name] and data[name][0]["content"]["data"]["values"], name
    assert any(key.startswith("reports/figures/") and key.endswith(".png") for key in data)
