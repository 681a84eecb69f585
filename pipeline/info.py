"""Model summary without weights: ``python -m pipeline.info --dataset NAME [-S ...]``.

Prints one JSON object: trainable/total parameter counts, their ratio, and the trainable count
by part (prompts, hub, head; PMF: prompts, mappers, head). Builds the backbones from configs:
no download, no weights. The cache-layer rule is checked against this model's own start only,
not against the starts ``sweep.space`` can give (the sweep's stage checks those).
"""

import json

from mitp.models.summary import model_summary
from pipeline import cli


def main() -> int:
    args = cli.parser(__doc__.splitlines()[0]).parse_args()
    params, dataset = cli.load(args, sweep_space=False)  # one model: its own start, not the sweep's
    print(json.dumps(model_summary(params, dataset), indent=2))
    return 0


if __name__ == "__main__":
    cli.run(main)
