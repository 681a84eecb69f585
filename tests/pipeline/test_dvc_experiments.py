"""`dvc exp run` as docs/dvc.md documents it, on a copy of the repository.

* `--dry`: DVC 3.67 runs a dry experiment in an empty temporary copy, where a stage's inputs made
  by the stage before it are missing; DVC's run-cache lookup then fails on them. `--dry --force`
  lists every stage's command (what that copy would run) and touches nothing.
* `--queue` + `dvc queue start`: the offline default runs whole in the queue's copy (the synthetic
  raw data and its features, `cache: false`, are regenerated there: seconds), the experiment's
  quality figures come back to `dvc exp show`, and its MLflow runs land in the repository's own
  store (mitp.tracking.store.home_root), not in the copy DVC deletes.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from dvc_workspace import copy_repo, edit_params, repro, workspace_env

pytestmark = pytest.mark.slow

STAGES = {"download@synthetic", "prepare@synthetic", "backbone", "cache@synthetic", "train@synthetic",
          "sweep@synthetic", "report"}


def _dvc(repo: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=repo, env=workspace_env(repo), capture_output=True, text=True,
                          timeout=timeout)


def _git_state(repo: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout


def test_exp_run_dry(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    params = (repo / "params.yaml").read_text()
    # the DVC limitation docs/dvc.md names: the bare dry run stops at the second stage's input
    bare = _dvc(repo, "exp", "run", "--dry")
    assert bare.returncode != 0 and "No such file or directory" in bare.stderr + bare.stdout, \
        "DVC runs `exp run --dry` now: drop --force from docs/dvc.md and this test"
    out = _dvc(repo, "exp", "run", "--dry", "--force", "-S", "model.hub_size=32")
    assert out.returncode == 0, out.stderr[-3000:]
    listed = {line.split("'")[1] for line in out.stdout.splitlines() if line.startswith("Running stage '")}
    assert listed == STAGES
    assert (repo / "params.yaml").read_text() == params and _git_state(repo) == ""
    assert not (repo / "data").exists() and not (repo / "metrics").exists()


def test_exp_queue_runs_the_offline_default(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    edit_params(repo, {("data", "synthetic", "n_train"): 120, ("data", "synthetic", "n_val"): 60,
                       ("data", "synthetic", "n_test"): 60, ("train", "epochs"): 2, ("train", "compile"): False,
                       ("extra_seeds",): [1], ("sweep", "space"): {"model.hub_size": {"grid": [64, 16]}},
                       ("sweep", "num_samples"): 1, ("sweep", "train"): {}})
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "commit", "-qam", "smaller demo"], cwd=repo, check=True)
    assert set(repro(repo)) == STAGES
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "baseline"], cwd=repo, check=True)

    queued = _dvc(repo, "exp", "run", "--queue", "-S", "model.hub_size=32", "-n", "hub32")
    assert queued.returncode == 0, queued.stderr[-3000:]
    started = _dvc(repo, "queue", "start", "-j", "1")
    assert started.returncode == 0, started.stderr[-3000:]
    deadline = time.monotonic() + 1500
    while time.monotonic() < deadline:
        status = _dvc(repo, "queue", "status").stdout
        if "hub32" in status and not any(s in status for s in ("Queued", "Running")):
            break
        time.sleep(10)
    logs = _dvc(repo, "queue", "logs", "hub32").stdout
    assert "Success" in _dvc(repo, "queue", "status").stdout, logs[-4000:]

    shown = json.loads(_dvc(repo, "exp", "show", "--json").stdout)
    exps = [rev for entry in shown for exp in entry.get("experiments") or [] for rev in exp["revs"]
            if rev.get("name") == "hub32"]
    assert len(exps) == 1
    metrics = exps[0]["data"]["metrics"]
    assert set(metrics) >= {"metrics/synthetic/quality", "metrics/synthetic/sweep_quality.json"} or \
        any(k.startswith("metrics/synthetic/quality") for k in metrics), sorted(metrics)
    assert exps[0]["data"]["params"]["params.yaml"]["data"]["model"]["hub_size"] == 32

    # the experiment's MLflow runs are in the repository's store, tagged with its name
    with sqlite3.connect(repo / "mlflow.db") as db:
        tagged = db.execute("SELECT COUNT(*) FROM tags WHERE key = 'dvc.exp_name' AND value = 'hub32'").fetchone()[0]
    assert tagged >= 1
    assert _git_state(repo) == ""  # the workspace is untouched by the queued run
