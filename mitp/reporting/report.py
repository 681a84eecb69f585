"""The report: the paper's tables and ablations, from the train and sweep outputs.

Inputs (per dataset, under ``metrics/<dataset>/``): ``train_<kind>.json`` and
``train_<kind>_history.json`` for each model variant, ``train_<kind>_seed<N>.json`` for its runs
on the other seeds, ``sweep.csv`` and ``sweep_best.json``.
Outputs (under ``reports/``): ``report.md`` (summary, main table, ablation tables, cost per
trial, lineage), PNG plots, and ``summary.json`` (its figures as data: the README block).

Every input is checked before anything is written (:func:`check_inputs`): a metrics file that is
not JSON, holds NaN or Infinity, lacks the dataset's metric, or has a string or an out-of-range
value where the report reads a number, and a sweep table with such a cell, stop the report with
one line naming the file and the key (or column and line). ``summary.json`` is strict JSON: a
figure that does not exist (the std of one run, an interval with a side of n < 2) is ``null``.

Every compared figure is a mean over seeds with its sample std (ddof = 1); a difference of two
means comes with Welch's 95% t interval and a verdict read off it
(:func:`mitp.reporting.stats.welch`). The sentences that summarise the results are generated from
``summary.json`` (:func:`readme_summary`), never written by hand.
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

from mitp.atomic import atomic_path, write_json, write_text  # noqa: E402
from mitp.config.params import MODEL_KINDS  # noqa: E402
from mitp.errors import UserError  # noqa: E402
from mitp.reporting import stats as ablation_stats  # noqa: E402

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


# Short names for the generated sentences and the summary table.
KIND_NAMES = {"mitp": "MITP", "mitp_no_hub": "MITP without hub", "late_fusion": "late fusion", "pmf": "PMF",
              "finetune": "full fine-tuning"}
METRIC_NAMES = {"test_accuracy": "test accuracy", "test_f1_micro": "test F1-micro", "test_f1_macro": "test F1-macro"}
REFERENCE = "mitp"  # the model of the paper: every other kind is compared with it
STATS_NOTE = ("Over seeds: mean ± sample standard deviation (ddof = 1); with n = 1 the figure is that one "
              "run's, with no std. A difference of two means comes with its 95% confidence interval "
              f"({ablation_stats.CI_METHOD}, whose t quantile widens the interval when there are few seeds) "
              "and a verdict: higher or lower when the interval excludes 0, "
              f"{ablation_stats.NOT_DISTINGUISHABLE} when it includes 0, and no interval when a side has n < 2.")


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _pct(x) -> str:
    return "-" if _missing(x) else f"{100 * x:.1f}"


def _pts(x) -> str:
    """A fraction as signed points with one decimal (no "-0.0")."""
    if _missing(x):
        return "-"
    text = f"{100 * x:.1f}"
    return "0.0" if text == "-0.0" else text


def _num(x, fmt="{:,.0f}") -> str:
    return "-" if _missing(x) else fmt.format(x)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


class ReportInputError(UserError):
    """A metrics file or sweep table the report reads is unreadable or holds a value it cannot use
    (not JSON, NaN or Infinity, a missing metric, a string where a number belongs)."""


# Figures a run record may hold that the report reads or copies as numbers (besides test_* / val_*).
NUMERIC_KEYS = ("trainable_params", "total_params", "trainable_ratio", "peak_memory_mb", "train_samples_per_s",
                "train_time_s", "best_epoch", "epochs", "epochs_run")
SCORE = re.compile(r"(test|val)_(accuracy|f1_micro|f1_macro)")  # fractions in [0, 1]


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _nonfinite(obj, path: str = "") -> str | None:
    """The key path of the first NaN or Infinity in ``obj``, else None."""
    stack = [(path, obj)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where or "<top>"
        if isinstance(item, dict):
            stack += [(f"{where}.{k}" if where else str(k), v) for k, v in reversed(list(item.items()))]
        elif isinstance(item, list):
            stack += [(f"{where}[{i}]", v) for i, v in reversed(list(enumerate(item)))]
    return None


def _bad(f: Path, key: str, what: str, fix: str = "re-run the stage that writes it") -> ReportInputError:
    return ReportInputError(f"{f}: {key}: {what}; {fix}")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def read_json(f: Path, shape: type) -> dict | list:
    """A metrics file's content, checked to be a JSON ``shape`` (dict or list of dicts) holding no
    NaN or Infinity (Python's json reads them; they are not JSON)."""
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportInputError(f"{f}: not valid JSON ({exc}); re-run the stage that writes it") from None
    if not isinstance(data, shape) or (shape is list and not all(isinstance(r, dict) for r in data)):
        what = "an object" if shape is dict else "a list of objects"
        raise ReportInputError(f"{f}: expected {what}, got {type(data).__name__}; re-run the stage that writes it")
    if (where := _nonfinite(data)) is not None:
        raise _bad(f, where, "NaN or Infinity, not a number (a diverged run?)")
    return data


def check_run(f: Path, run: dict, dataset: str) -> dict:
    """A run record (``train_<kind>.json``, a seed's file): the dataset's metrics present and in
    [0, 1], every figure the report reads a number, ``seed`` a non-negative integer."""
    for key, _ in DATASET_METRICS.get(dataset, [("test_accuracy", "")]):
        if key not in run or run[key] is None:
            raise _bad(f, key, f"missing (the {dataset} table needs it)")
    for key, value in run.items():
        if value is None:
            continue
        if key in NUMERIC_KEYS or key.startswith(("test_", "val_")):
            if not _is_number(value):
                raise _bad(f, key, f"{_shown(value)} is not a number")
            if SCORE.fullmatch(key) and not 0 <= value <= 1:
                raise _bad(f, key, f"{value!r} is not a fraction in [0, 1]")
            if value < 0:
                raise _bad(f, key, f"{value!r} is negative")
    seed = run.get("seed")
    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
        raise _bad(f, "seed", f"{_shown(seed)} is not a non-negative integer")
    return run


def check_history(f: Path, rows: list[dict]) -> list[dict]:
    """A run's per-epoch history: an integer ``epoch`` and the validation metric the curve plots
    (``val_f1_micro``, else ``val_accuracy``) on every row."""
    col = "val_f1_micro" if any("val_f1_micro" in r for r in rows) else "val_accuracy"
    for i, r in enumerate(rows):
        epoch = r.get("epoch")
        if not (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0):
            raise _bad(f, f"[{i}].epoch", f"{_shown(epoch)} is not an epoch number")
        if not _is_number(r.get(col)):
            raise _bad(f, f"[{i}].{col}", "missing" if r.get(col) is None else f"{_shown(r[col])} is not a number")
    return rows


def read_sweep_csv(f: Path) -> pd.DataFrame:
    """The sweep's trial table, every figure the report reads checked: a metric or cost column
    holds numbers (empty: a trial without that figure) and no inf; a score is in [0, 1]."""
    try:
        df = pd.read_csv(f)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ReportInputError(f"{f}: not a readable CSV ({str(exc).strip()}); re-run the sweep") from None
    for col in df.columns:
        if not (col in NUMERIC_KEYS or col == "seed" or str(col).startswith(("test_", "val_"))):
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        bad = (values.isna() & df[col].notna()) | values.isin([math.inf, -math.inf])
        if SCORE.fullmatch(str(col)):
            bad |= values.notna() & ~values.between(0, 1)
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise _bad(f, f"column {col!r}, line {row + 2}", f"{_shown(df[col].iloc[row])} is not a usable number",
                       "re-run the sweep")
        df[col] = values
    return df


def check_inputs(metrics_dir: Path, datasets: list[str]) -> None:
    """Read and check every input once before anything is written: a bad file stops the report whole."""
    for ds in datasets:
        load_runs(metrics_dir, ds)
        for kind in KINDS:
            seed_runs(metrics_dir, ds, kind)
            for f in [metrics_dir / ds / f"train_{kind}_history.json",
                      *sorted((metrics_dir / ds / "seeds").glob(f"train_{kind}_seed*_history.json"))]:
                if f.exists():
                    check_history(f, read_json(f, list))
        if (f := metrics_dir / ds / "sweep_best.json").exists():
            read_json(f, dict)
        if (f := metrics_dir / ds / "sweep.csv").exists():
            read_sweep_csv(f)


def load_runs(metrics_dir: Path, dataset: str) -> dict[str, dict]:
    runs = {}
    for kind in KINDS:
        f = metrics_dir / dataset / f"train_{kind}.json"
        if f.exists():
            runs[kind] = check_run(f, read_json(f, dict), dataset)
    return runs


def seed_runs(metrics_dir: Path, dataset: str, kind: str) -> list[dict]:
    """Every seed's metrics of one variant: ``train_<kind>.json`` (the run at ``seed``), then
    ``seeds/train_<kind>_seed<N>.json`` (``extra_seeds``, the main table's stage) by N."""
    d = metrics_dir / dataset
    extra = sorted((int(m.group(1)), f) for f in (d / "seeds").glob(f"train_{kind}_seed*.json")
                   if (m := re.fullmatch(rf"train_{kind}_seed(\d+)\.json", f.name)))
    files = [d / f"train_{kind}.json", *(f for _, f in extra)]
    runs, seeds = [], set()
    for f in files:
        if f.exists():
            run = check_run(f, read_json(f, dict), dataset)
            if run.get("seed") is not None and run["seed"] in seeds:  # `seed` set to one of extra_seeds
                continue  # the same run twice: count it once
            seeds.add(run.get("seed"))
            runs.append(run)
    return runs


def _mean_std(mean, std, n) -> str:
    """``mean ± std`` in percent over n >= 2 seeds; the mean alone for one run."""
    if _missing(mean):
        return "-"
    return _pct(mean) if n < 2 or _missing(std) else f"{_pct(mean)} ± {_pct(std)}"


def _ci(ci) -> str:
    """An interval in points, ``lo to hi``; "-" when there is none (a side with n < 2)."""
    return "-" if ci is None else f"{_pts(ci[0])} to {_pts(ci[1])}"


def gap_record(metric: str, d: ablation_stats.Difference) -> dict:
    """summary.json's record of MITP − a kind: mean difference over seeds, its 95% interval
    (null when a side has n < 2), the Welch–Satterthwaite df, n of each side and the verdict."""
    return {"metric": metric, "mean": d.mean, "ci95": list(d.ci) if d.ci is not None else None, "df": d.df,
            "n": list(d.n), "verdict": d.verdict(KIND_NAMES[REFERENCE])}


def main_table(dataset: str, metrics_dir: Path) -> tuple[str, dict[str, dict], dict[str, dict]]:
    """The main table: each variant's metrics as mean ± sample std over its seeds, the difference
    MITP − variant of the first metric with its Welch 95% interval and verdict, and the cost
    figures of the run at ``seed``. Also returns the statistics per variant and the gap records
    per compared variant (for summary.json)."""
    cols = DATASET_METRICS.get(dataset, [("test_accuracy", "Accuracy")])
    key = cols[0][0]
    runs = {kind: rs for kind in KINDS if (rs := seed_runs(metrics_dir, dataset, kind))}
    flat = [{"kind": kind, **r} for kind, rs in runs.items() for r in rs]
    by_kind = {s.config[0]: s for s in ablation_stats.table(flat, ["kind"], key)}
    ref = by_kind.get(REFERENCE)
    stats: dict[str, dict] = {}
    gaps: dict[str, dict] = {}
    rows = []
    for kind, rs in runs.items():
        cells = []
        for k, _ in cols:
            mean, std, n = ablation_stats.mean_std(r.get(k) for r in rs)
            stats.setdefault(kind, {}).update({f"{k}_mean": mean if n else None,
                                               f"{k}_std": std if n > 1 else None, "seeds": n})
            cells.append(_mean_std(mean, std, n))
        n_key = by_kind[kind].n if kind in by_kind else 0
        compare = []
        if ref is not None:
            if kind == REFERENCE:
                compare = ["(reference)", "", ""]
            elif kind in by_kind:
                d = ablation_stats.welch(ref, by_kind[kind])
                gaps[kind] = gap_record(key, d)
                compare = [_pts(d.mean), _ci(d.ci), gaps[kind]["verdict"]]
            else:
                compare = ["-", "", ""]
        first = rs[0]
        seeds = ", ".join(str(r["seed"]) if "seed" in r else "?" for r in rs)
        rows.append([KIND_LABELS[kind], *cells, str(n_key), seeds, *compare,
                     _num(first.get("trainable_params")), _num(100 * first.get("trainable_ratio", float("nan")), "{:.2f}"),
                     _num(first.get("peak_memory_mb")), _num(first.get("train_samples_per_s"), "{:,.1f}")])
    header = (["Model"] + [f"{label} (%), mean ± std" for _, label in cols] + ["n", "seeds"]
              + ([f"MITP − model ({cols[0][1]}, points)", "95% CI", "verdict"] if ref is not None else [])
              + ["Trainable params", "Trainable (%)", "Peak memory (MB)", "Train throughput (samples/s)"])
    note = "Cost columns: the run at the first seed listed."
    if ref is not None:
        note = (f"MITP − model: the difference of the mean {cols[0][1].lower()} over seeds, in points, with its "
                f"95% confidence interval ({ablation_stats.CI_METHOD}). " + note)
    return f"{note}\n\n{md_table(header, rows)}", stats, gaps


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


def ablation(df: pd.DataFrame, key: str, metric: str, anchor: dict | None = None) -> tuple[pd.DataFrame, bool]:
    """Metric by value of one swept key: mean, sample std and number of runs, and each value
    compared with the reference value (the chosen configuration's, else the best mean): the
    difference reference − value with its Welch 95% interval and verdict. With ``anchor`` (the
    chosen configuration), the other keys stay at the anchor's values (spread = seeds only);
    without it, or when the grid has no such line, the trials of the other settings are pooled.
    Also returns whether the rows were pooled."""
    line = ablation_stats.along_axis(df, key, anchor) if anchor else []
    pooled = len({r.get(key) for r in line}) < 2
    stats = ablation_stats.table(df if pooled else line, [key], metric)
    ref = (next((s for s in stats if ablation_stats.same_value(s.config[0], anchor[key])), None)
           if anchor and key in anchor else None)
    name = "chosen"
    if ref is None and stats:
        ref, name = max(stats, key=lambda s: s.mean), "best"
    diffs = [ablation_stats.welch(ref, s) if s is not ref else None for s in stats]
    table = pd.DataFrame({"mean": [s.mean for s in stats], "std": [s.std for s in stats], "runs": [s.n for s in stats],
                          "reference": [s is ref for s in stats],
                          "diff": [d.mean if d else math.nan for d in diffs],
                          "ci95": [_ci(d.ci) if d else "" for d in diffs],
                          "ci": [list(d.ci) if d and d.ci is not None else None for d in diffs],
                          "verdict": [d.verdict(name) if d else f"({name})" for d in diffs]},
                         index=pd.Index([s.config[0] for s in stats], name=key)).sort_index()
    return table, pooled


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
        summary["best_" + metric + "_std"] = chosen.test_std if chosen.test_n > 1 else None
        summary["best_" + metric + "_n"] = chosen.test_n
        summary["best_config"] = chosen.config
    lines.append(f"### Ablations ({len(df)} trials; metric: {metric}; mean ± sample std over runs)\n")
    lines.append("Each value is compared with a reference, the value of the configuration chosen on validation "
                 "(else the value with the best mean): the difference reference − value in points with its 95% "
                 f"confidence interval ({ablation_stats.CI_METHOD}) and the verdict it supports.\n")
    for key in ABLATION_KEYS:
        if key not in done or done[key].nunique() < 2:
            continue
        anchor = chosen.config if chosen is not None else None
        table, pooled = ablation(done, key, metric, anchor=anchor)
        others = {k: v for k, v in (anchor or {}).items() if k != key}
        fixed = (["Other keys at the configuration chosen on validation: "
                  + ", ".join(f"`{k}={v}`" for k, v in others.items()) + "\n"]
                 if others and not pooled else [])
        if pooled and len(swept) > 1:
            fixed.append("The other keys' settings are pooled here: a row's spread is not over seeds alone.\n")
        png = plot_ablation(dataset, key, table, metric, out_dir / f"{dataset}_ablation_{key.split('.')[-1]}.png")
        rows = [[str(v), _mean_std(r["mean"], r["std"], r["runs"]), str(int(r["runs"])),
                 "" if r["reference"] else _pts(r["diff"]), r["ci95"], r["verdict"]]
                for v, r in table.iterrows()]
        summary.setdefault("ablations", {})[key] = {
            "pooled": bool(pooled), "fixed": others if not pooled else {},
            "rows": [{"value": _plain(v), "mean": float(r["mean"]), "std": None if r["runs"] < 2 else float(r["std"]),
                      "n": int(r["runs"]), "reference": bool(r["reference"]),
                      "diff": None if r["reference"] else float(r["diff"]), "ci95": r["ci"],
                      "verdict": None if r["reference"] else r["verdict"]} for v, r in table.iterrows()]}
        lines += [f"**{ABLATION_KEYS[key]}** (`{key}`)\n", *fixed,
                  md_table([ABLATION_KEYS[key], "mean ± std (%)", "runs", "reference − value (points)", "95% CI",
                            "verdict"], rows), "",
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


def compute_note(metrics_dir: Path, datasets: list[str]) -> list[str]:
    """Where the numbers were computed (the ``run.*`` fields each training records) and how far
    they carry to another machine (mitp/training/runtime.py, docs/reproducibility.md)."""
    seen = sorted({(r.get("run.cpu_kernels"), r.get("run.cpu_capability"), r.get("run.threads"), r.get("run.cpu_model"),
                    r.get("run.torch"))
                   for ds in datasets for kind in KINDS for r in seed_runs(metrics_dir, ds, kind)
                   if r.get("run.cpu_kernels")}, key=str)
    if not seen:
        return []
    lines = ["- computed with: " + "; ".join(f"`train.cpu_kernels={k}` ({cap} kernels, {t} thread(s)) on {model}, "
                                            f"torch {torch}" for k, cap, t, model, torch in seen)]
    if all(k == "portable" for k, *_ in seen):
        lines.append("- reproducibility: portable kernels, so these numbers are the same on any x86-64 CPU with AVX2 "
                     "and the same software (docs/reproducibility.md)")
    else:
        lines.append("- reproducibility: the same numbers on the same CPU model and software; another CPU model runs "
                     "other native kernels, which moves a run's test metric by up to a few tenths of a point (more "
                     "where early stopping then picks another epoch): docs/reproducibility.md gives the measured "
                     "tolerance; `train.cpu_kernels=portable` removes it")
    return lines


def build(params, datasets: list[str], metrics_dir: Path, out_dir: Path) -> dict:
    """Write report.md, the PNGs and summary.json; returns the summary."""
    from mitp.config.params import to_flat_dict
    from mitp.tracking.store import git_commit

    check_inputs(metrics_dir, datasets)
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    md = ["# MITP results\n",
          "Produced by `python -m pipeline.report` from `metrics/` (train and sweep stages). "
          "Metrics in percent, on the test split, at the epoch with the best validation score.\n",
          STATS_NOTE + "\n"]
    summary: dict = {}
    for ds in datasets:
        runs = load_runs(metrics_dir, ds)
        seed_stats: dict[str, dict] = {}
        gaps: dict[str, dict] = {}
        md.append(f"## {ds}\n")
        if runs:
            table, seed_stats, gaps = main_table(ds, metrics_dir)
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
        for other, gap in gaps.items():  # means over seeds, never the run at `seed` alone
            ds_sum[f"{REFERENCE}_minus_{other}"] = gap
        ds_sum["sweep"] = sweep_summary
        summary[ds] = ds_sum
    fingerprints = {ds: r.get("cache_fingerprint") for ds in datasets for r in load_runs(metrics_dir, ds).values()
                    if r.get("cache_fingerprint")}
    md += ["## Lineage\n", f"- git commit: `{git_commit()}`",
           f"- cache fingerprints: `{json.dumps(fingerprints) if fingerprints else 'n/a (uncached runs)'}`",
           *compute_note(metrics_dir, datasets),
           "- params:\n", "```", *(f"{k}: {v}" for k, v in to_flat_dict(params).items()
                                    if k.split(".")[0] in ("seed", "backbone", "model", "cache", "train", "sweep")),
           "```", ""]
    md[3:3] = ["## Summary\n", readme_summary(summary), ""]
    summary = strict_json(summary)
    write_text(out_dir / "report.md", "\n".join(md))
    write_json(out_dir / "summary.json", summary, strict=True)
    return summary


def strict_json(obj):
    """``obj`` with every NaN or Infinity replaced by None (``null``: the figure does not exist),
    numpy scalars as Python numbers, tuples as lists: what strict JSON can hold."""
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _seeds_phrase(n: list[int]) -> str:
    a, b = n
    if a == b:
        return f"{a} seed{'s' if a != 1 else ''} each"
    return f"{a} and {b} seeds"


def gap_sentence(metric: str, other: str, gap: dict) -> str:
    """One sentence that says what a gap record supports, and no more."""
    mitp, name = KIND_NAMES[REFERENCE], KIND_NAMES.get(other, other)
    what = f"{mitp}'s {METRIC_NAMES.get(metric, metric.replace('_', ' '))}"
    seeds = _seeds_phrase(gap["n"])
    verdict = gap["verdict"]
    if gap["ci95"] is None:
        return (f"{what} minus that of {name} is {_pts(gap['mean'])} points, with too few seeds for an "
                f"interval ({seeds}): no verdict.")
    ci = f"95% CI {_ci(gap['ci95'])}, {seeds}"
    if verdict == f"{mitp} higher":
        return f"{what} is higher than that of {name} by {_pts(gap['mean'])} points ({ci})."
    if verdict == f"{mitp} lower":
        return f"{what} is lower than that of {name} by {_pts(-gap['mean'])} points ({ci})."
    return (f"{what} is not distinguishable from that of {name} (difference {_pts(gap['mean'])} points, "
            f"{ci}).")


def readme_summary(summary: dict) -> str:
    """The results block of README.md and report.md, rendered from ``summary.json``'s content
    alone: per dataset, each kind's mean ± sample std over seeds and n, MITP − kind with its 95%
    Welch interval and verdict, and one generated sentence per comparison."""
    out = ["Mean ± sample standard deviation (ddof = 1) over seeds; n = 1 shows the one run. "
           f"MITP − model: difference of the means in points, 95% CI by {ablation_stats.CI_METHOD}; "
           "the verdict is \"MITP higher\" or \"MITP lower\" when the interval excludes 0, "
           f"\"{ablation_stats.NOT_DISTINGUISHABLE}\" when it includes 0, "
           f"\"{ablation_stats.NO_INTERVAL}\" when a side has a single seed. "
           "Generated from `reports/summary.json` by `mitp.reporting.report.readme_summary`."]
    for ds, ds_sum in summary.items():
        kinds = [k for k in KINDS if isinstance(ds_sum.get(k), dict)]
        if not kinds:
            out += ["", f"**{ds}**: no training results."]
            continue
        gaps = {k: ds_sum[f"{REFERENCE}_minus_{k}"] for k in kinds
                if isinstance(ds_sum.get(f"{REFERENCE}_minus_{k}"), dict)}
        metric = next((g["metric"] for g in gaps.values()), DATASET_METRICS.get(ds, [("test_accuracy", "")])[0][0])
        label = METRIC_NAMES.get(metric, metric.replace("_", " "))
        rows = []
        for k in kinds:
            st = ds_sum[k]
            n = st.get("seeds", 0)
            row = [KIND_NAMES.get(k, k), _mean_std(st.get(f"{metric}_mean"), st.get(f"{metric}_std"), n), str(n)]
            if k == REFERENCE:
                row += ["(reference)", "", ""]
            elif k in gaps:
                g = gaps[k]
                row += [_pts(g["mean"]), _ci(g["ci95"]), g["verdict"]]
            else:
                row += ["-", "", ""]
            rows.append(row)
        out += ["", f"**{ds}**", "",
                md_table(["model", f"{label} (%)", "n", "MITP − model (points)", "95% CI", "verdict"], rows)]
        if gaps:
            out += ["", *(f"- {gap_sentence(metric, k, g)}" for k, g in gaps.items())]
        out += sweep_sentences(ds_sum.get("sweep") or {})
    return "\n".join(out)


def _plain(value):
    """A swept value as JSON holds it (numpy scalars become Python numbers)."""
    return value.item() if hasattr(value, "item") else value


def sweep_sentences(sweep: dict) -> list[str]:
    """One generated sentence per swept value compared with the configuration chosen on
    validation (``summary.json``'s ``sweep.ablations``)."""
    out = []
    for key, ab in (sweep.get("ablations") or {}).items():
        ref = next((r for r in ab["rows"] if r["reference"]), None)
        if ref is None:
            continue
        name = ABLATION_KEYS.get(key, key)
        where = (" (" + ", ".join(f"{k} = {v}" for k, v in ab["fixed"].items()) + ")") if ab.get("fixed") else \
            (" (other keys pooled)" if ab.get("pooled") else "")
        for r in ab["rows"]:
            if r["reference"]:
                continue
            ci = "no interval" if r["ci95"] is None else f"95% CI {_ci(r['ci95'])}"
            out.append(f"- Sweep, {name}{where}: {_mean_std(r['mean'], r['std'], r['n'])}% at {r['value']} "
                       f"({r['n']} seeds) against {_mean_std(ref['mean'], ref['std'], ref['n'])}% at the chosen "
                       f"{ref['value']} ({ref['n']} seeds): chosen − this {_pts(r['diff'])} points ({ci}), "
                       f"{r['verdict']}.")
    return [""] + out if out else []
