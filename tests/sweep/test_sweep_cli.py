"""The stage entry point ``python -m pipeline.sweep``: exit codes, outputs, the feature cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from overrides import params_overrides, set_args
from sweep_checks import mlflow_runs, read_csv

from mitp.config.params import REPO_ROOT


def _cli(params, *extra: str, overrides: dict | None = None, timeout: int = 600):
    """Run the stage with every setting of ``params`` as -S."""
    args = set_args(params_overrides(params, **(overrides or {})))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["TQDM_DISABLE"] = "1"
    return subprocess.run([sys.executable, "-m", "pipeline.sweep", "--dataset", "synthetic", *args, *extra],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_bad_trial_value_exits_2_before_anything_starts(make_params, tmp_path):
    params = make_params({"cache.enabled": False})
    out = _cli(params, overrides={"sweep.space": {"model.prompt_length": [4, 0]}}, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "model.prompt_length" in out.stderr and "greater than or equal to 1" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "ray_results").exists()  # no Ray experiment was started


@pytest.mark.slow
def test_stage_runs_the_sweep_on_the_feature_cache(sweep_params, tmp_path):
    """cache.enabled: the stage builds the cache first, every trial reads it (same fingerprint
    on the parent and the children); outputs land where the flags say."""
    params = sweep_params({"cache.enabled": True, "cache.layer": 0, "model.interaction.start": 0, "ray.num_cpus": 2})
    csv_out, best_out = tmp_path / "out" / "table.csv", tmp_path / "out" / "best.json"
    out = _cli(params, "--csv-out", str(csv_out), "--best-out", str(best_out))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "best trial" in out.stdout
    rows = read_csv(csv_out)
    assert len(rows) == 4 and all(r["status"] == "COMPLETED" for r in rows)
    best = json.loads(best_out.read_text())
    assert best["trial_id"] in {r["trial_id"] for r in rows}

    parents, children = mlflow_runs(params)
    assert len(parents) == 1 and len(children) == 4
    fingerprint = parents[0].data.tags["cache_fingerprint"]
    assert fingerprint and fingerprint != "unknown"
    for child in children:
        assert child.data.tags["data_source"] == "cache"
        assert child.data.tags["cache_fingerprint"] == fingerprint
