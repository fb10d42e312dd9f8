"""Mixed-task evaluation: after each step, every seen task's test images scored together as one set.

The per-task mean of AUROC (the matrix row's mean) ranks each task's images among themselves, so
it never sees that one task's normal images may score higher than another task's anomalies. A
deployed model without a task id meets the union of the tasks' images, with one threshold. This
recorder measures that: after training task i it pools the predictions of the test sets of tasks
0..i and computes the image AUROC (and, where every seen task has anomaly maps and masks, the
pixel AUROC) of the pooled set, next to the mean of the per-task values.

Pixels: every image contributes at most ``pixels_per_image`` pixels, drawn without replacement by a
generator seeded per task and image, so the pooled pixel set keeps each task's weight in the
union, is the same at every step, and stays small (the exact per-task pixel AUROC is in the
matrix). For a routing method the row also gives the share of the pooled images sent to their
own task.

``RUN_DIR/mixed.csv`` (rewritten whole, atomically, at each row end; one line per step):

======================  ======================================================================
trained_upto            the step i (tasks 0..i trained)
trained_task            the name of task i
tasks_seen              i + 1
n_images                images in the pooled test set
mixed_image_auroc       image AUROC of the pooled set
mean_image_auroc        mean over the seen tasks of their own image AUROC (cells.csv)
mixed_pixel_auroc       pixel AUROC of the pooled pixel sample; NaN without maps or masks
mean_pixel_auroc        mean over the seen tasks of their own pixel AUROC (cells.csv)
pixels                  pixels in the pooled sample
routing_accuracy        share of pooled images routed to their own task; NaN without routing
======================  ======================================================================
"""

from __future__ import annotations

import csv
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import metrics as M
from .recorders import Cell, Recorder, RunContext, RunResult
from .results import atomic_write_text

log = logging.getLogger(__name__)

FILENAME = "mixed.csv"
COLUMNS = ("trained_upto", "trained_task", "tasks_seen", "n_images", "mixed_image_auroc", "mean_image_auroc",
           "mixed_pixel_auroc", "mean_pixel_auroc", "pixels", "routing_accuracy")


@dataclass
class TaskSample:
    """One seen task's part of the pooled set: image scores and labels, a pixel sample, routed ids."""

    task_id: int
    scores: np.ndarray
    labels: np.ndarray
    pixels: np.ndarray | None  # sampled anomaly-map values; None without maps or pixel ground truth
    pixel_gt: np.ndarray | None
    routed: np.ndarray | None


