"""Recorders: what the loop of :func:`cl_iad.runner.run` hands its results to.

Each recorder is a small class that overrides the hooks it needs (Lightning-callback style);
the loop calls them and knows none of their details. Hooks of one run come in this order::

    on_run_start(ctx)                      once, before any task is fitted
    for each task i:
        on_task_start(ctx, i, task)        right before task i is fitted (not for tasks restored from a checkpoint)
        on_task_fitted(ctx, i, task)       right after task i is fitted (not for tasks restored from a checkpoint)
        on_cell(ctx, cell)                 for each cell (i, j) evaluated now, BEFORE it is appended to cells.csv
        on_row_end(ctx, i, row)            after row i; `row` maps "metric/task" to the values evaluated now
    on_run_end(ctx, result)                once every row is done; recorders fill `result` in list order
    close()                                always, also after an error

A recorder that raises in ``on_cell`` leaves its cell out of cells.csv, so a restart computes
the cell (and the recorder's extras) again: a cell in cells.csv always has its extras. A full or
read-only disk met in a hook becomes a :class:`~cl_iad.errors.WriteError` naming the file and the
recorder's ``writes``.
Recorders are called in list order; :func:`builtin_recorders` gives the built-in list, and
``run(..., recorders=[...])`` appends yours after it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .checkpoint import Checkpointer
from .errors import disk_errors
from .results import METRICS, ResultStore, atomic_write_text, chance_baseline, matrix, whole_appends, write_tables
from .scenarios.base import Scenario, Task

if TYPE_CHECKING:
    from .strategies.base import Predictions, Strategy
    from .wandb_log import WandbRun

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """Where a run wrote its files, and its matrices and summary."""

    run_dir: Path
    matrices: dict[str, pd.DataFrame]
    summary: dict
    plots: list[Path]
    wandb_dir: Path | None = None


@dataclass
class RunContext:
    """What every hook may read about the run in progress.

    `done` holds the (trained_upto, eval_task, metric) cells found in cells.csv when the run
    started; `resumed` is the last task whose fitted state was restored from a checkpoint (-1:
    none; set by :class:`Checkpoints`); `logged` holds the undefined-metric reasons already logged.
    """

    run_dir: Path
    name: str
    settings: dict
    metrics: list[str]
    strategy: Strategy
    scenario: Scenario
    store: ResultStore
    done: set[tuple[int, str, str]] = field(default_factory=set)
    resumed: int = -1
    logged: set[str] = field(default_factory=set)
    _truth: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def names(self) -> list[str]:
        """The task names, in stream order."""
        return self.scenario.names

    @property
    def n_tasks(self) -> int:
        return len(self.scenario)

    def truth(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Image labels and pixel masks of task `j`'s test set (read once per run)."""
        if j not in self._truth:
            test = self.scenario[j].test
            self._truth[j] = (test.labels, test.masks())
        return self._truth[j]

    def complete_rows(self) -> set[int]:
        """Rows whose every cell and metric was already in cells.csv at the start."""
        names = self.names
        return {i for i in range(len(names))
                if all((i, n, m) in self.done for n in names for m in self.metrics)}


@dataclass
class Cell:
    """Cell (i, j): the strategy after training tasks 0..i (`trained` is task i) scored on task j's test set.

    `values` holds the metrics computed now (those missing from cells.csv), as metric -> value.
    """

    i: int
    j: int
    trained: Task
    evaluated: Task
    pred: Predictions
    labels: np.ndarray
    masks: np.ndarray
    values: dict[str, float]

    def rows(self) -> list[tuple[int, str, str, str, float]]:
        """The cell as cells.csv rows (trained_upto, trained_task, eval_task, metric, value)."""
        return [(self.i, self.trained.name, self.evaluated.name, m, v) for m, v in self.values.items()]


