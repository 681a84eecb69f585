"""Image verification during prepare: every unique image is fully decoded once, in parallel.

``PIL.Image.open`` alone only reads the header; ``load()`` decodes the pixels, so a truncated
or corrupt file is caught here and never reaches training. Decoding releases the GIL inside
Pillow, so a thread pool uses all cores without pickling paths to worker processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from mitp.data.records import MISSING_IMAGE, UNREADABLE_IMAGE

Problem = tuple[str, str]  # (reason, detail)


def check_image(path: Path) -> Problem | None:
    """None if ``path`` is a decodable image, else ``(reason, detail)``."""
    if not path.is_file():
        return MISSING_IMAGE, f"{path} not found"
    try:
        with Image.open(path) as img:
            img.load()
            if img.width < 1 or img.height < 1:
                return UNREADABLE_IMAGE, f"{path}: empty image"
    except Exception as exc:  # PIL raises many types for bad files
        return UNREADABLE_IMAGE, f"{path}: {type(exc).__name__}: {exc}"
    return None


def verify_images(paths: Iterable[Path], workers: int = 0, desc: str = "verify images") -> dict[Path, Problem]:
    """Decode each unique path once; returns the problems only (``{path: (reason, detail)}``)."""
    unique = sorted(set(paths))
    workers = workers or os.cpu_count() or 1
    problems: dict[Path, Problem] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
        total=len(unique), desc=desc, unit="img", mininterval=1.0
    ) as bar:
        for path, problem in zip(unique, pool.map(check_image, unique), strict=True):
            if problem is not None:
                problems[path] = problem
            bar.update(1)
    return problems
