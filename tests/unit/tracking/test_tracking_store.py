"""Where a sqlite tracking store keeps its artifacts: beside the database, never in the repo."""

from __future__ import annotations

from pathlib import Path


def test_artifacts_live_beside_the_sqlite_database(make_params, tmp_path):
    from mitp.tracking import store as tracking

    params = make_params({"mlflow.experiment": "artifacts-here"})
    mlflow = tracking.setup(params.mlflow)
    location = mlflow.get_experiment_by_name("artifacts-here").artifact_location
    assert location == (tmp_path / "mlartifacts").as_uri()
    assert Path(tracking.sqlite_path(tracking.tracking_uri(params.mlflow))).parent == tmp_path


def test_the_commit_is_dirty_for_code_changes_not_for_the_pipelines_outputs(tmp_path, monkeypatch):
    import subprocess

    from mitp.tracking import store as tracking

    repo = tmp_path / "repo"
    (repo / "metrics").mkdir(parents=True)
    for rel in ("dvc.lock", "metrics/m.json", "code.py"):
        (repo / rel).write_text("a\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=repo, check=True)
    monkeypatch.setattr(tracking, "REPO_ROOT", repo)
    head = tracking.git_commit()
    assert len(head) == 40
    (repo / "dvc.lock").write_text("b\n")  # a repro rewrote its outputs
    (repo / "metrics/m.json").write_text("b\n")
    assert tracking.git_commit() == head
    (repo / "code.py").write_text("b\n")  # the code differs from the commit
    assert tracking.git_commit() == head + "-dirty"


def test_a_dvc_experiment_copy_logs_into_its_repositorys_store(tmp_path, monkeypatch):
    """`dvc exp run --temp/--queue` runs the stages in <repo>/.dvc/tmp/exps/<copy>, deleted after:
    the default store is the repository's mlflow.db, not the copy's."""
    from mitp.config.params import load_params
    from mitp.tracking import store as tracking
    from mitp.tracking.store import home_root

    repo = tmp_path / "repo"
    assert home_root(repo) == repo
    assert home_root(repo / ".dvc" / "tmp" / "exps" / "tmpab12cd") == repo  # --temp
    assert home_root(repo / ".dvc" / "tmp" / "exps" / "run" / "f00" / "tmpab12cd") == repo  # --queue worker
    assert home_root(repo / ".dvc" / "tmp") == repo / ".dvc" / "tmp"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "home_root", lambda: repo)
    assert tracking.tracking_uri(load_params().mlflow) == f"sqlite:///{repo / 'mlflow.db'}"


def test_a_copied_project_logs_its_artifacts_into_the_copy(make_params, tmp_path):
    """MLflow records artifact locations as absolute paths: a project copied elsewhere (or
    moved) must write into its own mlartifacts/, and read the artifacts it brought along."""
    import shutil

    from mlflow.tracking import MlflowClient

    from mitp.tracking import store as tracking

    old, new = tmp_path / "project", tmp_path / "elsewhere" / "project"
    overrides = {"mlflow.experiment": "moving", "mlflow.log_system_metrics": False}
    params = make_params(overrides, root=old)
    with tracking.start_run(params.mlflow, run_name="before") as run:
        tracking.setup(params.mlflow).log_text("logged before the copy", "note.txt")
    before = run.info.run_id
    assert (old / "mlartifacts").is_dir()

    shutil.copytree(old, new)
    copied = make_params(overrides, root=new)
    with tracking.start_run(copied.mlflow, run_name="after") as run:
        tracking.setup(copied.mlflow).log_text("logged from the copy", "note.txt")
    after = run.info.run_id

    client = MlflowClient(tracking.tracking_uri(copied.mlflow))
    exp = client.get_experiment_by_name("moving")
    assert exp.artifact_location == (new / "mlartifacts").as_uri()
    written = list(new.glob(f"mlartifacts/**/{after}/artifacts/note.txt"))
    assert [p.read_text() for p in written] == ["logged from the copy"]
    assert not list(old.glob(f"mlartifacts/**/{after}")), "the copy wrote into the old folder"
    assert client.get_run(after).info.artifact_uri.startswith((new / "mlartifacts").as_uri() + "/")

    # the old folder gone (a move): the run logged before reads its artifact from the copy
    shutil.rmtree(old)
    assert client.get_run(before).info.artifact_uri.startswith((new / "mlartifacts").as_uri() + "/")
    got = Path(client.download_artifacts(before, "note.txt", str(tmp_path / "dl")))
    assert got.read_text() == "logged before the copy"
    # the original store (before the copy) is not touched by opening the copy
    assert tracking.follow_store_folder(new / "mlflow.db") == {}


def test_source_tags_name_the_entry_and_the_commit():
    import subprocess

    from mitp.config.params import REPO_ROOT
    from mitp.tracking import store as tracking

    tags = tracking.source_tags()
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head


def test_a_run_stopped_on_purpose_ends_killed_and_an_error_ends_failed(make_params):
    """A scheduler's stop is not a failure: the run ends KILLED with the reason, no error tag;
    any other exception ends it FAILED with the error."""
    import pytest
    from mlflow.tracking import MlflowClient

    from mitp.tracking import store as tracking

    params = make_params({"mlflow.experiment": "ends", "mlflow.log_system_metrics": False})
    ended = {}
    for name, exc in (("stopped", tracking.RunStopped("stopped by the scheduler after epoch 2")),
                      ("broken", RuntimeError("boom"))):
        with pytest.raises(type(exc)), tracking.start_run(params.mlflow, run_name=name) as run:
            raise exc
        ended[name] = MlflowClient(tracking.tracking_uri(params.mlflow)).get_run(run.info.run_id)
    stopped, broken = ended["stopped"], ended["broken"]
    assert stopped.info.status == "KILLED" and "error" not in stopped.data.tags
    assert stopped.data.tags["stopped_early"] == "stopped by the scheduler after epoch 2"
    assert broken.info.status == "FAILED" and broken.data.tags["error"] == "RuntimeError: boom"
    assert "stopped_early" not in broken.data.tags
