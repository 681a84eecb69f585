"""The README's DVC remote recipe on a copy of the project: `dvc push` to a local folder remote,
then a fresh clone gets the metrics and reports (git) and the cached outputs (`dvc pull`) of
the run, byte for byte."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from documented import REPO, bash_blocks, readme_section
from dvc_workspace import copy_repo, edit_params, repro

pytestmark = pytest.mark.slow


def _recipe() -> tuple[list[str], list[str]]:
    """(push commands, pull commands) of the README's "Share results (DVC remote)", comments dropped."""
    text = readme_section("DVC notes")
    section = text[text.index("### Share results (DVC remote)"):]
    push, pull = (
        [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]
        for block in bash_blocks(section)[:2]
    )
    return push, pull


def _sh(cmd: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(cwd)
    out = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (cmd, out.stdout[-3000:], out.stderr[-3000:])
    return out.stdout


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_push_then_pull_in_a_fresh_clone_restores_the_run(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    # the run's committed outputs: metrics and reports, as the repository holds them
    for rel in ("metrics", "reports"):
        shutil.copytree(REPO / rel, repo / rel, dirs_exist_ok=True)
    edit_params(repo, {("data", "synthetic", "n_train"): 96, ("data", "synthetic", "n_val"): 48,
                       ("data", "synthetic", "n_test"): 48})
    repro(repo, "backbone", "prepare@synthetic")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "run")

    push, pull = _recipe()
    remote = tmp_path / "remote"
    assert push[0].startswith("dvc remote add -d shared ")
    push[0] = f"dvc remote add -d shared {remote}"
    for cmd in push:
        _sh(cmd, repo)
    assert any(remote.rglob("*")), "dvc push stored nothing"

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    for cmd in pull[1:]:  # the clone exists; `cd` is part of the first line
        # this run reproduced two stages; the others' cached outputs (trained models) exist only
        # after a full `dvc repro`, so the pull names what was run
        _sh(cmd + " backbone prepare@synthetic" if cmd == "dvc pull" else cmd, clone)
    assert "up to date" in _sh("dvc status backbone", clone)

    for rel in ("metrics", "reports", "data/backbones", "data/prepared/synthetic"):
        cmp = filecmp.dircmp(repo / rel, clone / rel)
        assert _same_tree(cmp), rel


def _same_tree(cmp: filecmp.dircmp) -> bool:
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    return all(_same_tree(sub) for sub in cmp.subdirs.values())
