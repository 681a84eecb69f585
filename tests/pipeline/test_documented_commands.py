"""Every command README.md and docs/*.md show in a shell block is classified
(tests/pipeline/documented_commands.py), and the quick ones run from the repository root and
exit 0. Benchmark commands, fenced or inline, must parse with the benchmark's own flags."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
from documented_commands import (
    REPO,
    RULES,
    all_commands,
    benchmark_commands,
    classify,
    documented_commands,
    needs_outputs_argv,
)

from tests.factories import prepare_synthetic


def _ids(commands):
    return [c.source for c in commands]


def test_every_documented_command_is_classified():
    commands = all_commands()
    assert commands, "no shell command found in README.md and docs/*.md"
    unclassified = [f"{c.source}: {c.text}" for c in commands if c.kind is None]
    assert not unclassified, ("documented commands in no class: add a rule to RULES in "
                              "tests/pipeline/documented_commands.py (quick, needs_outputs or not_run with why):\n"
                              + "\n".join(unclassified))


def test_the_classes_hold_what_the_readme_promises():
    quick = documented_commands("quick")
    assert any("pipeline.info" in c.text and "model.kind=pmf" in c.text for c in quick)
    assert any("pipeline.info" in c.text and "model.hub_size=384" in c.text for c in quick)
    needs = documented_commands("needs_outputs")
    assert {"pipeline.evaluate", "pipeline.predict"} <= {re.search(r"pipeline\.\w+", c.text).group() for c in needs}
    assert all(c.why for c in documented_commands("not_run"))


@pytest.mark.parametrize("text, kind", [
    ("python -m pipeline.info --dataset synthetic", "quick"),
    (".venv/bin/python -m pipeline.train --help", "quick"),
    ("python benchmarks/cache_speedup.py --smoke --threads 1", "quick"),
    ("python benchmarks/cache_speedup.py --preset vit-base --start 8", "not_run"),
    ("python -m pipeline.predict --model models/synthetic/mitp --input a.csv --output b.csv", "needs_outputs"),
    ("dvc repro", "not_run"),
    ("ray status", "not_run"),
    ("rm -rf data", None),
    ("python -m pipeline.evaluate --dataset synthetic", None),  # no model named: in no class
])
def test_classification_rules(text, kind):
    assert classify(text)[0] == kind


def test_rules_are_well_formed():
    for kind, pattern, why in RULES:
        assert kind in ("quick", "needs_outputs", "not_run") and why
        re.compile(pattern)


def _quick_env(tmp_path) -> dict[str, str]:
    """No MLflow store or Ray cluster from outside: anything a quick command opens lives in tmp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", TQDM_DISABLE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    return env


def _numbers(text: str) -> set[int]:
    """The grouped integers of a shown output, e.g. ``2,104,806`` (percentages left out)."""
    return {int(m.replace(",", "")) for m in re.findall(r"\b\d{1,3}(?:,\d{3})+\b", text)}


def _values(obj) -> set:
    if isinstance(obj, dict):
        return set().union(*(_values(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_values(v) for v in obj)) if obj else set()
    return {obj}


@pytest.mark.parametrize("command", documented_commands("quick"), ids=_ids(documented_commands("quick")))
def test_quick_documented_command_runs(command, tmp_path):
    proc = subprocess.run(command.argv(), cwd=REPO, env=_quick_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{command.source}: {command.text}\nexit {proc.returncode}\n{proc.stderr[-3000:]}"
    if "pipeline.info" in command.text:
        summary = json.loads(proc.stdout)
        shown = " ".join(command.expect)
        # the figures the docs show under the command are the ones it prints
        assert _numbers(shown) <= _values(summary), (command.source, shown, summary)


def _benchmark_parser(script: str):
    path = REPO / script
    spec = importlib.util.spec_from_file_location(f"_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


@pytest.mark.parametrize("command", benchmark_commands(), ids=_ids(benchmark_commands()))
def test_documented_benchmark_flags_exist(command, capsys):
    argv = command.argv()
    script = argv[1]
    assert (REPO / script).is_file(), f"{command.source}: no {script}"
    try:
        _benchmark_parser(script).parse_args(argv[2:])
    except SystemExit as exc:
        pytest.fail(f"{command.source}: {command.text}: {script} refuses these flags (exit {exc.code}): "
                    f"{capsys.readouterr().err.strip()}")


def test_needs_outputs_commands_are_filled_in(tmp_path):
    """What the end-to-end repro test runs after `dvc repro`: the run id and the input file come
    from the repository's outputs (here a stand-in: a prepared set and a metrics file)."""
    from mitp.config.params import load_params

    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    for name in ("README.md", *(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))):
        (repo / name).write_text((REPO / name).read_text(encoding="utf-8"), encoding="utf-8")
    params = load_params(overrides={"data.root": str(repo / "data"), "data.locks_dir": str(repo / "locks"),
                                    "data.synthetic.n_train": 12, "data.synthetic.n_val": 6,
                                    "data.synthetic.n_test": 6})
    prepare_synthetic(params)
    (repo / "metrics" / "synthetic").mkdir(parents=True)
    (repo / "metrics" / "synthetic" / "train_mitp.json").write_text(json.dumps({"run_id": "0123abcd"}))

    ready = needs_outputs_argv(repo)
    assert ready
    for command, argv in ready:
        assert argv[0] == sys.executable and not any("<" in a or ">" in a for a in argv), (command.source, argv)
        if "--model" in argv and argv[argv.index("--model") + 1].startswith("runs:/"):
            assert argv[argv.index("--model") + 1] == "runs:/0123abcd/model"
        if "--input" in argv:
            src = repo / argv[argv.index("--input") + 1]
            rows = [json.loads(ln) for ln in src.read_text().splitlines()] if src.suffix == ".jsonl" else None
            if rows is not None:
                assert rows and all((src.parent / r["image"]).is_file() and r["text"] for r in rows)
