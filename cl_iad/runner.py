"""The one loop: train task i, evaluate every task j, store each cell, derive the tables."""

from __future__ import annotations

import json
import logging
import platform
import re
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics as M
from .checkpoint import Checkpointer, seeded
from .errors import UserError
from .results import METRICS, ResultStore, atomic_write_text, chance_baseline, matrix, write_tables
from .scenarios.base import Scenario
from .strategies.base import Predictions, Strategy

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


@dataclass
class RunResult:
    """Where a run wrote its files, and its matrices and summary."""

    run_dir: Path
    matrices: dict[str, pd.DataFrame]
    summary: dict
    plots: list[Path]
    wandb_dir: Path | None = None


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


def _record_extras(run_dir: Path, i: int, j: int, trained: str, other, pred: Predictions, labels: np.ndarray,
                   masks: np.ndarray, n_examples: int = 2) -> None:
    """Per-cell side products: the task's decision thresholds (for seen tasks) and a few example
    anomaly maps for `cl-iad show`. Written before the cell itself, so a cell in cells.csv always
    has its extras."""
    from .thresholds import fit_task_thresholds, json_safe
    from .visualize import save_examples

    if j <= i:
        has_map = pred.anomaly_map is not None and other.test.has_pixel_gt
        rec = fit_task_thresholds(pred.pred_score, labels, pred.anomaly_map if has_map else None,
                                  masks if has_map else None)
        line = json.dumps(json_safe({"trained_upto": i, "trained_task": trained, "eval_task": other.name, **rec}))
        with (run_dir / "thresholds.jsonl").open("a") as fh:
            fh.write(line + "\n")
    if pred.anomaly_map is not None:
        idx = np.flatnonzero(labels == 1)[:n_examples]
        if idx.size:
            save_examples(run_dir, i, j, other.name, [str(other.test.samples[k].image_path) for k in idx],
                          pred.anomaly_map[idx], masks[idx])


def _pooled_sample(pred: Predictions, labels: np.ndarray, masks: np.ndarray, has_pixel_gt: bool,
                   pixels: int = 200_000) -> tuple:
    """Scores and labels of one task, and a fixed-seed sample of its pixels, for pooling."""
    if pred.anomaly_map is None or not has_pixel_gt:
        return pred.pred_score, labels, None, None
    flat_map, flat_gt = pred.anomaly_map.ravel(), masks.ravel()
    if flat_map.size > pixels:
        pick = np.random.default_rng(0).choice(flat_map.size, pixels, replace=False)
        flat_map, flat_gt = flat_map[pick], flat_gt[pick]
    return pred.pred_score, labels, flat_map, flat_gt


def _record_global_threshold(run_dir: Path, i: int, trained: str, pooled: list[tuple]) -> None:
    """Thresholds fitted on all tasks' final predictions pooled (eval_task "*"), for images
    whose task is unknown at deployment."""
    from .thresholds import f1_optimal_threshold, fit_task_thresholds, json_safe

    rec = fit_task_thresholds(np.concatenate([p[0] for p in pooled]), np.concatenate([p[1] for p in pooled]))
    with_maps = [p for p in pooled if p[2] is not None]
    if with_maps:
        gts = np.concatenate([p[3] for p in with_maps])
        if gts.any():
            rec["pixel"] = f1_optimal_threshold(np.concatenate([p[2] for p in with_maps]), gts).__dict__
    with (run_dir / "thresholds.jsonl").open("a") as fh:
        fh.write(json.dumps(json_safe({"trained_upto": i, "trained_task": trained, "eval_task": "*", **rec})) + "\n")


def load_thresholds(run_dir: Path) -> dict[int, dict[int, dict]]:
    """thresholds.jsonl as history[trained_upto][eval_task_name]; the last record of a cell wins."""
    history: dict[int, dict] = {}
    path = run_dir / "thresholds.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                history.setdefault(rec["trained_upto"], {})[rec["eval_task"]] = rec
    return history


