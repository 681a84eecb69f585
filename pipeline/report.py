"""Write the report: ``python -m pipeline.report [--datasets a,b]``.

Reads ``metrics/<dataset>/`` (train and sweep outputs) and writes ``reports/report.md``, its
PNG plots and ``reports/summary.json``.
"""

from mitp.reporting.report import build
from pipeline import cli


def main() -> int:
    p = cli.parser(__doc__.splitlines()[0], dataset=False)
    p.add_argument("--datasets", default=None, help="comma-separated (default: params `datasets`)")
    p.add_argument("--metrics-dir", default="metrics")
    args = p.parse_args()
    params, _ = cli.load(args)
    datasets = args.datasets.split(",") if args.datasets else params.datasets
    out = params.resolve(params.report.dir)
    summary = build(params, datasets, params.resolve(args.metrics_dir), out)
    print(f"wrote {out / 'report.md'}")
    for ds, s in summary.items():
        gaps = {k: (round(v["mean"], 4), v["verdict"]) for k, v in s.items() if k.startswith("mitp_minus_")}
        print(ds, gaps)
    return 0


if __name__ == "__main__":
    cli.run(main)
