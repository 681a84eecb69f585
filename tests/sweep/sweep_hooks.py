"""Trial hooks the sweep tests inject (pickled by value into the trial processes).

Every hook records what it saw as marker files in ``folder`` (the test's tmp folder, shared by
the trial processes on this machine), so a test can count starts, resumes and epochs.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from mitp.sweep.trainable import TrialHooks, TrialInfo


def _key(info: TrialInfo, keys: tuple[str, ...]) -> str:
    return "-".join(f"{info.config.get(k)}" for k in keys)


class Recorder(TrialHooks):
    """Writes ``start-<trial>-<n>.json`` on every start (with ``resumed`` and the node)."""

    def __init__(self, folder: str):
        self.folder = folder

    def on_start(self, info: TrialInfo) -> None:
        folder = Path(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        n = len(list(folder.glob(f"start-{info.trial_id}-*.json")))
        (folder / f"start-{info.trial_id}-{n}.json").write_text(json.dumps(
            {"trial_id": info.trial_id, "resumed": info.resumed, "node_id": info.node_id, "gpu_ids": info.gpu_ids,
             "config": info.config, "time": time.time(), "pid": os.getpid()}, default=str))


class FailOn(Recorder):
    """Raise after an epoch for trials whose ``key`` is in ``always`` (every epoch of every
    attempt) or in ``once`` (after epoch ``epoch`` of the first attempt only; the retry recovers
    from its checkpoint)."""

    def __init__(self, folder: str, key: str, always=(), once=(), epoch: int = 1):
        super().__init__(folder)
        self.key, self.always, self.once, self.epoch = key, tuple(always), tuple(once), epoch

    def on_epoch(self, info: TrialInfo, epoch: int, row: dict) -> None:
        value = info.config.get(self.key)
        if value in self.always:
            raise RuntimeError(f"injected failure ({self.key}={value}, epoch {epoch})")
        marker = Path(self.folder) / f"failed-once-{info.trial_id}"
        if value in self.once and epoch == self.epoch and not marker.exists():
            marker.write_text("1")
            raise RuntimeError(f"injected one-off failure ({self.key}={value}, epoch {epoch})")


class KillDriver(Recorder):
    """SIGKILL the sweep's driver process after epoch ``epoch`` of the trial whose ``key`` is
    ``value`` (first attempt only), after giving the driver ``grace_s`` to register the epoch's
    checkpoint."""

    def __init__(self, folder: str, driver_pid: int, key: str, value, epoch: int = 1, grace_s: float = 4.0):
        super().__init__(folder)
        self.driver_pid, self.key, self.value, self.epoch, self.grace_s = driver_pid, key, value, epoch, grace_s

    def on_epoch(self, info: TrialInfo, epoch: int, row: dict) -> None:
        marker = Path(self.folder) / "killed"
        if info.config.get(self.key) != self.value or epoch != self.epoch or marker.exists():
            return
        marker.write_text(info.trial_id)
        time.sleep(self.grace_s)
        os.kill(self.driver_pid, signal.SIGKILL)
        time.sleep(60)  # the trial dies with its driver


class Barrier(Recorder):
    """Every trial waits (up to ``timeout_s``) until ``n`` trials have started: all of them reach
    the barrier only if ``n`` trials can run at the same time."""

    def __init__(self, folder: str, n: int, timeout_s: float = 90.0):
        super().__init__(folder)
        self.n, self.timeout_s = n, timeout_s

    def on_start(self, info: TrialInfo) -> None:
        super().on_start(info)
        folder = Path(self.folder)
        deadline = time.time() + self.timeout_s
        while time.time() < deadline:
            arrived = len({p.name.split("-")[1] for p in folder.glob("start-*.json")})
            if arrived >= self.n:
                (folder / f"passed-{info.trial_id}").write_text(str(arrived))
                return
            time.sleep(0.2)
        (folder / f"timeout-{info.trial_id}").write_text("1")
