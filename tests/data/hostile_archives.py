"""Hostile archives for the extraction tests, built in the test (nothing downloaded), and a
snapshot of a folder tree to show that nothing was written beside the target."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import zipfile
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
