"""HTTP fetching against a loopback server: resume, retries, mirrors, checksums, disk space."""

from __future__ import annotations

import hashlib
import json
import os
from collections import namedtuple

import pytest
from loopback_server import LoopbackServer, etag_of

from mitp.data.content_check import check_text
from mitp.data.fetch import ChecksumError, ContentError, DiskFullError, DownloadError, fetch_file

BODY = os.urandom(50_000)
OLD = os.urandom(50_000)  # an earlier version of the file
SHA = hashlib.sha256(BODY).hexdigest()
FAST = {"retries": 3, "backoff_s": 0.01, "timeout": 5.0}


def test_clean_download(server, tmp_path):
    server.files["/f.bin"] = BODY
    result = fetch_file([server.url("/f.bin")], tmp_path / "f.bin", sha256=SHA, **FAST)
    assert (tmp_path / "f.bin").read_bytes() == BODY
    assert result.sha256 == SHA and result.size == len(BODY) and result.downloaded == len(BODY)
    assert [(h.status, h.range) for h in server.hits] == [(200, None)]
    assert not (tmp_path / "f.bin.part").exists()


def test_dropped_connection_resumes_without_refetching(server, tmp_path):
    server.files["/f.bin"] = BODY
    server.plan["/f.bin"] = [("drop", 20_000)]
    fetch_file([server.url("/f.bin")], tmp_path / "f.bin", sha256=SHA, **FAST)
    assert (tmp_path / "f.bin").read_bytes() == BODY
    assert [(h.status, h.range, h.sent) for h in server.hits] == [
        (200, None, 20_000),
        (206, "bytes=20000-", len(BODY) - 20_000),
    ]
    assert server.bytes_sent == len(BODY)  # no byte served twice


def _interrupted_run(server, tmp_path, body, n):
    """An earlier run that stopped after ``n`` bytes, leaving ``f.bin.part`` and its record."""
    server.files["/f.bin"] = body
    server.plan["/f.bin"] = [("drop", n), "404"]
    with pytest.raises(DownloadError):
        fetch_file([server.url("/f.bin")], tmp_path / "f.bin", **FAST)
    assert (tmp_path / "f.bin.part").stat().st_size == n
    server.hits.clear()


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    _interrupted_run(server, tmp_path, BODY, 12_345)
    fetch_file([server.url("/f.bin")], tmp_path / "f.bin", sha256=SHA, **FAST)
    assert server.hits[0].range == "bytes=12345-" and server.hits[0].if_range == etag_of(BODY)
    assert server.bytes_sent == len(BODY) - 12_345
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no .part nor its record left


def test_stale_part_of_an_older_file_is_not_spliced(server, tmp_path):
    _interrupted_run(server, tmp_path, OLD, 12_345)
    server.files["/f.bin"] = BODY  # the file changed on the server since
    result = fetch_file([server.url("/f.bin")], tmp_path / "f.bin", **FAST)  # no published checksum
    assert (tmp_path / "f.bin").read_bytes() == BODY and result.sha256 == SHA
    assert [(h.status, h.if_range) for h in server.hits] == [(200, etag_of(OLD))]  # If-Range did its work


def test_stale_part_is_not_spliced_when_the_server_ignores_if_range(server, tmp_path):
    _interrupted_run(server, tmp_path, OLD, 12_345)
    server.files["/f.bin"] = BODY
    server.if_range = False  # answers 206 whatever the validator: the ETag gives it away
    fetch_file([server.url("/f.bin")], tmp_path / "f.bin", **FAST)
    assert (tmp_path / "f.bin").read_bytes() == BODY
    assert [h.status for h in server.hits] == [206, 200]


def test_part_without_a_record_starts_over(server, tmp_path):
    server.files["/f.bin"] = BODY
    (tmp_path / "f.bin.part").write_bytes(OLD[:12_345])  # left by something else: no validator known
    fetch_file([server.url("/f.bin")], tmp_path / "f.bin", **FAST)
    assert (tmp_path / "f.bin").read_bytes() == BODY
    assert [(h.status, h.range) for h in server.hits] == [(200, None)]


def test_server_without_validators_is_never_resumed(server, tmp_path):
    server.validators = False
    server.files["/f.bin"] = BODY
    server.plan["/f.bin"] = [("drop", 20_000)]
    fetch_file([server.url("/f.bin")], tmp_path / "f.bin", sha256=SHA, **FAST)
    assert [(h.status, h.range) for h in server.hits] == [(200, None), (200, None)]


def test_redirect_within_the_host_is_followed_and_reported(server, tmp_path):
    server.files["/real/f.bin"] = BODY
    server.redirects["/f.bin"] = server.url("/real/f.bin")
    result = fetch_file([server.url("/f.bin")], tmp_path / "f.bin", sha256=SHA, **FAST)
    assert result.url == server.url("/f.bin") and result.final_url == server.url("/real/f.bin")


