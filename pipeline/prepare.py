"""Stage ``prepare``: raw layout -> ``data/prepared/<ds>/`` manifests, labels.json, report.

    python -m pipeline.prepare --dataset NAME [-S data.NAME.local_path=/path/to/copy]

Reads ``data.<name>.local_path`` if set, else ``data/raw/<name>``; see :mod:`mitp.data.prepare`.
"""

from __future__ import annotations

from mitp.data.prepare import prepare_dataset
from pipeline.cli import dataset_stage, run

main = dataset_stage(__doc__, prepare_dataset)


if __name__ == "__main__":
    run(main)
