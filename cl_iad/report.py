"""Aggregate many run directories into benchmark tables, plots and a static HTML report.

Rows are methods (model + strategy), columns are categories; each cell is mean ± std over the
task orders found for that method. Scores are taken at the end of the stream (last matrix row).

Two published layouts (:func:`make_layout_report`, ``cl-iad report --layout``) lay the same runs
out as the tables we compare with: ``seed``, the single-task MVTec AD table (models x categories
per metric, percent, optionally beside the published values), and ``continual``, final scores and
forgetting under both FM definitions per model, regime and protocol, beside the IM-IAD and CLAD
anchors. The published numbers ship in ``cl_iad/reference/`` (see its README for sources).
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .evaluation_extra import final_value

log = logging.getLogger(__name__)

TABLE_METRICS = ("image_auroc", "pixel_auroc", "pro")
SUMMARY_KEYS = ("acc", "bwt", "fm")
# Settings that change from one task order of a method to the next; rows average over these.
# `root` is where the data lives (a synthetic stream is generated per run), `metrics` which
# columns were asked for: neither changes what a cell means.
ORDER_KEYS = ("order", "tasks", "root", "metrics")
LABEL_HEAD = ("model", "preset", "regime")  # always shown at the start of a row label


@dataclass
class RunRecord:
    """One finished run as the report sees it."""

    run_dir: Path
    method: str
    order: str
    dataset: str
    task_aware: bool
    matrices: dict[str, pd.DataFrame]
    summary: dict
    settings: dict = field(default_factory=dict)


def find_runs(root: Path | str) -> list[RunRecord]:
    """Every finished run (config.json + summary.json) below `root`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"report: {root} is not a folder; pass the --out folder of a run or sweep")
    runs = []
    for summary_path in sorted(root.rglob("summary.json")):
        d = summary_path.parent
        cfg_path = d / "config.json"
        if not cfg_path.is_file():
            continue
        settings = json.loads(cfg_path.read_text(encoding="utf-8"))["settings"]
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        matrices = {m: pd.read_csv(d / f"matrix_{m}.csv", index_col=0) for m in summary
                    if (d / f"matrix_{m}.csv").is_file()}
        runs.append(RunRecord(d, "", str(settings.get("order", "?")), settings.get("dataset", "?"),
                              bool(settings.get("task_aware", False)), matrices, summary, settings))
    if not runs:
        raise FileNotFoundError(f"report: no finished run (summary.json) below {root}; pass the --out folder of "
                                "a finished run or sweep (runs still in progress have no summary.json yet)")
    for r, label in zip(runs, method_labels([r.settings for r in runs]), strict=True):
        r.method = label
    return runs


def _value(v: object) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)


def method_labels(settings: list[dict]) -> list[str]:
    """One row label per run: runs share a label only if every setting but the task order agrees.

    The label is ``model[_preset] + regime``, followed by each setting that differs between runs
    of that model, preset and regime (dataset, backbone, image size, model parameters, ...), so
    light and benchmark runs, or MVTec and VisA runs, are never averaged into one row.
    """
    heads = [f"{s.get('model', '?')}{'_' + s['preset'] if s.get('preset') else ''} + {s.get('regime', '?')}"
             for s in settings]
    labels = []
    for head, s in zip(heads, settings, strict=True):
        group = [o for h, o in zip(heads, settings, strict=True) if h == head]
        keys = sorted({k for o in group for k in o} - set(ORDER_KEYS) - set(LABEL_HEAD))
        tail = ", ".join(f"{k}={_value(s.get(k))}" for k in keys if len({_value(o.get(k)) for o in group}) > 1)
        labels.append(f"{head} [{tail}]" if tail else head)
    return labels


def _fmt(values: list[float]) -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return "nan"
    if v.size == 1:
        return f"{v[0]:.3f}"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def category_table(runs: list[RunRecord], metric: str) -> pd.DataFrame:
    """Methods x categories of `metric` at the end of the stream, mean ± std over orders."""
    per: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        if metric not in r.matrices:
            continue
        last = r.matrices[metric].iloc[-1]
        cell = per.setdefault(r.method, {})
        for cat, v in last.items():
            cell.setdefault(str(cat), []).append(float(v))
        cell.setdefault("mean", []).append(float(np.nanmean(last.to_numpy(dtype=float))))
    cats = sorted({c for m in per.values() for c in m if c != "mean"}) + ["mean"]
    table = pd.DataFrame({c: {m: _fmt(per[m].get(c, [])) for m in per} for c in cats})
    table.index.name = "method"
    return table


