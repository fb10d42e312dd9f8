"""Console tables of a finished run (rich)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table


def _fmt(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def print_result(result, strategy, seconds: float, console: Console | None = None) -> None:
    """Print each matrix and a summary table with ACC, BWT, FWT and FM per metric."""
    console = console or Console()
    aware = "task-aware" if strategy.task_aware else "task-agnostic"
    console.rule(f"[bold]{result.run_dir.name}[/] ({aware})")
    for metric, R in result.matrices.items():
        t = Table(title=f"R[i][j] {metric}: row = after training task i, column = evaluated task j",
                  title_justify="left")
        t.add_column("after \\ on", style="bold")
        for c in R.columns:
            t.add_column(str(c), justify="right")
        for idx, row in R.iterrows():
            t.add_row(str(idx), *(_fmt(float(v)) for v in row))
        console.print(t)
    s = Table(title=f"summary ({strategy.model.name}, {strategy.regime}, {aware})", title_justify="left")
    for col in ("metric", "ACC", "BWT", "FWT", "FM (mean over old tasks)"):
        s.add_column(col, justify="right" if col != "metric" else "left")
    for metric, v in result.summary.items():
        s.add_row(metric, _fmt(v["acc"]), _fmt(v["bwt"]), _fmt(v["fwt"]), _fmt(v["fm"]))
    console.print(s)
    if strategy.task_aware:
        console.print("[dim]per_task is task-aware: each task keeps its own model, so FM is 0 by construction.[/]")
    if getattr(strategy, "routes", False):
        console.print("[dim]per_task is task-agnostic: a router picks each test image's task model; "
                      "routing_accuracy is the share of a task's images sent to its own model.[/]")
    console.print(f"results: {result.run_dir}  ({seconds:.1f} s)")
    if result.wandb_dir is not None:
        console.print(f"W&B run: {result.wandb_dir}  (sync later with: wandb sync {result.wandb_dir})")
