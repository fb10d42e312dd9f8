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
from .results import METRICS, ResultStore, atomic_write_text, chance_baseline, matrix, write_tables
from .scenarios.base import Scenario
from .strategies.base import Predictions, Strategy

log = logging.getLogger(__name__)

METRIC_FUNCTIONS: dict[str, Callable[[Predictions, np.ndarray, np.ndarray], float]] = {
    "image_auroc": lambda p, y, g: M.image_auroc(p.pred_score, y),
    "pixel_auroc": lambda p, y, g: M.pixel_auroc(p.anomaly_map, g),
    "pro": lambda p, y, g: M.pro_score(p.anomaly_map, g),
    "image_aupr": lambda p, y, g: M.image_aupr(p.pred_score, y),
    "pixel_aupr": lambda p, y, g: M.pixel_aupr(p.anomaly_map, g),
}
KEY_PACKAGES = ("cl_iad", "torch", "torchvision", "anomalib", "avalanche-lib", "torchmetrics", "timm", "numpy",
                "pandas", "wandb")


class RunConfigMismatch(RuntimeError):
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
             task_name: str) -> dict[str, float]:
    """Every requested metric on one test set; undefined metrics become NaN with a logged reason."""
    out = {}
    for metric in metrics:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out[metric] = METRIC_FUNCTIONS[metric](pred, labels, masks)
        for w in caught:
            log.warning("task %s: %s", task_name, w.message)
    return out


def _prepare_run_dir(run_dir: Path, config: dict, overwrite: bool) -> None:
    cfg_path = run_dir / "config.json"
    if cfg_path.exists() and not overwrite:
        old = json.loads(cfg_path.read_text())
        if old.get("settings") != config["settings"]:
            raise RunConfigMismatch(
                f"{run_dir} already holds results of different settings (see {cfg_path}); "
                "choose another --out/--name, or pass --overwrite to replace them")
    elif overwrite and run_dir.exists():
        for name in ("cells.csv", "summary.json"):
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
    checkpoint: bool = True,
) -> RunResult:
    """Train `strategy` on each task of `scenario` and evaluate every task after each one.

    Cells already present in the run directory (same settings) are not recomputed, so an
    interrupted run restarted with the same arguments continues where it stopped. With
    `checkpoint`, the strategy is saved after each task is fitted, and a restart loads the
    newest checkpoint instead of fitting earlier tasks again (see :mod:`cl_iad.checkpoint`).
    Each task is fitted under its own seed derived from ``strategy.seed``, so resumed and
    uninterrupted runs give identical cells.
    """
    from tqdm.auto import tqdm

    from .plots import forgetting_curves, matrix_heatmap
    from .wandb_log import WandbRun

    unknown = [m for m in metrics if m not in METRIC_FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRIC_FUNCTIONS)}")
    name = name or run_name(scenario, strategy)
    run_dir = Path(out_dir) / name
    settings = {"dataset": scenario.dataset, "root": str(scenario.root), "tasks": scenario.names,
                **scenario.info, **strategy.config(), "metrics": list(metrics), **(extra_config or {})}
    _prepare_run_dir(run_dir, {"name": name, "settings": settings, "versions": package_versions()}, overwrite)
    store = ResultStore(run_dir)
    done = {(r.trained_upto, r.eval_task, r.metric) for r in store.cells().itertuples(index=False)}
    names = scenario.names
    ckpt = Checkpointer(run_dir, names, settings) if checkpoint else None
    complete = {i for i in range(len(names)) if all((i, n, m) in done for n in names for m in metrics)}
    resumed = ckpt.resume(strategy, complete) if ckpt is not None else -1
    truth: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    wb = WandbRun(wandb, run_dir, name, settings)
    t = len(scenario)
    bar = tqdm(total=t * t, desc=name, unit="cell", disable=not progress, leave=False)
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
                    values = evaluate(strategy.predict(other.test, task_id=j), *truth[j], todo, other.name)
                    store.append([(i, task.name, other.name, m, v) for m, v in values.items()])
                    row.update({f"{m}/{other.name}": v for m, v in values.items()})
                bar.update(1)
            wb.log_row(i, row)
        bar.close()
        cells = store.cells()
        baselines = {m: [chance_baseline(m, *truth[j]) for j in range(t)] for m in metrics}
        summary = write_tables(run_dir, cells, names, metrics, strategy.task_aware, baselines)
        matrices = {m: matrix(cells, m, names) for m in metrics}
        plots = []
        aware = "task-aware" if strategy.task_aware else "task-agnostic"
        for m, R in matrices.items():
            title = f"{m} | {strategy.model.name} {strategy.regime} ({aware})"
            plots.append(matrix_heatmap(R, m, run_dir / "plots" / f"matrix_{m}.png", title))
            plots.append(forgetting_curves(R, m, run_dir / "plots" / f"forgetting_{m}.png", title))
        wb.log_final(matrices, summary, plots)
        wandb_dir = wb.directory
    finally:
        bar.close()
        wb.finish()
    return RunResult(run_dir, matrices, summary, plots, wandb_dir)
