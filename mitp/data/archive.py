"""Safe unpacking of downloaded tar and zip archives.

Every member is checked before anything is written, and the archive is refused as a whole if
one member is unsafe: an absolute path, a ``..`` component, a symbolic or hard link whose target
leaves the extraction folder, or a device file / FIFO. Extraction goes into a temp folder
beside the target, which replaces the target only once every member is out (so an interrupted
or failed extraction never leaves a half-filled folder behind). The kind is found from the
file's first bytes (gzip, bzip2, xz or plain tar; zip), not its name.

Errors: :class:`UnsafeArchiveError`, :class:`TruncatedArchiveError` (cut short or corrupt),
:class:`UnsupportedArchiveError`, and :class:`mitp.data.fetch.DiskFullError` when the disk
fills up; all are user errors naming the archive.
"""

from __future__ import annotations

import errno
import lzma
import posixpath
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

from mitp.atomic import atomic_dir
from mitp.data.fetch import DiskFullError
from mitp.errors import UserError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar", ".zip")


class ArchiveError(UserError):
    """An archive that cannot be unpacked."""


class UnsafeArchiveError(ArchiveError):
    """A member would land outside the target, or is a link out of it, or a device file."""


class TruncatedArchiveError(ArchiveError):
    """The archive ends early or its compressed stream is corrupt."""


class UnsupportedArchiveError(ArchiveError):
    """Not a tar (plain, gzip, bzip2, xz) or zip file."""


def detect_kind(path: str | Path) -> str:
    """``"tar"`` or ``"zip"`` from the file's first bytes."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")):
        return "tar"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    raise UnsupportedArchiveError(
        f"{path}: not a supported archive (tar, tar.gz, tar.bz2, tar.xz or zip); first bytes {head[:8]!r}. "
        "If the file is not meant to be unpacked, set `unpack: none` for it in params.yaml"
    )


def strip_archive_suffix(name: str) -> str:
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _check_name(archive: Path, name: str) -> str:
    """The member's normalised relative path, or an error if it would leave the target."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: refused, member {name!r} has an absolute path")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: refused, member {name!r} climbs out with '..'")
    return posixpath.normpath(name.replace("\\", "/"))


def _check_link(archive: Path, member: str, target: str, hard: bool) -> None:
    kind = "hard link" if hard else "symbolic link"
    if target.startswith(("/", "\\")):
        raise UnsafeArchiveError(f"{archive}: refused, {kind} {member!r} points to absolute path {target!r}")
    # hard link targets are relative to the archive root, symlinks to the member's folder
    base = "" if hard else posixpath.dirname(member)
    resolved = posixpath.normpath(posixpath.join(base, target.replace("\\", "/")))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(f"{archive}: refused, {kind} {member!r} -> {target!r} points outside the archive")


def check_tar_members(archive: Path, members: list[tarfile.TarInfo]) -> None:
    for m in members:
        name = _check_name(archive, m.name)
        if m.issym() or m.islnk():
            _check_link(archive, name, m.linkname, hard=m.islnk())
        elif not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(f"{archive}: refused, member {m.name!r} is a device file or FIFO")


def check_zip_members(archive: Path, infos: list[zipfile.ZipInfo], zf: zipfile.ZipFile) -> None:
    for info in infos:
        name = _check_name(archive, info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            _check_link(archive, name, zf.read(info).decode("utf-8", "replace"), hard=False)
        elif stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no Unix type recorded
            raise UnsafeArchiveError(f"{archive}: refused, member {info.filename!r} is a device file or FIFO")


def _truncated(archive: Path, exc: BaseException) -> TruncatedArchiveError:
    return TruncatedArchiveError(
        f"{archive}: truncated or corrupt archive ({type(exc).__name__}: {exc}); "
        "delete it and run the download stage again"
    )


def _extract_tar(archive: Path, dest: Path) -> int:
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()  # reads the whole archive: a cut-short one fails here
            check_tar_members(archive, members)
            # the 'data' filter repeats the checks above inside tarfile (defence in depth)
            tf.extractall(dest, members=members, filter="data")
            return len(members)
    except (tarfile.ReadError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise _truncated(archive, exc) from exc
    except OSError as exc:
        if exc.errno is None:  # gzip/bz2 stream errors carry no errno; real I/O errors do
            raise _truncated(archive, exc) from exc
        raise
    except tarfile.FilterError as exc:  # pragma: no cover - our checks refuse first
        raise UnsafeArchiveError(f"{archive}: refused, {exc}") from exc


def _extract_zip(archive: Path, dest: Path) -> int:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            check_zip_members(archive, infos, zf)
            for info in infos:
                mode = info.external_attr >> 16
                out = dest / posixpath.normpath(info.filename.replace("\\", "/"))
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                elif stat.S_ISLNK(mode):
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.symlink_to(zf.read(info).decode("utf-8"))
                else:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(out, "wb") as dst:
                        while chunk := src.read(1 << 20):
                            dst.write(chunk)
            return len(infos)
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise _truncated(archive, exc) from exc


def extract(archive: str | Path, target: str | Path, kind: str = "auto") -> int:
    """Unpack ``archive`` into ``target`` (replaced whole on success); returns the member count."""
    archive, target = Path(archive), Path(target)
    if kind not in ("tar", "zip", "auto"):
        raise UnsupportedArchiveError(f"{archive}: unsupported unpack kind {kind!r} (tar, zip, auto)")
    detected = detect_kind(archive)
    if kind != "auto" and kind != detected:
        raise UnsupportedArchiveError(f"{archive}: `unpack: {kind}` but the file is a {detected} archive")
    kind = detected
    try:
        with atomic_dir(target) as tmp:
            return _extract_tar(archive, tmp) if kind == "tar" else _extract_zip(archive, tmp)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(
                f"disk full while unpacking {archive} into {target.parent}; free space there "
                "(the partial extraction was removed) and run the download stage again"
            ) from exc
        raise
