"""Fetching one file over HTTP(S): streaming, resumable, retried, verified, renamed when done.

:func:`fetch_file` tries the mirrors in order. For each it streams into ``<target>.part``
with a tqdm progress bar; a connection that drops midway is resumed with an HTTP ``Range``
request (the bytes already in the ``.part`` file are never fetched again; a server that
ignores ``Range`` makes it start over), and connection errors, timeouts and HTTP 5xx / 408 /
429 answers are retried with exponential backoff. Other 4xx answers (404, 403, ...) move on to
the next mirror at once. The finished file's sha256 is compared with the expected one (when
known); only a complete and verified file is renamed to ``target``, so ``target`` never holds
a partial or wrong file. A wrong checksum deletes the ``.part`` file.

Errors (user errors with the URL and file in the message): :class:`DownloadError` (every
mirror failed; lists each mirror's last error), :class:`ChecksumError`, :class:`DiskFullError`.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

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


class _HTTPFailure(Exception):
    """One URL's failure: ``retry`` tells whether trying it again may help."""

    def __init__(self, message: str, retry: bool):
        super().__init__(message)
        self.retry = retry


@dataclass
class FetchResult:
    path: Path
    url: str
    sha256: str
    size: int
    downloaded: int  # bytes transferred over the network by this call


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


def _attempt(url: str, part: Path, timeout: float, desc: str) -> int:
    """One request, appending to ``part`` from its current size; returns bytes received.

    Raises :class:`_HTTPFailure` on anything short of a complete body.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            total = _total_from_content_range(exc.headers.get("Content-Range"))
            if total == offset:
                return 0  # the .part file is already complete
            part.unlink(missing_ok=True)
            raise _HTTPFailure(f"HTTP 416 for a resume at byte {offset}; starting over", retry=True) from None
        raise _HTTPFailure(f"HTTP {exc.code} {exc.reason}", retry=exc.code in RETRY_STATUS) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise _HTTPFailure(f"connection failed: {reason}", retry=True) from None

    with response:
        status = response.status
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if offset and status == 206:
            m = re.match(r"bytes\s+(\d+)-", response.headers.get("Content-Range") or "")
            if not m or int(m.group(1)) != offset:
                part.unlink(missing_ok=True)
                raise _HTTPFailure("server answered a resume with the wrong range; starting over", retry=True)
            mode = "ab"
        else:
            if offset:
                log.info("%s ignores Range requests; fetching from the start", url)
            offset, mode = 0, "wb"
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
        return received


def _fetch_one(url: str, part: Path, *, retries: int, backoff_s: float, timeout: float, desc: str) -> int:
    """Fetch ``url`` completely into ``part`` (resuming it), with retries; returns bytes received."""
    received_total = 0
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            received_total += _attempt(url, part, timeout, desc)
            return received_total
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
) -> FetchResult:
    """Download the first working mirror of ``urls`` to ``target``; verified when ``sha256`` is given.

    ``what`` names the file in messages (``"mmimdb: mmimdb.tar.gz"``).
    """
    target = Path(target)
    what = what or target.name
    if not urls:
        raise DownloadError(f"{what}: no URL to fetch it from")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    errors: list[str] = []
    downloaded = 0
    mismatch = False
    for url in urls:
        try:
            downloaded += _fetch_one(
                url, part, retries=retries, backoff_s=backoff_s, timeout=timeout, desc=what
            )
        except _HTTPFailure as exc:
            errors.append(f"{url}: {exc}")
            log.warning("%s: %s: %s", what, url, exc)
            continue
        digest = sha256_of(part)
        if sha256 is not None and digest != sha256:
            part.unlink(missing_ok=True)
            errors.append(f"{url}: sha256 mismatch: expected {sha256}, got {digest}")
            log.warning("%s: %s served a file with the wrong sha256", what, url)
            mismatch = True
            continue
        size = part.stat().st_size
        with open(part, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(part, target)
        return FetchResult(path=target, url=url, sha256=digest, size=size, downloaded=downloaded)
    if mismatch:
        raise ChecksumError(
            f"{what}: wrong checksum, nothing was kept at {target}. Expected sha256 {sha256}:\n  - "
            + "\n  - ".join(errors)
        )
    raise DownloadError(f"{what}: could not be downloaded from any of its {len(urls)} URL(s):\n  - " + "\n  - ".join(errors))

