"""The search space and the results table, without Ray: parsing, validation before launch,
experiment naming, the metric, best-trial selection."""

from __future__ import annotations

import pytest

from mitp.errors import ConfigError


def _params(make_params, **overrides):
    return make_params({"cache.enabled": False, **overrides})


def test_forms_become_tune_domains(make_params):
    from ray.tune.search.sample import Categorical, Float, Integer

    from mitp.config.space import build_space
    from mitp.sweep.search import param_space

    params = _params(make_params, **{"sweep.space": {
        "model.prompt_length": {"grid": [4, 8]},
        "model": {"hub_size": [16, 32, 64]},  # nested mapping, plain list = grid
        "model.kind": {"choice": ["mitp", "mitp_no_hub"]},
        "train.lr": {"loguniform": [1e-4, 1e-2]},
        "model.interaction.interval": {"randint": [1, 3]},
        "seed": 7,  # fixed
    }})
    space = build_space(params)
    ps = param_space(space)
    assert ps["model.prompt_length"] == {"grid_search": [4, 8]}
    assert ps["model.hub_size"] == {"grid_search": [16, 32, 64]}
    assert isinstance(ps["model.kind"], Categorical)
    assert isinstance(ps["train.lr"], Float) and isinstance(ps["model.interaction.interval"], Integer)
    assert ps["seed"] == 7
    assert space.grid_size == 6 and space.n_trials == 6 and space.num_samples == 1
    assert "seed" not in space.swept_keys and "train.lr" in space.swept_keys
    # validation checks both ends of a range (randint's high end is excluded)
    assert space.dims["model.interaction.interval"].candidates() == [1, 2]
    assert space.dims["train.lr"].candidates() == [1e-4, 1e-2]


def test_repeats_get_their_own_seeds(make_params):
    from mitp.config.space import build_space
    from mitp.sweep.search import param_space

    params = _params(make_params, **{"seed": 5, "sweep.num_samples": 3, "sweep.space": {"model.hub_size": [16, 32]}})
    space = build_space(params)
    assert space.auto_seeds == [5, 6, 7] and param_space(space)["seed"] == {"grid_search": [5, 6, 7]}
    assert space.num_samples == 1 and space.n_trials == 6 and "seed" in space.swept_keys
    # a seed in the space: num_samples stays Tune's (random samples)
    params = _params(make_params, **{"sweep.num_samples": 3, "sweep.space": {"seed": {"choice": [0, 1]}}})
    space = build_space(params)
    assert space.num_samples == 3 and space.auto_seeds is None


def test_trial_overrides_space_wins_over_sweep_train(make_params):
    from mitp.config.space import build_space

    params = _params(make_params, **{"sweep.train": {"epochs": 3, "train.batch_size": 16},
                                     "sweep.space": {"train.epochs": [1, 5]}})
    space = build_space(params)
    assert space.trial_overrides({"train.epochs": 5}) == {"train.epochs": 5, "train.batch_size": 16}
    assert space.max_epochs(params.train.epochs) == 5


@pytest.mark.parametrize("space, message", [
    ({"model.prompt_length": {"grod": [4, 8]}}, "model.prompt_length is a value, not a section"),
    ({"model.interaction": [1, 2]}, "model.interaction is a section"),
    ({"model.hub_sise": [1]}, "unknown key model.hub_sise"),
    ({"data.root": ["a"]}, "only seed, model.* and train.* can be swept"),
    ({"cache.layer": [0, 1]}, "only seed, model.* and train.* can be swept"),
    ({"train.lr": {"loguniform": [0, 1]}}, "positive low end"),
    ({"train.lr": {"uniform": [1, 1]}}, "low < high"),
    ({"model.hub_size": {"grid": []}}, "non-empty list"),
    ({"model": {"interaction": {}}}, "sweep.space.model.interaction: empty mapping"),
])
def test_malformed_space_fails_at_load(make_params, space, message):
    from mitp.models.rules import check_params

    with pytest.raises(ConfigError, match="sweep.space") as info:
        check_params(_params(make_params, **{"sweep.space": space}))
    assert message in str(info.value)


def test_unknown_sweep_train_key_fails_at_load(make_params):
    from mitp.models.rules import check_params

    with pytest.raises(ConfigError, match=r"sweep\.train: epochz: unknown train key"):
        check_params(_params(make_params, **{"sweep.train": {"epochz": 2}}))


