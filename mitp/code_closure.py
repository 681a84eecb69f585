"""The project code a module runs: the static import closure over ``mitp`` and ``pipeline``.

Two things must change whenever the code behind a result changes: a DVC stage's ``deps`` (else
``dvc repro`` re-runs nothing) and the sweep's experiment key (else a re-run resumes an old Ray
experiment, :func:`mitp.sweep.runner.code_fingerprint`). A hand-written list of files drifts from
the imports, so both derive from this: every ``.py`` file of the project packages that importing
a stage's entry module (``pipeline.train``) can load, read with :mod:`ast` (nothing is imported).

Every ``import`` counts, wherever it is (inside functions, ``if TYPE_CHECKING:`` blocks): a
function-level import is still code the stage can run. Importing ``a.b.c`` runs
``a/__init__.py`` and ``a/b/__init__.py`` first, so those are in the closure too;
``from a.b import c`` loads the submodule ``a/b/c.py`` when there is one. Third-party and standard
library modules are ignored. Stdlib only, so that it imports fast.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

from mitp.config.params import REPO_ROOT

PACKAGES = ("mitp", "pipeline")

_PYTHON = re.compile(r"(?:.*/)?python(?:\d+(?:\.\d+)*)?$")


def _file_of(repo: Path, module: str) -> Path | None:
    """The file that defines ``module`` under ``repo`` (a package's ``__init__.py``), if any."""
    base = repo.joinpath(*module.split("."))
    for f in (base / "__init__.py", base.with_name(base.name + ".py")):
        if f.is_file():
            return f
    return None


def _is_module(repo: Path, module: str) -> bool:
    """A module or package (a namespace package too: a folder) of the project."""
    return _file_of(repo, module) is not None or repo.joinpath(*module.split(".")).is_dir()


def _loads(repo: Path, module: str, packages: frozenset[str]) -> list[str]:
    """The project modules ``import module`` loads: each package on the way, then the module;
    stops at the first part that is not a module (``import a.b`` where ``b`` is a name)."""
    parts = module.split(".")
    if parts[0] not in packages:
        return []
    out = []
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if not _is_module(repo, name):
            break
        out.append(name)
    return out


def _imports(repo: Path, module: str, path: Path, packages: frozenset[str]) -> set[str]:
    """Every project module that an import statement anywhere in ``path`` loads."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.update(_loads(repo, alias.name, packages))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            if not base:
                continue
            loaded = _loads(repo, base, packages)
            found.update(loaded)
            if loaded and loaded[-1] == base:  # "from pkg import name": name may be a submodule
                for alias in node.names:
                    if alias.name != "*" and _is_module(repo, f"{base}.{alias.name}"):
                        found.update(_loads(repo, f"{base}.{alias.name}", packages))
    return found


def imports(module: str, repo: Path = REPO_ROOT, *, packages: Iterable[str] = PACKAGES) -> set[str]:
    """The project modules that the import statements of ``module``'s own file load (not
    followed further); empty for a module that is not in the project."""
    repo = Path(repo)
    path = _file_of(repo, module)
    return _imports(repo, module, path, frozenset(packages)) - {module} if path is not None else set()


def closure(modules: Iterable[str], repo: Path = REPO_ROOT, *, packages: Iterable[str] = PACKAGES) -> list[str]:
    """Sorted repo-relative POSIX paths of every ``.py`` file of ``packages`` that importing
    ``modules`` (dotted names, e.g. ``"pipeline.train"``) can load, imports followed
    transitively; a module that is not in the project contributes nothing."""
    repo = Path(repo)
    pkgs = frozenset(packages)
    seen: set[str] = set()
    todo = [m for name in modules for m in _loads(repo, name, pkgs)]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _file_of(repo, module)
        if path is not None:
            todo.extend(_imports(repo, module, path, pkgs) - seen)
    files = (_file_of(repo, m) for m in seen)
    return sorted(f.relative_to(repo).as_posix() for f in files if f is not None)


def stage_modules(cmd: str | Iterable[str]) -> list[str]:
    """The modules a ``dvc.yaml`` stage ``cmd`` runs with ``python -m X`` (in order, once each).
    Accepts a folded (``>-``) or multi-line command, and a list of commands."""
    text = cmd if isinstance(cmd, str) else "\n".join(cmd)
    tokens = text.split()
    out: list[str] = []
    for i, tok in enumerate(tokens):
        if not _PYTHON.match(tok):
            continue
        j = i + 1
        while j < len(tokens) and tokens[j].startswith("-") and tokens[j] != "-m":  # interpreter flags (-u, -O)
            j += 1
        if j + 1 < len(tokens) and tokens[j] == "-m":
            module = tokens[j + 1]
            if re.fullmatch(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*", module) and module not in out:
                out.append(module)
    return out