def test_plain_http_redirect_to_another_host_is_refused(server, tmp_path):
    other = LoopbackServer().start()  # another port: another origin
    try:
        other.files["/f.bin"] = OLD
        server.redirects["/f.bin"] = other.url("/f.bin")
        with pytest.raises(DownloadError, match="redirect to .* refused") as err:
            fetch_file([server.url("/f.bin")], tmp_path / "f.bin", **FAST)
        assert other.hits == [] and "\n" not in str(err.value)
        assert sorted(p.name for p in tmp_path.iterdir()) == []
    finally:
        other.stop()


def test_html_error_page_is_refused_and_the_next_mirror_used(server, tmp_path):
    good = b'{"pairID": "1", "sentence2": "x", "gold_label": "neutral", "Flickr30K_ID": "1"}\n'
    server.files["/a/t.jsonl"] = b"<!DOCTYPE html><html><body>Rate limited</body></html>"
    server.files["/b/t.jsonl"] = good
    result = fetch_file([server.url("/a/t.jsonl"), server.url("/b/t.jsonl")], tmp_path / "t.jsonl",
                        check=check_text, **FAST)
    assert (tmp_path / "t.jsonl").read_bytes() == good and result.url.endswith("/b/t.jsonl")
    server.files["/b/t.jsonl"] = b"not json at all\n"
    with pytest.raises(ContentError, match="t.jsonl.*(HTML|not JSON)") as err:
        fetch_file([server.url("/a/t.jsonl"), server.url("/b/t.jsonl")], tmp_path / "u.jsonl",
                   check=check_text, **FAST)
    assert "\n" not in str(err.value) and not (tmp_path / "u.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]


def test_server_without_range_support_starts_over(server, tmp_path):
    server.ranges = False
    server.files["/f.bin"] = BODY
    server.plan["/f.bin"] = [("drop", 1000)]
    fetch_file([server.url("/f.bin")], tmp_path / "f.bin", sha256=SHA, **FAST)
    assert (tmp_path / "f.bin").read_bytes() == BODY


def test_5xx_then_success(server, tmp_path):
    server.files["/f.bin"] = BODY
    server.plan["/f.bin"] = ["503", "500"]
    fetch_file([server.url("/f.bin")], tmp_path / "f.bin", sha256=SHA, **FAST)
    assert [h.status for h in server.hits] == [503, 500, 200]
    assert (tmp_path / "f.bin").read_bytes() == BODY


def test_persistent_5xx_gives_up(server, tmp_path):
    server.files["/f.bin"] = BODY
    server.plan["/f.bin"] = ["500"] * 10
    with pytest.raises(DownloadError, match="HTTP 500"):
        fetch_file([server.url("/f.bin")], tmp_path / "f.bin", **FAST)
    assert len(server.hits) == FAST["retries"] + 1
    assert not (tmp_path / "f.bin").exists()


def test_404_is_a_clear_error_without_retries(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404.*") as err:
        fetch_file([server.url("/nope.bin")], tmp_path / "nope.bin", **FAST)
    assert server.url("/nope.bin") in str(err.value)
    assert len(server.hits) == 1


def test_wrong_checksum_fails_and_leaves_nothing(server, tmp_path):
    server.files["/f.bin"] = BODY
    with pytest.raises(ChecksumError, match="(?i)expected sha256 " + "0" * 64):
        fetch_file([server.url("/f.bin")], tmp_path / "f.bin", sha256="0" * 64, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_mirror_list_first_url_fails(server, tmp_path):
    server.files["/mirror2/f.bin"] = BODY
    result = fetch_file(
        [server.url("/mirror1/f.bin"), server.url("/mirror2/f.bin")], tmp_path / "f.bin", sha256=SHA, **FAST
    )
    assert result.url == server.url("/mirror2/f.bin")
    assert [(h.path, h.status) for h in server.hits] == [("/mirror1/f.bin", 404), ("/mirror2/f.bin", 200)]


def test_unreachable_mirror_then_working_one(server, tmp_path):
    server.files["/f.bin"] = BODY
    dead = "http://127.0.0.1:9/f.bin"  # discard port: connection refused
    result = fetch_file([dead, server.url("/f.bin")], tmp_path / "f.bin", sha256=SHA, **FAST)
    assert result.url == server.url("/f.bin")


def test_disk_full_is_reported_before_writing(server, tmp_path, monkeypatch):
    server.files["/f.bin"] = BODY
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("mitp.data.fetch.shutil.disk_usage", lambda p: usage(10**6, 10**6 - 100, 100))
    with pytest.raises(DiskFullError, match="not enough disk space"):
        fetch_file([server.url("/f.bin")], tmp_path / "f.bin", **FAST)
    assert not (tmp_path / "f.bin").exists()


def test_complete_part_file_answered_416_is_accepted(server, tmp_path):
    server.files["/f.bin"] = BODY
    (tmp_path / "f.bin.part").write_bytes(BODY)  # an earlier run got every byte, then stopped
    record = {"url": server.url("/f.bin"), "etag": etag_of(BODY), "last_modified": None}
    (tmp_path / "f.bin.part.json").write_text(json.dumps(record))  # as that run recorded it
    result = fetch_file([server.url("/f.bin")], tmp_path / "f.bin", sha256=SHA, **FAST)
    assert [h.status for h in server.hits] == [416] and result.downloaded == 0
    assert (tmp_path / "f.bin").read_bytes() == BODY
