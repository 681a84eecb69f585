"""Shared fixtures: params pointed at a temp folder, tiny-random backbones, a small synthetic set
(thin wrappers around tests/factories.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.factories import SMALL_SYNTHETIC, params_under, prepare_synthetic

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory) -> Path:
    """A session-wide folder: tiny-random backbones are built once and reused."""
    return tmp_path_factory.mktemp("shared")


@pytest.fixture
def make_params(tmp_path, shared_root, monkeypatch):
    """``make_params({"model.hub_size": 8})`` -> validated Params writing under tmp_path. Their
    tracking store is their own: ``MLFLOW_TRACKING_URI`` (which ``mlflow.set_tracking_uri`` sets)
    is unset at each call, and restored after the test."""

    def _make(overrides: dict | None = None, root: Path | None = None):
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return params_under(root or tmp_path, shared_root / "backbones", overrides)

    return _make


@pytest.fixture
def prepared_params(make_params):
    """``prepared_params(overrides)`` -> Params of a generated + prepared small synthetic set
    (``reuse=True``: kept if that folder already holds a prepared set)."""

    def _make(overrides: dict | None = None, root: Path | None = None, reuse: bool = False):
        return prepare_synthetic(make_params({**SMALL_SYNTHETIC, **(overrides or {})}, root=root), reuse)

    return _make


@pytest.fixture(scope="session")
def tiny_backbones(shared_root):
    """The tiny-random pair, built once per session through the real save/load path."""
    from mitp.config.params import load_params
    from mitp.models import backbones

    params = load_params(overrides={"backbone.dir": str(shared_root / "backbones")})
    return backbones.load(params.backbone)


@pytest.fixture
def synthetic_prepared(prepared_params):
    """A small synthetic set, generated and prepared under tmp_path; returns its Params."""
    return prepared_params()


def _drop_model_code_paths() -> None:
    """Remove from ``sys.path`` every folder holding a ``mitp`` package other than the project's
    (a logged model's ``code_paths`` copy, which MLflow puts first when it loads the model)."""
    sys.path[:] = [p for p in sys.path if not (p and (Path(p) / "mitp").is_dir() and Path(p).resolve() != _PROJECT)]


_PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _sys_path_restored():
    """Loading a logged pyfunc model puts its code folder (MLflow's ``code_paths``: a copy of the
    ``mitp`` modules it imports) first on ``sys.path``, in a test or in a session fixture;
    processes a later test spawns inherit that path and would import the model's partial copy
    instead of the project. Dropped before and after each test."""
    _drop_model_code_paths()
    yield
    _drop_model_code_paths()