class Recorder:
    """Base class of recorders: every hook does nothing; override the ones you need (order: module docstring).

    `writes` says what the recorder writes, for the message of a full or read-only disk.
    """

    writes: str = ""

    def on_run_start(self, ctx: RunContext) -> None:
        """Before any task is fitted; the run directory and config.json exist."""

    def on_task_start(self, ctx: RunContext, i: int, task: Task) -> None:
        """Task `i` is about to be fitted."""

    def on_task_fitted(self, ctx: RunContext, i: int, task: Task) -> None:
        """Task `i` was just fitted; its row is not evaluated yet."""

    def on_cell(self, ctx: RunContext, cell: Cell) -> None:
        """A cell was evaluated; it is appended to cells.csv after every recorder returns."""

    def on_row_end(self, ctx: RunContext, i: int, row: dict[str, float]) -> None:
        """Row `i` is complete; `row` maps "metric/eval_task" to the values evaluated in this process."""

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        """Every row is complete; add what you derive to `result` (later recorders see it)."""

    def close(self) -> None:
        """Release resources; called once, also when the run failed."""


class Recorders(Recorder):
    """Several recorders called in order, as one."""

    def __init__(self, recorders: Iterable[Recorder]) -> None:
        self.recorders = list(recorders)

    def on_run_start(self, ctx: RunContext) -> None:
        for r in self.recorders:
            with disk_errors(r.writes, ctx.run_dir):
                r.on_run_start(ctx)

    def on_task_start(self, ctx: RunContext, i: int, task: Task) -> None:
        for r in self.recorders:
            with disk_errors(r.writes, ctx.run_dir):
                r.on_task_start(ctx, i, task)

    def on_task_fitted(self, ctx: RunContext, i: int, task: Task) -> None:
        for r in self.recorders:
            with disk_errors(r.writes, ctx.run_dir):
                r.on_task_fitted(ctx, i, task)

    def on_cell(self, ctx: RunContext, cell: Cell) -> None:
        for r in self.recorders:
            with disk_errors(r.writes, ctx.run_dir):
                r.on_cell(ctx, cell)

    def on_row_end(self, ctx: RunContext, i: int, row: dict[str, float]) -> None:
        for r in self.recorders:
            with disk_errors(r.writes, ctx.run_dir):
                r.on_row_end(ctx, i, row)

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        for r in self.recorders:
            with disk_errors(r.writes, ctx.run_dir):
                r.on_run_end(ctx, result)

    def close(self) -> None:
        """Close every recorder, even if one fails; the first failure is raised after all are closed."""
        errors = []
        for r in self.recorders:
            try:
                r.close()
            except Exception as exc:  # noqa: BLE001 - the others must still be closed
                errors.append(exc)
        if errors:
            raise errors[0]


# -- the built-in recorders ------------------------------------------------------------------
class ConfigFile(Recorder):
    """Writes the run's full configuration (e.g. ``Config.to_dict()``) to ``RUN_DIR/config.yaml``,
    so the run can be repeated; config.json keeps the settings that resuming compares."""

    writes = "config.yaml, the run's full configuration"

    def __init__(self, spec: dict) -> None:
        if not isinstance(spec, dict):
            raise TypeError(f"spec must be a dict (e.g. Config.to_dict()), not {type(spec).__name__}")
        self.spec = spec

    def on_run_start(self, ctx: RunContext) -> None:
        import yaml

        atomic_write_text(ctx.run_dir / "config.yaml", yaml.safe_dump(_yaml_ready(self.spec), sort_keys=False))


def _yaml_ready(obj: Any) -> Any:
    """`obj` with paths as strings, so ``yaml.safe_dump`` accepts it."""
    if isinstance(obj, dict):
        return {k: _yaml_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_yaml_ready(v) for v in obj]
    return str(obj) if isinstance(obj, PurePath) else obj


class Checkpoints(Recorder):
    """Restores the newest usable checkpoint at the start (setting ``ctx.resumed``) and saves the
    strategy right after each task is fitted (see :mod:`cl_iad.checkpoint`)."""

    writes = "a checkpoint"

    def __init__(self, keep: int = 1) -> None:
        self.keep = keep
        self.checkpointer: Checkpointer | None = None

    def on_run_start(self, ctx: RunContext) -> None:
        self.checkpointer = Checkpointer(ctx.run_dir, ctx.names, ctx.settings, keep=self.keep)
        ctx.resumed = self.checkpointer.resume(ctx.strategy, ctx.complete_rows())

    def on_task_fitted(self, ctx: RunContext, i: int, task: Task) -> None:
        self.checkpointer.save(ctx.strategy, i)


