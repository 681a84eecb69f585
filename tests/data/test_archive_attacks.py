"""Hostile archives, written as the attack: link chains (zip, and the PATH_MAX tar chain of
CVE-2025-4517 that Python 3.11.7's ``data`` filter lets through), hard links and compression
bombs are refused as a whole; nothing appears beside the target and the old target is kept."""

from __future__ import annotations

import pytest
from hostile_archives import (
    hardlink_tar,
    pathmax_symlink_chain_tar,
    tar_bomb,
    tree_snapshot,
    zip_bomb,
    zip_symlink_chain,
)

from mitp.data.archive import ArchiveTooLargeError, ExtractLimits, UnsafeArchiveError, extract


@pytest.fixture
def box(tmp_path):
    """The folder the target lives in, holding a previous target; the archives live elsewhere."""
    box = tmp_path / "box"
    (box / "out").mkdir(parents=True)
    (box / "out" / "keep.txt").write_text("previous")
    (tmp_path / "in").mkdir()
    return box


def _refused(archive, box, error, match, limits=None):
    before = tree_snapshot(box.parent)
    with pytest.raises(error, match=match) as err:
        extract(archive, box / "out", limits=limits)
    assert tree_snapshot(box.parent) == before  # nothing written beside the target, old target kept
    assert "\n" not in str(err.value) and str(archive) in str(err.value)  # one line naming the file


def test_zip_symlink_chain_is_refused(box):
    _refused(zip_symlink_chain(box.parent / "in" / "chain.zip"), box, UnsafeArchiveError, "symbolic link")


def test_pathmax_symlink_chain_tar_is_refused(box):
    _refused(pathmax_symlink_chain_tar(box.parent / "in" / "chain.tar"), box, UnsafeArchiveError, "symbolic link")


def test_pathmax_symlink_chain_tar_gz_is_refused(box):
    arc = pathmax_symlink_chain_tar(box.parent / "in" / "mmimdb.tar.gz", mode="w:gz")
    _refused(arc, box, UnsafeArchiveError, "symbolic link")


def test_hard_link_is_refused(box):
    _refused(hardlink_tar(box.parent / "in" / "h.tar"), box, UnsafeArchiveError, "hard link")


def test_zip_bomb_is_refused_naming_the_member(box):
    arc = zip_bomb(box.parent / "in" / "bomb.zip")
    assert arc.stat().st_size < 1_000_000
    _refused(arc, box, ArchiveTooLargeError, r"'zeros\.bin'.*compression bomb")


def test_total_size_cap_names_the_member(box):
    arc = zip_bomb(box.parent / "in" / "big.zip", size=4 * 1024 * 1024)
    _refused(arc, box, ArchiveTooLargeError, "more than 1048576 bytes.*'zeros.bin'",
             limits=ExtractLimits(max_bytes=1 << 20, max_ratio=1e9))


def test_tar_bomb_is_refused(box):
    _refused(tar_bomb(box.parent / "in" / "bomb.tar.gz"), box, ArchiveTooLargeError, "compression bomb")


def test_ordinary_archive_passes_the_limits(tmp_path):
    arc = zip_bomb(tmp_path / "ok.zip", size=2 * 1024 * 1024)
    extract(arc, tmp_path / "out", limits=ExtractLimits(max_bytes=1 << 30, max_ratio=1e6))
    assert (tmp_path / "out" / "zeros.bin").stat().st_size == 2 * 1024 * 1024


def test_member_listed_twice_is_refused(box):
    import zipfile

    arc = box.parent / "in" / "twice.zip"
    with zipfile.ZipFile(arc, "w") as zf, pytest.warns(UserWarning):
        zf.writestr("x.txt", b"one")
        zf.writestr("x.txt", b"two")
    _refused(arc, box, UnsafeArchiveError, "listed twice")
