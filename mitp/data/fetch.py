"""Fetching one file over HTTP(S): streaming, resumable, retried, verified, renamed when done.

:func:`fetch_file` tries the mirrors in order. For each it streams into ``<target>.part``
with a tqdm progress bar; a connection that drops midway is resumed with an HTTP ``Range``
request (the bytes already in the ``.part`` file are never fetched again; a server that
ignores ``Range`` makes it start over), and connection errors, timeouts and HTTP 5xx / 408 /
429 answers are retried with exponential backoff. Other 4xx answers (404, 403, ...) move on to
the next mirror at once. The finished file's sha256 is compared with the expected one (when
known), and an optional content ``check`` runs on it (an HTML error page served with status 200
is not a dataset file): only a complete, verified file is renamed to ``target``, so ``target``
never holds a partial or wrong file. A wrong checksum or content deletes the ``.part`` file and
the next mirror is tried.

Resuming is only done with a validator: when a ``.part`` is started, the answer's ``ETag`` (or
``Last-Modified``) and URL are recorded in ``<target>.part.json``; a resume sends them as
``If-Range``, so a server whose file changed answers 200 with the whole new file and the
download starts over. A ``.part`` with no record (or none the server gave a validator for) is
never resumed, and a 206 answer carrying a different ``ETag`` restarts too: a stale ``.part``
is never spliced onto a newer file.

Redirects are followed to any ``https://`` URL, or within the same scheme, host and port;
anything else (``http://`` to another host, a downgrade from https) is refused for that mirror,
since a plain-http hop elsewhere is where a file is most easily swapped. The URL the bytes
finally came from is returned (:attr:`FetchResult.final_url`) and recorded in the lock file.

Errors (user errors with the URL and file in one line): :class:`DownloadError` (every mirror
failed; lists each mirror's last error), :class:`ChecksumError`, :class:`ContentError`,
:class:`DiskFullError`.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from mitp.atomic import write_json
from mitp.errors import UserError

log = logging.getLogger(__name__)

USER_AGENT = "mitp-download/0.1 (+https://github.com/; research pipeline)"
CHUNK = 1 << 20
MAX_BACKOFF_S = 60.0
RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class DownloadError(UserError):
    """A file could not be fetched from any of its URLs."""


class ChecksumError(DownloadError):
    """The fetched bytes do not have the expected sha256."""


class DiskFullError(DownloadError):
    """No space left for the download or its unpacking."""


class ContentError(DownloadError):
    """The fetched bytes are not what the file should hold (an HTML page as a .jsonl, ...)."""


class _HTTPFailure(Exception):
    """One URL's failure: ``retry`` tells whether trying it again may help."""

    def __init__(self, message: str, retry: bool):
        super().__init__(message)
        self.retry = retry


@dataclass
class FetchResult:
    path: Path
    url: str  # the mirror asked
    sha256: str
    size: int
    downloaded: int  # bytes transferred over the network by this call
    final_url: str = ""  # where the bytes came from after redirects ("" if never redirected)


def sha256_of(path: str | Path, chunk: int = CHUNK) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_space(folder: Path, needed: int, url: str) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DiskFullError(
            f"not enough disk space for {url}: {needed / 1e9:.2f} GB still to fetch, "
            f"{free / 1e9:.2f} GB free in {folder}. Free space there or point data.root elsewhere"
        )


def _total_from_content_range(value: str | None) -> int | None:
    m = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", value or "")
    if m and m.group(3) != "*":
        return int(m.group(3))
    m = re.match(r"bytes\s+\*/(\d+)", value or "")
    return int(m.group(1)) if m else None


