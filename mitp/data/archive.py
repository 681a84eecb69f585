"""Safe unpacking of downloaded tar and zip archives.

Every member is checked before anything is written, and the archive is refused as a whole if
one member is unsafe: an absolute path, a ``..`` component, **any** symbolic or hard link (the
datasets hold none, and a chain of links can point outside even when each link looks harmless
on its own: the zip symlink chain, or the PATH_MAX symlink chain of CVE-2025-4517 that the
``tarfile`` ``data`` filter of Python 3.11.7 lets through), a device file or FIFO, or a member
listed twice. Members are then written by this module, never by ``tarfile.extractall``: each
file is created with ``O_EXCL | O_NOFOLLOW`` after its resolved path is checked to lie inside
the extraction folder, so nothing is written outside it whatever the interpreter's filter does.

Size limits (:class:`ExtractLimits`, from ``data.<name>.download``; defaults 64 GB, 200 and
300,000 members): the total unpacked size is capped (``max_unpacked_gb``), and so is the
compression ratio (``max_compression_ratio``) of each zip member, of a whole tar stream, and of
the whole archive (every byte written against the archive file's size) once they pass 1 MiB: a
zip of many members each just under 1 MiB is a bomb too. Sizes declared in the headers are
checked before anything is written, the bytes actually written while streaming (headers can
lie), and the error names the member. Zip members whose compressed bytes overlap (one DEFLATE
stream shared by many members, the overlapping zip bomb that Python 3.11.7's ``zipfile`` does
not detect) are refused from the local headers' offsets before anything is written.

Shape limits: at most ``max_members`` members (``data.<name>.download.max_members``), and each
member's path at most :data:`MAX_DEPTH` levels and :data:`MAX_PATH_BYTES` bytes (each component
at most 255): a tiny tar of a path thousands of levels deep would otherwise make a tree that
path-based calls can neither finish nor remove. Clean-up of a refused extraction never recurses
(:func:`mitp.atomic.remove_tree`).

Extraction goes into a temp folder beside the target, which replaces the target only once every
member is out (so an interrupted or refused extraction never leaves a half-filled folder
behind). The kind is found from the file's first bytes (gzip, bzip2, xz or plain tar; zip), not
its name.

Errors: :class:`UnsafeArchiveError`, :class:`ArchiveTooLargeError`,
:class:`TruncatedArchiveError` (cut short or corrupt), :class:`UnsupportedArchiveError`, and
:class:`mitp.data.fetch.DiskFullError` when the disk fills up; all are user errors naming the
archive.
"""

from __future__ import annotations

import errno
import lzma
import os
import posixpath
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

from mitp.atomic import atomic_dir
from mitp.config.data_schema import DownloadOptions
from mitp.data.fetch import DiskFullError
from mitp.errors import UserError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar", ".zip")
CHUNK = 1 << 20
RATIO_FLOOR = 1 << 20  # members (or tar streams) smaller than this are never ratio-checked
MAX_DEPTH = 64  # path components of one member (the datasets use at most 5)
MAX_PATH_BYTES = 1024  # a member's path, UTF-8 bytes (the datasets' longest is under 100)
MAX_COMPONENT_BYTES = 255  # one path component (NAME_MAX on Linux)


class ArchiveError(UserError):
    """An archive that cannot be unpacked."""


class UnsafeArchiveError(ArchiveError):
    """A member would land outside the target, is a link, a device file, or is listed twice."""


class ArchiveTooLargeError(UnsafeArchiveError):
    """The archive unpacks to more than the size cap, or a member is compressed suspiciously well."""


class TruncatedArchiveError(ArchiveError):
    """The archive ends early or its compressed stream is corrupt."""


class UnsupportedArchiveError(ArchiveError):
    """Not a tar (plain, gzip, bzip2, xz) or zip file."""


