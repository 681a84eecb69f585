"""The download stage under attack, through its entry point: a hostile archive, an HTML error
page served with status 200, a stale ``.part`` of an older file, a valid archive without the
layout, redirects. Each refusal is one line naming the file with exit status 2; nothing lands
beside the data folder and nothing poisoned is written to ``locks/``."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile

import pytest
from fixture_layouts import mmimdb_layout, snli_ve_layout
from hostile_archives import (
    deep_path_tar,
    overlapping_zip_bomb,
    pathmax_symlink_chain_tar,
    tree_snapshot,
    zip_symlink_chain,
)
from loopback_server import LoopbackServer

import pipeline.download
from mitp.data.download import STATE_FILE
from pipeline.cli import run


def _run_stage(monkeypatch, capsys, tmp_path, dataset, *overrides) -> tuple[int, str]:
    argv = ["pipeline.download", "--dataset", dataset, "-S", f"data.root={tmp_path / 'data'}",
            "-S", f"data.locks_dir={tmp_path / 'locks'}",
            "-S", f"data.{dataset}.download={{retries: 0, backoff_s: 0.0, timeout_s: 5.0}}"]
    for o in overrides:
        argv += ["-S", o]
    monkeypatch.setattr(sys, "argv", argv)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run(pipeline.download.main)
    return exc.value.code, capsys.readouterr().err


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _sources(name, urls, unpack="tar"):
    return f"data.mmimdb.sources=[{json.dumps({'name': name, 'urls': urls, 'unpack': unpack})}]"


def _tar_gz(folder, arcname) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(folder, arcname=arcname)
    return buf.getvalue()


@pytest.mark.parametrize("build", [pathmax_symlink_chain_tar, zip_symlink_chain])
def test_link_chain_archive_is_refused_by_the_stage(server, monkeypatch, capsys, tmp_path, build):
    name = "mmimdb.tar" if build is pathmax_symlink_chain_tar else "mmimdb.zip"
    server.files[f"/{name}"] = build(tmp_path / name).read_bytes()
    (tmp_path / name).unlink()
    before = tree_snapshot(tmp_path)
    code, err = _run_stage(monkeypatch, capsys, tmp_path, "mmimdb", _sources(name, [server.url(f"/{name}")], "auto"))
    line = _error_line(err)
    assert code == 2 and name in line and "symbolic link" in line
    after = tree_snapshot(tmp_path)
    new = sorted(set(after) - set(before))
    # only the (empty) raw folder and its state file may appear; no pwned.txt anywhere, no lock
    assert all(p.startswith("data") and "pwned" not in p for p in new), new
    assert not (tmp_path / "locks").exists()
    raw = tmp_path / "data" / "raw" / "mmimdb"
    assert sorted(p.name for p in raw.rglob("*") if p.is_file()) == []


def test_html_page_as_jsonl_is_never_locked(server, monkeypatch, capsys, tmp_path):
    expect = snli_ve_layout(tmp_path / "src", wrapper=None)
    base = expect["base"]
    sources = [{"name": f"snli_ve_{s}.jsonl", "unpack": "none", "urls": [server.url(f"/snli_ve_{s}.jsonl")]}
               for s in ("train", "dev", "test")]
    for s in ("train", "dev", "test"):
        server.files[f"/snli_ve_{s}.jsonl"] = (base / f"snli_ve_{s}.jsonl").read_bytes()
    server.files["/snli_ve_train.jsonl"] = b"<!DOCTYPE html>\n<html><body>Too many requests</body></html>\n"
    overrides = [f"data.snli_ve.sources={json.dumps(sources)}",
                 f"data.snli_ve.images_path={base / 'flickr30k-images'}"]
    code, err = _run_stage(monkeypatch, capsys, tmp_path, "snli_ve", *overrides)
    line = _error_line(err)
    assert code == 2 and "snli_ve_train.jsonl" in line and "HTML" in line
    raw = tmp_path / "data" / "raw" / "snli_ve"
    assert not (raw / "snli_ve_train.jsonl").exists() and not list(raw.glob("*.part*"))
    assert not (tmp_path / "locks").exists()  # nothing locked, not even the good files

    genuine = (base / "snli_ve_train.jsonl").read_bytes()
    server.files["/snli_ve_train.jsonl"] = genuine  # the server recovers: the genuine file is accepted
    code, err = _run_stage(monkeypatch, capsys, tmp_path, "snli_ve", *overrides)
    assert code == 0, err
    lock = json.loads((tmp_path / "locks" / "snli_ve.lock.json").read_text())
    assert lock["files"]["snli_ve_train.jsonl"]["sha256"] == hashlib.sha256(genuine).hexdigest()


def test_valid_archive_without_the_layout_leaves_no_lock(server, monkeypatch, capsys, tmp_path):
    (tmp_path / "wrong" / "stuff").mkdir(parents=True)
    (tmp_path / "wrong" / "stuff" / "readme.txt").write_text("not MM-IMDB")
    server.files["/mmimdb.tar.gz"] = _tar_gz(tmp_path / "wrong", "wrong")
    src = _sources("mmimdb.tar.gz", [server.url("/mmimdb.tar.gz")])
    code, err = _run_stage(monkeypatch, capsys, tmp_path, "mmimdb", src)
    line = _error_line(err)
    assert code == 2 and "split.json" in line and "not recorded" in line
    raw = tmp_path / "data" / "raw" / "mmimdb"
    assert not (tmp_path / "locks").exists()
    assert not (raw / "mmimdb").exists() and not (raw / "downloads" / "mmimdb.tar.gz").exists()
    assert json.loads((raw / STATE_FILE).read_text()) == {}

    mmimdb_layout(tmp_path / "good")
    good = _tar_gz(tmp_path / "good" / "mmimdb", "mmimdb")
    server.files["/mmimdb.tar.gz"] = good  # the right archive is now accepted, not "wrong checksum"
    code, err = _run_stage(monkeypatch, capsys, tmp_path, "mmimdb", src)
    assert code == 0, err
    lock = json.loads((tmp_path / "locks" / "mmimdb.lock.json").read_text())
    assert lock["files"]["mmimdb.tar.gz"]["sha256"] == hashlib.sha256(good).hexdigest()


def test_stale_part_of_an_older_archive_is_not_spliced_and_locked(server, monkeypatch, capsys, tmp_path):
    mmimdb_layout(tmp_path / "v1")
    old = _tar_gz(tmp_path / "v1" / "mmimdb", "mmimdb")
    (tmp_path / "v1" / "mmimdb" / "dataset" / "0000002.json").write_text(
        json.dumps({"plot": ["A newer plot."], "genres": ["Comedy"]}))
    new = _tar_gz(tmp_path / "v1" / "mmimdb", "mmimdb")
    server.files["/mmimdb.tar.gz"] = old
    server.plan["/mmimdb.tar.gz"] = [("drop", len(old) // 2), "404"]
    src = _sources("mmimdb.tar.gz", [server.url("/mmimdb.tar.gz")])
    code, _ = _run_stage(monkeypatch, capsys, tmp_path, "mmimdb", src)  # dropped, then 404: stops midway
    assert code == 2
    assert (tmp_path / "data" / "raw" / "mmimdb" / "downloads" / "mmimdb.tar.gz.part").exists()

    server.files["/mmimdb.tar.gz"] = new  # a newer release replaced the file
    code, err = _run_stage(monkeypatch, capsys, tmp_path, "mmimdb", src)
    assert code == 0, err
    lock = json.loads((tmp_path / "locks" / "mmimdb.lock.json").read_text())
    assert lock["files"]["mmimdb.tar.gz"]["sha256"] == hashlib.sha256(new).hexdigest()
    plot = tmp_path / "data" / "raw" / "mmimdb" / "mmimdb" / "mmimdb" / "dataset" / "0000002.json"
    assert "A newer plot." in plot.read_text()


def test_redirect_is_recorded_in_the_lock_and_cross_host_http_refused(server, monkeypatch, capsys, tmp_path):
    mmimdb_layout(tmp_path / "src")
    body = _tar_gz(tmp_path / "src" / "mmimdb", "mmimdb")
    other = LoopbackServer().start()
    try:
        other.files["/mmimdb.tar.gz"] = body
        server.redirects["/elsewhere.tar.gz"] = other.url("/mmimdb.tar.gz")  # plain http, other host:port
        server.redirects["/mmimdb.tar.gz"] = server.url("/v2/mmimdb.tar.gz")  # same host
        server.files["/v2/mmimdb.tar.gz"] = body
        code, err = _run_stage(monkeypatch, capsys, tmp_path, "mmimdb",
                               _sources("mmimdb.tar.gz", [server.url("/elsewhere.tar.gz")]))
        assert code == 2 and "refused" in _error_line(err) and other.hits == []
        assert not (tmp_path / "locks").exists()
        code, err = _run_stage(monkeypatch, capsys, tmp_path, "mmimdb",
                               _sources("mmimdb.tar.gz", [server.url("/elsewhere.tar.gz"), server.url("/mmimdb.tar.gz")]))
        assert code == 0, err
        entry = json.loads((tmp_path / "locks" / "mmimdb.lock.json").read_text())["files"]["mmimdb.tar.gz"]
        assert entry["url"] == server.url("/mmimdb.tar.gz") and entry["final_url"] == server.url("/v2/mmimdb.tar.gz")
    finally:
        other.stop()


@pytest.mark.parametrize(("name", "build", "expect"), [
    ("mmimdb.tar.gz", lambda p: deep_path_tar(p, 2100), "2101 levels deep"),  # clean-up crashed (RecursionError)
    ("mmimdb.tar.gz", lambda p: deep_path_tar(p, 1500), "1501 levels deep"),  # the layout-miss undo crashed
    ("mmimdb.zip", overlapping_zip_bomb, "overlap"),  # 5 KB wrote 40 MB
])
def test_bombs_are_refused_by_the_stage_and_leave_nothing(server, monkeypatch, capsys, tmp_path, name, build, expect):
    server.files[f"/{name}"] = build(tmp_path / name).read_bytes()
    (tmp_path / name).unlink()
    for _attempt in range(2):  # a retry leaves nothing more behind either
        code, err = _run_stage(monkeypatch, capsys, tmp_path, "mmimdb", _sources(name, [server.url(f"/{name}")], "auto"))
        line = _error_line(err)
        assert code == 2 and name in line and expect in line and len(line) < 700, line[:1000]
        assert "Traceback" not in err
        raw = tmp_path / "data" / "raw" / "mmimdb"
        left = sorted(str(p.relative_to(raw)) for p in raw.rglob("*"))
        assert left in ([], ["downloads"], [STATE_FILE], ["downloads", STATE_FILE]), left[:5]
        assert not (tmp_path / "locks").exists()


def test_the_layout_miss_undo_removes_a_tree_deeper_than_the_recursion_limit(tmp_path):
    """The undo itself, on a tree 1,500 levels deep (what the 1,500-level tar made before the depth cap)."""
    from mitp.data.download import _remove

    top = tmp_path / "mmimdb"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1500):
        os.mkdir("a", dir_fd=fd)
        new = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = new
    os.close(fd)
    _remove(top)
    assert list(tmp_path.iterdir()) == []
