"""Fetch or build the backbones: ``python -m pipeline.backbone``.

``tiny-random`` is built from configs with a fixed seed; hub models are snapshotted at their
pinned commit into ``data/backbones/<ids@revisions>/`` with a ``spec.json`` of what was asked and
fetched (no weights are downloaded twice; a copy recorded for another spec stops the stage).
"""

from mitp.models import backbones
from pipeline import cli


def main() -> int:
    args = cli.parser(__doc__.splitlines()[0], dataset=False).parse_args()
    params, _ = cli.load(args)
    path = backbones.ensure_local(params.backbone)
    print(f"backbones ready in {path}")
    return 0


if __name__ == "__main__":
    cli.run(main)
