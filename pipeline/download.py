"""Stage ``download``: a dataset's sources -> ``data/raw/<ds>/`` (+ ``locks/<ds>.lock.json``).

    python -m pipeline.download --dataset NAME [-S data.NAME.local_path=/path/to/copy]

``synthetic`` is generated instead of fetched. A second run fetches nothing. See
:mod:`mitp.data.download` for sources, checksums, the lock file and local copies.
"""

from __future__ import annotations

from mitp.data.download import download_dataset
from pipeline.cli import dataset_stage, run

main = dataset_stage(__doc__, download_dataset)


if __name__ == "__main__":
    run(main)
