"""Result storage: one row per cell, appended durably, and the tables derived from the cells.

``cells.csv`` is the single source of truth; matrices and the summary are pure functions of
it, so they can always be rebuilt from a (possibly interrupted) run directory.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics as M

log = logging.getLogger(__name__)
CELL_COLUMNS = ("trained_upto", "trained_task", "eval_task", "metric", "value")
METRICS = ("image_auroc", "pixel_auroc", "pro", "image_aupr", "pixel_aupr")


class ResultStore:
    """Appends cells to ``run_dir/cells.csv``; each row is flushed and fsynced before returning.

    A row is written with one ``write`` call of a complete line, so a crash leaves at most a
    truncated last line, which :meth:`cells` drops.
    """

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "cells.csv"

    def cells(self) -> pd.DataFrame:
        """All complete cells written so far (an empty frame if none)."""
        if not self.path.exists():
            return pd.DataFrame(columns=list(CELL_COLUMNS))
        rows = []
        with self.path.open(newline="") as fh:
            for row in csv.reader(fh):
                if row == list(CELL_COLUMNS) or len(row) != len(CELL_COLUMNS):
                    continue
                try:
                    rows.append((int(row[0]), row[1], row[2], row[3], float(row[4])))
                except ValueError:
                    continue  # a truncated last line from a crash
        return pd.DataFrame(rows, columns=list(CELL_COLUMNS))

    def append(self, rows: Iterable[tuple[int, str, str, str, float]]) -> None:
        """Durably append cells (trained_upto, trained_task, eval_task, metric, value)."""
        new = not self.path.exists()
        if not new:
            self._repair_tail()
        buf = []
        if new:
            buf.append(",".join(CELL_COLUMNS) + "\n")
        for r in rows:
            buf.append(f"{int(r[0])},{_csv(r[1])},{_csv(r[2])},{r[3]},{float(r[4])!r}\n")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as fh:
            fh.write("".join(buf))
            fh.flush()
            os.fsync(fh.fileno())

    def _repair_tail(self) -> None:
        """Cut a partial last line left by a crash, so appends start on a fresh line."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)


def _csv(text: str) -> str:
    if any(c in text for c in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def matrix(cells: pd.DataFrame, metric: str, task_names: Sequence[str]) -> pd.DataFrame:
    """The T x T matrix of `metric`: rows 'after training <task>', columns evaluated task."""
    m = pd.DataFrame(np.nan, index=list(task_names), columns=list(task_names))
    sub = cells[cells["metric"] == metric]
    for row in sub.itertuples(index=False):
        m.loc[task_names[row.trained_upto], row.eval_task] = row.value
    m.index.name = "trained_upto"
    return m


def chance_baseline(metric: str, labels: np.ndarray, masks: np.ndarray) -> float:
    """Expected score of a detector that ranks at random: the FWT baseline b_j of a task.

    AUROC is 0.5; PRO is 0.15 (a random ranking gives PRO = FPR, whose normalised area up to
    0.3 is 0.15); AUPR is the prevalence of the positive class.
    """
    if metric in ("image_auroc", "pixel_auroc"):
        return 0.5
    if metric == "pro":
        return 0.15
    if metric == "image_aupr":
        return float(np.mean(labels)) if len(labels) else float("nan")
    if metric == "pixel_aupr":
        return float(np.mean(masks)) if masks.size else float("nan")
    raise ValueError(f"no chance baseline for metric {metric!r}")


def summarise(R: pd.DataFrame, task_aware: bool, definition: str = "chaudhry",
              baseline: float | Sequence[float] = 0.5) -> dict:
    """ACC, BWT, FWT and forgetting of one matrix, as the summary.json entry for one metric.

    ``skipped_tasks`` names the tasks whose every cell is NaN (the metric is undefined on them,
    e.g. a test set without anomalous images); the measures are means over the other tasks.
    """
    fm = M.forgetting(R, definition)
    names = list(R.columns)
    return {
        "skipped_tasks": skipped_tasks(R),
        "acc": _num(M.average_accuracy(R)),
        "bwt": _num(M.backward_transfer(R)),
        "fwt": _num(M.forward_transfer(R, baseline=np.asarray(baseline, dtype=float))),
        "fm": _num(M.average_forgetting(R, definition)),
        "fm_per_task": {names[j]: _num(v) for j, v in enumerate(fm)},
        "forgetting_definition": definition,
        "task_aware": task_aware,
    }


def skipped_tasks(R: pd.DataFrame) -> list[str]:
    """Tasks (columns of `R`) with no finite cell: every measure of the matrix leaves them out."""
    return [str(name) for name in R.columns if not np.isfinite(R[name].to_numpy(dtype=float)).any()]


def _num(x: float) -> float | None:
    """JSON has no NaN: missing values are written as null."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def write_tables(run_dir: Path, cells: pd.DataFrame, task_names: Sequence[str], metrics: Sequence[str],
                 task_aware: bool, baselines: dict[str, Sequence[float]] | None = None) -> dict:
    """Write matrix_<metric>.csv and summary.json from the cells; return the summary.

    `baselines` gives, per metric, the chance score of each task for FWT (default 0.5). Tasks a
    metric is undefined on are listed in ``skipped_tasks`` and named in one warning.
    """
    summary = {}
    skipped: dict[str, list[str]] = {}
    for metric in metrics:
        R = matrix(cells, metric, task_names)
        R.to_csv(run_dir / f"matrix_{metric}.csv")
        with _quiet_if_only_skipped(R):
            summary[metric] = summarise(R, task_aware, baseline=(baselines or {}).get(metric, 0.5))
        if 0 < len(summary[metric]["skipped_tasks"]) < len(R.columns):
            skipped[metric] = summary[metric]["skipped_tasks"]
    for tasks in sorted({tuple(t) for t in skipped.values()}):
        log.warning("summaries of %s leave out task(s) %s: the metric is undefined (NaN) in every cell of them; "
                    "see 'skipped_tasks' in summary.json", ", ".join(m for m, t in skipped.items() if tuple(t) == tasks),
                    ", ".join(tasks))
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


@contextmanager
def _quiet_if_only_skipped(R: pd.DataFrame) -> Iterator[None]:
    """Hush the per-measure "skipping NaN cells" warnings when every NaN cell of `R` lies in a skipped
    task: the one warning of :func:`write_tables` says it, instead of one line per measure."""
    values = R.drop(columns=skipped_tasks(R)).to_numpy(dtype=float)
    if not skipped_tasks(R) or not np.isfinite(values).all():
        yield
        return
    continual = logging.getLogger(M.continual.__name__)
    def hush(record: logging.LogRecord) -> bool:
        return False

    continual.addFilter(hush)
    try:
        yield
    finally:
        continual.removeFilter(hush)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
