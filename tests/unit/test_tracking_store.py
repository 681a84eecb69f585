"""Where a sqlite tracking store keeps its artifacts: beside the database, never in the repo."""

from __future__ import annotations

from pathlib import Path


def test_artifacts_live_beside_the_sqlite_database(make_params, tmp_path):
    from mitp.tracking import store as tracking

    params = make_params({"mlflow.experiment": "artifacts-here"})
    mlflow = tracking.setup(params)
    location = mlflow.get_experiment_by_name("artifacts-here").artifact_location
    assert location == (tmp_path / "mlartifacts").as_uri()
    assert Path(tracking.sqlite_path(tracking.tracking_uri(params))).parent == tmp_path


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
    assert tracking.tracking_uri(load_params()) == f"sqlite:///{repo / 'mlflow.db'}"
