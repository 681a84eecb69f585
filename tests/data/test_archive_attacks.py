"""Hostile archives, written as the attack: link chains (zip, and the PATH_MAX tar chain of
CVE-2025-4517 that Python 3.11.7's ``data`` filter lets through), hard links and compression
bombs are refused as a whole; nothing appears beside the target and the old target is kept."""

from __future__ import annotations

import pytest
from hostile_archives import (
    deep_path_tar,
    hardlink_tar,
    many_members_tar,
    many_small_members_zip,
    overlapping_zip_bomb,
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


# --------------------------------------------------------------------------------------------
# Issue 21: bombs the per-member checks let through
# --------------------------------------------------------------------------------------------


def test_overlapping_zip_bomb_is_refused_before_anything_is_written(box):
    arc = overlapping_zip_bomb(box.parent / "in" / "overlap.zip")
    assert arc.stat().st_size < 10_000  # unpacks to ~40 MB
    _refused(arc, box, UnsafeArchiveError, "overlap")


def test_many_members_under_the_ratio_floor_are_refused_by_the_whole_archive_ratio(box):
    arc = many_small_members_zip(box.parent / "in" / "many.zip")
    _refused(arc, box, ArchiveTooLargeError, r"members unpack to .* compression bomb")


@pytest.mark.parametrize("levels", [2100, 1500])
def test_deep_path_tar_is_refused_with_a_short_message(box, levels):
    arc = deep_path_tar(box.parent / "in" / "deep.tar.gz", levels)
    assert arc.stat().st_size < 400
    before = tree_snapshot(box.parent)
    with pytest.raises(UnsafeArchiveError, match=f"{levels + 1} levels deep") as err:
        extract(arc, box / "out")
    assert tree_snapshot(box.parent) == before
    assert len(str(err.value)) < 500  # the 4,000-character name is not rendered whole


def test_member_count_cap(box, tmp_path):
    arc = many_members_tar(box.parent / "in" / "many.tar.gz", 101)
    _refused(arc, box, ArchiveTooLargeError, "101 members.*max_members 100",
             limits=ExtractLimits(max_bytes=1 << 30, max_ratio=200, max_members=100))
    # the twin: at the cap it unpacks
    extract(arc, tmp_path / "ok", limits=ExtractLimits(max_bytes=1 << 30, max_ratio=200, max_members=101))
    assert len(list((tmp_path / "ok" / "m").iterdir())) == 101


def test_ordinary_multi_member_zip_passes_the_default_limits(tmp_path):
    """The twin of the bombs: separate members, a dataset-like ratio, a few levels deep."""
    import random
    import zipfile

    rng = random.Random(0)
    arc = tmp_path / "fine.zip"
    with zipfile.ZipFile(arc, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(30):
            words = " ".join(rng.choice(["a plot", "genres", "Drama", "Comedy", str(i)]) for _ in range(40_000))
            zf.writestr(f"mmimdb/dataset/{i:07d}.json", words)
    count = extract(arc, tmp_path / "out")
    assert count == 30 and len(list((tmp_path / "out" / "mmimdb" / "dataset").iterdir())) == 30
