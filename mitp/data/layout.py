"""Finding a raw layout inside a folder, whatever wrapper folders an archive or a copy added.

Archives and local copies often put the layout one or two folders down
(``UPMC_Food101/images/...``, ``mmimdb/dataset/...``, ``images/images/train``). Readers call
:func:`find_root` with the entries their layout must hold and get the shallowest folder that
holds them all, or a :class:`LayoutError` that says what was looked for and where.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from mitp.errors import UserError


class LayoutError(UserError, FileNotFoundError):
    """The raw folder does not hold the expected layout."""


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def find_root(
    base: str | Path,
    required: Sequence[str],
    *,
    max_depth: int = 3,
    what: str = "dataset",
    accept: Callable[[Path], bool] | None = None,
) -> Path:
    """The shallowest folder at or below ``base`` (breadth first) holding every ``required`` entry.

    ``accept`` can reject a candidate that has the entries but not the right content.
    """
    base = Path(base)
    if not base.exists():
        raise LayoutError(f"{base}: folder not found (looking for the {what} layout)")
    if not base.is_dir():
        raise LayoutError(f"{base}: not a folder (looking for the {what} layout)")
    level = [base]
    for _ in range(max_depth + 1):
        for folder in level:
            if all((folder / r).exists() for r in required) and (accept is None or accept(folder)):
                return folder
        level = [c for folder in level for c in _children(folder)]
        if not level:
            break
    raise LayoutError(
        f"{base}: no folder within {max_depth} levels holds the {what} layout "
        f"({', '.join(required)}); point data.<name>.local_path at the dataset's folder"
    )


def find_dir(base: str | Path, names: Sequence[str], *, max_depth: int = 3) -> Path | None:
    """The shallowest folder named one of ``names`` at or below ``base`` (None if there is none).

    A folder that holds a same-named folder (``flickr30k_images/flickr30k_images``) counts as
    a wrapper: the inner one is returned.
    """
    base = Path(base)
    level = [base]
    for _ in range(max_depth + 1):
        for folder in level:
            for name in names:
                hit = folder / name
                if hit.is_dir():
                    inner = hit / name
                    return inner if inner.is_dir() else hit
        level = [c for folder in level for c in _children(folder)]
        if not level:
            break
    return None