def test_starts_in_use(make_params):
    """The train config's start and every start the space can give (any form, nested or dotted),
    as long as some kind in use has interaction layers."""
    from mitp.models.rules import starts_in_use

    def starts(**overrides):
        return starts_in_use(make_params({"model.interaction.start": 2, **overrides}))

    assert starts(**{"sweep.space": {}}) == {2}
    assert starts(**{"sweep.space": {"model.interaction.start": {"randint": [1, 4]}}}) == {1, 2, 3}
    assert starts(**{"sweep.space": {"model": {"interaction": {"start": {"choice": [3, 1]}}}}}) == {1, 2, 3}
    assert starts(**{"sweep.space": {"model.interaction.start": {"loguniform": [1, 3]}}}) == {1, 2, 3}
    assert starts(**{"model.kind": "late_fusion", "sweep.space": {"model.interaction.start": [0, 1]}}) == set()
    assert starts(**{"model.kind": "late_fusion", "sweep.space": {"model.kind": {"choice": ["late_fusion", "mitp"]},
                                                                  "model.interaction.start": [0]}}) == {0, 2}
    with pytest.raises(ConfigError, match=r"sweep\.space\.model\.interaction\.start: 1\.5 is not a layer number"):
        starts(**{"sweep.space": {"model.interaction.start": {"uniform": [1.5, 3]}}})