class Tables(Recorder):
    """Derives matrix_<metric>.csv and summary.json from cells.csv; fills ``result.matrices`` and ``.summary``."""

    writes = "the matrices and summary.json"

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        cells = ctx.store.cells()
        baselines = {m: [chance_baseline(m, *ctx.truth(j)) if m in METRICS else float("nan")
                         for j in range(ctx.n_tasks)] for m in ctx.metrics}
        result.summary = write_tables(ctx.run_dir, cells, ctx.names, ctx.metrics, ctx.strategy.task_aware, baselines)
        result.matrices = {m: matrix(cells, m, ctx.names) for m in ctx.metrics}


class Plots(Recorder):
    """A heatmap and forgetting curves per metric in ``RUN_DIR/plots``; appended to ``result.plots``."""

    writes = "the plots"

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        from .plots import forgetting_curves, matrix_heatmap

        strategy = ctx.strategy
        aware = "task-aware" if strategy.task_aware else "task-agnostic"
        if strategy.routes:
            aware += ", routed"
        for m, R in result.matrices.items():
            title = f"{m} | {strategy.model.name} {strategy.regime} ({aware})"
            result.plots.append(matrix_heatmap(R, m, ctx.run_dir / "plots" / f"matrix_{m}.png", title))
            result.plots.append(forgetting_curves(R, m, ctx.run_dir / "plots" / f"forgetting_{m}.png", title))


class Thresholds(Recorder):
    """Decision thresholds in ``RUN_DIR/thresholds.jsonl``: each seen task's, per cell; at the end one
    fitted on the last row's predictions pooled (eval_task "*"), and their drift (thresholds_drift.json)."""

    writes = "the decision thresholds"

    def __init__(self) -> None:
        self.pooled: dict[int, tuple] = {}  # task j -> its last-row predictions, for the all-task threshold

    def on_cell(self, ctx: RunContext, cell: Cell) -> None:
        from .thresholds import append_record, fit_task_thresholds, pooled_sample

        pred, has_gt = cell.pred, cell.evaluated.test.has_pixel_gt
        if cell.j <= cell.i:
            has_map = pred.anomaly_map is not None and has_gt
            rec = fit_task_thresholds(pred.pred_score, cell.labels, pred.anomaly_map if has_map else None,
                                      cell.masks if has_map else None)
            with whole_appends(ctx.run_dir / "thresholds.jsonl"):  # a full disk leaves no torn line
                append_record(ctx.run_dir, {"trained_upto": cell.i, "trained_task": cell.trained.name,
                                            "eval_task": cell.evaluated.name, **rec})
        if cell.i == ctx.n_tasks - 1:
            self.pooled[cell.j] = pooled_sample(pred.pred_score, cell.labels, pred.anomaly_map, cell.masks, has_gt)

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        from .thresholds import append_record, load_thresholds, pooled_thresholds, threshold_drift

        last = ctx.n_tasks - 1
        if "*" not in load_thresholds(ctx.run_dir).get(last, {}):  # present: a finished run restarted
            self._pool_the_rest(ctx)
            with whole_appends(ctx.run_dir / "thresholds.jsonl"):
                append_record(ctx.run_dir, {"trained_upto": last, "trained_task": ctx.names[-1], "eval_task": "*",
                                            **pooled_thresholds([self.pooled[j] for j in sorted(self.pooled)])})
        history = load_thresholds(ctx.run_dir)
        per_task = {i: {k: v for k, v in row.items() if k != "*"} for i, row in history.items()}
        drift = {kind: threshold_drift(per_task, kind) for kind in ("image", "pixel")}
        atomic_write_text(ctx.run_dir / "thresholds_drift.json", json.dumps(drift, indent=2))

    def _pool_the_rest(self, ctx: RunContext) -> None:
        """Predict the last-row tasks whose cells a stopped process evaluated, so that the all-task threshold
        of a resumed run pools every task, as an uninterrupted run's does."""
        from .thresholds import pooled_sample

        for j in (j for j in range(ctx.n_tasks) if j not in self.pooled):
            test = ctx.scenario[j].test
            pred = ctx.strategy.predict(test, task_id=j if ctx.strategy.task_aware else None)
            labels, masks = ctx.truth(j)
            self.pooled[j] = pooled_sample(pred.pred_score, labels, pred.anomaly_map, masks, test.has_pixel_gt)


