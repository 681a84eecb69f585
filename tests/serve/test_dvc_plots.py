"""`dvc plots show` as a browser gets it: the kinds' validation curves overlaid (one colour per
kind), a scatter of the sweep metric against each swept key, the report's figures; every plot
has points, and every point has its x and y as numbers where Vega-Lite looks for them (a dot in
a field name is a nested field to Vega-Lite: `model.hub_size` would draw nothing).

The plots render in a copy holding the repository's dvc.yaml, .dvc/ and committed metrics/ and
reports/, with the sweep's plot file written by the real writer (mitp.sweep.results.plot_points)
from the committed sweep.csv, so the test checks the writer and dvc.yaml together, also before
a `dvc repro` has regenerated the committed outputs.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mitp.config.params import MODEL_KINDS, REPO_ROOT, load_params
from mitp.config.space import build_space, normalize_space
from mitp.sweep import results

DVC = Path(sys.executable).with_name("dvc")


def _top_level_plots(dvc_yaml: Path = REPO_ROOT / "dvc.yaml") -> dict[str, dict]:
    plots = yaml.safe_load(dvc_yaml.read_text())["plots"]
    return {name: spec for entry in plots if isinstance(entry, dict) for name, spec in entry.items()}


def test_every_kind_and_every_swept_key_has_its_plot():
    params = load_params()
    plots = _top_level_plots()
    overlay = plots["variants_val_accuracy"]["y"]
    trained = {Path(f).name.removeprefix("train_").removesuffix("_history.json") for f in overlay}
    assert trained == set(MODEL_KINDS)
    scatters = {spec["x"] for spec in plots.values() if spec.get("template") == "scatter"}
    assert scatters == {results.plot_field(k) for k in normalize_space(params.sweep.space)}, \
        "a sweep scatter per swept key (under its dot-free name), no stale one"


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None if text == "" else text


def _committed_sweep_rows() -> list[dict[str, Any]]:
    with open(REPO_ROOT / "metrics" / "synthetic" / "sweep.csv", newline="") as fh:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def test_plot_points_have_dot_free_names_and_numbers_only():
    rows = [{"trial_id": "a", "status": results.COMPLETED, "model.hub_size": 16, "seed": 0, "val_accuracy": 0.7,
             "test_accuracy": 0.69, "train_time_s": 3.0, "mlflow_run_id": "x"},
            {"trial_id": "b", "status": results.ERROR, "model.hub_size": 64, "seed": 0, "error": "boom"},
            {"trial_id": "c", "status": results.STOPPED, "model.hub_size": 64, "seed": 1, "val_accuracy": float("nan"),
             "val_loss": 0.8}]
    points = results.plot_points(rows, ["model.hub_size", "seed"])
    assert points == [
        {"trial_id": "a", "status": "COMPLETED", "model_hub_size": 16, "seed": 0, "val_accuracy": 0.7,
         "test_accuracy": 0.69},
        {"trial_id": "c", "status": "STOPPED", "model_hub_size": 64, "seed": 1, "val_loss": 0.8}]
    assert not any("." in key for point in points for key in point)


@pytest.fixture(scope="module")
def plots_json(tmp_path_factory) -> tuple[dict, str]:
    """`dvc plots show --json` in a copy of the repository's DVC files and committed outputs."""
    repo = tmp_path_factory.mktemp("plots") / "repo"
    repo.mkdir()
    shutil.copy2(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy2(REPO_ROOT / "params.yaml", repo / "params.yaml")
    shutil.copytree(REPO_ROOT / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
    for folder in ("metrics", "reports"):
        shutil.copytree(REPO_ROOT / folder, repo / folder)
    keys = build_space(load_params()).swept_keys
    (repo / "metrics" / "synthetic" / "sweep_points.json").write_text(
        json.dumps(results.plot_points(_committed_sweep_rows(), keys)))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    # -o: the rendered images go to the test's folder, never into the repository
    out = subprocess.run([str(DVC), "plots", "show", "--json", "-o", str(repo.parent / "rendered")], cwd=repo,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)["data"], out.stderr


def test_dvc_plots_show_renders_without_warnings(plots_json):
    data, stderr = plots_json
    assert "WARNING" not in stderr.upper(), stderr[-2000:]
    for name in ("variants_val_accuracy", "variants_val_loss", "sweep_hub_size", "sweep_interaction_start"):
        assert name in data, name
    assert any(key.startswith("reports/figures/") and key.endswith(".png") for key in data)
    assert "metrics/synthetic/sweep.csv" not in data, "sweep.csv is a table, not a plot (error against the row)"


def _vega_field(datum: dict, field: str) -> Any:
    """What Vega-Lite reads for ``field``: an unescaped dot steps into a nested object."""
    parts, part, escaped = [], "", False
    for ch in field:
        if escaped:
            part, escaped = part + ch, False
        elif ch == "\\":
            escaped = True
        elif ch == ".":
            parts, part = [*parts, part], ""
        else:
            part += ch
    node: Any = datum
    for p in [*parts, part]:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def _xy_fields(spec: Any) -> set[str]:
    """Every field an x or y encoding of the Vega-Lite spec reads (layers included)."""
    found: set[str] = set()
    if isinstance(spec, dict):
        for channel in ("x", "y"):
            enc = spec.get(channel)
            if isinstance(enc, dict) and isinstance(enc.get("field"), str):
                found.add(enc["field"])
        for value in spec.values():
            found |= _xy_fields(value)
    elif isinstance(spec, list):
        for value in spec:
            found |= _xy_fields(value)
    return found


def test_every_plot_has_numeric_points(plots_json):
    data, _ = plots_json
    vega = {name: entries for name, entries in data.items() if entries and entries[0]["type"] == "vega"}
    assert {"variants_val_accuracy", "variants_val_loss", "sweep_hub_size", "sweep_interaction_start"} <= set(vega)
    for name, entries in vega.items():
        for entry in entries:
            content = entry["content"]
            values = content["data"]["values"]
            fields = _xy_fields(content)
            assert values, f"{name}: no points"
            assert len(fields) >= 2, f"{name}: x and y fields, got {fields}"
            for field in fields:
                for datum in values:
                    v = _vega_field(datum, field)
                    assert isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v), \
                        f"{name}: field {field!r} of a point is {v!r} (Vega-Lite would draw nothing)"


def test_the_kinds_curves_have_one_colour_per_kind(plots_json):
    data, _ = plots_json
    for name in ("variants_val_accuracy", "variants_val_loss"):
        content = data[name][0]["content"]
        assert content["encoding"]["color"]["field"] == "kind", "colour by model kind, not by revision"
        # the template's calculated field, as Vega evaluates it (first occurrence replaced)
        kinds = {d["filename"].replace("train_", "", 1).replace("_history.json", "", 1)
                 for d in content["data"]["values"]}
        assert kinds == set(MODEL_KINDS)
        calc = [t for t in content.get("transform", []) if t.get("as") == "kind"]
        assert calc and "datum.filename" in calc[0]["calculate"]
