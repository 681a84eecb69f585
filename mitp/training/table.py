"""The main table: every model kind trained on ``seed`` and each of ``extra_seeds``, several
trainings at a time.

Each run is exactly the training ``python -m pipeline.train -S model.kind=K -S seed=N`` does
(:func:`mitp.training.fit.fit_and_record`), in a worker process of a pool. The runs of the demo are
small and overhead-bound, and a run's numbers depend on ``train.threads``, never on what else
runs beside it (:mod:`mitp.training.runtime`), so ``jobs`` runs at a time give the same table as one
after another, in a fraction of the time. Workers are reused: the imports (torch, transformers,
MLflow) are paid once per worker, not once per run.

Outputs per run: ``metrics/<dataset>/train_<kind>.json`` for ``seed`` and
``metrics/<dataset>/seeds/train_<kind>_seed<N>.json`` for the others (each with its
``_history.json``): the run's record as ``pipeline.train`` writes it (quality, lineage, cost);
``metrics/<dataset>/quality/train_<kind>[_seed<N>].json``: its quality figures only (``val_*``,
``test_*``), the files ``dvc metrics`` reads (:func:`quality`); the model folder
``models/<dataset>/<kind>`` of the ``seed`` run of every kind that reads the cache.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mitp.config.params import MODEL_KINDS, Params, apply_overrides, load_raw, validate
from mitp.errors import UserError

log = logging.getLogger(__name__)

# Rough relative cost of one run per kind on the demo (measured epochs x step time), so the
# longest runs start first and the pool does not end on one long run alone.
COST_ORDER = ("mitp", "finetune", "pmf", "mitp_no_hub", "late_fusion")

# metrics/<dataset>/quality: the files `dvc metrics show / diff` read (dvc.yaml), one per run
QUALITY_DIR = "quality"


def quality(metrics: dict[str, Any]) -> dict[str, float]:
    """A run's quality figures: its ``val_*`` (best epoch) and ``test_*`` numbers, nothing else
    (run ids, commits, machine tags, timings, memory and sizes stay in the run's record)."""
    return {k: v for k, v in metrics.items() if k.startswith(("val_", "test_"))}


@dataclass(frozen=True)
class TableRun:
    """One training of the table: its overrides on top of the stage's params and its outputs."""

    kind: str
    seed: int
    overrides: dict[str, Any]
    run_name: str
    metrics_out: str
    history_out: str
    model_out: str | None
    quality_out: str | None = None
    register: str | None = None  # a model registry name


@dataclass
class TableOutcome:
    done: list[tuple[TableRun, dict[str, float]]] = field(default_factory=list)
    failed: list[tuple[TableRun, str]] = field(default_factory=list)
    wall_s: float = 0.0


def plan(params: Params, dataset: str, kinds: tuple[str, ...] | None = None, *,
         metrics_dir: str | Path = "metrics", models_dir: str | Path = "models") -> list[TableRun]:
    """The table's runs, longest first: every kind in ``kinds`` (default: all) on ``seed`` and
    ``extra_seeds``, writing under ``metrics_dir``/``models_dir`` (relative: to the repository).
    Fine-tuning reads raw inputs (``cache.enabled=false``)."""
    kinds = tuple(MODEL_KINDS) if kinds is None else kinds
    unknown = [k for k in kinds if k not in MODEL_KINDS]
    if unknown:
        raise UserError(f"--kinds: unknown model kind(s) {', '.join(unknown)} (known: {', '.join(MODEL_KINDS)})")
    metrics = params.resolve(metrics_dir) / dataset
    seeds = [params.seed, *(s for s in params.extra_seeds if s != params.seed)]
    runs = []
    for kind in sorted(kinds, key=lambda k: COST_ORDER.index(k) if k in COST_ORDER else len(COST_ORDER)):
        raw_inputs = MODEL_KINDS[kind] == "all"  # fine-tuning trains every layer: it never reads the cache
        for seed in seeds:
            base = seed == params.seed
            # the extra seeds' runs in their own folder: one DVC output however many seeds there are
            stem = f"train_{kind}" if base else f"seeds/train_{kind}_seed{seed}"
            name = f"train_{kind}" if base else f"train_{kind}_seed{seed}"
            overrides: dict[str, Any] = {"model.kind": kind, "seed": seed}
            if raw_inputs:
                overrides["cache.enabled"] = False
            runs.append(TableRun(
                kind=kind, seed=seed, overrides=overrides,
                run_name=f"{dataset}-{kind}" if base else f"{dataset}-{kind}-seed{seed}",
                metrics_out=str(metrics / f"{stem}.json"), history_out=str(metrics / f"{stem}_history.json"),
                model_out=str(params.resolve(models_dir) / dataset / kind) if base and not raw_inputs else None,
                quality_out=str(metrics / QUALITY_DIR / f"{name}.json"),
                register=registry_name(params, dataset, kind, base)))
    return runs


def registry_name(params: Params, dataset: str, kind: str, base_seed: bool) -> str | None:
    """Where a table run's model is registered: under ``mlflow.register_model`` if it names one
    (every run), else as ``<kind>-<dataset>`` for the run on ``seed`` if ``mlflow.register_table``
    (so ``models:/mitp-synthetic/latest`` loads after ``make repro``), else nowhere."""
    if params.mlflow.register_model:
        return params.mlflow.register_model
    return f"{kind}-{dataset}" if params.mlflow.register_table and base_seed else None


def default_jobs(params: Params) -> int:
    """As many runs at a time as the CPUs hold at ``train.threads`` each (one on CUDA: the runs
    would share one GPU)."""
    import torch

    if params.train.device != "cpu" and torch.cuda.is_available():
        return 1
    return max(1, (os.cpu_count() or 1) // params.train.threads)


def _run_one(params_path: str | None, cli_overrides: list[str], run: TableRun, dataset: str) -> dict[str, float]:
    """In a worker: the params as the stage loaded them, plus this run's overrides."""
    from mitp.training.fit import fit_and_record

    t0 = time.perf_counter()
    raw = apply_overrides(apply_overrides(load_raw(params_path), cli_overrides), run.overrides)
    params = validate(raw, f"{params_path or 'params.yaml'} (table run {run.run_name})")
    result = fit_and_record(params, dataset, run_name=run.run_name, metrics_out=run.metrics_out,
                            history_out=run.history_out, model_out=run.model_out,
                            register=run.register, fresh=True)
    if run.quality_out:
        from mitp.atomic import write_json

        write_json(run.quality_out, quality(result.metrics))
    figures = {k: v for k, v in result.metrics.items() if k.startswith("test_") or k in ("best_epoch", "epochs_run")}
    return {**figures, "wall_s": time.perf_counter() - t0}


def _quiet_worker() -> None:
    # parallel runs' epoch bars would interleave: the table prints one line per finished run
    from mitp.training.runtime import quiet_progress_bars

    quiet_progress_bars()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # its per-run INFO lines, times the table's runs


def run_table(params: Params, dataset: str, runs: list[TableRun], *, params_path: str | None = None,
              cli_overrides: list[str] | None = None, jobs: int = 1,
              say: Callable[[str], None] = print) -> TableOutcome:
    """Train ``runs`` ``jobs`` at a time; a failed run is reported and the others go on."""
    t0, outcome = time.perf_counter(), TableOutcome()
    say(f"main table of {dataset}: {len(runs)} trainings, {jobs} at a time, {params.train.threads} thread(s) each")
    # spawn: a fresh interpreter per worker (no forked torch/OpenMP state); the environment is
    # read before tqdm is imported, so the workers' bars stay quiet
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_quiet_worker) as pool:
        pending = {pool.submit(_run_one, params_path, list(cli_overrides or []), run, dataset): run for run in runs}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                run = pending.pop(future)
                label = f"{run.kind} seed {run.seed}"
                try:
                    figures = future.result()
                except Exception as exc:  # one failed run must not lose the others
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    outcome.failed.append((run, f"{type(exc).__name__}: {first}"))
                    say(f"[{len(outcome.done) + len(outcome.failed)}/{len(runs)}] {label}: FAILED: {first}")
                    continue
                outcome.done.append((run, figures))
                shown = ", ".join(f"{k} {v:.4f}" for k, v in figures.items() if k.startswith("test_"))
                say(f"[{len(outcome.done) + len(outcome.failed)}/{len(runs)}] {label}: {shown} "
                    f"(best epoch {figures.get('best_epoch', 0):.0f} of {figures.get('epochs_run', 0):.0f}; "
                    f"{figures['wall_s']:.0f} s)")
    outcome.wall_s = time.perf_counter() - t0
    return outcome


def failure_message(outcome: TableOutcome) -> str:
    lines = [f"{len(outcome.failed)} of {len(outcome.failed) + len(outcome.done)} trainings of the table failed:"]
    lines += [f"  {run.kind} seed {run.seed} ({Path(run.metrics_out).name}): {why}" for run, why in outcome.failed]
    lines.append("the finished runs' outputs are written; run the same command again to retry")
    return "\n".join(lines)
