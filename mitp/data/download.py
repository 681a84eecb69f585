"""The download stage: a dataset's sources -> ``data/raw/<name>/`` in its raw layout.

``download_dataset(params, name)`` does one of three things:

* ``data.<name>.local_path`` is set: the copy the user already has is *verified* (its layout is
  found the way prepare will read it) and ``data/raw/<name>`` becomes a symbolic link to it.
  Nothing is copied; prepare reads ``local_path`` directly.
* ``synthetic``: :func:`mitp.data.synthetic.generate` writes the set into ``data/raw/synthetic``
  (it skips the work when the folder already holds a set made with the same settings).
* otherwise every entry of ``data.<name>.sources`` is fetched:

  - a plain file (``unpack: none``, or ``auto`` with a name that is no archive) lands at
    ``data/raw/<name>/<file>``;
  - an archive is fetched to ``data/raw/<name>/downloads/<file>`` and unpacked safely into
    ``data/raw/<name>/<extract_to>`` (default: the name without its archive suffix), see
    :mod:`mitp.data.archive`; the archive is then deleted unless ``download.keep_archives``;
  - over HTTP(S) with mirrors, resume, retries and a progress bar (:mod:`mitp.data.fetch`), or
    with the official ``kaggle`` CLI for ``kaggle:`` sources (:mod:`mitp.data.kaggle_source`);
  - a source with neither (Flickr30k images for SNLI-VE) must be supplied by the user: the
    stage checks for it first and otherwise stops, naming the source, its terms and the
    setting that points the pipeline at a copy. Such checks run before anything is fetched.

Checksums and the lock file: a published ``sha256`` in params is always verified. Where none
is published, the sha256 of what was fetched is recorded in the **lock file**
``locks/<name>.lock.json`` (tracked by git, outside data/, so it survives DVC clearing
``data/raw/<name>/`` before a re-run; ``data.<name>.lock_file`` moves it) and every later
download must match it. Nothing is locked until the whole dataset checks out: every fetched
file passed its content check (:mod:`mitp.data.content_check`: no HTML page as a ``.jsonl``,
an archive that is a tar or zip), every archive unpacked within the limits, and the raw layout
was found as prepare will read it. If the layout is not there, what this run fetched and
unpacked is removed again, so neither a poisoned lock nor a half-trusted folder is left. The
lock records the URL the bytes finally came from when a mirror redirected (``final_url``).
See :mod:`mitp.data.lockfile`.

Re-runs: ``data/raw/<name>/.download_state.json`` records what each source produced (sha256,
size, target). A source whose record matches and whose target exists is skipped without
touching the network, so a second run downloads nothing.
"""

from __future__ import annotations

import json
import logging
import os
from functools import partial
from pathlib import Path

from mitp.atomic import remove_tree, write_json
from mitp.data.archive import (
    ARCHIVE_SUFFIXES,
    ArchiveError,
    ExtractLimits,
    TruncatedArchiveError,
    extract,
    strip_archive_suffix,
)
from mitp.data.content_check import check_fetched
from mitp.data.fetch import ChecksumError, ContentError, fetch_file, sha256_of
from mitp.data.kaggle_source import kaggle_download
from mitp.data.lockfile import LockFile, lock_path
from mitp.errors import ConfigError, UserError

log = logging.getLogger(__name__)

STATE_FILE = ".download_state.json"


class ManualSourceError(UserError):
    """A source the pipeline may not fetch (terms, credentials) is not there yet."""


class LocalCopyError(UserError):
    """``local_path`` cannot be linked to ``data/raw/<name>``."""


# --------------------------------------------------------------------------------------------
# Layout checks (shared with the local_path route)
# --------------------------------------------------------------------------------------------


def verify_layout(params, name: str, base: Path) -> Path:
    """Find ``name``'s raw layout under ``base`` as prepare will; returns its root folder."""
    cfg = params.dataset(name)
    if name in ("snli_ve", "synthetic"):
        from mitp.data import snli_ve

        root = snli_ve.locate(base)
        images_path = getattr(cfg, "images_path", None)
        snli_ve.image_dir(root, params.resolve(images_path) if images_path else None)
        return root
    if name == "food101":
        from mitp.data import food101

        root = food101.locate(base)
        food101._images_root(root)
        return root
    if name == "mmimdb":
        from mitp.data import mmimdb

        return mmimdb.locate(base)
    raise ConfigError(f"dataset {name!r}: no known raw layout")


def _local_hint(name: str) -> str:
    return (
        f"set `data.{name}.local_path: /path/to/your/copy` in params.yaml "
        f"(or pass `-S data.{name}.local_path=/path/to/your/copy`)"
    )


# --------------------------------------------------------------------------------------------
# local_path: link, never copy
# --------------------------------------------------------------------------------------------


