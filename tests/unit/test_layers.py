"""The package tree runs one way, in pipeline order: a module imports only its own package and
the packages below it (imports inside functions count). The order is the architecture: params
and the sweep grammar, data, models, the cache of the frozen layers, MLflow tracking, training,
reporting, and the Ray sweep on top; ``pipeline/`` (the stage entry points) above them all."""

from __future__ import annotations

from pathlib import Path

import pytest

from mitp.code_closure import imports
from mitp.config.params import REPO_ROOT

# lowest first; the top-level modules that are not packages sit where their imports put them
LAYERS = ["mitp.errors", "mitp.atomic", "mitp.config", "mitp.code_closure", "mitp.data", "mitp.models",
          "mitp.cache", "mitp.tracking", "mitp.mlflow_model", "mitp.training", "mitp.reporting", "mitp.sweep",
          "pipeline"]
TOP_LEVEL_MODULES_MAX = 6  # mitp/ holds packages; a few cross-cutting modules at most


def layer_of(module: str) -> int:
    for i, name in enumerate(LAYERS):
        if module == name or module.startswith(name + "."):
            return i
    raise AssertionError(f"{module}: in no layer of LAYERS (add its package in pipeline order)")


def project_modules(repo: Path = REPO_ROOT) -> list[str]:
    out = []
    for root in ("mitp", "pipeline"):
        for f in sorted((repo / root).rglob("*.py")):
            parts = f.relative_to(repo).with_suffix("").parts
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def upward_imports(repo: Path = REPO_ROOT) -> list[str]:
    found = []
    for module in project_modules(repo):
        if module == "mitp":
            continue
        for target in imports(module, repo):
            if target != "mitp" and layer_of(target) > layer_of(module):
                found.append(f"{module} -> {target}")
    return sorted(found)


def test_imports_run_one_way():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path):
    for rel, text in {"mitp/__init__.py": "", "mitp/cache/__init__.py": "", "mitp/sweep/__init__.py": "",
                      "mitp/sweep/search.py": "", "pipeline/__init__.py": "",
                      "mitp/cache/build.py": "def f():\n    from mitp.sweep import search\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert upward_imports(tmp_path) == ["mitp.cache.build -> mitp.sweep", "mitp.cache.build -> mitp.sweep.search"]


@pytest.mark.parametrize("package", ["mitp.cache", "mitp.training", "mitp.models"])
def test_cache_training_and_models_never_import_the_sweep(package):
    bad = [m for m in project_modules() if m.startswith(package)
           for t in imports(m) if t == "mitp.sweep" or t.startswith("mitp.sweep.")]
    assert bad == []


def test_mitp_is_packages_and_a_few_modules():
    modules = sorted(f.name for f in (REPO_ROOT / "mitp").glob("*.py"))
    assert len(modules) <= TOP_LEVEL_MODULES_MAX, modules