def _meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _read_validator(part: Path) -> dict:
    """What was recorded when ``part`` was started: ``{"etag", "last_modified", "url"}`` or {}."""
    try:
        meta = json.loads(_meta_path(part).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _start_over(part: Path) -> None:
    part.unlink(missing_ok=True)
    _meta_path(part).unlink(missing_ok=True)


def _if_range(meta: dict) -> str | None:
    """A strong ETag, else Last-Modified (RFC 9110: a weak ETag cannot validate a range)."""
    etag = meta.get("etag")
    if isinstance(etag, str) and etag and not etag.startswith("W/"):
        return etag
    modified = meta.get("last_modified")
    return modified if isinstance(modified, str) and modified else None


def same_origin_or_https(old_url: str, new_url: str) -> bool:
    """The redirect policy: to any https URL, or within one scheme + host + port."""
    old, new = urllib.parse.urlsplit(old_url), urllib.parse.urlsplit(new_url)
    return new.scheme == "https" or (new.scheme, new.netloc) == (old.scheme, old.netloc)


class _RedirectPolicy(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not same_origin_or_https(req.full_url, newurl):
            raise _HTTPFailure(
                f"redirect to {newurl} refused (only https, or the same host, are followed)", retry=False
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _attempt(url: str, part: Path, timeout: float, desc: str) -> tuple[int, str]:
    """One request, appending to ``part`` from its current size; returns (bytes received, final URL).

    Raises :class:`_HTTPFailure` on anything short of a complete body.
    """
    offset = part.stat().st_size if part.exists() else 0
    meta = _read_validator(part) if offset else {}
    validator = _if_range(meta)
    if offset and validator is None:
        log.info("%s: no validator recorded for %s; fetching from the start", url, part.name)
        _start_over(part)
        offset = 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        headers["If-Range"] = validator
    request = urllib.request.Request(url, headers=headers)
    try:
        # built per request: the proxy settings are read from the environment as it is now
        response = urllib.request.build_opener(_RedirectPolicy).open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            total = _total_from_content_range(exc.headers.get("Content-Range"))
            if total == offset:
                return 0, url  # the .part file is already complete (and validated by If-Range)
            _start_over(part)
            raise _HTTPFailure(f"HTTP 416 for a resume at byte {offset}; starting over", retry=True) from None
        raise _HTTPFailure(f"HTTP {exc.code} {exc.reason}", retry=exc.code in RETRY_STATUS) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise _HTTPFailure(f"connection failed: {reason}", retry=True) from None

    with response:
        status = response.status
        final_url = response.geturl()
        etag = response.headers.get("ETag")
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if offset and status == 206:
            m = re.match(r"bytes\s+(\d+)-", response.headers.get("Content-Range") or "")
            if not m or int(m.group(1)) != offset:
                _start_over(part)
                raise _HTTPFailure("server answered a resume with the wrong range; starting over", retry=True)
            if meta.get("etag") and etag and etag != meta["etag"]:
                _start_over(part)  # the server ignored If-Range and the file changed
                raise _HTTPFailure(f"file changed since the partial download (ETag {etag}); starting over", retry=True)
            mode = "ab"
        else:
            if offset:
                log.info("%s: file changed or Range ignored; fetching from the start", url)
            offset, mode = 0, "wb"
            meta = {"url": final_url, "etag": etag, "last_modified": response.headers.get("Last-Modified")}
            write_json(_meta_path(part), meta)
        if length is not None:
            _check_space(part.parent, length, url)
        total = offset + length if length is not None else None
        received = 0
        with open(part, mode) as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, mininterval=0.5
        ) as bar:
            try:
                while True:
                    block = response.read(CHUNK)
                    if not block:
                        break
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise DiskFullError(
                        f"disk full while writing {part} ({offset + received} bytes so far); "
                        "free space and run again: the download resumes where it stopped"
                    ) from exc
                raise _HTTPFailure(f"connection dropped after {offset + received} bytes: {exc}", retry=True) from None
            except http.client.HTTPException as exc:  # IncompleteRead and friends
                raise _HTTPFailure(f"connection dropped after {offset + received} bytes: {exc!r}", retry=True) from None
        if length is not None and received < length:
            raise _HTTPFailure(f"connection dropped after {offset + received} of {total} bytes", retry=True)
        return received, final_url


def _fetch_one(url: str, part: Path, *, retries: int, backoff_s: float, timeout: float, desc: str) -> tuple[int, str]:
    """Fetch ``url`` completely into ``part`` (resuming it), with retries; returns (bytes received, final URL)."""
    received_total = 0
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            received, final_url = _attempt(url, part, timeout, desc)
            return received_total + received, final_url
        except _HTTPFailure as exc:
            now = part.stat().st_size if part.exists() else 0
            received_total += max(0, now - before)
            failures = 0 if now > before else failures + 1  # progress resets the count
            if not exc.retry or failures > retries:
                raise
            wait = min(MAX_BACKOFF_S, backoff_s * 2 ** max(0, failures - 1))
            log.warning("%s: %s; retrying in %.1f s", url, exc, wait)
            time.sleep(wait)


def fetch_file(
    urls: list[str],
    target: str | Path,
    *,
    sha256: str | None = None,
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout: float = 60.0,
    what: str = "",
    check: Callable[[Path], None] | None = None,
) -> FetchResult:
    """Download the first working mirror of ``urls`` to ``target``; verified when ``sha256`` is given.

    ``what`` names the file in messages (``"mmimdb: mmimdb.tar.gz"``). ``check(path)`` may raise
    :class:`ContentError` for bytes that are not the file (that mirror is then skipped).
    """
    target = Path(target)
    what = what or target.name
    if not urls:
        raise DownloadError(f"{what}: no URL to fetch it from")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    errors: list[str] = []
    downloaded = 0
    refused: set[type] = set()  # why mirrors' files were refused
    for url in urls:
        try:
            received, final_url = _fetch_one(
                url, part, retries=retries, backoff_s=backoff_s, timeout=timeout, desc=what
            )
            downloaded += received
        except _HTTPFailure as exc:
            errors.append(f"{url}: {exc}")
            log.warning("%s: %s: %s", what, url, exc)
            continue
        digest = sha256_of(part)
        try:
            if sha256 is not None and digest != sha256:
                raise ChecksumError(f"sha256 mismatch: expected {sha256}, got {digest}")
            if check is not None:
                check(part)
        except (ChecksumError, ContentError) as exc:
            _start_over(part)
            errors.append(f"{final_url}: {exc}")
            log.warning("%s: %s served a wrong file: %s", what, final_url, exc)
            refused.add(type(exc))
            continue
        size = part.stat().st_size
        with open(part, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(part, target)
        _meta_path(part).unlink(missing_ok=True)
        return FetchResult(path=target, url=url, sha256=digest, size=size, downloaded=downloaded,
                           final_url="" if final_url == url else final_url)
    if ChecksumError in refused:
        raise ChecksumError(
            f"{what}: wrong checksum, nothing was kept at {target}. Expected sha256 {sha256}: " + "; ".join(errors)
        )
    if ContentError in refused:
        raise ContentError(f"{what}: not a valid file, nothing was kept at {target}: " + "; ".join(errors))
    raise DownloadError(f"{what}: could not be downloaded from any of its {len(urls)} URL(s): " + "; ".join(errors))
