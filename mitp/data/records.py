"""What the raw-layout readers produce: one :class:`Record` per example, and a :class:`SkipLog`.

A reader turns a raw dataset folder into records per split (``train``/``val``/``test``). Bad
records (a missing image, an empty text, an unknown label, a malformed line, ...) are not
raised on the spot: they go to the :class:`SkipLog`, which applies the dataset's policy
(``bad_records: skip`` counts and lists them; ``fail`` stops at the first one with an error
naming the file and line) and feeds ``prepare_report.json``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mitp.errors import UserError

# The reasons a record is skipped; the report counts by these names.
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
EMPTY_TEXT = "empty_text"
UNKNOWN_LABEL = "unknown_label"
NO_LABEL = "no_label"  # MM-IMDB: no genre left inside the 23
MALFORMED = "malformed_line"
DUPLICATE_ID = "duplicate_id"
UNSAFE_PATH = "unsafe_path"  # an id / file name that is not a plain name inside the dataset folder
NOT_UTF8 = "not_utf8"  # text that is not valid UTF-8 (never silently turned into U+FFFD)
IN_TWO_SPLITS = "image_in_two_splits"  # an image already used by an earlier split (kept there)
REASONS = (
    MISSING_IMAGE, UNREADABLE_IMAGE, EMPTY_TEXT, UNKNOWN_LABEL, NO_LABEL, MALFORMED, DUPLICATE_ID,
    UNSAFE_PATH, NOT_UTF8, IN_TWO_SPLITS,
)


class BadRecordError(UserError, ValueError):
    """A bad record under ``bad_records: fail``, or a dataset that lost too many records."""


@dataclass(frozen=True)
class Record:
    """One example before it becomes a manifest row; ``image`` is an absolute path."""

    id: str
    image: Path
    text: str
    label: str | tuple[str, ...]
    where: str = ""  # file:line the record came from (for messages)


@dataclass
class Skip:
    split: str
    reason: str
    where: str
    id: str | None = None
    detail: str = ""

    def as_dict(self) -> dict:
        out = {"split": self.split, "reason": self.reason, "where": self.where}
        if self.id is not None:
            out["id"] = self.id
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass
class SkipLog:
    """Bad records seen while reading, under the policy ``skip`` (count) or ``fail`` (raise)."""

    policy: str = "skip"
    dataset: str = ""
    skips: list[Skip] = field(default_factory=list)

    def add(self, split: str, reason: str, where: str, id: str | None = None, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        skip = Skip(split=split, reason=reason, where=where, id=id, detail=detail)
        if self.policy == "fail":
            what = f" (id {id})" if id is not None else ""
            raise BadRecordError(
                f"{where}: bad record{what} in {self.dataset or 'dataset'} split {split}: {reason}"
                f"{': ' + detail if detail else ''}. "
                f"data.{self.dataset}.bad_records is 'fail'; set it to 'skip' to drop such records"
            )
        self.skips.append(skip)

    def by_reason(self, split: str | None = None) -> dict[str, int]:
        counts = Counter(s.reason for s in self.skips if split is None or s.split == split)
        return {r: counts[r] for r in REASONS if counts[r]}

    def count(self, split: str | None = None) -> int:
        return sum(1 for s in self.skips if split is None or s.split == split)