class Examples(Recorder):
    """A few anomalous images' maps per cell in ``RUN_DIR/examples`` (for ``cl-iad show``) and, at the
    end, their step × task grid (appended to ``result.plots``)."""

    writes = "the example heatmaps"

    def __init__(self, per_cell: int = 2) -> None:
        self.per_cell = per_cell

    def on_cell(self, ctx: RunContext, cell: Cell) -> None:
        from .visualize import save_examples

        if cell.pred.anomaly_map is None:
            return
        idx = np.flatnonzero(cell.labels == 1)[:self.per_cell]
        if idx.size:
            samples = cell.evaluated.test.samples
            save_examples(ctx.run_dir, cell.i, cell.j, cell.evaluated.name, [str(samples[k].image_path) for k in idx],
                          cell.pred.anomaly_map[idx], cell.masks[idx])

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        from .visualize import example_grid

        if (ctx.run_dir / "examples").is_dir():
            result.plots.append(example_grid(ctx.run_dir))


class ModelSaver(Recorder):
    """The final strategy and each task's last thresholds in ``RUN_DIR/model``, for ``cl-iad predict``
    (see :mod:`cl_iad.deploy`); after :class:`Thresholds`, whose all-task threshold it includes."""

    writes = "the saved model for cl-iad predict"

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        from .deploy import save_strategy
        from .thresholds import load_thresholds

        final = load_thresholds(ctx.run_dir).get(ctx.n_tasks - 1, {})
        kept = {k: {kind: v[kind] for kind in ("image", "pixel") if kind in v} for k, v in final.items()}
        save_strategy(ctx.strategy, ctx.run_dir / "model", ctx.names, kept,
                      image_size=ctx.scenario[0].test.image_size)


class WandbLogger(Recorder):
    """One W&B run: each row as a step, then the matrices, summary and plots; last, so it sees every plot."""

    writes = "the W&B run files"

    def __init__(self, mode: str, group: str | None = None) -> None:
        self.mode, self.group = mode, group
        self.wandb: WandbRun | None = None

    def on_run_start(self, ctx: RunContext) -> None:
        from .wandb_log import WandbRun

        self.wandb = WandbRun(self.mode, ctx.run_dir, ctx.name, ctx.settings, group=self.group)

    def on_row_end(self, ctx: RunContext, i: int, row: dict[str, float]) -> None:
        self.wandb.log_row(i, {**row, **resources_row(ctx.run_dir, i)})

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        self.wandb.log_final(result.matrices, result.summary, result.plots)
        result.wandb_dir = self.wandb.directory

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def resources_row(run_dir: Path, i: int) -> dict[str, float]:
    """Task `i`'s row of resources.csv as ``resources/<column>`` (the Resources recorder, first in the
    list, has written it when the row reaches W&B); {} without one."""
    path = run_dir / "resources.csv"
    rows = pd.read_csv(path) if path.is_file() else pd.DataFrame({"task": []})
    row = rows[rows["task"] == i].drop(columns=["task", "task_name"], errors="ignore")
    return {} if row.empty else {f"resources/{k}": float(v) for k, v in row.iloc[0].items() if pd.notna(v)}


def builtin_recorders(wandb: str = "offline", wandb_group: str | None = None, checkpoint: bool = True,
                      save_model: bool = True, spec: dict | None = None) -> list[Recorder]:
    """The recorders every run gets, in call order. ``checkpoint=False``, ``save_model=False``,
    ``wandb="off"`` and ``spec=None`` leave out :class:`Checkpoints`, :class:`ModelSaver`,
    :class:`WandbLogger` and :class:`ConfigFile`; the others are always on.

    The order matters: Checkpoints restores the strategy before anything uses it; Tables fills the
    matrices that Plots draws; Thresholds writes the all-task threshold that ModelSaver saves; the
    W&B logger comes last so it logs every plot.
    """
    recorders: list[Recorder] = [ConfigFile(spec)] if spec is not None else []
    if checkpoint:
        recorders.append(Checkpoints())
    recorders += [Tables(), Plots(), Thresholds(), Examples()]
    if save_model:
        recorders.append(ModelSaver())
    if wandb != "off":
        recorders.append(WandbLogger(wandb, wandb_group))
    return recorders

