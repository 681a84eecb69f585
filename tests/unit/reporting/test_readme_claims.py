"""README.md's results block is the one rendered from the committed reports/summary.json: the
figures and sentences there can only say what the seeds support."""

from __future__ import annotations

import json

from mitp.config.params import REPO_ROOT
from mitp.reporting.report import readme_summary

START, END = "<!-- results:start -->", "<!-- results:end -->"


def readme_block(text: str) -> str:
    lines = text.splitlines()
    assert lines.count(START) == 1 and lines.count(END) == 1, f"README.md needs one {START} and one {END} line"
    i, j = lines.index(START), lines.index(END)
    assert i < j, f"{START} must come before {END}"
    return "\n".join(lines[i + 1:j]).strip()


def test_readme_results_block_matches_summary_json():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    summary = json.loads((REPO_ROOT / "reports" / "summary.json").read_text(encoding="utf-8"))
    expected = readme_summary(summary).strip()
    assert readme_block(readme) == expected, (
        f"README.md's block between {START} and {END} differs from reports/summary.json; "
        f"paste this between the markers:\n\n{expected}\n")