def test_every_check_of_the_cache_layer_rule_is_reached(make_params, tmp_path):
    """Loading no longer applies the rule, so each place that checks it is reached and refuses:
    a stage's entry (the train config and the sweep space), the cache build, the sweep.
    ``pipeline.info`` counts one model, so it applies the rule to that model's start only."""
    import re
    import subprocess
    import sys

    from overrides import set_args

    from mitp.cache import build_cache
    from mitp.config.params import REPO_ROOT
    from mitp.config.space import base_raw_of, build_space
    from mitp.sweep.search import validate_trials

    train_bad = {"cache.layer": 2, "model.interaction.start": 1, "sweep.space": {}}
    sweep_bad = {"cache.layer": 2, "model.interaction.start": 2, "sweep.space": {"model.interaction.start": [1, 2]}}
    train_msg = r"cache\.layer: 2 is above model\.interaction\.start 1"
    sweep_msg = r"sweep\.space\.model\.interaction\.start: value 1 is below cache\.layer 2"
    # the sweep's rule at the entry of a stage that serves the sweep (--estimate-only: it would write nothing)
    stages = (["pipeline.info"], ["pipeline.cache", "--estimate-only"])
    for overrides, message, stage in ((train_bad, train_msg, stages[0]), (sweep_bad, sweep_msg, stages[1])):
        params = make_params(overrides)  # loads: the schema alone does not know the rule
        out = subprocess.run([sys.executable, "-m", *stage, "--dataset", "synthetic", *set_args(overrides)],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert len([ln for ln in out.stderr.splitlines() if ln.startswith("error:")]) == 1
        assert re.search(message, out.stderr), out.stderr
        with pytest.raises(ConfigError, match=message):  # before it opens anything (no backbones needed)
            build_cache(params, "synthetic", backbones=None)
        assert not params.features_dir("synthetic").exists()
        with pytest.raises(ConfigError, match=message):
            validate_trials(params, build_space(params), base_raw_of(params))
    info = subprocess.run([sys.executable, "-m", "pipeline.info", "--dataset", "synthetic", *set_args(sweep_bad)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert info.returncode == 0, info.stderr[-2000:]  # its own start 2 is at the cache layer


def test_bad_trial_value_fails_before_launch_naming_key_and_trial(make_params):
    from mitp.config.space import base_raw_of, build_space
    from mitp.sweep.search import validate_trials

    params = _params(make_params, **{"sweep.space": {"model.prompt_length": [4, 0], "model.hub_size": [16, 32]}})
    space = build_space(params)
    with pytest.raises(ConfigError) as info:
        validate_trials(params, space, base_raw_of(params))
    msg = str(info.value)
    assert "model.prompt_length" in msg and "greater than or equal to 1" in msg and "sweep trial" in msg
    assert "model.prompt_length=0" in msg


def test_start_layer_checks(make_params):
    from mitp.config.space import base_raw_of, build_space
    from mitp.sweep.search import validate_trials

    # below the cache layer: the cached layers would have to see a prompt
    params = make_params({"cache.enabled": True, "cache.layer": 2, "model.interaction.start": 2,
                          "sweep.space": {"model.interaction.start": [1, 2, 3]}})
    with pytest.raises(ConfigError, match=r"sweep\.space\.model\.interaction\.start: value 1 is below cache\.layer 2"):
        validate_trials(params, build_space(params), base_raw_of(params))
    # at or above the cache layer: fine (4 trials validated: 2 starts x 2 hub sizes)
    params = make_params({"cache.enabled": True, "cache.layer": 2, "model.interaction.start": 2,
                          "sweep.space": {"model.interaction.start": [2, 3], "model.hub_size": [8, 16]}})
    assert validate_trials(params, build_space(params), base_raw_of(params)) == 4
    # beyond the depth of the tiny-random towers (4 layers)
    params = _params(make_params, **{"sweep.space": {"model.interaction.start": [1, 4]}})
    with pytest.raises(ConfigError, match=r"model\.interaction\.start: 4 must be below the backbone depth 4"):
        validate_trials(params, build_space(params), base_raw_of(params))


def test_metric_resolution(make_params):
    from mitp.sweep.runner import resolve_metric

    params = _params(make_params)
    assert resolve_metric(params, "synthetic") == "val_accuracy"
    assert resolve_metric(params, "mmimdb") == "val_f1_micro"
    params = _params(make_params, **{"sweep.metric": "test_accuracy"})
    with pytest.raises(ConfigError, match=r"sweep\.metric: 'test_accuracy' is not reported every epoch"):
        resolve_metric(params, "synthetic")
    params = _params(make_params, **{"sweep.metric": "val_accuracy"})
    with pytest.raises(ConfigError, match="sweep.metric"):
        resolve_metric(params, "mmimdb")


def test_gpu_settings_are_checked(make_params):
    from mitp.sweep.runner import check_resources

    with pytest.raises(ConfigError, match=r"sweep\.resources_per_trial\.gpu: 0, but train\.device is cuda"):
        check_resources(_params(make_params, **{"train.device": "cuda"}))
    with pytest.raises(ConfigError, match="fraction of one GPU or whole GPUs"):
        check_resources(_params(make_params, **{"sweep.resources_per_trial.gpu": 1.5}))
    check_resources(_params(make_params, **{"sweep.resources_per_trial.gpu": 0.25}))
    check_resources(_params(make_params, **{"sweep.resources_per_trial.gpu": 2}))


def test_experiment_name_identifies_the_sweep(make_params):
    from mitp.config.space import build_space
    from mitp.sweep.runner import experiment_name

    def name(**overrides):
        params = _params(make_params, **{"sweep.space": {"model.hub_size": [16, 32]}, **overrides})
        return experiment_name(params, "synthetic", build_space(params), "val_accuracy")

    base = name()
    assert base.startswith("synthetic-demo-") and base == name()
    # where and how it runs does not change the sweep ...
    assert name(**{"sweep.max_concurrent_trials": 4, "sweep.resources_per_trial.cpu": 2, "sweep.max_failures": 3}) == base
    # ... what the trials train does
    assert name(**{"sweep.space": {"model.hub_size": [16, 64]}}) != base
    assert name(**{"sweep.train": {"epochs": 3}}) != base
    assert name(**{"model.dropout": 0.2}) != base
    assert name(**{"sweep.name": "other"}).startswith("synthetic-other-")


def test_a_change_to_the_trials_code_starts_a_new_sweep(make_params, monkeypatch, tmp_path):
    """The experiment folder's name follows the code a trial runs (the import closure of
    pipeline.sweep, tests/pipeline/test_code_deps.py), so an edit never resumes an old sweep."""
    import shutil

    from mitp.config.params import REPO_ROOT
    from mitp.config.space import build_space
    from mitp.sweep import runner

    for pkg in ("mitp", "pipeline"):
        shutil.copytree(REPO_ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    code = runner.code_fingerprint
    monkeypatch.setattr(runner, "code_fingerprint", lambda: code(tmp_path))
    params = _params(make_params)

    def name():
        return runner.experiment_name(params, "synthetic", build_space(params), "val_accuracy")

    seen = [name()]
    assert name() == seen[0]  # unchanged code: the same folder, so a rerun resumes
    for rel, changes in [("mitp/sweep/runner.py", False), ("mitp/reporting/report.py", False), ("mitp/cache/build.py", True),
                         ("mitp/models/kinds.py", True), ("mitp/training/compiled.py", True), ("mitp/sweep/trainable.py", True)]:
        with (tmp_path / rel).open("a") as f:
            f.write("# edited\n")
        assert (name() not in seen) is changes, rel
        seen.append(name())


def test_result_code_is_the_sweep_stage_code_deps():
    from mitp.config.params import REPO_ROOT
    from mitp.sweep import runner

    files = {f.relative_to(REPO_ROOT).as_posix() for f in runner.result_code()}
    assert {"mitp/models/mitp.py", "mitp/training/fit.py", "mitp/sweep/trainable.py", "mitp/config/space.py"} <= files
    assert "mitp/sweep/runner.py" not in files and "mitp/reporting/report.py" not in files


def test_best_row_and_csv():
    from mitp.sweep import results

    rows = [
        results.make_row("t0", "COMPLETED", {"model.hub_size": 16}, ["model.hub_size"],
                         {"val_accuracy": 0.5, "test_accuracy": 0.4, "train_time_s": 1.0, "mlflow_run_id": "r0"}, 0, None, ""),
        results.make_row("t1", "STOPPED", {"model.hub_size": 32}, ["model.hub_size"],
                         {"val_accuracy": 0.9, "epoch": 1}, 0, "r1", ""),
        results.make_row("t2", "COMPLETED", {"model.hub_size": 64}, ["model.hub_size"],
                         {"val_accuracy": 0.7, "test_accuracy": 0.6, "mlflow_run_id": "r2"}, 1, None, ""),
        results.make_row("t3", "ERROR", {"model.hub_size": 8}, ["model.hub_size"], {}, 2, "r3", "RuntimeError: boom"),
    ]
    assert results.best_row(rows, "val_accuracy", "max")["trial_id"] == "t2"  # completed trials first
    assert results.best_row(rows, "val_accuracy", "min")["trial_id"] == "t0"
    assert results.best_row(rows[3:], "val_accuracy", "max") is None
    text = results.to_csv(rows)
    header = text.splitlines()[0].split(",")
    assert header[:3] == ["trial_id", "status", "model.hub_size"]
    assert header[-4:] == ["failures", "node_id", "mlflow_run_id", "error"]
    assert len(text.splitlines()) == 5
    assert rows[0]["mlflow_run_id"] == "r0" and rows[1]["mlflow_run_id"] == "r1"


def test_error_first_line():
    from mitp.sweep.results import first_line

    tb = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n    raise X\n"
          "mitp.training.steps.TrainingDiverged: loss became nan at epoch 1, step 2\n")
    assert first_line(tb) == "mitp.training.steps.TrainingDiverged: loss became nan at epoch 1, step 2"
    assert first_line(None) == ""


def test_search_random_is_todays_generator_and_grid_stays_the_default(make_params):
    from mitp.config.space import build_space
    from mitp.sweep.runner import experiment_name
    from mitp.sweep.search import param_space, search_alg

    space_yaml = {"model.hub_size": [16, 32], "train.lr": {"loguniform": [1e-4, 1e-2]}}
    grid = _params(make_params, **{"sweep.num_samples": 2, "sweep.space": space_yaml})
    assert grid.sweep.search == "grid"
    rand = _params(make_params, **{"sweep.num_samples": 2, "sweep.space": space_yaml, "sweep.search": "random"})
    a, b = build_space(grid), build_space(rand)
    assert a == b and param_space(a).keys() == param_space(b).keys()
    assert search_alg(grid, a) is None and search_alg(rand, b) is None
    assert a.n_trials == 4 and a.auto_seeds == [0, 1]  # today's: every grid value, repeats with their seeds
    # grid and random name the same Ray folder (a grid sweep resumes as before)
    assert experiment_name(grid, "synthetic", a, "val_accuracy") == experiment_name(rand, "synthetic", b, "val_accuracy")


def test_search_optuna_samples_the_space_with_tpe(make_params):
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.search.sample import Categorical

    from mitp.config.space import build_space
    from mitp.sweep.runner import experiment_name
    from mitp.sweep.search import param_space, search_alg, validate_trials

    overrides = {"sweep.search": "optuna", "sweep.num_samples": 5,
                 "sweep.space": {"model.hub_size": [16, 32], "train.lr": {"loguniform": [1e-4, 1e-2]}}}
    params = _params(make_params, **overrides)
    space = build_space(params)
    # grid lists become choices TPE picks from; num_samples is the trial budget, no seed grid
    assert space.dims["model.hub_size"].form == "choice" and space.auto_seeds is None
    assert space.num_samples == 5 and space.n_trials == 5 and "seed" not in space.dims
    ps = param_space(space)
    assert isinstance(ps["model.hub_size"], Categorical) and "grid_search" not in str(ps)
    alg = search_alg(params, space)
    assert isinstance(alg, OptunaSearch)
    assert alg.set_search_properties("val_accuracy", "max", ps)  # the space converts to Optuna's
    grid = build_space(_params(make_params, **{**overrides, "sweep.search": "grid"}))
    assert experiment_name(params, "synthetic", space, "val_accuracy") != experiment_name(
        params, "synthetic", grid, "val_accuracy")
    # nothing to search: a clear error before anything starts
    fixed = _params(make_params, **{"sweep.search": "optuna", "sweep.space": {"model.hub_size": 16}})
    with pytest.raises(ConfigError, match="sweep.search: optuna needs something to search"):
        validate_trials(fixed, build_space(fixed), fixed.model_dump(mode="json"))


def test_trials_turn_progress_bars_off_although_tqdm_is_already_imported():
    """TQDM_DISABLE set after tqdm's import does nothing (what trials did); quiet_progress_bars
    does, for bars that do not pass disable themselves."""
    import os
    import subprocess
    import sys

    code = """
import io, os, sys
import tqdm
os.environ["TQDM_DISABLE"] = "1"   # too late: read when tqdm was imported
def shown():
    out = io.StringIO()
    for _ in tqdm.tqdm(range(3), file=out, desc="epoch 1/1", mininterval=0):
        pass
    return "epoch 1/1" in out.getvalue()
before = shown()
from mitp.training.runtime import quiet_progress_bars
quiet_progress_bars(); quiet_progress_bars()
out = io.StringIO()
kept = list(tqdm.tqdm(range(2), file=out, disable=False, desc="explicit", mininterval=0))
print(before, shown(), "explicit" in out.getvalue())
"""
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.stdout.split() == ["True", "False", "True"], out.stderr[-2000:]


def test_driver_settles_the_runs_of_stopped_trials(make_params):
    """Tune may end a stopped trial's process before the trial ends its run KILLED: the run is
    then left RUNNING (or FAILED with Tune's SystemExit as its error, in older versions); the
    driver settles those, and only those."""
    from mlflow.tracking import MlflowClient

    from mitp.sweep.runner import settle_stopped_runs
    from mitp.tracking import store as tracking

    params = _params(make_params, **{"mlflow.log_system_metrics": False})
    tracking.setup(params.mlflow)
    uri = tracking.tracking_uri(params.mlflow)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(params.mlflow.experiment).experiment_id
    ids = []
    for error in ("SystemExit: 0", "RuntimeError: boom", None):
        run = client.create_run(exp)
        if error is not None:
            client.set_tag(run.info.run_id, "error", error)
            client.set_terminated(run.info.run_id, status="FAILED")
        ids.append(run.info.run_id)  # the last one left RUNNING: its process was ended
    rows = [{"trial_id": "a", "status": "STOPPED", "mlflow_run_id": ids[0], "epoch": 1},
            {"trial_id": "b", "status": "ERROR", "mlflow_run_id": ids[1], "epoch": 2},
            {"trial_id": "c", "status": "STOPPED", "mlflow_run_id": ids[2], "epoch": 3}]
    assert settle_stopped_runs(uri, rows, grace_s=0.5) == 2
    stopped, failed, left = (client.get_run(i) for i in ids)
    assert stopped.info.status == "KILLED" and "error" not in stopped.data.tags
    assert stopped.data.tags["stopped_early"] == "stopped by the scheduler after epoch 1"
    assert left.info.status == "KILLED" and left.data.tags["stopped_early"].endswith("after epoch 3")
    assert failed.info.status == "FAILED" and failed.data.tags["error"] == "RuntimeError: boom"
    assert settle_stopped_runs(uri, rows, grace_s=0.5) == 0  # settled once
