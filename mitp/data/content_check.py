"""A fetched file must hold what its name says before anything trusts it (the lock file, prepare).

Mirrors and CDNs answer failures with an HTML page and status 200 (a login wall, a quota page,
a "file moved" notice). :func:`check_fetched` reads the head of the file and refuses, with one
line naming the file:

* anything that starts like an HTML or XML document, whatever its name;
* ``.jsonl``: the first lines must be UTF-8 JSON objects; ``.json``: UTF-8 whose first
  character opens a JSON object or list; ``.csv`` / ``.txt``: UTF-8 text;
* an archive (``unpack`` not ``none``): its first bytes must be tar or zip
  (:func:`mitp.data.archive.detect_kind`; extraction reads the rest).
"""

from __future__ import annotations

import json
from pathlib import Path

from mitp.data.archive import ArchiveError, detect_kind
from mitp.data.fetch import ContentError

HEAD_BYTES = 64 * 1024
JSONL_LINES = 5
MARKUP_STARTS = (b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<!--")


def _head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(HEAD_BYTES)


def _utf8(path: Path, head: bytes, what: str) -> str:
    # the head may end inside a multi-byte character: drop at most 3 trailing bytes
    for cut in range(4):
        try:
            return head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    raise ContentError(f"{path}: not UTF-8 text, so not {what}")


def check_text(path: str | Path) -> None:
    """Refuse an HTML page or bytes that do not parse as the file's kind (by its suffix)."""
    path = Path(path)
    head = _head(path)
    lead = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if lead.startswith(MARKUP_STARTS):
        raise ContentError(f"{path}: the server sent an HTML/XML page ({lead[:40]!r}...), not the dataset file")
    suffix = path.name.removesuffix(".part").rsplit(".", 1)[-1].lower()
    if suffix == "jsonl":
        text = _utf8(path, head, "JSON lines")
        lines = [ln for ln in text.splitlines()[:JSONL_LINES + 1] if ln.strip()]
        complete = lines if len(head) < HEAD_BYTES else lines[:-1]  # the last may be cut by the head
        for n, line in enumerate(complete[:JSONL_LINES], start=1):
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise ContentError(f"{path}: line {n} is not JSON ({exc}), so not a JSON-lines file") from None
            if not isinstance(obj, dict):
                raise ContentError(f"{path}: line {n} is not a JSON object, so not a JSON-lines dataset file")
        if not lines:
            raise ContentError(f"{path}: empty, not a JSON-lines dataset file")
    elif suffix == "json":
        text = _utf8(path, head, "JSON").lstrip("\ufeff \t\r\n")
        if not text.startswith(("{", "[")):
            raise ContentError(f"{path}: does not start with a JSON object or list")
    elif suffix in ("csv", "txt", "tsv"):
        _utf8(path, head, "a text file")


def check_archive(path: str | Path) -> None:
    """Refuse a file whose first bytes are not a tar or zip archive."""
    try:
        detect_kind(path)
    except ArchiveError as exc:
        raise ContentError(str(exc)) from None


def check_fetched(path: str | Path, archive: bool) -> None:
    """The content check of a fetched file: an archive, or a plain file judged by its suffix."""
    if archive:
        check_archive(path)
    else:
        check_text(path)
