"""Safe unpacking: traversal, absolute paths, every link and device files are refused;
truncated and unsupported files are clear errors; the target is replaced only on success."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile

import pytest

from mitp.data.archive import (
    TruncatedArchiveError,
    UnsafeArchiveError,
    UnsupportedArchiveError,
    detect_kind,
    extract,
)


def make_tar(path, members, mode="w:gz"):
    """members: (name, bytes) for files, or a ready TarInfo (links, devices)."""
    with tarfile.open(path, mode) as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                name, data = m
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            if mode:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def test_tar_extracts_into_fresh_target(tmp_path):
    arc = make_tar(tmp_path / "a.tar.gz", [("top/x.txt", b"x"), ("top/sub/y.txt", b"y"), ("./top/z.txt", b"z")])
    target = tmp_path / "out"
    (target / "stale").mkdir(parents=True)
    assert extract(arc, target) == 3
    assert (target / "top/sub/y.txt").read_bytes() == b"y"
    assert (target / "top/z.txt").read_bytes() == b"z"
    assert not (target / "stale").exists()  # replaced whole
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


@pytest.mark.parametrize(
    "member, message",
    [
        (("../evil.txt", b"x"), "'..'"),
        (("ok/../../evil.txt", b"x"), "'..'"),
        (("/tmp/evil.txt", b"x"), "absolute"),
        (link("top/l", "/etc/passwd"), "symbolic link"),
        (link("top/l", "../../outside"), "symbolic link"),
        (link("top/l", "fine.txt"), "symbolic link"),  # even a link that stays inside
        (link("top/h", "../outside", tarfile.LNKTYPE), "hard link"),
        (link("dev", "", tarfile.CHRTYPE), "device"),
        (link("fifo", "", tarfile.FIFOTYPE), "device"),
    ],
)
def test_unsafe_tar_members_are_refused(tmp_path, member, message):
    arc = make_tar(tmp_path / "bad.tar", [("top/fine.txt", b"ok"), member], mode="w")
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("previous")
    with pytest.raises(UnsafeArchiveError, match=message):
        extract(arc, target)
    assert (target / "keep.txt").read_text() == "previous"  # the old target is untouched
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar", "out"]


@pytest.mark.parametrize(
    "member, message",
    [
        (("../evil.txt", b"x", 0), "'..'"),
        (("/abs.txt", b"x", 0), "absolute"),
        (("l", b"../../etc", stat.S_IFLNK | 0o777), "symbolic link"),
        (("l", b"fine.txt", stat.S_IFLNK | 0o777), "symbolic link"),
        (("dev", b"", stat.S_IFCHR | 0o600), "device"),
    ],
)
def test_unsafe_zip_members_are_refused(tmp_path, member, message):
    arc = make_zip(tmp_path / "bad.zip", [("fine.txt", b"ok", 0), member])
    with pytest.raises(UnsafeArchiveError, match=message):
        extract(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zip_extracts(tmp_path):
    arc = make_zip(tmp_path / "a.zip", [("d/", b"", stat.S_IFDIR | 0o755), ("d/x.txt", b"x", 0)])
    extract(arc, tmp_path / "out", kind="zip")
    assert (tmp_path / "out/d/x.txt").read_bytes() == b"x"


@pytest.mark.parametrize("suffix, mode", [(".tar.gz", "w:gz"), (".tar.bz2", "w:bz2"), (".tar.xz", "w:xz"), (".tar", "w")])
def test_truncated_tar_is_a_clear_error(tmp_path, suffix, mode):
    files = [(f"d/f{i}.bin", bytes(range(256)) * 40 * (i + 1)) for i in range(5)]
    arc = make_tar(tmp_path / f"a{suffix}", files, mode=mode)
    data = arc.read_bytes()
    arc.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedArchiveError, match="truncated or corrupt"):
        extract(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_zip_is_a_clear_error(tmp_path):
    arc = make_zip(tmp_path / "a.zip", [(f"f{i}", bytes(range(256)) * 40, 0) for i in range(5)])
    data = arc.read_bytes()
    arc.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedArchiveError):
        extract(arc, tmp_path / "out")


def test_unsupported_archive(tmp_path):
    (tmp_path / "x.rar").write_bytes(b"Rar!\x1a\x07\x00" + b"\x00" * 600)
    with pytest.raises(UnsupportedArchiveError, match="not a supported archive"):
        extract(tmp_path / "x.rar", tmp_path / "out")
    arc = make_tar(tmp_path / "a.tar.gz", [("x", b"x")])
    assert detect_kind(arc) == "tar"
    with pytest.raises(UnsupportedArchiveError, match="unpack: zip"):
        extract(arc, tmp_path / "out", kind="zip")


def test_disk_full_while_unpacking_keeps_the_old_target(tmp_path, monkeypatch):
    import errno

    from mitp.data.fetch import DiskFullError

    arc = make_tar(tmp_path / "a.tar.gz", [("x", b"x")])
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("previous")

    def full(archive, dest, limits):
        (dest / "half").write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("mitp.data.archive._extract_tar", full)
    with pytest.raises(DiskFullError, match="disk full while unpacking"):
        extract(arc, target)
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz", "out"]
