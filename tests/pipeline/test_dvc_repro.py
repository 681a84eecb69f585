"""`dvc repro` end to end on a copy of the repository: every stage runs, the report holds real
numbers, a second repro runs nothing, and a change of model.hub_size re-runs only
train / sweep / report.

The copy's params.yaml is the offline default shrunk in size (fewer samples, epochs and sweep
trials) so the test fits in CI; the full default is what `make repro` runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mitp.config import REPO_ROOT

pytestmark = pytest.mark.slow

SMOKE = {
    ("data", "synthetic", "n_train"): 120,
    ("data", "synthetic", "n_val"): 60,
    ("data", "synthetic", "n_test"): 60,
    ("train", "epochs"): 2,
}


def _copy_repo(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO_ROOT / rel
        if src.is_file() and not rel.startswith(("metrics/", "reports/", "dvc.lock")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def _shrink(params_file: Path, hub_size: int | None = None) -> None:
    raw = yaml.safe_load(params_file.read_text())
    for path, value in SMOKE.items():
        node = raw
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    sweep = raw.setdefault("sweep", {})
    sweep["space"] = {"model.prompt_length": {"grid": [4, 8]}}
    sweep["num_samples"] = 1
    sweep.setdefault("train", {})["epochs"] = 1
    if hub_size is not None:
        raw["model"]["hub_size"] = hub_size
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))


def _repro(repo: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(repo)
    out = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, (out.stdout[-4000:], out.stderr[-4000:])
    return sorted(set(re.findall(r"Running stage '([^']+)'", out.stdout)))


def test_dvc_repro_end_to_end(tmp_path):
    repo = tmp_path / "repo"
    _copy_repo(repo)
    _shrink(repo / "params.yaml")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=repo, check=True)

    ran = _repro(repo)
    kinds = ("mitp", "mitp_no_hub", "late_fusion")
    expected = {"download@synthetic", "prepare@synthetic", "backbone", "cache@synthetic", "sweep@synthetic",
                "report", *(f"train@synthetic-{k}" for k in kinds)}
    assert set(ran) == expected

    report = (repo / "reports" / "report.md").read_text()
    assert "### Main table" in report and "| MITP |" in report
    summary = json.loads((repo / "reports" / "summary.json").read_text())
    for kind in kinds:
        acc = summary["synthetic"][kind]["test_accuracy"]
        assert 0.0 < acc <= 1.0
    assert summary["synthetic"]["sweep"]["trials"] == 2
    pngs = list((repo / "reports" / "figures").glob("*.png"))
    assert any(p.name == "synthetic_curves.png" for p in pngs)
    assert any("prompt_length" in p.name for p in pngs)
    for p in pngs:
        assert p.read_bytes()[:4] == b"\x89PNG"

    assert _repro(repo) == [], "a second repro must run nothing"

    _shrink(repo / "params.yaml", hub_size=32)
    assert set(_repro(repo)) == {"sweep@synthetic", "report", *(f"train@synthetic-{k}" for k in kinds)}