def sample_pixels(maps: np.ndarray, masks: np.ndarray, per_image: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `per_image` pixels of each image (all of them when it has fewer), the same ones for a given seed."""
    n = len(maps)
    flat_m, flat_g = maps.reshape(n, -1), masks.reshape(n, -1)
    if flat_m.shape[1] <= per_image:
        return flat_m.ravel().copy(), flat_g.ravel().astype(bool)
    rng = np.random.default_rng(seed)
    picks = np.stack([rng.choice(flat_m.shape[1], per_image, replace=False) for _ in range(n)])
    rows = np.arange(n)[:, None]
    return flat_m[rows, picks].ravel(), flat_g[rows, picks].ravel().astype(bool)


def task_sample(task_id: int, pred, labels: np.ndarray, masks: np.ndarray, has_pixel_gt: bool,
                per_image: int, seed: int = 0) -> TaskSample:
    """What a task contributes to the pooled set, from its predictions and ground truth."""
    pixels = gt = None
    if pred.anomaly_map is not None and has_pixel_gt:
        pixels, gt = sample_pixels(pred.anomaly_map, masks, per_image, seed * 100_003 + task_id)
    routed = None if pred.routed_task is None else np.asarray(pred.routed_task)
    return TaskSample(task_id, np.asarray(pred.pred_score, dtype=np.float64), np.asarray(labels), pixels, gt, routed)


def pooled_scores(parts: list[TaskSample]) -> dict[str, float]:
    """Mixed image AUROC, pixel AUROC (NaN unless every part has pixels) and routing accuracy of pooled parts."""
    scores = np.concatenate([p.scores for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    out = {"n_images": len(scores), "mixed_image_auroc": _quiet_auroc(scores, labels),
           "mixed_pixel_auroc": float("nan"), "pixels": 0, "routing_accuracy": float("nan")}
    if all(p.pixels is not None for p in parts):
        pix = np.concatenate([p.pixels for p in parts])
        gt = np.concatenate([p.pixel_gt for p in parts])
        out["pixels"] = len(pix)
        out["mixed_pixel_auroc"] = _quiet_auroc(pix, gt)  # AUROC of pixel scores against pixel labels
    if all(p.routed is not None for p in parts):
        out["routing_accuracy"] = float(np.mean(np.concatenate([p.routed == p.task_id for p in parts])))
    return out


def _quiet_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUROC of scores against 0/1 labels; NaN (never an exception) where it is undefined or cannot be computed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined (one class only): NaN, said once by the per-task cells
        try:
            return float(M.image_auroc(scores, labels))
        except ValueError as exc:  # e.g. non-finite scores: the mixed row says NaN, the run goes on
            log.warning("mixed-task AUROC left empty: %s", exc)
            return float("nan")


class MixedTaskEvaluation(Recorder):
    """Writes ``RUN_DIR/mixed.csv``: per step, AUROC of all seen tasks' test sets scored together."""

    writes = "mixed.csv, the mixed-task evaluation"

    def __init__(self, pixels_per_image: int = 4096) -> None:
        if pixels_per_image < 1:
            raise ValueError(f"pixels_per_image must be >= 1, got {pixels_per_image}")
        self.pixels_per_image = pixels_per_image
        self.parts: dict[int, TaskSample] = {}

    def on_cell(self, ctx: RunContext, cell: Cell) -> None:
        if cell.j <= cell.i:
            self.parts[cell.j] = task_sample(cell.evaluated.task_id, cell.pred, cell.labels, cell.masks,
                                             cell.evaluated.test.has_pixel_gt, self.pixels_per_image, ctx.strategy.seed)

    def on_row_end(self, ctx: RunContext, i: int, row: dict[str, float]) -> None:
        path = ctx.run_dir / FILENAME
        rows = read_mixed(path)
        if i in rows and not self.parts:
            return  # a finished row of a resumed run
        if i < ctx.resumed:
            # the strategy holds the state after a later task: this row's missing predictions cannot be made
            log.warning("mixed.csv: step %d was not evaluated before the restart and the checkpoint is of step %d; "
                        "its mixed-task row is left out", i, ctx.resumed)
            self.parts = {}
            return
        self._predict_missing(ctx, i)
        parts = [self.parts[j] for j in range(i + 1)]
        self.parts = {}
        rows[i] = {"trained_upto": i, "trained_task": ctx.names[i], "tasks_seen": i + 1, **pooled_scores(parts),
                   **self._per_task_means(ctx, i)}
        write_mixed(path, rows)

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        rows = read_mixed(ctx.run_dir / FILENAME)
        if rows:
            last = rows[max(rows)]
            log.info("mixed-task evaluation after %s: image AUROC %.3f pooled vs %.3f per-task mean",
                     last["trained_task"], last["mixed_image_auroc"], last["mean_image_auroc"])

    def _predict_missing(self, ctx: RunContext, i: int) -> None:
        """Predict the seen tasks whose cells were evaluated by a stopped process (a resumed run)."""
        for j in (j for j in range(i + 1) if j not in self.parts):
            test = ctx.scenario[j].test
            pred = ctx.strategy.predict(test, task_id=j if ctx.strategy.task_aware else None)
            labels, masks = ctx.truth(j)
            self.parts[j] = task_sample(ctx.scenario[j].task_id, pred, labels, masks, test.has_pixel_gt,
                                        self.pixels_per_image, ctx.strategy.seed)

    @staticmethod
    def _per_task_means(ctx: RunContext, i: int) -> dict[str, float]:
        cells = ctx.store.cells()
        seen = set(ctx.names[: i + 1])
        sub = cells[(cells["trained_upto"] == i) & cells["eval_task"].isin(seen)]
        out = {}
        for metric in ("image_auroc", "pixel_auroc"):
            values = sub.loc[sub["metric"] == metric, "value"].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            out[f"mean_{metric}"] = float(values.mean()) if values.size else float("nan")
        return out


def read_mixed(path: Path | str) -> dict[int, dict]:
    """The rows of a mixed.csv by step (empty if there is none)."""
    path = Path(path)
    if not path.is_file():
        return {}
    out = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            row = {k: (v if k == "trained_task" else float(v) if v not in ("", "nan") else float("nan"))
                   for k, v in rec.items() if k in COLUMNS}
            for k in ("trained_upto", "tasks_seen", "n_images", "pixels"):
                row[k] = int(row[k])
            out[row["trained_upto"]] = row
    return out


def write_mixed(path: Path, rows: dict[int, dict]) -> None:
    """Write the rows (by step) to mixed.csv atomically, in step order."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for i in sorted(rows):
        writer.writerow({k: _fmt(rows[i].get(k)) for k in COLUMNS})
    atomic_write_text(path, buf.getvalue(), "mixed.csv, the mixed-task evaluation")


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if not np.isfinite(value) else repr(value)
    return str(value)


def final_mixed(run_dir: Path | str) -> dict | None:
    """The last step's row of a run's mixed.csv (for reports), or None when the run has none."""
    rows = read_mixed(Path(run_dir) / FILENAME)
    return rows[max(rows)] if rows else None
