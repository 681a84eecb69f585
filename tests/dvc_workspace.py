"""A throw-away copy of the repository to run `dvc repro` in (the tests never touch the repo's
own data/, metrics/ or dvc.lock)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from mitp.config.params import REPO_ROOT

SKIPPED = ("metrics/", "reports/", "dvc.lock")  # outputs of the repo's own runs


def copy_repo(dst: Path) -> Path:
    """Copy the tracked and untracked-but-not-ignored files (no outputs) and commit them."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO_ROOT / rel
        if src.is_file() and not rel.startswith(SKIPPED):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dst, check=True)
    return dst


def edit_params(repo: Path, values: dict[tuple[str, ...], object]) -> None:
    """Set nested keys of the copy's params.yaml, e.g. ``{("model", "hub_size"): 32}``."""
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    for path, value in values.items():
        node = raw
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def workspace_env(repo: Path) -> dict[str, str]:
    """The environment a user's shell has in the copy: its venv first, no tracking/Ray overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(repo)
    return env


def repro(repo: Path, *targets: str) -> list[str]:
    """Run ``dvc repro [targets]`` in the copy; return the names of the stages that ran."""
    out = subprocess.run(["dvc", "repro", *targets], cwd=repo, env=workspace_env(repo), capture_output=True,
                         text=True, timeout=1500)
    assert out.returncode == 0, (out.stdout[-4000:], out.stderr[-4000:])
    return sorted(set(re.findall(r"Running stage '([^']+)'", out.stdout)))


def changed_stages(repo: Path) -> set[str]:
    """The stages ``dvc status`` lists as changed in the copy."""
    out = subprocess.run(["dvc", "status", "--json"], cwd=repo, env=workspace_env(repo), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout or "{}"))