def link_local_copy(params, name: str) -> dict:
    """Verify the layout at ``data.<name>.local_path`` and make ``data/raw/<name>`` link to it."""
    cfg = params.dataset(name)
    src = params.resolve(cfg.local_path)
    if not src.exists():
        raise ConfigError(f"data.{name}.local_path: {src} does not exist")
    root = verify_layout(params, name, src)
    raw = params.raw_dir(name)
    raw.parent.mkdir(parents=True, exist_ok=True)
    if raw.is_symlink():
        if raw.resolve() == src.resolve():
            return {"dataset": name, "status": "linked", "local_path": str(src), "root": str(root), "changed": False}
    elif raw.exists():
        if raw.is_dir() and not any(raw.iterdir()):
            raw.rmdir()
        else:
            raise LocalCopyError(
                f"{raw} already holds data (an earlier download?) and data.{name}.local_path is set to {src}. "
                f"Move or delete {raw} (nothing here deletes your data), or unset data.{name}.local_path"
            )
    tmp = raw.with_name(f".{raw.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(src.resolve(), target_is_directory=True)
    os.replace(tmp, raw)
    log.info("%s: %s -> %s (local copy, linked)", name, raw, src)
    return {"dataset": name, "status": "linked", "local_path": str(src), "root": str(root), "changed": True}


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def is_archive(src) -> bool:
    if src.unpack == "auto":
        return src.name.lower().endswith(ARCHIVE_SUFFIXES)
    return src.unpack != "none"


def source_paths(raw: Path, src) -> tuple[Path, Path]:
    """(where the fetched file is written, what the source finally provides)."""
    if is_archive(src):
        return raw / "downloads" / src.name, raw / (src.extract_to or strip_archive_suffix(src.name))
    return raw / src.name, raw / src.name


def check_manual_source(params, name: str, index: int, src) -> dict:
    """A source the user supplies: present (or pointed at by ``satisfied_by``), else stop with instructions."""
    cfg = params.dataset(name)
    raw = params.raw_dir(name)
    if src.satisfied_by:
        if src.satisfied_by not in type(cfg).model_fields:
            raise ConfigError(f"data.{name}.sources[{index}].satisfied_by: {name} has no key {src.satisfied_by!r}")
        value = getattr(cfg, src.satisfied_by)
        if value:
            path = params.resolve(value)
            if not path.exists():
                raise ConfigError(f"data.{name}.{src.satisfied_by}: {path} does not exist")
            return {"file": src.name, "status": "external", "path": str(path)}
    target = raw / (src.extract_to or src.name)
    if target.exists():
        return {"file": src.name, "status": "present", "path": str(target)}
    ways = []
    if src.satisfied_by:
        ways.append(
            f"set `data.{name}.{src.satisfied_by}: /path/to/{src.name}` in params.yaml "
            f"(or pass `-S data.{name}.{src.satisfied_by}=/path/to/{src.name}`)"
        )
    ways.append(f"put it at {target}")
    ways.append(f"{_local_hint(name)} for a complete copy of the dataset")
    raise ManualSourceError(
        f"{name}: {src.name} cannot be downloaded by the pipeline"
        + (f" - {src.terms}" if src.terms else "")
        + (f". Get it from {src.homepage}" if src.homepage else "")
        + ". Then " + "; or ".join(ways) + "."
    )


def _read_state(raw: Path) -> dict:
    path = raw / STATE_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            log.warning("%s: unreadable, re-checking every source", path)
    return {}


def _fetch(params, name: str, src, file_path: Path, expected: str | None) -> tuple[str, str, str | None]:
    """Get ``src`` to ``file_path`` (verified when ``expected``, content-checked).

    Returns (sha256, the URL asked, the URL the bytes came from after redirects or None).
    """
    opts = params.dataset(name).download
    check = partial(check_fetched, archive=is_archive(src))
    if src.urls:
        result = fetch_file(
            src.urls, file_path, sha256=expected, retries=opts.retries, backoff_s=opts.backoff_s,
            timeout=opts.timeout_s, what=f"{name}: {src.name}", check=check,
        )
        log.info("%s: fetched %s (%d bytes) from %s", name, src.name, result.size, result.final_url or result.url)
        return result.sha256, result.url, result.final_url or None
    folder = file_path.parent / f".kaggle-{src.name}.tmp"
    got = kaggle_download(src.kaggle, folder, dataset=name, terms=src.terms, local_hint=_local_hint(name))
    digest = sha256_of(got)
    try:
        if expected is not None and digest != expected:
            raise ChecksumError(f"{name}: {src.name} from Kaggle {src.kaggle}: wrong checksum, expected {expected}, got {digest}")
        check(got)
    except (ChecksumError, ContentError):
        remove_tree(folder, ignore_errors=True)
        raise
    os.replace(got, file_path)
    folder.rmdir()
    return digest, f"kaggle:{src.kaggle}", None


def _remove(path: Path) -> None:
    """Remove a file or a whole tree (any depth: no recursion, links not followed)."""
    remove_tree(path, ignore_errors=True)  # as before: the error being reported matters more


def fetch_source(params, name: str, src, lock: LockFile, state: dict) -> tuple[dict, dict | None]:
    """Make one (non-manual) source present in the raw folder.

    Returns (what was done, the lock entry to record once the layout is verified, or None).
    """
    cfg = params.dataset(name)
    raw = params.raw_dir(name)
    file_path, target = source_paths(raw, src)
    expected = src.sha256 or lock.expected(src.name)
    published = src.sha256 is not None
    done = state.get(src.name)
    if done and target.exists() and (expected is None or done.get("sha256") == expected):
        pending = None
        if lock.expected(src.name) is None:
            pending = {"sha256": done["sha256"], "size": done["size"], "url": done.get("url"), "published": published,
                       "final_url": done.get("final_url")}
        return {"file": src.name, "status": "present", "path": str(target)}, pending

    fetched_now = False
    url: str | None = None
    final_url: str | None = None
    if file_path.exists():  # a kept archive, or a file put there by hand: verify, do not fetch
        digest = sha256_of(file_path)
        if expected is not None and digest != expected:
            log.warning("%s: %s has sha256 %s, expected %s; fetching it again", name, file_path, digest, expected)
            file_path.unlink()
        else:
            try:
                check_fetched(file_path, archive=is_archive(src))
            except ContentError as exc:
                raise ContentError(f"{name}: {exc}; delete {file_path} (or replace it) and run again") from None
            url = (lock.files.get(src.name) or {}).get("url")
    if not file_path.exists():
        digest, url, final_url = _fetch(params, name, src, file_path, expected)
        fetched_now = True
    size = file_path.stat().st_size

    if is_archive(src):
        try:
            count = extract(file_path, target, src.unpack, limits=ExtractLimits.from_options(cfg.download))
        except ArchiveError as exc:
            trusted = expected is not None
            if fetched_now or not trusted or isinstance(exc, TruncatedArchiveError):
                file_path.unlink(missing_ok=True)
            raise type(exc)(
                f"{name}: {exc}"
                + (" (the file was deleted; a re-run fetches it again)" if not file_path.exists() else "")
                + ("" if trusted else "; its checksum was not recorded")
            ) from exc
        log.info("%s: unpacked %d members of %s into %s", name, count, src.name, target)
        if not cfg.download.keep_archives:
            file_path.unlink(missing_ok=True)

    state[src.name] = {"sha256": digest, "size": size, "url": url, "final_url": final_url,
                       "target": os.path.relpath(target, raw)}
    write_json(raw / STATE_FILE, state)
    pending = {"sha256": digest, "size": size, "url": url, "published": published, "final_url": final_url}
    status = "downloaded" if fetched_now else "verified"
    return {"file": src.name, "status": status, "path": str(target), "sha256": digest}, pending


def _verify_or_undo(params, name: str, raw: Path, fetched: list, state: dict) -> Path:
    """The layout under ``raw``; if it is not there, remove what this run fetched and unpacked."""
    try:
        return verify_layout(params, name, raw)
    except UserError as exc:
        for src in fetched:
            for path in source_paths(raw, src):
                _remove(path)
            state.pop(src.name, None)
        write_json(raw / STATE_FILE, state)
        undone = ", ".join(s.name for s in fetched)
        raise type(exc)(
            f"{exc}" + (f" (what this run fetched - {undone} - was removed and its checksum not recorded)" if fetched else "")
        ) from exc


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def download_dataset(params, name: str) -> dict:
    """Make ``data/raw/<name>`` hold the raw layout; returns a summary dict."""
    cfg = params.dataset(name)
    raw = params.raw_dir(name)
    if cfg.local_path:
        return link_local_copy(params, name)
    if name == "synthetic":
        from mitp.data.synthetic import generate  # lazy: written by another module owner

        out = generate(params, raw)
        return {"dataset": name, "status": "generated", "path": str(out)}
    if not cfg.sources:
        raise ConfigError(f"data.{name}.sources: empty; list the files to fetch or set data.{name}.local_path")
    if raw.is_symlink():
        raise LocalCopyError(
            f"{raw} is a link to a local copy ({raw.resolve()}) but data.{name}.local_path is not set; "
            f"set it again, or delete the link {raw} to download"
        )

    manual = [(i, s) for i, s in enumerate(cfg.sources) if not s.urls and not s.kaggle]
    results = {s.name: check_manual_source(params, name, i, s) for i, s in manual}
    raw.mkdir(parents=True, exist_ok=True)
    lock = LockFile(lock_path(params, name), name)
    state = _read_state(raw)
    pending: dict[str, dict] = {}
    fetched = []
    for src in cfg.sources:
        if src.name not in results:
            results[src.name], entry = fetch_source(params, name, src, lock, state)
            if results[src.name]["status"] == "downloaded":  # never a file the user put there
                fetched.append(src)
            if entry is not None:
                pending[src.name] = entry
    root = _verify_or_undo(params, name, raw, fetched, state)
    for file, entry in pending.items():  # trusted only now that the whole layout checked out
        lock.record(file, **entry)
    files = [results[s.name] for s in cfg.sources]
    log.info("%s: %s", name, ", ".join(f"{f['file']} {f['status']}" for f in files))
    return {"dataset": name, "status": "ok", "root": str(root), "lock_file": str(lock.path), "files": files}
