"""download_dataset end to end on a loopback server and on local copies, then prepare."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import sys
import tarfile
import zipfile

import pytest
from fixture_layouts import food101_layout, mmimdb_layout, snli_ve_layout

from mitp.data.archive import TruncatedArchiveError, UnsafeArchiveError
from mitp.data.download import STATE_FILE, LocalCopyError, ManualSourceError, download_dataset
from mitp.data.fetch import ChecksumError, DownloadError
from mitp.data.kaggle_source import KaggleUnavailableError
from mitp.data.lockfile import lock_path
from mitp.data.prepare import prepare_dataset


def tar_gz_of(folder, arcname) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(folder, arcname=arcname)
    return buf.getvalue()


@pytest.fixture
def mmimdb_tarball(tmp_path):
    mmimdb_layout(tmp_path / "src")
    return tar_gz_of(tmp_path / "src" / "mmimdb", "mmimdb")


def mmimdb_params(make_params, urls, **extra):
    source = {"name": "mmimdb.tar.gz", "urls": urls, "unpack": "tar", **extra}
    return make_params({"data.mmimdb.sources": [source], "data.mmimdb.max_skip_fraction": 1.0})


def test_download_unpack_lock_and_second_run_is_noop(server, make_params, mmimdb_tarball, tmp_path):
    server.files["/mmimdb.tar.gz"] = mmimdb_tarball
    params = mmimdb_params(make_params, [server.url("/mmimdb.tar.gz")])
    summary = download_dataset(params, "mmimdb")
    raw = params.raw_dir("mmimdb")
    assert summary["files"][0]["status"] == "downloaded"
    assert (raw / "mmimdb" / "mmimdb" / "split.json").is_file()
    assert not (raw / "downloads" / "mmimdb.tar.gz").exists()  # keep_archives: false
    assert json.loads((raw / STATE_FILE).read_text())["mmimdb.tar.gz"]["target"] == "mmimdb"
    lock = json.loads(lock_path(params, "mmimdb").read_text())
    assert lock_path(params, "mmimdb") == tmp_path / "locks" / "mmimdb.lock.json"
    entry = lock["files"]["mmimdb.tar.gz"]
    assert entry["sha256"] == hashlib.sha256(mmimdb_tarball).hexdigest()
    assert entry["checksum"] == "first download" and entry["size"] == len(mmimdb_tarball)

    hits = len(server.hits)
    lock_before = lock_path(params, "mmimdb").read_bytes()
    summary = download_dataset(params, "mmimdb")
    assert len(server.hits) == hits  # nothing fetched
    assert summary["files"][0]["status"] == "present"
    assert lock_path(params, "mmimdb").read_bytes() == lock_before

    report = prepare_dataset(params, "mmimdb")
    assert {s: v["kept"] for s, v in report["splits"].items()} == {"train": 3, "val": 1, "test": 2}


def test_recorded_checksum_is_enforced_on_a_fresh_download(server, make_params, mmimdb_tarball):
    server.files["/mmimdb.tar.gz"] = mmimdb_tarball
    params = mmimdb_params(make_params, [server.url("/mmimdb.tar.gz")])
    download_dataset(params, "mmimdb")
    # DVC clears data/raw/mmimdb before a re-run; the lock beside it survives
    shutil.rmtree(params.raw_dir("mmimdb"))
    server.files["/mmimdb.tar.gz"] = mmimdb_tarball[:-10] + b"0123456789"  # the source changed
    with pytest.raises(ChecksumError, match="wrong checksum"):
        download_dataset(params, "mmimdb")
    assert not (params.raw_dir("mmimdb") / "downloads" / "mmimdb.tar.gz").exists()


def test_published_checksum_mismatch_leaves_no_file(server, make_params, mmimdb_tarball):
    server.files["/mmimdb.tar.gz"] = mmimdb_tarball
    params = mmimdb_params(make_params, [server.url("/mmimdb.tar.gz")], sha256="ab" * 32)
    with pytest.raises(ChecksumError):
        download_dataset(params, "mmimdb")
    raw = params.raw_dir("mmimdb")
    assert not (raw / "downloads" / "mmimdb.tar.gz").exists() and not (raw / "mmimdb").exists()
    assert not lock_path(params, "mmimdb").exists()


def test_mirror_list_resume_and_retries_through_the_stage(server, make_params, mmimdb_tarball):
    server.files["/b/mmimdb.tar.gz"] = mmimdb_tarball
    server.plan["/b/mmimdb.tar.gz"] = ["502", ("drop", len(mmimdb_tarball) // 3)]
    params = mmimdb_params(make_params, [server.url("/a/mmimdb.tar.gz"), server.url("/b/mmimdb.tar.gz")])
    download_dataset(params, "mmimdb")
    assert [h.status for h in server.hits] == [404, 502, 200, 206]
    assert server.hits[-1].range == f"bytes={len(mmimdb_tarball) // 3}-"
    assert (params.raw_dir("mmimdb") / "mmimdb" / "mmimdb" / "split.json").is_file()


def test_404_everywhere_names_urls_and_local_path(server, make_params):
    params = mmimdb_params(make_params, [server.url("/gone.tar.gz")])
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        download_dataset(params, "mmimdb")
    assert server.url("/gone.tar.gz") in str(err.value)


def test_truncated_archive_is_not_trusted(server, make_params, mmimdb_tarball):
    server.files["/mmimdb.tar.gz"] = mmimdb_tarball[: len(mmimdb_tarball) // 2]
    params = mmimdb_params(make_params, [server.url("/mmimdb.tar.gz")])
    with pytest.raises(TruncatedArchiveError, match="truncated"):
        download_dataset(params, "mmimdb")
    raw = params.raw_dir("mmimdb")
    assert not (raw / "downloads" / "mmimdb.tar.gz").exists() and not (raw / "mmimdb").exists()
    assert not lock_path(params, "mmimdb").exists()  # a bad first download is never recorded
    server.files["/mmimdb.tar.gz"] = mmimdb_tarball  # the server is fixed: a re-run works
    download_dataset(params, "mmimdb")
    assert (raw / "mmimdb" / "mmimdb" / "split.json").is_file()


def test_unsafe_archive_is_refused_by_the_stage(server, make_params, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    server.files["/mmimdb.tar.gz"] = buf.getvalue()
    params = mmimdb_params(make_params, [server.url("/mmimdb.tar.gz")])
    with pytest.raises(UnsafeArchiveError, match=r"\.\."):
        download_dataset(params, "mmimdb")
    assert not list(tmp_path.rglob("escape.txt"))


def test_snli_ve_stops_for_flickr30k_then_works_with_images_path(server, make_params, tmp_path):
    expect = snli_ve_layout(tmp_path / "src", wrapper=None)
    base = expect["base"]
    sources = [
        {"name": f"snli_ve_{s}.jsonl", "unpack": "none", "urls": [server.url(f"/snli_ve_{s}.jsonl")]}
        for s in ("train", "dev", "test")
    ] + [{"name": "flickr30k-images", "unpack": "none", "satisfied_by": "images_path",
          "terms": "Flickr30k terms: non-commercial research", "homepage": "https://example.org/flickr30k"}]
    for s in ("train", "dev", "test"):
        server.files[f"/snli_ve_{s}.jsonl"] = (base / f"snli_ve_{s}.jsonl").read_bytes()
    params = make_params({"data.snli_ve.sources": sources, "data.snli_ve.max_skip_fraction": 1.0})
    with pytest.raises(ManualSourceError) as err:
        download_dataset(params, "snli_ve")
    msg = str(err.value)
    assert "Flickr30k terms" in msg and "data.snli_ve.images_path" in msg and "local_path" in msg
    assert server.hits == []  # stopped before fetching anything

    params = make_params({
        "data.snli_ve.sources": sources, "data.snli_ve.max_skip_fraction": 1.0,
        "data.snli_ve.images_path": str(base / "flickr30k-images"),
    })
    download_dataset(params, "snli_ve")
    assert (params.raw_dir("snli_ve") / "snli_ve_train.jsonl").read_bytes() == (base / "snli_ve_train.jsonl").read_bytes()
    hits = len(server.hits)
    download_dataset(params, "snli_ve")
    assert len(server.hits) == hits
    report = prepare_dataset(params, "snli_ve")
    assert {s: v["kept"] for s, v in report["splits"].items()} == expect["counts"]


def test_local_path_is_linked_not_copied(make_params, tmp_path):
    expect = food101_layout(tmp_path / "copy")
    params = make_params({"data.food101.local_path": str(tmp_path / "copy"), "data.food101.max_skip_fraction": 0.5})
    first = download_dataset(params, "food101")
    raw = params.raw_dir("food101")
    assert raw.is_symlink() and raw.resolve() == (tmp_path / "copy").resolve()
    assert first["changed"] is True
    assert download_dataset(params, "food101")["changed"] is False  # second run: no-op
    report = prepare_dataset(params, "food101")
    assert report["splits"]["test"]["kept"] == expect["counts_test"]


def test_local_path_checks_layout_and_never_overwrites_data(make_params, tmp_path):
    (tmp_path / "empty").mkdir()
    params = make_params({"data.mmimdb.local_path": str(tmp_path / "empty")})
    with pytest.raises(Exception, match="split.json"):
        download_dataset(params, "mmimdb")
    mmimdb_layout(tmp_path / "copy")
    params = make_params({"data.mmimdb.local_path": str(tmp_path / "copy")})
    (params.raw_dir("mmimdb") / "mmimdb").mkdir(parents=True)  # an earlier download is in the way
    with pytest.raises(LocalCopyError, match="Move or delete"):
        download_dataset(params, "mmimdb")
    assert (params.raw_dir("mmimdb") / "mmimdb").is_dir()


def test_kaggle_without_cli_or_token_explains(make_params, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
    params = make_params()
    with pytest.raises(KaggleUnavailableError) as err:
        download_dataset(params, "food101")
    msg = str(err.value)
    assert "gianmarco96/upmcfood101" in msg and "kaggle.json" in msg and "data.food101.local_path" in msg


def test_kaggle_source_uses_the_cli(make_params, monkeypatch, tmp_path):
    food101_layout(tmp_path / "src")
    zpath = tmp_path / "upmcfood101.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted((tmp_path / "src").rglob("*")):
            zf.write(p, p.relative_to(tmp_path / "src"))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "kaggle"
    fake.write_text(
        f"#!{sys.executable}\nimport shutil, sys\nargs = sys.argv[1:]\n"
        "assert args[:3] == ['datasets', 'download', 'gianmarco96/upmcfood101'], args\n"
        f"shutil.copy({str(zpath)!r}, args[args.index('-p') + 1])\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "not-a-real-key")
    params = make_params({"data.food101.max_skip_fraction": 0.5})
    summary = download_dataset(params, "food101")
    assert summary["files"][0]["status"] == "downloaded"
    lock = json.loads(lock_path(params, "food101").read_text())
    assert lock["files"]["upmcfood101.zip"]["url"] == "kaggle:gianmarco96/upmcfood101"
    assert download_dataset(params, "food101")["files"][0]["status"] == "present"
    report = prepare_dataset(params, "food101")
    assert report["splits"]["test"]["kept"] == 6


def test_synthetic_download_calls_the_generator(make_params, monkeypatch, tmp_path):
    calls = []

    def fake_generate(params, out_dir):
        calls.append(out_dir)
        snli_ve_layout(out_dir, wrapper=None)
        return out_dir

    import mitp.data.synthetic

    monkeypatch.setattr(mitp.data.synthetic, "generate", fake_generate)
    params = make_params()
    summary = download_dataset(params, "synthetic")
    assert calls == [params.raw_dir("synthetic")] and summary["status"] == "generated"
