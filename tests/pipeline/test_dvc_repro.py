"""`dvc repro` end to end on a copy of the repository: every stage runs, the report holds real
numbers (each kind over its seeds), a sweep trial equals the standalone training of the same
configuration and seed, a second repro runs nothing, a change of model.hub_size re-runs only
train / sweep / report, and an edit of a module re-runs exactly the stages that import it.

The copy's params.yaml is the offline default shrunk in size (fewer samples and epochs, a
two-configuration sweep of one seed each) so the test fits in CI; the full default is what
`make repro` runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from documented_commands import run_needs_outputs
from dvc_workspace import changed_stages, copy_repo, edit_params, repro, workspace_env

from mitp.code_closure import closure, stage_modules

pytestmark = pytest.mark.slow

SMOKE = {
    ("data", "synthetic", "n_train"): 120,
    ("data", "synthetic", "n_val"): 60,
    ("data", "synthetic", "n_test"): 60,
    ("train", "epochs"): 2,
    ("train", "compile"): False,  # compiling costs more than these tiny runs train
}
KINDS = ("mitp", "mitp_no_hub", "late_fusion", "pmf", "finetune")


def _shrink(repo: Path, hub_size: int = 64) -> None:
    # the sweep's h = 64 configuration is the main table's MITP: same params, same seed
    values = {**SMOKE, ("sweep", "space"): {"model.hub_size": {"grid": [64, 16]}},
              ("sweep", "num_samples"): 1, ("sweep", "train"): {}, ("model", "hub_size"): hub_size}
    edit_params(repo, values)


def _stages_importing(repo: Path, module_file: str) -> set[str]:
    """The dvc stages (as `dvc status` names them) whose command's import closure holds the file."""
    import yaml

    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    out = set()
    for name, spec in stages.items():
        body = spec.get("do", spec)
        if module_file in closure(stage_modules(body["cmd"]), repo):
            out |= {f"{name}@synthetic"} if "foreach" in spec else {name}
    return out


def test_dvc_repro_end_to_end(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    _shrink(repo)

    ran = repro(repo)
    expected = {"download@synthetic", "prepare@synthetic", "backbone", "cache@synthetic", "train@synthetic",
                "sweep@synthetic", "report"}
    assert set(ran) == expected

    report = (repo / "reports" / "report.md").read_text()
    assert "### Main table" in report and "| MITP | " in report and "mean ± std" in report
    summary = json.loads((repo / "reports" / "summary.json").read_text())
    for kind in KINDS:
        acc = summary["synthetic"][kind]["test_accuracy"]
        assert 0.0 < acc <= 1.0
        assert summary["synthetic"][kind]["seeds"] == 3  # seed and extra_seeds, each run once
        for seed in (1, 2):
            extra = json.loads((repo / "metrics" / "synthetic" / "seeds" / f"train_{kind}_seed{seed}.json").read_text())
            assert extra["seed"] == seed and extra["model_kind"] == kind
    assert summary["synthetic"]["sweep"]["trials"] == 2
    # the DVC metrics files: each run's quality figures only (tests/pipeline/test_dvc_metrics.py)
    from mitp.training.table import quality

    for kind in KINDS:
        record = json.loads((repo / "metrics" / "synthetic" / f"train_{kind}.json").read_text())
        assert json.loads((repo / "metrics" / "synthetic" / "quality" / f"train_{kind}.json").read_text()) \
            == quality(record)
    assert json.loads((repo / "metrics" / "synthetic" / "sweep_quality.json").read_text())["val_accuracy"] > 0
    points = json.loads((repo / "metrics" / "synthetic" / "sweep_points.json").read_text())
    assert sorted(p["model_hub_size"] for p in points) == [16, 64]
    pngs = list((repo / "reports" / "figures").glob("*.png"))
    assert any(p.name == "synthetic_curves.png" for p in pngs)
    assert any("hub_size" in p.name for p in pngs)
    for p in pngs:
        assert p.read_bytes()[:4] == b"\x89PNG"

    # the README's and docs' commands that use the demo's outputs (evaluate, predict) run as written
    run_needs_outputs(repo)
    # the README's registry snippet, in the repository as a user runs it: the table registered
    # each kind's run on seed 0 as <kind>-synthetic
    snippet = ("import json, pathlib, mlflow, pandas as pd\n"
               "model = mlflow.pyfunc.load_model('models:/mitp-synthetic/latest')\n"
               "image = next(pathlib.Path('data/raw/synthetic').rglob('*.jpg')).read_bytes()\n"
               "out = model.predict(pd.DataFrame({'image': [image], 'text': ['a red circle']}))\n"
               "print(json.dumps({'label': out['label'][0], 'registered': sorted(m.name for m in "
               "mlflow.MlflowClient().search_registered_models())}))\n")
    out = subprocess.run([sys.executable, "-c", snippet], cwd=repo, env=workspace_env(repo), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    served = json.loads(out.stdout.strip().splitlines()[-1])
    assert served["label"] in json.loads((repo / "data" / "prepared" / "synthetic" / "labels.json").read_text())
    assert served["registered"] == sorted(f"{kind}-synthetic" for kind in KINDS)

    # the same configuration and seed, as a sweep trial (one thread in a Ray worker) and as a
    # run of the main table (a pool worker beside another training): the same numbers
    import pandas as pd

    trials = pd.read_csv(repo / "metrics" / "synthetic" / "sweep.csv")
    assert "seed" not in trials  # one sample per configuration: every trial runs at `seed` (0)
    trial = trials[trials["model.hub_size"] == 64].iloc[0]
    standalone = json.loads((repo / "metrics" / "synthetic" / "train_mitp.json").read_text())
    assert trial["test_accuracy"] == standalone["test_accuracy"]
    assert trial["test_loss"] == standalone["test_loss"]
    assert trial["best_epoch"] == standalone["best_epoch"]
    # ... and as the documented standalone command, in a process of its own
    out = subprocess.run([sys.executable, "-m", "pipeline.train", "--dataset", "synthetic", "-S", "model.kind=mitp",
                          "--fresh", "--metrics-out", str(tmp_path / "alone.json"),
                          "--history-out", str(tmp_path / "alone_history.json"), "--model-out", str(tmp_path / "model")],
                         cwd=repo, env=workspace_env(repo), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    alone = json.loads((tmp_path / "alone.json").read_text())
    assert (alone["test_accuracy"], alone["test_loss"]) == (trial["test_accuracy"], trial["test_loss"])

    assert repro(repo) == [], "a second repro must run nothing"
    assert changed_stages(repo) == set()

    # an edit of a module re-runs exactly the stages whose commands import it
    cases = {"mitp/training/compiled.py": {"train@synthetic", "sweep@synthetic"},  # StepRunner
             "mitp/data/safe_names.py": {"prepare@synthetic"},  # unsafe_reason
             "mitp/models/kinds.py": {"train@synthetic", "sweep@synthetic"},  # build_model
             "mitp/config/params.py": set(expected)}  # ModelConfig: every stage loads the params
    for module_file, must in cases.items():
        path = repo / module_file
        original = path.read_bytes()
        path.write_bytes(original + b"\n# a comment\n")
        try:
            listed = changed_stages(repo)
        finally:
            path.write_bytes(original)
        assert must <= listed, (module_file, listed)
        assert listed == _stages_importing(repo, module_file), (module_file, listed)
    assert changed_stages(repo) == set()

    _shrink(repo, hub_size=32)
    assert set(repro(repo)) == {"sweep@synthetic", "report", "train@synthetic"}
