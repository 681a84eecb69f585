"""`dvc repro` end to end on a copy of the repository: every stage runs, the report holds real
numbers (each kind over two seeds), a second repro runs nothing, and a change of model.hub_size
re-runs only train / train_seeds / sweep / report.

The copy's params.yaml is the offline default shrunk in size (fewer samples, epochs and sweep
trials) so the test fits in CI; the full default is what `make repro` runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dvc_workspace import copy_repo, edit_params, repro

pytestmark = pytest.mark.slow

SMOKE = {
    ("data", "synthetic", "n_train"): 120,
    ("data", "synthetic", "n_val"): 60,
    ("data", "synthetic", "n_test"): 60,
    ("train", "epochs"): 2,
    ("train", "compile"): False,  # compiling costs more than these tiny runs train
}


def _shrink(repo: Path, hub_size: int | None = None) -> None:
    values = {**SMOKE, ("sweep", "space"): {"model.prompt_length": {"grid": [4, 8]}},
              ("sweep", "num_samples"): 1, ("sweep", "train", "epochs"): 1}
    if hub_size is not None:
        values[("model", "hub_size")] = hub_size
    edit_params(repo, values)


def test_dvc_repro_end_to_end(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    _shrink(repo)

    ran = repro(repo)
    kinds = ("mitp", "mitp_no_hub", "late_fusion", "pmf")
    trainings = {"train_finetune@synthetic", "train_finetune_seeds@synthetic-1",
                 *(f"train@synthetic-{k}" for k in kinds), *(f"train_seeds@synthetic-{k}-1" for k in kinds)}
    expected = {"download@synthetic", "prepare@synthetic", "backbone", "cache@synthetic", "sweep@synthetic",
                "report", *trainings}
    assert set(ran) == expected

    report = (repo / "reports" / "report.md").read_text()
    assert "### Main table" in report and "| MITP | " in report and "mean ± std" in report
    summary = json.loads((repo / "reports" / "summary.json").read_text())
    for kind in (*kinds, "finetune"):
        acc = summary["synthetic"][kind]["test_accuracy"]
        assert 0.0 < acc <= 1.0
        assert summary["synthetic"][kind]["seeds"] == 2  # seed and extra_seeds, each run once
        seed1 = json.loads((repo / "metrics" / "synthetic" / f"train_{kind}_seed1.json").read_text())
        assert seed1["seed"] == 1 and seed1["model_kind"] == kind
    assert summary["synthetic"]["sweep"]["trials"] == 2
    pngs = list((repo / "reports" / "figures").glob("*.png"))
    assert any(p.name == "synthetic_curves.png" for p in pngs)
    assert any("prompt_length" in p.name for p in pngs)
    for p in pngs:
        assert p.read_bytes()[:4] == b"\x89PNG"

    assert repro(repo) == [], "a second repro must run nothing"

    _shrink(repo, hub_size=32)
    assert set(repro(repo)) == {"sweep@synthetic", "report", *(f"train@synthetic-{k}" for k in kinds),
                                *(f"train_seeds@synthetic-{k}-1" for k in kinds)}