def summary_table(runs: list[RunRecord], metrics: tuple[str, ...] = TABLE_METRICS) -> pd.DataFrame:
    """Methods x (metric, ACC/BWT/FM), mean ± std over orders, with the number of orders."""
    rows: dict[str, dict[str, list[float]]] = {}
    orders: dict[str, set[str]] = {}
    aware: dict[str, bool] = {}
    for r in runs:
        row = rows.setdefault(r.method, {})
        orders.setdefault(r.method, set()).add(r.order)
        aware[r.method] = r.task_aware
        for m in metrics:
            for k in SUMMARY_KEYS:
                if m in r.summary:
                    row.setdefault(f"{m} {k.upper()}", []).append(r.summary[m][k])
    cols = [f"{m} {k.upper()}" for m in metrics for k in SUMMARY_KEYS]
    table = pd.DataFrame({c: {m: _fmt(rows[m].get(c, [])) for m in rows} for c in cols})
    table.insert(0, "orders", pd.Series({m: len(orders[m]) for m in rows}))
    table.insert(1, "task_aware", pd.Series(aware))
    table.index.name = "method"
    return table


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' own needs the optional 'tabulate' package)."""
    header = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for idx, row in table.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [str(v) for v in row]) + " |")
    return "\n".join(lines)


def _write_table(table: pd.DataFrame, stem: Path, caption: str, notes: Sequence[str] = ()) -> None:
    """`table` as STEM.csv, STEM.md and STEM.tex; `notes` go under the Markdown and LaTeX tables."""
    table.to_csv(stem.with_suffix(".csv"))
    md_notes = "".join(f"- {n}\n" for n in notes)
    stem.with_suffix(".md").write_text(f"**{caption}**\n\n" + to_markdown(table) + "\n" + (f"\n{md_notes}" if notes else ""), encoding="utf-8")
    # the index as the first column: one header row instead of pandas' two
    latex = table.reset_index().to_latex(index=False, escape=True, caption=caption, label=f"tab:{stem.name}")
    if notes:
        tex_notes = "\n".join(r"\par\footnotesize " + _latex_escape(n) for n in notes)
        latex = latex.replace("\\end{table}", tex_notes + "\n\\end{table}")
    stem.with_suffix(".tex").write_text(latex.replace("±", r"$\pm$"), encoding="utf-8")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def _latex_escape(text: str) -> str:
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIAL[m.group()], text)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_curves(runs: list[RunRecord], metric: str, path: Path) -> Path:
    """Mean score over tasks seen so far, after each step, per method; band = ± std over orders."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    by_method: dict[str, list[np.ndarray]] = {}
    for r in runs:
        if metric in r.matrices:
            R = r.matrices[metric].to_numpy(dtype=float)
            by_method.setdefault(r.method, []).append(np.array([np.nanmean(R[i, : i + 1]) for i in range(len(R))]))
    for method, curves in sorted(by_method.items()):
        t = min(len(c) for c in curves)
        arr = np.stack([c[:t] for c in curves])
        mean, std = arr.mean(0), arr.std(0)
        x = np.arange(1, t + 1)
        ax.plot(x, mean, marker="o", label=f"{method} ({len(curves)} orders)")
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("tasks trained")
    ax.set_ylabel(f"mean {metric} over seen tasks")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"forgetting curves ({metric}), band = ±1 std over orders")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def task_curves(runs: list[RunRecord], metric: str, method: str, path: Path) -> Path:
    """Each task's score against steps since it was learned, for one method; band = ± std over orders.

    Orders put a category at different positions, so the x axis is aligned on the step at which
    the category was trained (0 = right after learning it).
    """
    plt = _plt()
    series: dict[str, list[np.ndarray]] = {}
    for r in runs:
        if r.method != method or metric not in r.matrices:
            continue
        R = r.matrices[metric]
        for j, cat in enumerate(R.columns):
            series.setdefault(str(cat), []).append(R.iloc[j:, j].to_numpy(dtype=float))
    fig, ax = plt.subplots(figsize=(7, 4))
    for cat, curves in sorted(series.items()):
        t = max(len(c) for c in curves)
        arr = np.full((len(curves), t), np.nan)
        for k, c in enumerate(curves):
            arr[k, : len(c)] = c
        mean, std = np.nanmean(arr, 0), np.nan_to_num(np.nanstd(arr, 0))
        x = np.arange(t)
        ax.plot(x, mean, marker="o", label=cat)
        ax.fill_between(x, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("tasks trained since this task was learned")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_xticks(range(max((len(c) for v in series.values() for c in v), default=1)))
    ax.set_title(f"{method}: each task's {metric} over training steps (band over orders)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fm_bars(runs: list[RunRecord], metric: str, path: Path) -> Path:
    """Bar chart of mean forgetting per method, error bars over orders."""
    plt = _plt()
    vals: dict[str, list[float]] = {}
    for r in runs:
        fm = r.summary.get(metric, {}).get("fm")
        if fm is not None:
            vals.setdefault(r.method, []).append(fm)
    methods = sorted(vals)
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(methods) + 1), 4))
    means = [np.mean(vals[m]) for m in methods]
    stds = [np.std(vals[m]) for m in methods]
    ax.bar(range(len(methods)), means, yerr=stds, capsize=4, color="tab:red", alpha=0.7)
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set_ylabel(f"FM ({metric})")
    ax.set_title("average forgetting per method")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_report(root: Path | str, out: Path | str | None = None) -> Path:
    """Write tables (CSV, Markdown, LaTeX), plots and index.html for all runs below `root`."""
    from .plots import matrix_heatmap

    runs = find_runs(root)
    out = Path(out) if out else Path(root) / "report"
    (out / "plots").mkdir(parents=True, exist_ok=True)
    sections: list[tuple[str, pd.DataFrame]] = []
    metrics_present = [m for m in TABLE_METRICS if any(m in r.matrices for r in runs)]
    for m in metrics_present:
        t = category_table(runs, m)
        _write_table(t, out / f"table_{m}", f"{m} at the end of the stream (mean ± std over orders)")
        sections.append((f"{m} per category at the end of the stream", t))
    s = summary_table(runs, tuple(metrics_present))
    _write_table(s, out / "table_summary", "ACC, BWT and FM (mean ± std over orders)")
    sections.append(("ACC, BWT and FM", s))
    from .evaluation_extra import NOTES, methods_table

    c = methods_table(runs)
    _write_table(c, out / "table_methods", "Continual methods side by side (mean ± std over orders)", NOTES)
    sections.append(("Continual methods side by side", c))
    from .resources import resources_table

    cost = resources_table((r.method + (f" ({r.order})" if r.order else ""), r.run_dir) for r in runs)
    if not cost.empty:
        _write_table(cost, out / "table_resources", "Cost per run (resources.csv): time, peak memory, model size")
        sections.append(("Cost: time, peak memory, model size", cost))
    images = []
    for m in metrics_present:
        images.append(accuracy_curves(runs, m, out / "plots" / f"curves_{m}.png"))
        images.append(fm_bars(runs, m, out / "plots" / f"fm_{m}.png"))
    seen = set()
    for r in runs:  # per method: task curves, and a heatmap from its first order
        if r.method not in seen and "image_auroc" in r.matrices:
            seen.add(r.method)
            slug = r.method.replace(" + ", "_").replace(" ", "_")
            images.append(task_curves(runs, "image_auroc", r.method, out / "plots" / f"tasks_{slug}.png"))
            images.append(matrix_heatmap(r.matrices["image_auroc"], "image_auroc",
                                         out / "plots" / f"matrix_{slug}.png", f"{r.method} ({r.order})"))
    _write_html(out / "index.html", runs, sections, images)
    log.info("report written to %s", out)
    return out


def _write_html(path: Path, runs: list[RunRecord], sections, images: list[Path]) -> None:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>cl_iad report</title>",
             ("<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
              "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:48%;margin:4px}</style>"),
             "</head><body><h1>cl_iad report</h1>",
             (f"<p>{len(runs)} runs; datasets: {html.escape(', '.join(sorted({r.dataset for r in runs})))}. "
              "Cells are mean ± std over task orders. Task-aware methods (per_task) have zero forgetting by "
              "construction.</p>")]
    for title, table in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>{table.to_html()}")
    parts.append("<h2>Plots</h2>")
    parts += [f"<img src='plots/{p.name}' alt='{p.stem}'>" for p in images]
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")


# ---- published layouts: `cl-iad report --layout seed | continual` ---------------------------------
# Published model names of the seed's single-task MVTec AD table (cl_iad/reference/README.md), in its row order.
PUBLISHED_NAMES = {"cfa": "CFA", "cflow": "CFLOW", "csflow": "CSFLOW", "dfkde": "DFKDE", "dfm": "DFM",
                   "draem": "DRAEM", "dsr": "DSR", "fastflow": "FASTFLOW", "ganomaly": "GANomaly", "padim": "PaDiM",
                   "patchcore": "PatchCore", "reverse_distillation": "RD", "rkde": "RKDE", "stfpm": "STFPM",
                   "uflow": "UFLOW"}
# The published table's column order of MVTec AD's 15 categories.
SEED_CATEGORY_ORDER = ("screw", "pill", "capsule", "carpet", "grid", "tile", "wood", "zipper", "cable", "toothbrush",
                       "transistor", "metal_nut", "bottle", "hazelnut", "leather")
METRIC_TITLES = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pro": "PRO"}
LAYOUTS = ("default", "seed", "continual")
# The two forgetting averages the continual layout reports (cl_iad.metrics.average_forgetting definitions).
FM_DEFINITIONS = {"chaudhry": "Chaudhry: mean over T-1", "im-iad": "IM-IAD: sum / T"}
DASH = "-"
# The published continual protocols on MVTec AD, in the order the continual layout lists them.
PROTOCOL_ORDER = ("1x15", "14-1", "10-5", "3x5", "10-1x5", "1x10")


class LayoutError(UserError, ValueError):
    """The runs below a folder cannot fill the requested report layout."""


def reference_table(name: str) -> pd.DataFrame:
    """A CSV of published numbers shipped with the package (``cl_iad/reference/NAME``; see its README)."""
    from importlib.resources import files

    resource = files("cl_iad") / "reference" / name
    if not resource.is_file():
        raise FileNotFoundError(f"reference table {name} is missing from the installed package (cl_iad/reference/); "
                                "reinstall cl_iad")
    with resource.open("r", encoding="utf-8") as fh:
        return pd.read_csv(fh, keep_default_na=False, na_values=[""])


def _pct(value: float | None) -> str:
    """A score in [0, 1] as percent with two decimals; "-" where there is none."""
    return DASH if value is None or not np.isfinite(value) else f"{100 * value:.2f}"


def _pct_value(value: float | None) -> float:
    """The percent value that `_pct` shows (rounded), NaN where there is none."""
    return float("nan") if value is None or not np.isfinite(value) else round(100 * float(value), 2)


def _n_tasks(run: RunRecord) -> int:
    return len(run.settings.get("tasks") or next(iter(run.matrices.values()), pd.DataFrame()).columns)


def _published_name(model: str) -> str:
    return PUBLISHED_NAMES.get(model, model)


def _display_name(run: RunRecord) -> str:
    """The published model name, then the preset unless it is 'benchmark', then any other setting that
    tells this run's row from another of the same model, preset and regime (its method label's tail)."""
    name = _published_name(run.settings.get("model", "?"))
    preset = run.settings.get("preset")
    tail = run.method.partition(" [")[2].removesuffix("]")
    return name + (f" ({preset})" if preset and preset != "benchmark" else "") + (f" [{tail}]" if tail else "")


def _model_rank(model: str) -> tuple[int, str]:
    names = list(PUBLISHED_NAMES)
    return (names.index(model) if model in names else len(names), model)


def seed_runs(runs: list[RunRecord]) -> list[RunRecord]:
    """The 1-task runs of one category each (the single-task table's cells), labelled among themselves."""
    single = [r for r in runs if _n_tasks(r) == 1 and "+" not in str((r.settings.get("tasks") or ["+"])[0])]
    if not single:
        raise LayoutError("report --layout seed needs 1-task runs of one category each (a sweep with "
                          "per_category: true, e.g. experiments/configs/seed_mvtec.yaml); none found")
    for r, label in zip(single, method_labels([r.settings for r in single]), strict=True):
        r.method = label
    return single


def seed_long_table(runs: list[RunRecord], metrics: tuple[str, ...] = TABLE_METRICS) -> pd.DataFrame:
    """One row per model row, category and metric: ours, published and ours - published, in percent.

    Our values are rounded to the two decimals shown before the difference is taken, so each shown
    difference is the difference of the shown numbers.
    """
    ref = reference_table("seed_mvtec_single_task.csv")
    published = {(m, c, k): v for m, c, k, v in ref[["model", "category", "metric", "value_percent"]].itertuples(
        index=False)}
    cells: dict[tuple, list[float]] = {}
    info: dict[str, tuple[str, str, str | None]] = {}
    for r in runs:
        model, row = r.settings.get("model", "?"), _display_name(r)
        info[row] = (model, _published_name(model), r.settings.get("preset"))
        for metric in metrics:
            cells.setdefault((row, str(r.settings["tasks"][0]), metric), []).append(final_value(r, metric))
    rows = []
    for (row, category, metric), values in cells.items():
        finite = [v for v in values if np.isfinite(v)]
        ours_pct = _pct_value(float(np.mean(finite))) if finite else float("nan")
        model, pub_name, preset = info[row]
        pub = published.get((pub_name, category, metric), float("nan"))
        rows.append({"model": row, "cl_iad_model": model, "preset": preset, "category": category, "metric": metric,
                     "runs": len(values), "ours_percent": ours_pct, "published_percent": pub,
                     "difference": round(ours_pct - pub, 2) if np.isfinite(ours_pct) and np.isfinite(pub)
                     else float("nan")})
    long = pd.DataFrame(rows)
    order = {c: i for i, c in enumerate(SEED_CATEGORY_ORDER)}
    long["_m"] = [_model_rank(m) for m in long["cl_iad_model"]]
    long["_c"] = [(order.get(c, len(order)), c) for c in long["category"]]
    long = long.sort_values(["_m", "model", "_c", "metric"]).drop(columns=["_m", "_c"]).reset_index(drop=True)
    return long


def _num(value: float, signed: bool = False) -> str:
    value = float(value) + 0.0  # no "-0.00"
    return DASH if not np.isfinite(value) else (f"{value:+.2f}" if signed else f"{value:.2f}")


def seed_table(long: pd.DataFrame, metric: str, reference: bool = False) -> pd.DataFrame:
    """Models x categories (published order) of one metric, in percent, and their mean.

    With `reference`, three rows per model: ours, the published value and ours - published. The
    mean is over the categories shown where ours is defined; its published counterpart is the mean
    of the published values of the same categories ("-" when one of them is missing).
    """
    part = long[long.metric == metric]
    models = list(dict.fromkeys(part.model))
    categories = list(dict.fromkeys(part.category))
    rows = []
    for model in models:
        m = part[part.model == model].set_index("category")
        ours = {c: m.ours_percent.get(c, float("nan")) for c in categories}
        pub = {c: m.published_percent.get(c, float("nan")) for c in categories}
        have = [c for c in categories if np.isfinite(ours[c])]
        ours["mean"] = round(float(np.mean([ours[c] for c in have])), 2) if have else float("nan")
        pub["mean"] = (round(float(np.mean([pub[c] for c in have])), 2)
                       if have and all(np.isfinite(pub[c]) for c in have) else float("nan"))
        diff = {c: round(ours[c] - pub[c], 2) if np.isfinite(ours[c]) and np.isfinite(pub[c]) else float("nan")
                for c in ours}
        if not reference:
            rows.append({"model": model, **{c: _num(v) for c, v in ours.items()}})
            continue
        for kind, values, signed in (("ours", ours, False), ("published", pub, False), ("ours - published", diff, True)):
            rows.append({"model": model, "value": kind, **{c: _num(v, signed) for c, v in values.items()}})
    return pd.DataFrame(rows).set_index("model")


def _seed_notes(long: pd.DataFrame, reference: bool) -> list[str]:
    notes = [("Percent, two decimals; each cell is one run of a 1-task stream (train on the category's normal images, "
             "test on its test set). \"-\": the model gives no such output (no anomaly map) or the run lacks it.")]
    off = sorted({m for m, p in zip(long.model, long.preset, strict=True) if p != "benchmark"})
    if off:
        notes.append("Not at the published settings (preset other than 'benchmark'): " + ", ".join(off) + ".")
    several = sorted(set(long.model[long.runs > 1]))
    if several:
        notes.append("Cells averaged over several runs: " + ", ".join(several) + ".")
    if reference:
        notes.append("Published: the seed's single-task MVTec AD table (cl_iad/reference/seed_mvtec_single_task.csv, "
                     "source in cl_iad/reference/README.md). The difference is ours - published, in percentage points.")
    return notes


# ---- the continual layout ---------------------------------------------------------------------------
def protocol_of(settings: dict) -> str:
    """The stream's protocol: its group (``14-1``, ``10-5``, ...), or ``1xT`` for T one-category tasks."""
    if settings.get("group"):
        return str(settings["group"])
    tasks = [str(t) for t in settings.get("tasks") or []]
    return f"1x{len(tasks)}" if all("+" not in t for t in tasks) else f"{len(tasks)} tasks"


def _protocol_rank(protocol: str) -> tuple[int, str]:
    return (PROTOCOL_ORDER.index(protocol) if protocol in PROTOCOL_ORDER else len(PROTOCOL_ORDER), protocol)


def continual_runs(runs: list[RunRecord]) -> list[RunRecord]:
    """The runs of two tasks or more, labelled among themselves without their protocol (it has a column)."""
    multi = [r for r in runs if _n_tasks(r) >= 2]
    if not multi:
        raise LayoutError("report --layout continual needs runs of two tasks or more (e.g. a sweep of "
                          "experiments/configs/continual_mvtec.yaml); none found")
    labels = method_labels([{k: v for k, v in r.settings.items() if k != "group"} for r in multi])
    for r, label in zip(multi, labels, strict=True):
        r.method = label
    return multi


def _continual_reference(settings: dict, protocol: str) -> tuple[str, dict[str, tuple[float, str]]]:
    """(source, metric -> (published percent, FM definition)) of the published anchor this run matches."""
    ref = reference_table("continual_mvtec_anchors.csv").fillna("")
    hit = ref[(ref.cl_iad_model == settings.get("model")) & (ref.cl_iad_regime == settings.get("regime"))
              & (ref.protocol == protocol) & ((ref.order == "") | (ref.order == str(settings.get("order"))))]
    if settings.get("dataset") != "mvtec" or hit.empty:
        return "", {}
    source = str(hit.source.iloc[0])
    hit = hit[hit.source == source]
    return source, {m: (float(v), d) for m, v, d in hit[["metric", "value_percent", "fm_definition"]].itertuples(
        index=False)}


def _beside(ours: float, published: float | None) -> str:
    """Ours in percent, with "(published, ours - published)" when a published value exists."""
    text = _num(ours)
    if published is None or not np.isfinite(published):
        return text
    diff = _num(round(ours - published, 2), signed=True) if np.isfinite(ours) else DASH
    return f"{text} ({published:.2f}, {diff})"


def continual_table(runs: list[RunRecord], metrics: tuple[str, ...] = TABLE_METRICS) -> tuple[pd.DataFrame, list[str]]:
    """Per model, regime, protocol and order: final scores and FM under both definitions (two rows),
    with published IM-IAD / CLAD values beside ours where they exist; and the notes under the table."""
    from . import metrics as M

    groups: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        key = (r.method, protocol_of(r.settings), str(r.settings.get("order", "?")))
        groups.setdefault(key, []).append(r)
    rows, notes_fm, aware, several = [], [], set(), []
    for (label, protocol, order), group in sorted(groups.items(), key=lambda kv: (
            _model_rank(kv[1][0].settings.get("model", "?")), kv[0][0], _protocol_rank(kv[0][1]), kv[0][2])):
        s, name = group[0].settings, _display_name(group[0])
        source, ref = _continual_reference(s, protocol)
        per_run = {m: np.array([final_value(r, m) for r in group]) for m in metrics}
        finals = {m: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for m, v in per_run.items()}
        regime = str(s.get("regime", "?")) + (" (task-aware)" if group[0].task_aware else "")
        if group[0].task_aware:
            aware.add(f"{name} {regime}")
        if len(group) > 1:
            several.append(f"{name} {regime} {protocol} ({len(group)} runs)")
        if "fm" in ref:
            notes_fm.append(f"{source} reports an average forgetting of {ref['fm'][0]:.2f} % for {name} "
                            f"{s.get('regime')} (its metric and definition are not recorded in our reference notes).")
        for definition, title in FM_DEFINITIONS.items():
            row = {"model": name, "regime": regime, "protocol": protocol, "order": order,
                   "tasks": _n_tasks(group[0]), "FM definition": title}
            for m in metrics:
                pub = ref.get(m, (None, ""))[0]
                row[METRIC_TITLES.get(m, m)] = _beside(_pct_value(finals[m]), pub)
            for m in metrics:
                fms = [M.average_forgetting(r.matrices[m], definition) for r in group if m in r.matrices]
                fm = float(np.nanmean(fms)) if any(np.isfinite(v) for v in fms) else float("nan")
                pub, pub_def = ref.get(f"fm_{m}", (None, ""))
                row[f"FM {METRIC_TITLES.get(m, m)}"] = _beside(_pct_value(fm), pub if pub_def == definition else None)
            row["published"] = source or DASH
            rows.append(row)
    table = pd.DataFrame(rows).set_index("model")
    notes = [
        ("Percent, two decimals. Scores are the mean over tasks of the last matrix row (after the last task); a task "
        "of several categories (14-1, 10-5, ...) is scored on its categories' test sets pooled."),
        ("FM (cl_iad.metrics.average_forgetting): per old task j, the largest earlier score minus the final one; "
        "'Chaudhry: mean over T-1' averages over the T-1 old tasks (Chaudhry et al., ECCV 2018; our default); "
        "'IM-IAD: sum / T' divides the same sum by T, counting the newest task as 0 (IM-IAD, arXiv 2301.13359)."),
        ("Published values, where a run matches a published anchor (model, regime, protocol, order; "
        "cl_iad/reference/continual_mvtec_anchors.csv): cells read 'ours (published, ours - published)'. IM-IAD "
        "(arXiv 2301.13359): 15 tasks alphabetical, sequential training, compared with naive; its FM beside the "
        "IM-IAD row only. CLAD (arXiv 2403.15463): 10 one-category tasks."),
    ]
    if any(r.settings.get("model") == "patchcore" and r.settings.get("regime") == "naive" for r in runs):
        notes.append("IM-IAD's PatchCore keeps earlier tasks in its memory bank (FM 0.3 %); our naive PatchCore "
                     "replaces it with each task's, so a large gap to IM-IAD is expected there.")
    if aware:
        notes.append("Task-aware (task id given at test time, one model per task): FM is zero by construction for "
                     + ", ".join(sorted(aware)) + ".")
    if several:
        notes.append("Averaged over several runs: " + "; ".join(several) + ".")
    return table, notes + notes_fm


# ---- writing ------------------------------------------------------------------------------------
def make_layout_report(root: Path | str, layout: str, out: Path | str | None = None,
                       reference: bool = False) -> tuple[Path, list[Path]]:
    """Write the published `layout` ("seed" or "continual") of the runs below `root` as CSV, Markdown
    and LaTeX; return the folder and the Markdown files (in print order).

    seed: one table per metric (``seed_<metric>``), models x categories in percent, and
    ``seed_long.csv`` (every number, ours, published and the difference). continual: ``continual``.
    """
    if layout not in ("seed", "continual"):
        raise ValueError(f"layout must be 'seed' or 'continual', got {layout!r}")
    runs = find_runs(root)
    out = Path(out) if out else Path(root) / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if layout == "seed":
        long = seed_long_table(seed_runs(runs))
        long.to_csv(out / "seed_long.csv", index=False)
        notes = _seed_notes(long, reference)
        for m in TABLE_METRICS:
            if (long.metric == m).any():
                stem = out / f"seed_{m}"
                caption = f"MVTec AD, single task: {METRIC_TITLES[m]} (%)" + (
                    ", ours beside the published value" if reference else "")
                _write_table(seed_table(long, m, reference), stem, caption, notes)
                written.append(stem.with_suffix(".md"))
    else:
        table, notes = continual_table(continual_runs(runs))
        stem = out / "continual"
        _write_table(table, stem, "Continual MVTec AD: final scores and forgetting (%), per model, regime and protocol",
                     notes)
        written.append(stem.with_suffix(".md"))
    log.info("%s layout written to %s", layout, out)
    return out, written
