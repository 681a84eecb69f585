"""Atomic file writes: write to a temp name beside the target, fsync, rename.

A reader never sees a half-written file, and a crash leaves the previous version in place.

Folders (:func:`atomic_dir`) are swapped in with one ``renameat2(RENAME_EXCHANGE)`` on Linux:
at every moment the target name holds either the complete old folder or the complete new one,
never nothing, and several writers of the same folder may run at once (each fills its own temp
folder; the last exchange wins, and each writer removes the folder it swapped out). Where the
system call is missing (another OS, a filesystem without it) writers take a lock file beside
the target and the old folder is moved aside before the new one is renamed in: still never a
half-filled folder, but a reader may then find the name missing for that instant.

Removal (:func:`remove_tree`) walks the tree with a loop and folder descriptors, never recursion
or full paths, so a tree nested thousands of levels deep (deeper than PATH_MAX) goes away too.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, obj: Any, strict: bool = False) -> None:
    """``obj`` as indented JSON; ``strict``: NaN or Infinity is a ValueError (strict JSON only)."""
    write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=str, allow_nan=not strict) + "\n")


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0)


def _clear_files(fd: int) -> list[str]:
    """Unlink every non-folder in the folder open at ``fd``; returns the names of its sub-folders."""
    with os.scandir(fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    subdirs = []
    for name, is_dir in entries:
        if is_dir:
            subdirs.append(name)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=fd)
    return subdirs


def remove_tree(path: str | Path, ignore_errors: bool = False) -> None:
    """Remove ``path`` (a file, a link, or a folder and everything under it); a missing path is fine.

    Unlike ``shutil.rmtree`` (recursive: a tree 1,000 levels deep raises RecursionError) this
    loops, holding one folder descriptor at a time and a stack of names, and never follows a
    link: any depth is removed, and only what lies under ``path``.
    """
    path = Path(path)
    try:
        _remove_tree(path)
    except OSError:
        if not ignore_errors:
            raise


def _remove_tree(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    fd = os.open(path, _DIR_FLAGS)
    try:
        pending = [_clear_files(fd)]  # per level: the sub-folders still to remove
        names: list[str] = []  # the path from ``path`` down to the folder open at fd
        while pending:
            if pending[-1]:
                child = pending[-1].pop()
                try:
                    new = os.open(child, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:  # replaced by a link or a file meanwhile: not ours to follow
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    os.unlink(child, dir_fd=fd)
                    continue
                os.close(fd)
                fd = new
                names.append(child)
                pending.append(_clear_files(fd))
                continue
            pending.pop()
            if not names:
                break
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(names.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _libc_renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _libc_renameat2()


def _rename2(src: Path, dst: Path, flags: int) -> None:
    """``renameat2(src, dst, flags)``; OSError with the errno on failure."""
    if _renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(src), None, str(dst))


_NO_EXCHANGE = (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)  # no syscall, or the filesystem lacks it


def swap_in(tmp: Path, target: Path) -> Path | None:
    """Put the complete folder ``tmp`` at ``target``; returns where the old target now is (to
    remove), or None. Atomic exchange where the system has it (see the module doc)."""
    for _ in range(100):  # a concurrent writer may create or exchange the target between two calls
        try:
            _rename2(tmp, target, _RENAME_EXCHANGE)
            return tmp  # tmp's name now holds the old target
        except OSError as exc:
            if exc.errno in _NO_EXCHANGE:
                return _swap_in_locked(tmp, target)
            if exc.errno != errno.ENOENT:
                raise
        try:  # no target yet
            _rename2(tmp, target, _RENAME_NOREPLACE)
            return None
        except OSError as exc:
            if exc.errno in _NO_EXCHANGE:
                return _swap_in_locked(tmp, target)
            if exc.errno != errno.EEXIST:
                raise
    raise OSError(errno.EBUSY, "the folder kept changing under concurrent writers", str(target))


def _swap_in_locked(tmp: Path, target: Path) -> Path | None:
    """Fallback without RENAME_EXCHANGE: one writer at a time moves the old folder aside, then
    renames the new one in (a reader may find the name missing in between)."""
    with FileLock(target.with_name(f".{target.name}.swap.lock")):
        old = None
        if os.path.lexists(target):
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.rmdir(old)
            os.rename(target, old)
        os.rename(tmp, target)
        return old


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside ``target``; on success it replaces ``target`` whole.

    Readers see the old folder or the new one, never a half-filled or missing one; concurrent
    writers are safe, the last to finish wins (module doc)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        old = swap_in(tmp, target)
    except BaseException:
        remove_tree(tmp, ignore_errors=True)
        raise
    if old is not None:
        remove_tree(old, ignore_errors=True)