def _finish_extras(run_dir: Path) -> list[Path]:
    """Threshold drift (thresholds_drift.json) and the example grid plot; returns new plot paths."""
    from .thresholds import threshold_drift
    from .visualize import example_grid

    history = load_thresholds(run_dir)
    per_task = {i: {k: v for k, v in row.items() if k != "*"} for i, row in history.items()}
    drift = {kind: threshold_drift(per_task, kind) for kind in ("image", "pixel")}
    atomic_write_text(run_dir / "thresholds_drift.json", json.dumps(drift, indent=2))
    if (run_dir / "examples").is_dir():
        return [example_grid(run_dir)]
    return []


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
        old = json.loads(cfg_path.read_text())
        if old.get("settings") != config["settings"]:
            raise RunConfigMismatch(
                f"{run_dir} already holds results of different settings (see {cfg_path}); "
                "choose another --out/--name, or pass --overwrite to replace them")
    elif overwrite and run_dir.exists():
        for name in ("cells.csv", "summary.json", "thresholds.jsonl", "thresholds_drift.json"):
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg_path, json.dumps(config, indent=2, default=str))


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
) -> RunResult:
    """Train `strategy` on each task of `scenario` and evaluate every task after each one.

    Cells already present in the run directory (same settings) are not recomputed, so an
    interrupted run restarted with the same arguments continues where it stopped. With
    `save_model`, the final strategy and its per-task thresholds go to ``RUN_DIR/model`` for
    ``cl-iad predict`` (see :mod:`cl_iad.deploy`). With
    `checkpoint`, the strategy is saved after each task is fitted, and a restart loads the
    newest checkpoint instead of fitting earlier tasks again (see :mod:`cl_iad.checkpoint`).
    Each task is fitted under its own seed derived from ``strategy.seed``, so resumed and
    uninterrupted runs give identical cells.
    """
    from tqdm.auto import tqdm

    from .plots import forgetting_curves, matrix_heatmap
    from .wandb_log import WandbRun, require_wandb_login

    require_wandb_login(wandb)  # before any file is written or task fitted
    unknown = [m for m in metrics if m not in METRIC_FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRIC_FUNCTIONS)}")
    task_metrics = list(metrics)
    if strategy.routes:
        metrics = [*task_metrics, ROUTING_METRIC]
    name = name or run_name(scenario, strategy)
    run_dir = Path(out_dir) / name
    settings = {"dataset": scenario.dataset, "root": str(scenario.root), "tasks": scenario.names,
                **scenario.info, **strategy.config(), "preset": getattr(strategy.model, "preset_", None),
                "metrics": list(metrics), **(extra_config or {})}
    _prepare_run_dir(run_dir, {"name": name, "settings": settings, "versions": package_versions()}, overwrite)
    store = ResultStore(run_dir)
    done = {(r.trained_upto, r.eval_task, r.metric) for r in store.cells().itertuples(index=False)}
    names = scenario.names
    ckpt = Checkpointer(run_dir, names, settings) if checkpoint else None
    complete = {i for i in range(len(names)) if all((i, n, m) in done for n in names for m in metrics)}
    resumed = ckpt.resume(strategy, complete) if ckpt is not None else -1
    warn_undefined_tasks(scenario)
    logged: set[str] = set()  # undefined-metric reasons already logged, one line per task and reason
    truth: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    wb = WandbRun(wandb, run_dir, name, settings, group=wandb_group)
    t = len(scenario)
    bar = tqdm(total=t * t, desc=name, unit="cell", disable=not progress, leave=False)
    pooled: list[tuple] = []  # final-row predictions (pixels subsampled) for the all-task threshold
    try:
        for i, task in enumerate(scenario):
            bar.set_postfix_str(f"train {task.name}")
            if i > resumed:
                with seeded(strategy.seed, i):
                    strategy.fit_task(task, scenario)
                if ckpt is not None:
                    ckpt.save(strategy, i)
            row: dict[str, float] = {}
            for j, other in enumerate(scenario):
                todo = [m for m in metrics if (i, other.name, m) not in done]
                if j not in truth:
                    truth[j] = (other.test.labels, other.test.masks())
                if todo:
                    bar.set_postfix_str(f"eval {other.name}")
                    pred = strategy.predict(other.test, task_id=j if strategy.task_aware else None)
                    values = evaluate(pred, *truth[j], [m for m in todo if m != ROUTING_METRIC], other.name,
                                      pixel_gt=other.test.has_pixel_gt, logged=logged)
                    if ROUTING_METRIC in todo:
                        values[ROUTING_METRIC] = (_routing_accuracy(pred, other.task_id) if j <= i
                                                  else float("nan"))
                    _record_extras(run_dir, i, j, task.name, other, pred, *truth[j])
                    if i == t - 1:
                        pooled.append(_pooled_sample(pred, *truth[j], other.test.has_pixel_gt))
                    store.append([(i, task.name, other.name, m, v) for m, v in values.items()])
                    row.update({f"{m}/{other.name}": v for m, v in values.items()})
                bar.update(1)
            wb.log_row(i, row)
        bar.close()
        cells = store.cells()
        baselines = {m: [chance_baseline(m, *truth[j]) if m in METRIC_FUNCTIONS else float("nan")
                         for j in range(t)] for m in metrics}
        summary = write_tables(run_dir, cells, names, metrics, strategy.task_aware, baselines)
        matrices = {m: matrix(cells, m, names) for m in metrics}
        plots = []
        aware = "task-aware" if strategy.task_aware else "task-agnostic"
        if strategy.routes:
            aware += ", routed"
        for m, R in matrices.items():
            title = f"{m} | {strategy.model.name} {strategy.regime} ({aware})"
            plots.append(matrix_heatmap(R, m, run_dir / "plots" / f"matrix_{m}.png", title))
            plots.append(forgetting_curves(R, m, run_dir / "plots" / f"forgetting_{m}.png", title))
        if pooled:
            _record_global_threshold(run_dir, t - 1, names[-1], pooled)
        plots += _finish_extras(run_dir)
        if save_model:
            from .deploy import save_strategy

            final = load_thresholds(run_dir).get(t - 1, {})
            save_strategy(strategy, run_dir / "model", names,
                          {k: {kind: v[kind] for kind in ("image", "pixel") if kind in v} for k, v in final.items()},
                          image_size=scenario[0].test.image_size)
        wb.log_final(matrices, summary, plots)
        wandb_dir = wb.directory
    finally:
        bar.close()
        wb.finish()
    return RunResult(run_dir, matrices, summary, plots, wandb_dir)
