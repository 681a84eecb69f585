"""Processes the run-state tests start: a holder of a training's checkpoint lock, and a first
run against a new tracking store."""

from __future__ import annotations

import os
import sys


def open_new_store(uri: str, barrier, results) -> None:
    """One process of the fresh-store race: all open the same new sqlite store at once, as
    concurrently started trainings do, and log one run."""
    os.environ["MLFLOW_TRACKING_URI"] = uri
    from mitp.config.params import load_params
    from mitp.tracking import store as tracking

    params = load_params()
    barrier.wait()
    try:
        with tracking.start_run(params.mlflow, run_name="race"):
            import mlflow

            mlflow.log_metric("x", 1.0)
        results.put("ok")
    except BaseException as exc:  # reported to the test, which shows it
        results.put(f"{type(exc).__name__}: {str(exc)[:300]}")


def hold_checkpoint() -> None:
    """``python run_state_workers.py [train args]``: take the checkpoint lock the training with
    these arguments would take, print its checkpoint folder, and keep it until stdin closes."""
    from mitp.training import checkpoint
    from mitp.training.run_layout import train_paths
    from pipeline import cli

    args = cli.parser("hold").parse_args()
    params, dataset = cli.load(args)
    folder = train_paths(params, dataset).checkpoint
    with checkpoint.locked(folder):
        print(folder, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    hold_checkpoint()


def train_killed_at_step(params, dataset: str, kill_at: int, outputs: dict) -> None:
    """``fit_and_record`` that dies by SIGKILL (no clean-up, as a killed node) as training step
    ``kill_at`` (counted over the whole run, from 1) begins: mid-epoch."""
    import signal

    from mitp.training import fit as train

    step_fn, calls = train.train_step, [0]

    def dying_step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return step_fn(*args, **kwargs)

    train.train_step = dying_step
    train.fit_and_record(params, dataset, fresh=True, **outputs)


def train_killed_at_call(params, dataset: str, module: str, name: str, nth: int, outputs: dict) -> None:
    """``fit_and_record`` that dies by SIGKILL as the ``nth`` call of ``module.name`` begins
    (``mitp.training.checkpoint.save``: the start, then one per epoch; ``mitp.tracking.epochs.log_epoch``:
    one per epoch), the points between which a run can die without clean-up."""
    import importlib
    import signal

    from mitp.training import fit as train

    mod = importlib.import_module(module)
    fn, calls = getattr(mod, name), [0]

    def dying(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)

    setattr(mod, name, dying)
    train.fit_and_record(params, dataset, fresh=True, **outputs)
