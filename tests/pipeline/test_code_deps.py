"""Code dependencies follow the imports: each ``python -m`` stage of ``dvc.yaml`` lists exactly the
project files its entry module can load (:func:`mitp.code_closure.closure`), and the sweep's
experiment key hashes that closure, so editing any of that code re-runs the stage and starts a
new sweep instead of resuming an old one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from mitp.code_closure import closure, stage_modules
from mitp.config.params import REPO_ROOT

CODE_ROOTS = ("mitp/", "pipeline/")


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


# --- closure on a small package -----------------------------------------------------------------

@pytest.fixture
def repo(tmp_path):
    return write_tree(tmp_path, {
        "mitp/__init__.py": "",
        # relative imports: a sibling module, "from . import name", and two levels up
        "mitp/rel.py": "from .rel_target import X\nfrom . import rel_sibling\n",
        "mitp/rel_target.py": "X = 1\n",
        "mitp/rel_sibling.py": "",
        "mitp/sub/__init__.py": "from mitp import init_dep\n",
        "mitp/sub/deep.py": "from ..up import Y\n",
        "mitp/sub/leaf.py": "import os\n",
        "mitp/up.py": "Y = 2\n",
        "mitp/init_dep.py": "",
        # imports inside a function and under TYPE_CHECKING
        "mitp/fn.py": "def f():\n    import mitp.fn_target\n    return mitp.fn_target\n",
        "mitp/fn_target.py": "",
        "mitp/tc.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mitp.tc_target import T\n",
        "mitp/tc_target.py": "T = int\n",
        # "from pkg import submodule" vs "from module import name"
        "mitp/frm.py": "from mitp.sub import leaf\nfrom mitp.defs import VALUE\n",
        "mitp/defs.py": "VALUE = 3\n",
        "mitp/VALUE.py": "",  # a file named like the imported name, but of another package
        # transitive
        "mitp/chain_a.py": "import mitp.chain_b\n",
        "mitp/chain_b.py": "from mitp import chain_c\n",
        "mitp/chain_c.py": "",
        # third-party and non-project imports
        "mitp/tp.py": "import os\nimport numpy as np\nfrom yaml import safe_load\nimport other.mod\nfrom other import mod\n",
        "other/__init__.py": "",
        "other/mod.py": "import mitp.defs\n",
        "pipeline/__init__.py": "",
        "pipeline/entry.py": "from mitp import rel\n",
    })


def test_relative_imports_are_resolved(repo):
    assert closure(["mitp.rel"], repo) == ["mitp/__init__.py", "mitp/rel.py", "mitp/rel_sibling.py",
                                           "mitp/rel_target.py"]
    assert closure(["mitp.sub.deep"], repo) == ["mitp/__init__.py", "mitp/init_dep.py", "mitp/sub/__init__.py",
                                                "mitp/sub/deep.py", "mitp/up.py"]


def test_imports_inside_functions_and_type_checking_blocks_count(repo):
    assert "mitp/fn_target.py" in closure(["mitp.fn"], repo)
    assert "mitp/tc_target.py" in closure(["mitp.tc"], repo)


def test_from_package_import_submodule_loads_the_submodule(repo):
    files = closure(["mitp.frm"], repo)
    assert "mitp/sub/leaf.py" in files
    assert "mitp/defs.py" in files and "mitp/VALUE.py" not in files  # VALUE is a name of mitp.defs


def test_every_package_init_on_the_way_is_loaded_and_followed(repo):
    assert closure(["mitp.sub.leaf"], repo) == ["mitp/__init__.py", "mitp/init_dep.py", "mitp/sub/__init__.py",
                                                "mitp/sub/leaf.py"]


def test_imports_are_followed_transitively_across_packages(repo):
    assert closure(["mitp.chain_a"], repo) == ["mitp/__init__.py", "mitp/chain_a.py", "mitp/chain_b.py",
                                               "mitp/chain_c.py"]
    assert closure(["pipeline.entry"], repo) == ["mitp/__init__.py", "mitp/rel.py", "mitp/rel_sibling.py",
                                                 "mitp/rel_target.py", "pipeline/__init__.py", "pipeline/entry.py"]


def test_third_party_and_non_project_imports_are_ignored(repo):
    assert closure(["mitp.tp"], repo) == ["mitp/__init__.py", "mitp/tp.py"]
    assert closure(["numpy", "other.mod"], repo) == []


def test_stage_modules():
    assert stage_modules("python -m pipeline.backbone") == ["pipeline.backbone"]
    folded = yaml.safe_load("cmd: >-\n  python -m pipeline.train --dataset x\n  --fresh --run-name y\n")["cmd"]
    assert stage_modules(folded) == ["pipeline.train"]
    assert stage_modules("python -m pipeline.a --x 1\n  && python3 -u -m pipeline.b") == ["pipeline.a", "pipeline.b"]
    assert stage_modules(["python -m pipeline.a", "python -m pipeline.a"]) == ["pipeline.a"]
    assert stage_modules("bash scripts/run.sh -m x") == []


# --- dvc.yaml's code deps -------------------------------------------------------------------------

def _is_code_dep(dep: str, repo: Path) -> bool:
    """A dep naming project code: a .py file or a folder with .py files under mitp/ or pipeline/."""
    if not dep.startswith(CODE_ROOTS):
        return False
    path = repo / dep
    return dep.endswith(".py") or (path.is_dir() and any(path.rglob("*.py")))


def _covers(dep: str, file: str) -> bool:
    return file == dep or file.startswith(dep.rstrip("/") + "/")


def code_deps_problems(repo: Path = REPO_ROOT) -> dict[str, dict[str, list[str]]]:
    """Per ``python -m`` stage whose code deps are wrong: its missing and stale entries and the
    full list of deps it should have (its data deps as they are, then its closure)."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    problems = {}
    for name, stage in stages.items():
        body = stage["do"] if "foreach" in stage else stage
        modules = stage_modules(body.get("cmd", ""))
        if not modules:
            continue
        code = closure(modules, repo)
        deps = [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])]
        static = [d for d in deps if "${" not in d]  # deps with ${...} are data
        missing = [f for f in code if not any(_covers(d, f) for d in static)]
        stale = [d for d in static if _is_code_dep(d, repo) and not any(_covers(d, f) for f in code)]
        if missing or stale:
            data = [d for d in deps if "${" in d or not _is_code_dep(d, repo)]
            problems[name] = {"missing": missing, "stale": stale, "expected": data + code}
    return problems


