"""Shared command-line handling of the stage entry points: ``--params``, ``--dataset``, ``-S``.

Every stage is ``python -m pipeline.<stage> [--dataset NAME] [-S key.path=value ...]``; errors
in the configuration end the process with the message and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from mitp.config.params import Params, load_params
from mitp.errors import UserError
from mitp.models.rules import check_params


def parser(description: str, dataset: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default=None, help="params file (default: params.yaml at the repo root)")
    if dataset:
        p.add_argument("--dataset", default=None, help="dataset name (default: the first of params `datasets`)")
    p.add_argument(
        "-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a param, as `dvc exp run -S` spells it (repeatable)",
    )
    return p


def load(args: argparse.Namespace, sweep_space: bool = True) -> tuple[Params, str | None]:
    """Load and check the params. ``sweep_space=False`` checks the configured model alone: the
    cache-layer rule then applies to its own start, not to every start ``sweep.space`` can give
    (``pipeline.info`` counts the parameters of one model and reads no cache)."""
    params = load_params(args.params, args.overrides)
    if sweep_space:
        check_params(params)
    else:
        check_params(params.model_copy(update={"sweep": params.sweep.model_copy(update={"space": {}})}))
    name = getattr(args, "dataset", None)
    if hasattr(args, "dataset"):
        name = name or params.datasets[0]
        params.dataset(name)  # validates the name
    return params, name


def run(main: Callable[[], int | None]) -> None:
    """Run a stage's main(): user errors (config, data, cache) become a clean message and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def dataset_stage(doc: str, work: Callable[[Params, str], object]) -> Callable[[], int]:
    """The ``main`` of a stage whose whole job is ``work(params, dataset)`` (download, prepare):
    the first line of ``doc`` describes it in ``--help``."""

    def main() -> int:
        params, name = load(parser(doc.splitlines()[0]).parse_args())
        work(params, name)
        return 0

    return main
