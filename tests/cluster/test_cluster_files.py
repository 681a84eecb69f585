"""The cluster definitions are valid and agree with each other and with the README: what can be
checked without a cloud account or a Kubernetes cluster."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml
from documented import REPO, bash_blocks, job_entrypoint, readme_section, submit_command

CLUSTER = REPO / "cluster"
RAY_PACKAGE = Path(ray.__file__).parent


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def _shared_keys(shared: str) -> set[str]:
    words = shlex.split(shared)
    return {w.split("=", 1)[0] for flag, w in zip(words, words[1:], strict=False) if flag == "-S"}


def _readme_shared() -> str:
    for block in bash_blocks(readme_section("Sweeps on a cluster")):
        m = re.search(r'^SHARED="(.*)"$', block, flags=re.M)
        if m:
            return m.group(1)
    raise AssertionError("README, Sweeps on a cluster: no SHARED=... line")


def test_runtime_env_ships_the_code_and_leaves_data_and_results_behind():
    from pathspec import PathSpec  # what Ray matches `excludes` with (gitignore syntax)

    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    spec = PathSpec.from_lines("gitwildmatch", env["excludes"])
    for left_behind in ("data/raw/food101/x.jpg", ".venv/bin/python", "ray_results/exp/state.json",
                        "mlruns/0/meta.yaml", "mlflow.db", ".git/HEAD", "models/synthetic/mitp/card.json"):
        assert spec.match_file(left_behind), left_behind
    for shipped in ("mitp/training/loaders.py", "mitp/models/backbones.py", "pipeline/sweep.py", "params.yaml",
                    "mitp/models/backbone_configs/bert-base-uncased.json", "dvc.yaml"):
        assert not spec.match_file(shipped), shipped
    assert all(isinstance(v, str) for v in env["env_vars"].values())  # Ray refuses non-strings
    assert any(k.startswith("MLFLOW_") for k in env["env_vars"])


def test_readme_command_uses_the_runtime_env_and_shared_paths():
    words = shlex.split(submit_command())
    assert words[:3] == ["ray", "job", "submit"]
    assert words[words.index("--runtime-env") + 1] == "cluster/runtime_env.yaml"
    assert job_entrypoint().startswith("python -m pipeline.sweep ")
    assert _shared_keys(_readme_shared()) == {"data.root", "backbone.dir", "cache.dir", "ray.storage_path",
                                              "mlflow.tracking_uri"}


def test_cluster_launcher_config_is_valid_and_runs_the_readme_command():
    import jsonschema

    config = yaml.safe_load((CLUSTER / "ray-cluster-aws.yaml").read_text())
    schema = json.loads((RAY_PACKAGE / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["provider"]["type"] == "aws"
    assert config["head_node_type"] in config["available_node_types"]
    assert config["metadata"]["job_submit"] == submit_command()
    start = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert start.count("RAY_AUTH_MODE=token ray start") == 2
    assert "mlflow server" in " ".join(config["head_start_ray_commands"])
    assert config["docker"]["image"] == _rayjob_image()


def _rayjob() -> dict:
    return yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())


def _rayjob_image() -> str:
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    images = {c["image"] for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]}
    for group in cluster["workerGroupSpecs"]:
        images |= {c["image"] for c in group["template"]["spec"]["containers"]}
    assert len(images) == 1, images
    return images.pop()


def test_rayjob_runs_the_readme_command_with_the_same_environment():
    job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["entrypoint"] == job_entrypoint()
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    env_vars = runtime_env["env_vars"]
    assert {"DATASET", "SHARED", "OUT"} <= set(env_vars)
    assert _shared_keys(env_vars["SHARED"]) == _shared_keys(_readme_shared())
    shipped = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())["env_vars"]
    assert {k: env_vars[k] for k in shipped} == shipped
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert any("nvidia.com/gpu" in c["resources"]["limits"] for g in workers for c in g["template"]["spec"]["containers"])


def test_image_pins_equal_the_project_constraints():
    text = (CLUSTER / "Dockerfile").read_text()
    run = " ".join(line.strip().rstrip("\\") for line in text.splitlines() if not line.lstrip().startswith("#"))
    installs = [seg.strip() for seg in re.split(r"&&|RUN ", run) if "pip install" in seg]
    assert installs
    pins = _constraints()
    for pkg, version in pins.items():
        explicit = re.findall(rf"\b{re.escape(pkg)}==([\w.+-]+)", run)
        assert explicit == [version] or (not explicit and all("-c constraints.txt" in i for i in installs)), pkg
    # torch comes from the CUDA index; everything else is resolved under constraints.txt
    for inst in installs:
        assert "-c constraints.txt" in inst or ("torch==" in inst and "--index-url" in inst and "/whl/cu" in text), inst
    assert "COPY constraints.txt" in text
    assert re.search(r"^ARG RAY_VERSION=(.+)$", text, flags=re.M).group(1) == ray.__version__
    assert re.search(r"^FROM python:3\.11", text, flags=re.M)


@pytest.mark.parametrize("name", ["ray-cluster-aws.yaml", "rayjob.yaml"])
def test_definitions_name_the_image_built_from_the_dockerfile(name):
    tag = re.search(r"-t (\S+) \.", (CLUSTER / "Dockerfile").read_text()).group(1)
    assert tag in (CLUSTER / name).read_text()
