"""Fixtures of the data tests: params whose every output lies under the test's temp folder,
and a loopback HTTP server (127.0.0.1 only)."""

from __future__ import annotations

from pathlib import Path

import pytest
from loopback_server import LoopbackServer

from mitp.config.params import load_params

FAST_DOWNLOAD = {"retries": 3, "backoff_s": 0.01, "timeout_s": 5.0, "keep_archives": False}


@pytest.fixture
def make_params(tmp_path: Path):
    """``make_params(overrides)`` -> Params with ``data.root`` under ``tmp_path`` and quick retries."""

    def make(overrides: dict | None = None):
        base = {"data.root": str(tmp_path / "data"), "data.locks_dir": str(tmp_path / "locks")}
        for name in ("food101", "mmimdb", "snli_ve"):
            base[f"data.{name}.download"] = dict(FAST_DOWNLOAD)
        base.update(overrides or {})
        return load_params(overrides=base)

    return make


@pytest.fixture
def server(monkeypatch):
    """A started :class:`LoopbackServer`; proxies are bypassed for 127.0.0.1."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = LoopbackServer().start()
    yield srv
    srv.stop()
