"""The install files agree: environment.yml (conda) carries what pyproject.toml (pip) declares,
and torch is pinned to the version constraints.txt names."""

from __future__ import annotations

import re
import tomllib

import yaml

from mitp.config.params import REPO_ROOT


def _name(req: str) -> str:
    return re.split(r"[<>=!~ ;\[]", req, maxsplit=1)[0].lower()


def _pins(reqs):
    return {_name(r): r.replace(" ", "") for r in reqs}


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = _pins(project["dependencies"] + project["optional-dependencies"]["dev"])
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    in_env = _pins(r for r in pip_block if not r.startswith("-e"))
    assert set(in_env) == set(declared), f"only in pyproject: {set(declared) - set(in_env)}; only in environment.yml: {set(in_env) - set(declared)}"
    for name, spec in declared.items():
        if name != "torch":
            assert in_env[name] == spec, f"{name}: pyproject says {spec}, environment.yml {in_env[name]}"
    assert "-e ." in pip_block


def test_torch_pinned_the_same_everywhere():
    constraints = (REPO_ROOT / "constraints.txt").read_text()
    pin = re.search(r"^torch==([\w.+]+)$", constraints, re.M).group(1)
    env = (REPO_ROOT / "environment.yml").read_text()
    assert f"torch=={pin}" in env
    assert "-c constraints.txt" in (REPO_ROOT / "Makefile").read_text()
