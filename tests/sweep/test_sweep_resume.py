"""A sweep whose driver process is killed mid-way resumes when the same sweep runs again:
finished trials are not re-run, the interrupted one continues from its checkpoint, and MLflow
ends with one parent and one child per trial."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from overrides import params_overrides
from sweep_checks import epochs_logged, mlflow_runs, read_csv

HERE = Path(__file__).parent


def _driver(tmp_path: Path, name: str, overrides: dict, address: str, kill: dict | None = None):
    args = {"overrides": overrides, "address": address, "markers": str(tmp_path / "markers"),
            "csv": str(tmp_path / "sweep.csv"), "best": str(tmp_path / "best.json"), "kill": kill}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(args))
    return subprocess.run([sys.executable, str(HERE / "sweep_driver.py"), str(path)], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_killed_sweep_resumes_without_duplicates(ray_local, sweep_params, make_params, tmp_path):
    import ray

    # one trial at a time, so the kill lands at a known point: trial 0 done, trial 1 after epoch 1
    params = sweep_params({"sweep.max_concurrent_trials": 1})
    overrides = params_overrides(params)
    address = ray.get_runtime_context().gcs_address

    first = _driver(tmp_path, "first", overrides, address,
                    kill={"key": "model.prompt_length", "value": 4, "epoch": 1})
    assert first.returncode == -signal.SIGKILL, first.stdout[-3000:] + first.stderr[-3000:]
    killed_trial = (tmp_path / "markers" / "killed").read_text()

    second = _driver(tmp_path, "second", overrides, address)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary == {"resumed": True, "parent_run_id": summary["parent_run_id"], "failed": 0, "unfinished": 0}

    rows = read_csv(tmp_path / "sweep.csv")
    assert len(rows) == 4 and all(r["status"] == "COMPLETED" for r in rows)

    # starts per trial: the interrupted trial twice (the second from its checkpoint); every other
    # trial once - in particular the one that had finished before the kill is not re-run
    starts: dict[str, list[bool]] = {}
    for p in sorted((tmp_path / "markers").glob("start-*.json")):
        info = json.loads(p.read_text())
        starts.setdefault(info["trial_id"], []).append(info["resumed"])
    assert set(starts) == {r["trial_id"] for r in rows}
    assert starts.pop(killed_trial) == [False, True]
    assert all(v == [False] for v in starts.values())

    # MLflow: the same parent reopened, one child per trial, every epoch logged once
    parents, children = mlflow_runs(params)
    assert len(parents) == 1 and parents[0].info.run_id == summary["parent_run_id"]
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 4 and {c.info.run_id for c in children} == {r["mlflow_run_id"] for r in rows}
    assert all(c.info.status == "FINISHED" for c in children)
    for c in children:
        assert epochs_logged(params, c.info.run_id) == [1, 2]
