"""The report: the paper's tables and ablations, from the train and sweep outputs.

Inputs (per dataset, under ``metrics/<dataset>/``): ``train_<kind>.json`` and
``train_<kind>_history.json`` for each model variant, ``train_<kind>_seed<N>.json`` for its runs
on the other seeds, ``sweep.csv`` and ``sweep_best.json``.
Outputs (under ``reports/``): ``report.md`` (main table, ablation tables, cost per trial,
lineage), PNG plots, and ``summary.json`` (a DVC metric).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from mitp import ablation_stats  # noqa: E402
from mitp.atomic import atomic_path, write_json, write_text  # noqa: E402
from mitp.config import MODEL_KINDS  # noqa: E402
from mitp.errors import UserError  # noqa: E402

KINDS = tuple(MODEL_KINDS)
KIND_LABELS = {"mitp": "MITP", "mitp_no_hub": "MITP, no hub (ablation)", "late_fusion": "Late fusion (frozen linear probe)",
               "pmf": "PMF (prompt-based baseline)", "finetune": "Full fine-tuning (upper bound)"}
# The paper's metric per dataset, and its column label.
DATASET_METRICS = {
    "food101": [("test_accuracy", "Accuracy")],
    "snli_ve": [("test_accuracy", "Accuracy")],
    "synthetic": [("test_accuracy", "Accuracy")],
    "mmimdb": [("test_f1_micro", "F1-micro"), ("test_f1_macro", "F1-macro")],
}
ABLATION_KEYS = {
    "model.prompt_length": "prompt length M",
    "model.hub_size": "hub size h",
    "model.interaction.start": "interaction start s",
    "model.interaction.interval": "interaction interval D",
}


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _num(x, fmt="{:,.0f}") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


class ReportInputError(UserError):
    """A metrics file the report reads is unreadable (truncated, not JSON, wrong shape)."""


def read_json(f: Path, shape: type) -> dict | list:
    """A metrics file's content, checked to be a JSON ``shape`` (dict or list of dicts)."""
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportInputError(f"{f}: not valid JSON ({exc}); re-run the stage that writes it") from None
    if not isinstance(data, shape) or (shape is list and not all(isinstance(r, dict) for r in data)):
        what = "an object" if shape is dict else "a list of objects"
        raise ReportInputError(f"{f}: expected {what}, got {type(data).__name__}; re-run the stage that writes it")
    return data


