"""Image verification during prepare: every unique image is fully decoded once, in parallel,
and its sha256 recorded (the manifests' ``image_sha256`` column: the feature cache's fingerprint
covers the image bytes without reading every file again at each training start).

``PIL.Image.open`` alone only reads the header; ``load()`` decodes the pixels, so a truncated
or corrupt file is caught here and never reaches training. Decoding releases the GIL inside
Pillow, so a thread pool uses all cores without pickling paths to worker processes.
"""

from __future__ import annotations

import hashlib
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


def _inspect(path: Path) -> tuple[Problem | None, str | None]:
    problem = check_image(path)
    if problem is not None:
        return problem, None
    with open(path, "rb") as f:
        return None, hashlib.file_digest(f, "sha256").hexdigest()


def verify_images(paths: Iterable[Path], workers: int = 0,
                  desc: str = "verify images") -> tuple[dict[Path, Problem], dict[Path, str]]:
    """Decode each unique path once: ``({path: (reason, detail)}`` for the bad ones,
    ``{path: sha256}`` for the good ones)."""
    unique = sorted(set(paths))
    workers = workers or os.cpu_count() or 1
    problems: dict[Path, Problem] = {}
    digests: dict[Path, str] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
        total=len(unique), desc=desc, unit="img", mininterval=1.0
    ) as bar:
        for path, (problem, digest) in zip(unique, pool.map(_inspect, unique), strict=True):
            if problem is not None:
                problems[path] = problem
            else:
                digests[path] = digest
            bar.update(1)
    return problems, digests
