"""A sweep driver process for the kill-and-rerun test: ``python sweep_driver.py ARGS.json``.

Connects to the test's Ray instance (``address``), runs :func:`mitp.sweep.runner.run_sweep` with
a recording hook (or one that SIGKILLs this very process mid-sweep), writes the outputs and
prints a JSON summary as its last line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> None:
    args = json.loads(Path(sys.argv[1]).read_text())
    sys.path.insert(0, str(Path(__file__).parent))
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray
    import ray.cloudpickle
    import sweep_hooks

    from mitp.config.params import load_params
    from mitp.sweep.runner import run_sweep

    ray.cloudpickle.register_pickle_by_value(sweep_hooks)
    params = load_params(overrides=args["overrides"])
    if args.get("kill"):
        hooks = sweep_hooks.KillDriver(args["markers"], os.getpid(), **args["kill"])
    else:
        hooks = sweep_hooks.Recorder(args["markers"])
    ray.init(address=args["address"], log_to_driver=False)
    try:
        outcome = run_sweep(params, "synthetic", hooks=hooks, outputs=(args["csv"], args["best"]))
    finally:
        ray.shutdown()
    print(json.dumps({"resumed": outcome.resumed, "parent_run_id": outcome.parent_run_id,
                      "failed": len(outcome.failed), "unfinished": len(outcome.unfinished)}))


if __name__ == "__main__":
    main()
