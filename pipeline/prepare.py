"""Stage ``prepare``: raw layout -> ``data/prepared/<ds>/`` manifests, labels.json, report.

    python -m pipeline.prepare --dataset NAME [-S data.NAME.local_path=/path/to/copy]

Reads ``data.<name>.local_path`` if set, else ``data/raw/<name>``; see :mod:`mitp.data.prepare`.
"""

from __future__ import annotations

from mitp.data.prepare import prepare_dataset
from pipeline.cli import load, parser, run


def main() -> int:
    args = parser(__doc__.splitlines()[0]).parse_args()
    params, name = load(args)
    prepare_dataset(params, name)
    return 0


if __name__ == "__main__":
    run(main)
