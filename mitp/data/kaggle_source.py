"""Sources hosted on Kaggle: fetched with the official ``kaggle`` CLI, never scraped around.

Kaggle needs an account, an API token and, per dataset, accepting its terms on the web page.
:func:`kaggle_download` checks for the CLI and a token first and otherwise stops with the exact
steps (or the ``local_path`` setting for a copy the user already has).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from mitp.errors import UserError


class KaggleUnavailableError(UserError):
    """The kaggle CLI or its token is missing, or Kaggle refused the download."""


def token_present() -> bool:
    """A Kaggle API token in the environment or in the kaggle config folder."""
    if os.environ.get("KAGGLE_API_TOKEN") or (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")):
        return True
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    return (folder / "kaggle.json").is_file() or (folder / "access_token").is_file()


def instructions(dataset: str, slug: str, terms: str | None, local_hint: str) -> str:
    page = f"https://www.kaggle.com/datasets/{slug}"
    return (
        f"{dataset} comes from Kaggle ({page}). "
        + (f"Terms: {terms} " if terms else "")
        + "To download it: (1) `pip install kaggle`; (2) create an API token on "
        "https://www.kaggle.com/settings (API -> Create New Token) and save it as ~/.kaggle/kaggle.json "
        "(chmod 600), or export KAGGLE_USERNAME and KAGGLE_KEY; (3) open the dataset page, sign in and "
        f"accept its terms; (4) run `python -m pipeline.download --dataset {dataset}` again "
        f"(it runs `kaggle datasets download {slug}`). Or, if you already have a copy: {local_hint}"
    )


def kaggle_download(slug: str, folder: Path, *, dataset: str, terms: str | None, local_hint: str) -> Path:
    """Run ``kaggle datasets download SLUG -p FOLDER``; returns the zip it wrote."""
    exe = shutil.which("kaggle")
    if exe is None or not token_present():
        missing = "the `kaggle` command is not installed" if exe is None else "no Kaggle API token is configured"
        raise KaggleUnavailableError(f"cannot download {dataset}: {missing}. " + instructions(dataset, slug, terms, local_hint))
    folder.mkdir(parents=True, exist_ok=True)
    before = set(folder.glob("*.zip"))
    proc = subprocess.run([exe, "datasets", "download", slug, "-p", str(folder)], text=True, capture_output=False,
                          stdout=None, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip()[-800:]
        raise KaggleUnavailableError(
            f"`kaggle datasets download {slug}` failed (exit {proc.returncode}): {tail}. "
            "A 403 usually means the dataset's terms are not accepted yet. " + instructions(dataset, slug, terms, local_hint)
        )
    expected = folder / f"{slug.split('/')[-1]}.zip"
    if expected.is_file():
        return expected
    new = sorted(set(folder.glob("*.zip")) - before)
    if len(new) == 1:
        return new[0]
    raise KaggleUnavailableError(f"`kaggle datasets download {slug}` finished but wrote no {expected.name} in {folder}")
