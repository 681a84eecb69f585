"""Every params key a stage reads is declared in that stage's ``params:`` in dvc.yaml, so that
`dvc repro` re-runs exactly the stages a change concerns.

Each stage runs as dvc runs it (``python -m pipeline.<stage>``) on a small synthetic set, with
the keys it reads recorded (tests/pipeline/param_reads.py); a declared section (``model``)
covers every key under it (``model.hub_size``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mitp.code_closure import stage_modules
from mitp.config.params import REPO_ROOT
from tests.factories import tmp_overrides
from tests.pipeline.param_reads import env_for, read_keys, sitecustomize_source

DATASET = "synthetic"
SMALL = {"data.synthetic.n_train": 64, "data.synthetic.n_val": 32, "data.synthetic.n_test": 32,
         "train.epochs": 1, "train.batch_size": 32, "train.max_steps_per_epoch": 1}


def declared_params(stage: str) -> list[str]:
    """The stage's ``params:`` in dvc.yaml, with ``${item}`` / ``${item.dataset}`` = the dataset."""
    spec = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"][stage]
    spec = spec.get("do", spec)
    out = []
    for entry in spec.get("params", []):
        assert isinstance(entry, str), f"dvc.yaml: stage {stage}: params entry {entry!r} (only params.yaml keys are used)"
        out.append(entry.replace("${item.dataset}", DATASET).replace("${item}", DATASET))
    return out


def undeclared(read: set[str], declared: list[str]) -> set[str]:
    return {k for k in read if not any(k == d or k.startswith(d + ".") for d in declared)}


def _overrides(root: Path) -> list[str]:
    flat = {**tmp_overrides(root), "report.dir": str(root / "reports"), **SMALL}
    return [a for k, v in flat.items() for a in ("-S", f"{k}={json.dumps(v)}")]


def run_stage(root: Path, stage: str, *args: str) -> set[str]:
    """Run the dvc stage ``stage`` (its module: the ``python -m`` of its command in dvc.yaml)."""
    site = root / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(sitecustomize_source())
    record = root / f"reads-{stage}.txt"
    spec = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"][stage]
    module = stage_modules(spec.get("do", spec)["cmd"])[0]
    cmd = [sys.executable, "-m", module, *args, *_overrides(root)]
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env_for(record, site, REPO_ROOT), capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, f"{stage}: {out.stderr[-3000:]}"
    return read_keys(record)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """download -> prepare -> backbone -> cache -> train -> report on a small synthetic set."""
    root = tmp_path_factory.mktemp("stages")
    metrics = root / "metrics" / DATASET
    ds = ("--dataset", DATASET)
    reads = {
        "download": run_stage(root, "download", *ds),
        "prepare": run_stage(root, "prepare", *ds),
        "backbone": run_stage(root, "backbone"),
        "cache": run_stage(root, "cache", *ds),
        # the main table, cut to one kind on the cache and fine-tuning (raw inputs), on seed and extra_seeds
        "train": run_stage(root, "train", *ds, "--kinds", "mitp,finetune", "--metrics-dir", str(root / "metrics"),
                           "--models-dir", str(root / "models")),
    }
    assert (metrics / "train_mitp.json").is_file() and (metrics / "seeds" / "train_finetune_seed1.json").is_file()
    reads["report"] = run_stage(root, "report", "--metrics-dir", str(root / "metrics"))
    return root, reads


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["download", "prepare", "backbone", "cache", "train", "report"])
def test_stage_declares_every_param_it_reads(pipeline_run, stage):
    _, reads = pipeline_run
    assert reads[stage], f"nothing recorded for {stage}: the recorder is not installed"
    assert undeclared(reads[stage], declared_params(stage)) == set(), f"dvc.yaml: stage {stage} reads undeclared params"


@pytest.mark.slow
def test_recorder_sees_the_reads_that_matter(pipeline_run):
    """The recording is real: train reads the optimizer settings, download none of the model's."""
    _, reads = pipeline_run
    assert {"train.lr", "model.hub_size", "seed"} <= reads["train"]
    assert not any(k.startswith(("model.", "train.")) for k in reads["download"])
    # a stage that dropped a declaration would be caught
    assert undeclared(reads["train"], [d for d in declared_params("train") if d != "train"]) >= {"train.lr"}


@pytest.mark.slow
def test_sweep_declares_every_param_it_reads(pipeline_run):
    """The driver and its trials (Ray workers, recorded through the same sitecustomize)."""
    root, _ = pipeline_run
    reads = run_stage(root, "sweep", "--dataset", DATASET, "--fresh",
                      "--csv-out", str(root / "sweep.csv"), "--best-out", str(root / "sweep_best.json"),
                      "-S", "sweep.space={model.prompt_length: {grid: [4]}}", "-S", "sweep.max_concurrent_trials=1",
                      "-S", "sweep.resources_per_trial.cpu=1", "-S", "ray.num_cpus=1", "-S", "sweep.train={}")
    assert "train.lr" in reads, "the trial's reads (in a Ray worker) were not recorded"
    assert undeclared(reads, declared_params("sweep")) == set()
