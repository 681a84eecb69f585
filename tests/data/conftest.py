"""Fixtures of the data tests: params whose every output lies under the test's temp folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from mitp.config import load_params


@pytest.fixture
def make_params(tmp_path: Path):
    """``make_params(**overrides)`` -> Params with ``data.root`` under ``tmp_path``."""

    def make(overrides: dict | None = None):
        base = {"data.root": str(tmp_path / "data")}
        base.update(overrides or {})
        return load_params(overrides=base)

    return make
