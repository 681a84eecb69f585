"""Stage ``download``: a dataset's sources -> ``data/raw/<ds>/`` (+ ``locks/<ds>.lock.json``).

    python -m pipeline.download --dataset NAME [-S data.NAME.local_path=/path/to/copy]

``synthetic`` is generated instead of fetched. A second run fetches nothing. See
:mod:`mitp.data.download` for sources, checksums, the lock file and local copies.
"""

from __future__ import annotations

from mitp.data.download import download_dataset
from pipeline.cli import load, parser, run


def main() -> int:
    args = parser(__doc__.splitlines()[0]).parse_args()
    params, name = load(args)
    download_dataset(params, name)
    return 0


if __name__ == "__main__":
    run(main)
