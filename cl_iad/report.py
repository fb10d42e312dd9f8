"""Aggregate many run directories into benchmark tables, plots and a static HTML report.

Rows are methods (model + strategy), columns are categories; each cell is mean ± std over the
task orders found for that method. Scores are taken at the end of the stream (last matrix row).
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

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
        settings = json.loads(cfg_path.read_text())["settings"]
        summary = json.loads(summary_path.read_text())
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


def _write_table(table: pd.DataFrame, stem: Path, caption: str) -> None:
    table.to_csv(stem.with_suffix(".csv"))
    stem.with_suffix(".md").write_text(f"**{caption}**\n\n" + to_markdown(table) + "\n")
    latex = table.to_latex(escape=True, caption=caption, label=f"tab:{stem.name}")
    stem.with_suffix(".tex").write_text(latex.replace("±", r"$\pm$"))


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
    path.write_text("\n".join(parts))
