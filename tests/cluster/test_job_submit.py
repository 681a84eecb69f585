"""The README's ``ray job submit`` command launches the synthetic sweep on a real local Ray head:
the job ships a copy of the repository (``cluster/runtime_env.yaml``), reads and writes only the
shared paths it is given, and leaves the results table and the MLflow runs behind."""

from __future__ import annotations

import csv
import shutil
import subprocess

import pytest
import yaml
from documented import REPO, submit_command
from ray_head import ray_head

from mitp.config.params import load_params

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# Two trials of one epoch on a small synthetic set, two 1-CPU trials at a time.
TINY = {
    "datasets": ["synthetic"],
    "data": {"synthetic": {"n_train": 96, "n_val": 48, "n_test": 48}},
    "train": {"epochs": 1, "batch_size": 32},
    "sweep": {"space": {"model.prompt_length": {"grid": [4, 8]}}, "train": {"epochs": 1}, "num_samples": 1,
              "resources_per_trial": {"cpu": 1, "gpu": 0}, "max_concurrent_trials": 2},
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) and k != "space" else v
    return out


def _copy_repo(dest):
    """The files git knows (tracked, or new and not ignored): what a clone of this commit holds."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def test_ray_job_submit_runs_the_sweep_from_a_copy(tmp_path):
    repo = _copy_repo(tmp_path / "repo")
    params_file = repo / "params.yaml"
    params_file.write_text(yaml.safe_dump(_merge(yaml.safe_load(params_file.read_text()), TINY), sort_keys=False))

    shared = tmp_path / "shared"
    paths = {"data.root": shared / "data", "backbone.dir": shared / "backbones", "cache.dir": shared / "features",
             "ray.storage_path": shared / "ray_results", "mlflow.tracking_uri": f"sqlite:///{shared / 'mlflow.db'}"}
    params = load_params(params_file, {k: str(v) for k, v in paths.items()})
    # the data is on shared storage before the job starts (README: prepare it first)
    from mitp.data.prepare import prepare_dataset
    from mitp.data.synthetic import generate

    generate(params)
    prepare_dataset(params, "synthetic")

    command = submit_command()
    with ray_head(num_cpus=2) as (_, env):
        env.update(DATASET="synthetic", OUT=str(shared / "results"),
                   SHARED=" ".join(f"-S {k}={v}" for k, v in paths.items()))
        done = subprocess.run(["bash", "-c", command], cwd=repo, env=env, capture_output=True, text=True,
                              timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "succeeded" in done.stdout + done.stderr

    with open(shared / "results" / "sweep.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["model.prompt_length"] for r in rows) == ["4", "8"]
    assert all(r["status"] == "COMPLETED" for r in rows)
    assert (shared / "results" / "sweep_best.json").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(str(paths["mlflow.tracking_uri"]))
    exp = client.get_experiment_by_name(params.mlflow.experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(r["mlflow_run_id"] for r in rows) == sorted(r.info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in runs)
    # nothing was written into the submitting copy: the job ran in Ray's unpacked working dir
    assert not (repo / "data").exists() and not (repo / "mlflow.db").exists()
