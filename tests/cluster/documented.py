"""The cluster commands the docs document, read from README.md and docs/ themselves, so the tests
run what a reader copies."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def readme_section(title: str) -> str:
    """The section ``## title`` of README.md or of a page in docs/ (reference moved there)."""
    for page in (REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))):
        text = page.read_text()
        start = text.find(f"## {title}\n")
        if start >= 0:
            end = text.find("\n## ", start + 1)
            return text[start:end if end > 0 else None]
    raise AssertionError(f"README.md and docs/: no section '## {title}'")


def bash_blocks(section: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def submit_command() -> str:
    """The README's ``ray job submit`` line of "Sweeps on a cluster" (continuations joined)."""
    for block in bash_blocks(readme_section("Sweeps on a cluster")):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            if line.startswith("ray job submit"):
                return " ".join(line.split("#", 1)[0].split())
    raise AssertionError("README, Sweeps on a cluster: no `ray job submit` command")


def job_entrypoint() -> str:
    """What runs on the cluster: the part of the submit command after ``--``."""
    return submit_command().split(" -- ", 1)[1]
