"""A real local Ray head with its job server, as a cluster's head node runs it.

Started with ``ray start --head --block`` in its own process group on free ports, with token
authentication and its own temp folder, so it touches no other Ray on the machine; stopped by
signalling that group (``ray stop`` would stop every Ray of the user).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

PORT_FLAGS = ("port", "dashboard-port", "node-manager-port", "object-manager-port",
              "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
              "metrics-export-port")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would point Ray, Python or MLflow elsewhere; the venv first."""
    drop = {"PYTHONPATH", "RAY_ADDRESS", "MLFLOW_TRACKING_URI"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, ready_s: float = 180) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield (job server address, environment for clients of this head)."""
    temp = Path(tempfile.mkdtemp(prefix="rayhead", dir="/tmp"))  # short: Ray's socket paths are limited
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    ports = {flag: free_port() for flag in PORT_FLAGS}
    cmd = ["ray", "start", "--head", "--block", f"--num-cpus={num_cpus}", "--num-gpus=0",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--temp-dir={temp}",
           "--disable-usage-stats", *(f"--{flag}={port}" for flag, port in ports.items())]
    log = open(temp / "ray_start.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited {proc.returncode}: {(temp / 'ray_start.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:  # answered (401 without the token): the job server is up
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Ray job server at {address} did not come up") from None
                time.sleep(1)
        yield address, {**env, "RAY_ADDRESS": address}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