@dataclass(frozen=True)
class ExtractLimits:
    """Caps on what one archive may unpack to (a zip bomb is refused, naming the member)."""

    max_bytes: int
    max_ratio: float
    max_members: int = 300_000

    @classmethod
    def from_options(cls, opts) -> ExtractLimits:
        """From a dataset's ``download`` options (``max_unpacked_gb``, ``max_compression_ratio``,
        ``max_members``)."""
        return cls(max_bytes=int(opts.max_unpacked_gb * 1024**3), max_ratio=float(opts.max_compression_ratio),
                   max_members=int(opts.max_members))


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
    if "\x00" in name:
        raise UnsafeArchiveError(f"{archive}: refused, member {_short(name)} has a NUL byte in its name")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: refused, member {_short(name)} has an absolute path")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: refused, member {_short(name)} climbs out with '..'")
    _check_shape(archive, name, parts)
    return posixpath.normpath(name.replace("\\", "/"))


def _short(name: str) -> str:
    """A member name for a message: at most 120 characters of it."""
    return repr(name) if len(name) <= 120 else f"{name[:60]!r}...{name[-40:]!r} ({len(name)} characters)"


def _check_shape(archive: Path, name: str, parts: list[str]) -> None:
    """A member path no deeper than MAX_DEPTH, no longer than MAX_PATH_BYTES, no component over 255 bytes."""
    depth = sum(1 for p in parts if p not in ("", "."))
    size = len(name.encode("utf-8", "surrogateescape"))
    if depth > MAX_DEPTH or size > MAX_PATH_BYTES:
        raise UnsafeArchiveError(
            f"{archive}: refused, member {_short(name)} is {depth} levels deep and {size} bytes long "
            f"(at most {MAX_DEPTH} levels and {MAX_PATH_BYTES} bytes)"
        )
    if any(len(p.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES for p in parts):
        raise UnsafeArchiveError(
            f"{archive}: refused, member {_short(name)} has a path component over {MAX_COMPONENT_BYTES} bytes"
        )


def _refuse_link(archive: Path, name: str, kind: str, target: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"{archive}: refused, member {_short(name)} is a {kind} (-> {_short(target)}); "
        "dataset archives hold no links, and a chain of links can write outside the target"
    )


def _check_count(archive: Path, n: int, limits: ExtractLimits) -> None:
    if n > limits.max_members:
        raise ArchiveTooLargeError(
            f"{archive}: refused, {n} members (more than data.<name>.download.max_members {limits.max_members}); "
            "raise it if the dataset really has that many files"
        )


def _check_members(archive: Path, entries: list[tuple[str, str, str]]) -> None:
    """``entries``: (name, kind, link target) with kind file / dir / symlink / hardlink / other."""
    files: set[str] = set()
    dirs: set[str] = set()
    for raw_name, kind, target in entries:
        name = _check_name(archive, raw_name)
        if kind in ("symbolic link", "hard link"):
            raise _refuse_link(archive, raw_name, kind, target)
        if kind == "other":
            raise UnsafeArchiveError(f"{archive}: refused, member {_short(raw_name)} is a device file or FIFO")
        if name == ".":
            continue
        if kind == "dir":
            if name in files:
                raise UnsafeArchiveError(f"{archive}: refused, member {_short(raw_name)} is listed as a file and a folder")
            dirs.add(name)
            continue
        if name in files or name in dirs:
            raise UnsafeArchiveError(f"{archive}: refused, member {_short(raw_name)} is listed twice")
        files.add(name)


def _tar_kind(m: tarfile.TarInfo) -> str:
    if m.issym():
        return "symbolic link"
    if m.islnk():
        return "hard link"
    if m.isdir():
        return "dir"
    return "file" if m.isfile() else "other"


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if info.is_dir():
        return "dir"
    return "file" if stat.S_IFMT(mode) in (0, stat.S_IFREG) else "other"  # 0: no Unix type recorded


def check_tar_members(archive: Path, members: list[tarfile.TarInfo]) -> None:
    _check_members(archive, [(m.name, _tar_kind(m), m.linkname) for m in members])


def check_zip_members(archive: Path, infos: list[zipfile.ZipInfo]) -> None:
    _check_members(archive, [(i.filename, _zip_kind(i), "") for i in infos])


def _inside(dest: Path, name: str, archive: Path) -> Path:
    """``dest / name`` after checking that its resolved path (links on disk included) stays in ``dest``."""
    out = dest / name
    real_dest = os.path.realpath(dest)
    if os.path.commonpath([real_dest, os.path.realpath(out)]) != real_dest:
        raise UnsafeArchiveError(f"{archive}: refused, member {_short(name)} resolves outside the target")
    return out


def _make_dirs(dest: Path, rel: str, archive: Path) -> None:
    """Create ``dest/rel`` one level at a time, refusing any level that is not a plain folder."""
    current = dest
    for part in Path(rel).parts:
        current = current / part
        try:
            os.mkdir(current, 0o755)
        except FileExistsError:
            if current.is_symlink() or not current.is_dir():
                raise UnsafeArchiveError(f"{archive}: refused, {rel!r} crosses a non-folder {part!r}") from None


class _Budget:
    """Counts unpacked bytes against :class:`ExtractLimits`."""

    def __init__(self, archive: Path, limits: ExtractLimits):
        self.archive, self.limits, self.total = archive, limits, 0
        self.size = archive.stat().st_size  # the whole archive: bounds the ratio of everything written

    def declared(self, sizes: Iterator[tuple[str, int, int | None]]) -> None:
        """Check the headers' (name, size, compressed size) before writing anything."""
        total = 0
        for name, size, packed in sizes:
            total += size
            self._check_total(total, name)
            self.check_ratio(name, size, packed)

    def add(self, name: str, n: int) -> None:
        self.total += n
        self._check_total(self.total, name)

    def _check_total(self, total: int, name: str) -> None:
        if total > self.limits.max_bytes:
            raise ArchiveTooLargeError(
                f"{self.archive}: refused, unpacks to more than {self.limits.max_bytes} bytes "
                f"(reached at member {_short(name)}); raise data.<name>.download.max_unpacked_gb if the dataset is that big"
            )
        if total > RATIO_FLOOR and total > self.limits.max_ratio * max(self.size, 1):
            raise ArchiveTooLargeError(
                f"{self.archive}: refused, its members unpack to {total} bytes or more from an archive of {self.size} "
                f"(ratio {total / max(self.size, 1):.0f} > data.<name>.download.max_compression_ratio "
                f"{self.limits.max_ratio:g}, reached at member {_short(name)}): a compression bomb"
            )

    def check_ratio(self, name: str, size: int, packed: int | None) -> None:
        if packed is None or size <= RATIO_FLOOR:
            return
        if size > self.limits.max_ratio * max(packed, 1):
            raise ArchiveTooLargeError(
                f"{self.archive}: refused, member {_short(name)} unpacks {size} bytes from {packed} "
                f"(ratio {size / max(packed, 1):.0f} > data.<name>.download.max_compression_ratio "
                f"{self.limits.max_ratio:g}): a compression bomb"
            )


@dataclass(frozen=True)
class _Member:
    """One checked member, whatever the archive kind."""

    name: str  # as the archive spells it (for messages)
    is_dir: bool
    mode: int
    packed: int | None  # compressed size (zip), None where only the stream is compressed (tar)
    open: Callable[[], BinaryIO]


def _write_members(archive: Path, dest: Path, members: Iterable[_Member], budget: _Budget) -> None:
    """Write checked members under ``dest``: folders level by level, files with O_EXCL | O_NOFOLLOW."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for m in members:
        name = posixpath.normpath(m.name.replace("\\", "/"))
        if name == ".":
            continue
        if m.is_dir:
            _make_dirs(dest, name, archive)
            continue
        _make_dirs(dest, posixpath.dirname(name), archive)
        fd = os.open(_inside(dest, name, archive), flags, 0o755 if m.mode & 0o111 else 0o644)
        written = 0
        with m.open() as src, os.fdopen(fd, "wb") as dst:
            while chunk := src.read(CHUNK):
                dst.write(chunk)
                written += len(chunk)
                budget.add(m.name, len(chunk))  # the bytes written, whatever the headers said
                budget.check_ratio(m.name, written, m.packed)


def _extract_tar(archive: Path, dest: Path, limits: ExtractLimits) -> int:
    budget = _Budget(archive, limits)
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = _tar_members(tf, archive, limits)  # reads the whole archive: a cut-short one fails here
            check_tar_members(archive, members)
            budget.declared((m.name, m.size, None) for m in members if m.isfile())
            # tar compresses the stream, not members: the ratio is the whole stream's
            budget.check_ratio(archive.name, sum(m.size for m in members if m.isfile()), archive.stat().st_size)
            _write_members(archive, dest, (
                _Member(m.name, m.isdir(), m.mode, None, partial(tf.extractfile, m)) for m in members
            ), budget)
            return len(members)
    except (tarfile.ReadError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise _truncated(archive, exc) from exc
    except OSError as exc:
        if exc.errno is None:  # gzip/bz2 stream errors carry no errno; real I/O errors do
            raise _truncated(archive, exc) from exc
        raise


def _tar_members(tf: tarfile.TarFile, archive: Path, limits: ExtractLimits) -> list[tarfile.TarInfo]:
    """Every member's header, stopping as soon as there are more than ``limits.max_members``."""
    members = []
    while (m := tf.next()) is not None:
        members.append(m)
        _check_count(archive, len(members), limits)
    return members


def check_zip_overlap(archive: Path, zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse members whose stored bytes (local header + compressed data) overlap another's or the
    central directory: the overlapping zip bomb, where many members share one DEFLATE stream."""
    spans = []
    with open(archive, "rb") as fh:
        for info in infos:
            fh.seek(info.header_offset)
            head = fh.read(30)
            if len(head) < 30 or head[:4] != b"PK\x03\x04":
                raise TruncatedArchiveError(f"{archive}: truncated or corrupt archive (no local header for member "
                                            f"{_short(info.filename)}); delete it and run the download stage again")
            name_len, extra_len = int.from_bytes(head[26:28], "little"), int.from_bytes(head[28:30], "little")
            spans.append((info.header_offset, info.header_offset + 30 + name_len + extra_len + info.compress_size,
                          info.filename))
    spans.sort()
    end_of_data = getattr(zf, "start_dir", None)
    for (_start, end, name), (next_start, _, next_name) in zip(spans, spans[1:], strict=False):
        if next_start < end:
            raise UnsafeArchiveError(
                f"{archive}: refused, members {_short(name)} and {_short(next_name)} overlap in the archive "
                "(bytes shared between members: an overlapping zip bomb)"
            )
    if spans and end_of_data is not None and spans[-1][1] > end_of_data:
        raise UnsafeArchiveError(f"{archive}: refused, member {_short(spans[-1][2])} overlaps the central directory")


def _extract_zip(archive: Path, dest: Path, limits: ExtractLimits) -> int:
    budget = _Budget(archive, limits)
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            _check_count(archive, len(infos), limits)
            check_zip_members(archive, infos)
            check_zip_overlap(archive, zf, infos)
            budget.declared((i.filename, i.file_size, i.compress_size) for i in infos if not i.is_dir())
            _write_members(archive, dest, (
                _Member(i.filename, i.is_dir(), i.external_attr >> 16, i.compress_size, partial(zf.open, i))
                for i in infos
            ), budget)
            return len(infos)
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise _truncated(archive, exc) from exc


def _truncated(archive: Path, exc: BaseException) -> TruncatedArchiveError:
    return TruncatedArchiveError(
        f"{archive}: truncated or corrupt archive ({type(exc).__name__}: {exc}); "
        "delete it and run the download stage again"
    )


def extract(archive: str | Path, target: str | Path, kind: str = "auto", limits: ExtractLimits | None = None) -> int:
    """Unpack ``archive`` into ``target`` (replaced whole on success); returns the member count."""
    archive, target = Path(archive), Path(target)
    limits = limits or ExtractLimits.from_options(DownloadOptions())  # the params defaults
    if kind not in ("tar", "zip", "auto"):
        raise UnsupportedArchiveError(f"{archive}: unsupported unpack kind {kind!r} (tar, zip, auto)")
    detected = detect_kind(archive)
    if kind != "auto" and kind != detected:
        raise UnsupportedArchiveError(f"{archive}: `unpack: {kind}` but the file is a {detected} archive")
    kind = detected
    try:
        with atomic_dir(target) as tmp:
            return _extract_tar(archive, tmp, limits) if kind == "tar" else _extract_zip(archive, tmp, limits)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(
                f"disk full while unpacking {archive} into {target.parent}; free space there "
                "(the partial extraction was removed) and run the download stage again"
            ) from exc
        raise