def read_sweep_csv(f: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(f)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ReportInputError(f"{f}: not a readable CSV ({str(exc).strip()}); re-run the sweep") from None


def check_inputs(metrics_dir: Path, datasets: list[str]) -> None:
    """Read every input once before anything is written: a bad file stops the report whole."""
    for ds in datasets:
        load_runs(metrics_dir, ds)
        for kind in KINDS:
            seed_runs(metrics_dir, ds, kind)
            if (f := metrics_dir / ds / f"train_{kind}_history.json").exists():
                read_json(f, list)
        if (f := metrics_dir / ds / "sweep_best.json").exists():
            read_json(f, dict)
        if (f := metrics_dir / ds / "sweep.csv").exists():
            read_sweep_csv(f)


def load_runs(metrics_dir: Path, dataset: str) -> dict[str, dict]:
    runs = {}
    for kind in KINDS:
        f = metrics_dir / dataset / f"train_{kind}.json"
        if f.exists():
            runs[kind] = read_json(f, dict)
    return runs


def seed_runs(metrics_dir: Path, dataset: str, kind: str) -> list[dict]:
    """Every seed's metrics of one variant: ``train_<kind>.json`` (the run at ``seed``), then
    ``train_<kind>_seed<N>.json`` (``extra_seeds``) by N."""
    d = metrics_dir / dataset
    extra = sorted((int(m.group(1)), f) for f in d.glob(f"train_{kind}_seed*.json")
                   if (m := re.fullmatch(rf"train_{kind}_seed(\d+)\.json", f.name)))
    files = [d / f"train_{kind}.json", *(f for _, f in extra)]
    runs, seeds = [], set()
    for f in files:
        if f.exists():
            run = read_json(f, dict)
            if run.get("seed") is not None and run["seed"] in seeds:  # `seed` set to one of extra_seeds
                continue  # the same run twice: count it once
            seeds.add(run.get("seed"))
            runs.append(run)
    return runs


def main_table(dataset: str, metrics_dir: Path) -> tuple[str, dict[str, dict]]:
    """The main table: each variant's metrics as mean ± std over its seeds (when it has more than
    one run), a mark when a variant is within the seed noise of the best one, and the cost
    figures of the run at ``seed``. Also returns the statistics per variant (for summary.json)."""
    cols = DATASET_METRICS.get(dataset, [("test_accuracy", "Accuracy")])
    runs = {kind: rs for kind in KINDS if (rs := seed_runs(metrics_dir, dataset, kind))}
    over_seeds = any(len(rs) > 1 for rs in runs.values())
    flat = [{"kind": kind, **r} for kind, rs in runs.items() for r in rs]
    # the first metric decides which variant is best and which are within the seed noise of it
    by_kind = ablation_stats.table(flat, ["kind"], cols[0][0])
    marks = {s.config[0]: s.within_noise for s in by_kind}
    stats: dict[str, dict] = {}
    rows = []
    for kind, rs in runs.items():
        cells = []
        for k, _ in cols:
            mean, std, n = ablation_stats.mean_std(r.get(k) for r in rs)
            stats.setdefault(kind, {}).update({f"{k}_mean": mean, f"{k}_std": std, "seeds": n})
            cells.append(_pm(mean, std) if over_seeds else _pct(mean))
        first = rs[0]
        seeds = ", ".join(str(r["seed"]) if "seed" in r else "?" for r in rs)
        rows.append([KIND_LABELS[kind], *cells] + ([seeds, "≈ (within seed noise)" if marks.get(kind) else ""]
                                                   if over_seeds else []) + [
            _num(first.get("trainable_params")), _num(100 * first.get("trainable_ratio", float("nan")), "{:.2f}"),
            _num(first.get("peak_memory_mb")), _num(first.get("train_samples_per_s"), "{:,.1f}")])
    header = (["Model"] + [f"{label} (%)" + (", mean ± std" if over_seeds else "") for _, label in cols]
              + (["seeds", "vs best"] if over_seeds else [])
              + ["Trainable params", "Trainable (%)", "Peak memory (MB)", "Train throughput (samples/s)"])
    text = md_table(header, rows)
    if over_seeds:
        noise = ablation_stats.seed_noise(by_kind)
        text = (f"Seed noise (pooled std over seeds of one variant): {_pct(noise)} points; ≈ marks a mean within "
                f"that of the best variant's. Cost columns: the run at the first seed listed.\n\n{text}")
    return text, stats


def plot_curves(dataset: str, metrics_dir: Path, out: Path) -> Path | None:
    """Validation metric per epoch of each variant."""
    fig, ax = plt.subplots(figsize=(6, 4))
    plotted = False
    for kind in KINDS:
        f = metrics_dir / dataset / f"train_{kind}_history.json"
        if not f.exists():
            continue
        hist = pd.DataFrame(read_json(f, list))
        col = "val_f1_micro" if "val_f1_micro" in hist else "val_accuracy"
        ax.plot(hist["epoch"], 100 * hist[col], marker="o", ms=3, label=KIND_LABELS[kind])
        plotted = True
    if not plotted:
        plt.close(fig)
        return None
    ax.set(title=f"{dataset}: validation {col.removeprefix('val_')} per epoch", xlabel="epoch",
           ylabel=f"validation {col.removeprefix('val_')} (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)


def _save(fig, out: Path) -> Path:
    fig.tight_layout()
    with atomic_path(out, ".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return out


def sweep_metric(df: pd.DataFrame) -> str | None:
    for col in ("test_f1_micro", "test_accuracy", "val_f1_micro", "val_accuracy"):
        if col in df and df[col].notna().any():
            return col
    return None


def ablation(df: pd.DataFrame, key: str, metric: str, noise: float | None = None,
             anchor: dict | None = None) -> pd.DataFrame:
    """Metric by value of one swept key: mean and std over runs, number of runs, and whether the
    mean is within ``noise`` (the seed noise) of the best value's. With ``anchor`` (the chosen
    configuration), the other keys stay at the anchor's values (spread = seeds only); without
    it, or when the grid has no such line, the trials of the other settings are pooled."""
    line = ablation_stats.along_axis(df, key, anchor) if anchor else []
    rows = line if len({r.get(key) for r in line}) >= 2 else df
    stats = ablation_stats.table(rows, [key], metric, noise=noise)
    return pd.DataFrame({"mean": [s.mean for s in stats], "std": [s.std for s in stats], "runs": [s.n for s in stats],
                         "within_noise": [s.within_noise for s in stats]},
                        index=pd.Index([s.config[0] for s in stats], name=key)).sort_index()


def plot_ablation(dataset: str, key: str, table: pd.DataFrame, metric: str, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    x = range(len(table))  # evenly spaced, labelled with the swept values (16 and 384 side by side)
    ax.errorbar(x, 100 * table["mean"], yerr=100 * table["std"], marker="o", capsize=4, label="mean ± std over runs")
    ax.set_xticks(list(x), [str(v) for v in table.index])
    name = metric.removeprefix("test_").removeprefix("val_")
    split = "test" if metric.startswith("test_") else "validation"
    ax.set(title=f"{dataset}: {split} {name} vs {ABLATION_KEYS.get(key, key)}",
           xlabel=ABLATION_KEYS.get(key, key), ylabel=f"{split} {name} (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)


def _pm(mean, std) -> str:
    return "-" if _pct(mean) == "-" else f"{_pct(mean)} ± {_pct(std)}"


def sweep_section(dataset: str, metrics_dir: Path, out_dir: Path) -> tuple[list[str], dict]:
    f = metrics_dir / dataset / "sweep.csv"
    if not f.exists():
        return [f"_No sweep results for {dataset} (`metrics/{dataset}/sweep.csv` missing)._"], {}
    df = read_sweep_csv(f)
    metric = sweep_metric(df)
    lines, summary = [], {"trials": int(len(df))}
    if metric is None:
        return [f"_The sweep for {dataset} has no finished trial._"], summary
    done = df[df[metric].notna()]
    swept = [k for k in df.columns if k.startswith(("model.", "train.")) and df[k].nunique(dropna=True) > 1]
    val_metric = "val_" + metric.split("_", 1)[1]
    chosen = (ablation_stats.select_best(done, swept, val_metric, metric if metric.startswith("test_") else None)
              if val_metric in done else None)
    if chosen is not None and chosen.test_mean is not None:  # the val-chosen configuration's own test score
        summary["best_" + metric] = chosen.test_mean
        summary["best_" + metric + "_std"] = chosen.test_std
        summary["best_config"] = chosen.config
    noise = ablation_stats.seed_noise(ablation_stats.table(done, swept, metric))
    lines.append(f"### Ablations ({len(df)} trials; metric: {metric}; mean ± std over runs)\n")
    if not math.isnan(noise):
        lines.append(f"Seed noise (pooled std over seeds of one configuration): {_pct(noise)} points; "
                     "≈ marks a mean within that of the best value's.\n")
    for key in ABLATION_KEYS:
        if key not in done or done[key].nunique() < 2:
            continue
        anchor = chosen.config if chosen is not None else None
        table = ablation(done, key, metric, noise=noise, anchor=anchor)
        others = {k: v for k, v in (anchor or {}).items() if k != key}
        fixed = (["Other keys at the configuration chosen on validation: "
                  + ", ".join(f"`{k}={v}`" for k, v in others.items()) + "\n"]
                 if others and int(table["runs"].sum()) < len(done) else [])
        png = plot_ablation(dataset, key, table, metric, out_dir / f"{dataset}_ablation_{key.split('.')[-1]}.png")
        rows = [[str(v), _pm(r["mean"], r["std"]), str(int(r["runs"])), "≈ (within seed noise)" if r["within_noise"] else ""]
                for v, r in table.iterrows()]
        lines += [f"**{ABLATION_KEYS[key]}** (`{key}`)\n", *fixed,
                  md_table([ABLATION_KEYS[key], "mean ± std (%)", "runs", "vs best"], rows), "",
                  f"![{key}](figures/{png.name})\n"]
    cost_cols = [c for c in ("train_time_s", "train_samples_per_s", "peak_memory_mb", "trainable_params") if c in done]
    if cost_cols:
        lines.append("### Cost per trial\n")
        rows = [[c, _num(done[c].mean(), "{:,.1f}"), _num(done[c].min(), "{:,.1f}"), _num(done[c].max(), "{:,.1f}")]
                for c in cost_cols]
        lines += [md_table(["figure", "mean", "min", "max"], rows), ""]
        if "train_time_s" in done:
            summary["mean_trial_train_time_s"] = float(done["train_time_s"].mean())
    best = metrics_dir / dataset / "sweep_best.json"
    if best.exists():
        lines += ["Best trial's configuration:\n", "```json", best.read_text().strip(), "```", ""]
    return lines, summary


def build(params, datasets: list[str], metrics_dir: Path, out_dir: Path) -> dict:
    """Write report.md, the PNGs and summary.json; returns the summary."""
    from mitp.config import to_flat_dict
    from mitp.tracking import git_commit

    check_inputs(metrics_dir, datasets)
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    md = ["# MITP results\n",
          "Produced by `python -m pipeline.report` from `metrics/` (train and sweep stages). "
          "Metrics in percent, on the test split, at the epoch with the best validation score.\n"]
    summary: dict = {}
    for ds in datasets:
        runs = load_runs(metrics_dir, ds)
        seed_stats: dict[str, dict] = {}
        md.append(f"## {ds}\n")
        if runs:
            table, seed_stats = main_table(ds, metrics_dir)
            md += ["### Main table\n", table, ""]
            curves = plot_curves(ds, metrics_dir, figures / f"{ds}_curves.png")
            if curves:
                md.append(f"![validation curves](figures/{curves.name})\n")
        else:
            md.append(f"_No training results for {ds}._\n")
        sweep_lines, sweep_summary = sweep_section(ds, metrics_dir, figures)
        md += ["### Sweep\n", *sweep_lines]
        ds_sum = {kind: {**{k: v for k, v in r.items() if k.startswith("test_") or k in ("trainable_params", "trainable_ratio")},
                         **seed_stats.get(kind, {})}
                  for kind, r in runs.items()}
        if "mitp" in runs:
            key = DATASET_METRICS.get(ds, [("test_accuracy", "")])[0][0]
            for other in ("late_fusion", "mitp_no_hub"):
                if other in runs and key in runs[other]:
                    ds_sum[f"mitp_minus_{other}"] = runs["mitp"][key] - runs[other][key]
        ds_sum["sweep"] = sweep_summary
        summary[ds] = ds_sum
    fingerprints = {ds: r.get("cache_fingerprint") for ds in datasets for r in load_runs(metrics_dir, ds).values()
                    if r.get("cache_fingerprint")}
    md += ["## Lineage\n", f"- git commit: `{git_commit()}`",
           f"- cache fingerprints: `{json.dumps(fingerprints) if fingerprints else 'n/a (uncached runs)'}`",
           "- params:\n", "```", *(f"{k}: {v}" for k, v in to_flat_dict(params).items()
                                    if k.split(".")[0] in ("seed", "backbone", "model", "cache", "train", "sweep")),
           "```", ""]
    write_text(out_dir / "report.md", "\n".join(md))
    write_json(out_dir / "summary.json", summary)
    return summary
