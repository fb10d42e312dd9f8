"""The one loop: fit task i, evaluate every task j, hand each cell and finished row to the recorders.

What happens to the results (cells.csv aside: the loop appends every cell itself, since resuming
reads it) is up to the recorders of :mod:`cl_iad.recorders`: checkpoints, thresholds, examples,
tables, plots, the saved model, W&B and config.yaml.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import shutil
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from . import metrics as M
from .checkpoint import seeded
from .errors import Terminated, UserError, disk_errors, signals_as_exceptions, signals_deferred
from .mixed import MixedTaskEvaluation
from .recorders import Cell, Recorder, Recorders, RunContext, RunResult, builtin_recorders
from .resources import Resources
from .results import METRICS, ResultStore, RunLock, atomic_write_text
from .scenarios.base import Scenario, Task
from .strategies.base import Predictions, Strategy
from .thresholds import load_thresholds

__all__ = ["METRIC_FUNCTIONS", "PIXEL_METRICS", "ROUTING_METRIC", "Recorder", "RunConfigMismatch", "RunResult",
           "evaluate", "load_thresholds", "package_versions", "run", "run_name", "warn_undefined_tasks"]

log = logging.getLogger(__name__)


def _pixel(fn: Callable[[np.ndarray, np.ndarray], float]) -> Callable[[Predictions, np.ndarray, np.ndarray], float]:
    """A pixel metric that is NaN for models without anomaly maps (detection, classification)."""
    return lambda p, y, g: float("nan") if p.anomaly_map is None else fn(p.anomaly_map, g)


METRIC_FUNCTIONS: dict[str, Callable[[Predictions, np.ndarray, np.ndarray], float]] = {
    "image_auroc": lambda p, y, g: M.image_auroc(p.pred_score, y),
    "pixel_auroc": _pixel(M.pixel_auroc),
    "pro": _pixel(M.pro_score),
    "image_aupr": lambda p, y, g: M.image_aupr(p.pred_score, y),
    "pixel_aupr": _pixel(M.pixel_aupr),
}
PIXEL_METRICS = ("pixel_auroc", "pro", "pixel_aupr")
# fraction of a task's test images that task-agnostic per_task routes to that task's model;
# NaN for tasks not trained yet (no right answer exists). Added to `metrics` when the strategy routes.
ROUTING_METRIC = "routing_accuracy"
KEY_PACKAGES = ("cl_iad", "torch", "torchvision", "anomalib", "avalanche-lib", "torchmetrics", "timm", "numpy",
                "pandas", "wandb")


class RunConfigMismatch(UserError, RuntimeError):
    """An existing run directory holds results of different settings."""


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_name(scenario: Scenario, strategy: Strategy) -> str:
    order = str(scenario.info.get("order", "custom"))
    raw = f"{scenario.dataset}-{strategy.model.name}-{strategy.regime}-{order}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", raw)[:120]


def evaluate(pred: Predictions, labels: np.ndarray, masks: np.ndarray, metrics: Sequence[str],
             task_name: str, pixel_gt: bool = True, logged: set[str] | None = None) -> dict[str, float]:
    """Every requested metric on one test set; undefined metrics become NaN with a logged reason.

    Without pixel ground truth (`pixel_gt` False: some anomalous image has no mask), pixel
    metrics are NaN rather than scores against all-normal masks. A reason already in `logged`
    (the runner passes one set per run) is not logged again, so a task evaluated after every
    training step warns once, not once per row. Without any anomalous image every metric is
    undefined; :func:`warn_undefined_tasks` has said so, and the reasons go to the debug log.
    """
    logged = set() if logged is None else logged
    level = logging.WARNING if labels.any() else logging.DEBUG
    out = {}
    for metric in metrics:
        if metric in PIXEL_METRICS and not pixel_gt:
            _log_once(logged, logging.INFO, f"task {task_name}: {metric} is NaN: the test set has anomalous "
                                            "images without masks")
            out[metric] = float("nan")
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out[metric] = METRIC_FUNCTIONS[metric](pred, labels, masks)
        for w in caught:
            _log_once(logged, level, f"task {task_name}: {w.message}")
    return out


def _log_once(logged: set[str], level: int, message: str) -> None:
    if message not in logged:
        logged.add(message)
        log.log(level, message)


def warn_undefined_tasks(scenario: Scenario) -> list[str]:
    """Warn, before training, about each task whose test set has no anomalous image; return their names.

    Their ranking metrics are undefined: those cells are NaN, the summaries leave the task out
    (``skipped_tasks`` in summary.json) and it gets no decision threshold of its own.
    """
    names = [task.name for task in scenario if not task.test.labels.any()]
    for name in names:
        log.warning("task %s: its test set has no anomalous image, so its AUROC, AUPR and PRO are undefined: "
                    "its cells will be NaN, the summaries skip it and it gets no threshold of its own "
                    "(add anomalous test images to measure it)", name)
    return names


def _routing_accuracy(pred: Predictions, task_id: int) -> float:
    """Share of a task's test images routed to that task's own model."""
    if pred.routed_task is None:
        return float("nan")
    return float(np.mean(pred.routed_task == task_id))


def _prepare_run_dir(run_dir: Path, config: dict, overwrite: bool) -> None:
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists() and (run_dir / "cells.csv").exists() and not overwrite:
        # cells without the settings that produced them: reusing them could mix two runs
        raise RunConfigMismatch(f"{run_dir} holds results (cells.csv) but no config.json, so their settings are "
                                "unknown; choose another --out/--name, or pass --overwrite to replace them")
    if cfg_path.exists() and not overwrite:
        old = json.loads(cfg_path.read_text(encoding="utf-8"))
        if old.get("settings") != config["settings"]:
            raise RunConfigMismatch(
                f"{run_dir} already holds results of different settings (see {cfg_path}); "
                "choose another --out/--name, or pass --overwrite to replace them")
    elif overwrite and run_dir.exists():
        for name in ("cells.csv", "summary.json", "thresholds.jsonl", "thresholds_drift.json", "config.yaml",
                     "resources.csv"):
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg_path, json.dumps(config, indent=2, default=str), "the run's settings")


def run(
    strategy: Strategy,
    scenario: Scenario,
    out_dir: Path | str = "results",
    name: str | None = None,
    metrics: Sequence[str] = METRICS,
    wandb: str = "offline",
    progress: bool = True,
    overwrite: bool = False,
    extra_config: dict | None = None,
    wandb_group: str | None = None,
    checkpoint: bool = True,
    save_model: bool = True,
    spec: dict | None = None,
    recorders: Sequence[Recorder] = (),
    wait: bool = False,
) -> RunResult:
    """Train `strategy` on each task of `scenario` and evaluate every task after each one.

    Cells already present in the run directory (same settings) are not recomputed, so an
    interrupted run restarted with the same arguments continues where it stopped. With
    `save_model`, the final strategy and its per-task thresholds go to ``RUN_DIR/model`` for
    ``cl-iad predict`` (see :mod:`cl_iad.deploy`). With
    `checkpoint`, the strategy is saved after each task is fitted, and a restart loads the
    newest checkpoint instead of fitting earlier tasks again (see :mod:`cl_iad.checkpoint`).
    Each task is fitted under its own seed derived from ``strategy.seed``, so resumed and
    uninterrupted runs give identical cells. `spec`, the run's full configuration (e.g.
    ``Config.to_dict()``), is written to ``RUN_DIR/config.yaml``.

    Results go to the recorders of :func:`~cl_iad.recorders.builtin_recorders` (``checkpoint=False``,
    ``save_model=False`` and ``wandb="off"`` leave theirs out), then to your own `recorders`, in order.

    Faults (docs/faults.md): one process at a time owns the run directory (another gets
    :class:`~cl_iad.errors.RunLocked`, or waits with `wait`); a full or read-only disk raises
    :class:`~cl_iad.errors.WriteError`; SIGTERM raises :class:`~cl_iad.errors.Terminated` and Ctrl-C
    KeyboardInterrupt, both between cells, never inside a cell's or a checkpoint's writes. In every
    case the cells in cells.csv stay whole and the same call resumes.
    """
    from .wandb_log import require_wandb_login

    require_wandb_login(wandb)  # before any file is written or task fitted
    metrics = _check_metrics(strategy, metrics)
    name = name or run_name(scenario, strategy)
    run_dir = Path(out_dir) / name
    hooks = Recorders([Resources(), *builtin_recorders(wandb, wandb_group, checkpoint, save_model, spec),
                       MixedTaskEvaluation(), *recorders])
    with signals_as_exceptions(), RunLock(run_dir, wait=wait), disk_errors("the run's results", run_dir):
        try:
            ctx = _start(strategy, scenario, run_dir, name, metrics, overwrite, extra_config)
            try:
                hooks.on_run_start(ctx)
                _loop(ctx, hooks, progress)
                result = RunResult(ctx.run_dir, {}, {}, [])
                hooks.on_run_end(ctx, result)
            finally:
                hooks.close()
        except (Terminated, KeyboardInterrupt) as exc:
            exc.run_dir = run_dir  # for the command line's message: what is kept where
            raise
    return result


def _loop(ctx: RunContext, hooks: Recorder, progress: bool) -> None:
    """Fit each task not restored from a checkpoint, then evaluate every cell of its row missing from cells.csv."""
    from tqdm.auto import tqdm

    with tqdm(total=ctx.n_tasks ** 2, desc=ctx.name, unit="cell", disable=not progress, leave=False) as bar:
        for i, task in enumerate(ctx.scenario):
            bar.set_postfix_str(f"train {task.name}")
            if i > ctx.resumed:
                hooks.on_task_start(ctx, i, task)
                with seeded(ctx.strategy.seed, i):
                    ctx.strategy.fit_task(task, ctx.scenario)
                with signals_deferred():  # the checkpoint is written whole
                    hooks.on_task_fitted(ctx, i, task)
            row: dict[str, float] = {}
            for j, other in enumerate(ctx.scenario):
                todo = [m for m in ctx.metrics if (i, other.name, m) not in ctx.done]
                if todo:
                    bar.set_postfix_str(f"eval {other.name}")
                    cell = _evaluate_cell(ctx, i, task, j, other, todo)
                    with signals_deferred():  # SIGTERM or Ctrl-C: the cell is written whole, then the run stops
                        hooks.on_cell(ctx, cell)  # extras first: a cell in cells.csv always has them
                        ctx.store.append(cell.rows())
                    row.update({f"{m}/{other.name}": v for m, v in cell.values.items()})
                bar.update(1)
            hooks.on_row_end(ctx, i, row)


def _check_metrics(strategy: Strategy, metrics: Sequence[str]) -> list[str]:
    """The metrics of the run (routing accuracy added when the strategy routes); unknown ones are refused."""
    unknown = [m for m in metrics if m not in METRIC_FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRIC_FUNCTIONS)}")
    return [*metrics, ROUTING_METRIC] if strategy.routes else list(metrics)


def _start(strategy: Strategy, scenario: Scenario, run_dir: Path, name: str, metrics: list[str],
           overwrite: bool, extra_config: dict | None) -> RunContext:
    """Prepare the run directory (config.json) and read the cells already done."""
    settings = {"dataset": scenario.dataset, "root": str(scenario.root), "tasks": scenario.names,
                **scenario.info, **strategy.config(), "preset": getattr(strategy.model, "preset_", None),
                "metrics": list(metrics), **(extra_config or {})}
    with signals_deferred():  # --overwrite's deletions and config.json: all or nothing
        _prepare_run_dir(run_dir, {"name": name, "settings": settings, "versions": package_versions()}, overwrite)
    store = ResultStore(run_dir)
    done = {(r.trained_upto, r.eval_task, r.metric) for r in store.cells().itertuples(index=False)}
    warn_undefined_tasks(scenario)
    return RunContext(run_dir, name, settings, metrics, strategy, scenario, store, done)


def _evaluate_cell(ctx: RunContext, i: int, task: Task, j: int, other: Task, todo: list[str]) -> Cell:
    """Predict task `other`'s test set with the strategy after task `i` and score the `todo` metrics."""
    labels, masks = ctx.truth(j)
    pred = ctx.strategy.predict(other.test, task_id=j if ctx.strategy.task_aware else None)
    values = evaluate(pred, labels, masks, [m for m in todo if m != ROUTING_METRIC], other.name,
                      pixel_gt=other.test.has_pixel_gt, logged=ctx.logged)
    if ROUTING_METRIC in todo:
        values[ROUTING_METRIC] = _routing_accuracy(pred, other.task_id) if j <= i else float("nan")
    return Cell(i, j, task, other, pred, labels, masks, values)