def format_problems(problems: dict[str, dict[str, list[str]]]) -> str:
    lines = ["dvc.yaml code deps differ from the imports of each stage's entry module:"]
    for name, p in problems.items():
        lines.append(f"\nstage {name}:")
        lines.append("  missing: " + (", ".join(p["missing"]) or "-"))
        lines.append("  stale:   " + (", ".join(p["stale"]) or "-"))
        lines.append("  deps it should have:")
        lines += [f"    - {d}" for d in p["expected"]]
    return "\n".join(lines)


def test_code_deps_checker_flags_missing_and_stale(tmp_path):
    write_tree(tmp_path, {
        "mitp/__init__.py": "", "mitp/a.py": "from mitp import b\n", "mitp/b.py": "", "mitp/old.py": "",
        "mitp/pkg/__init__.py": "", "mitp/pkg/x.py": "",
        "pipeline/__init__.py": "", "pipeline/run.py": "import mitp.a\nimport mitp.pkg.x\n",
        "dvc.yaml": "stages:\n"
                    "  ok:\n    foreach: [d1]\n    do:\n      cmd: >-\n        python -m pipeline.run\n        --dataset ${item}\n"
                    "      deps: ['data/${item}', mitp/__init__.py, mitp/a.py, mitp/b.py, mitp/pkg, pipeline]\n"
                    "  bad:\n    cmd: python -m pipeline.run\n"
                    "    deps: [data/raw, mitp/a.py, mitp/old.py, mitp/pkg]\n"
                    "  other:\n    cmd: echo hi\n    deps: [mitp/old.py]\n",
    })
    assert code_deps_problems(tmp_path) == {"bad": {
        "missing": ["mitp/__init__.py", "mitp/b.py", "pipeline/__init__.py", "pipeline/run.py"],
        "stale": ["mitp/old.py"],
        "expected": ["data/raw", "mitp/__init__.py", "mitp/a.py", "mitp/b.py", "mitp/pkg/__init__.py",
                     "mitp/pkg/x.py", "pipeline/__init__.py", "pipeline/run.py"],
    }}


def test_each_stage_depends_on_exactly_the_code_it_imports():
    problems = code_deps_problems()
    assert not problems, format_problems(problems)


# --- the sweep's experiment key -----------------------------------------------------------------

ORCHESTRATION = {"mitp/sweep/runner.py", "mitp/sweep/results.py", "pipeline/sweep.py"}


def test_result_code_is_the_sweep_closure_less_orchestration():
    from mitp.sweep import runner

    files = [f.relative_to(REPO_ROOT).as_posix() for f in runner.result_code()]
    assert set(runner.ORCHESTRATION) == ORCHESTRATION
    assert files == [f for f in closure(["pipeline.sweep"]) if f not in ORCHESTRATION]
    assert "mitp/training/compiled.py" in files and "mitp/config/params.py" in files


def test_code_fingerprint_follows_the_closure(tmp_path):
    from mitp.sweep import runner

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in ("mitp", "pipeline"):
        shutil.copytree(REPO_ROOT / pkg, tmp_path / pkg, ignore=ignore)

    def edit(rel):
        with (tmp_path / rel).open("a") as f:
            f.write("# edited\n")

    before = runner.code_fingerprint(tmp_path)
    assert runner.code_fingerprint(tmp_path) == before
    edit("mitp/training/compiled.py")  # StepRunner: every training step runs through it
    changed = runner.code_fingerprint(tmp_path)
    assert changed != before
    for rel in sorted(ORCHESTRATION) + ["mitp/reporting/report.py"]:  # orchestration, and code the sweep never loads
        edit(rel)
        assert runner.code_fingerprint(tmp_path) == changed, rel
