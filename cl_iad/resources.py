"""Cost accounting: what each task of a run costs in time, memory and backbone passes.

The :class:`Resources` recorder writes one row per fitted task to ``RUN_DIR/resources.csv``:

============== ============================================================================
task           index and name (``task_name``) of the task just fitted
fit_s          wall time of fitting the task (the strategy's ``fit_task``)
eval_s         wall time from the end of fitting to the end of the row: predicting and scoring
               every task's test set, plus what the recorders do per task and per cell
               (checkpoint, thresholds, example images)
peak_rss_bytes peak resident memory of the process while fitting and evaluating this task
peak_gpu_bytes ``torch.cuda.max_memory_allocated`` over the task (reset at its start); empty on CPU
model_bytes    bytes of the tensors in the model's ``state_dict()``: the memory bank for PatchCore,
               the fitted statistics for PaDiM, the network for gradient-trained models
plugin_bytes   bytes of the tensors in the regimes' states (per-task states, EWC's Fisher, ...)
buffer_images  images in the replay buffer after the task (empty without replay)
cache_bytes    features held in memory by the feature cache after the task
backbone_passes images pushed through the backbone by the feature cache during the task (fit and
               evaluation); a cached image costs none. Gradient-trained models' training passes
               do not go through the cache and are not counted.
============== ============================================================================

Peak RSS is measured without disturbing the process's own high-water mark (which other tools
read): when the task sets a new process peak, ``getrusage``'s ``ru_maxrss`` gives it exactly;
otherwise a background thread's samples (every 20 ms) of the resident size give it.

The file is rewritten (atomically) at the end of each row, so recorders after this one (the W&B
logger) can read the row just measured. :func:`summarise` and :func:`resources_table` condense the
file for reports.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .recorders import Recorder, RunContext
from .results import atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

    from .scenarios.base import Task

log = logging.getLogger(__name__)

FILENAME = "resources.csv"
COLUMNS = ("task", "task_name", "fit_s", "eval_s", "peak_rss_bytes", "peak_gpu_bytes", "model_bytes", "plugin_bytes",
           "buffer_images", "cache_bytes", "backbone_passes")


# -- measuring ---------------------------------------------------------------------------------
def current_rss() -> int | None:
    """Resident set size of this process in bytes now, or None where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="utf-8") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


def max_rss() -> int | None:
    """The process's resident high-water mark in bytes (``ru_maxrss``), or None without ``resource``."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value if sys.platform == "darwin" else value * 1024)  # bytes on macOS, KiB on Linux


class PeakRss:
    """Peak RSS over a window (:meth:`reset` ... :meth:`peak`), by ``ru_maxrss`` and a sampling thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self._peak = 0
        self._mark: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PeakRss:
        """Start sampling in a daemon thread and open the first window."""
        self.reset()
        if self._thread is None and current_rss() is not None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, name="cl_iad-rss", daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = current_rss() or 0
            with self._lock:
                self._peak = max(self._peak, rss)

    def reset(self) -> None:
        """Open a new window."""
        with self._lock:
            self._peak = current_rss() or 0
        self._mark = max_rss()

    def peak(self) -> int | None:
        """Peak RSS in bytes since the last :meth:`reset`, or None where nothing can be measured."""
        high = max_rss()
        if high is not None and self._mark is not None and high > self._mark:
            return high  # a new process peak was reached in this window: exact
        with self._lock:
            sampled = max(self._peak, current_rss() or 0)
        return sampled or high

    def stop(self) -> None:
        """Stop the sampling thread."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=1.0)
            self._thread = None


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor (and numpy array) in nested dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _cuda_device(strategy) -> torch.device | None:
    device = torch.device(getattr(strategy.model, "device", "cpu"))
    return device if device.type == "cuda" and torch.cuda.is_available() else None


# -- the recorder ------------------------------------------------------------------------------
class Resources(Recorder):
    """Per-task fit and evaluation time, peak RSS and GPU memory, state sizes and backbone passes,
    in ``RUN_DIR/resources.csv`` (columns: module docstring). Best placed first among the
    recorders, so that its timings include the least of the others' work."""

    writes = "resources.csv, the cost per task"

    def __init__(self, interval: float = 0.02) -> None:
        self.rss = PeakRss(interval)
        self.rows: dict[int, dict[str, Any]] = {}
        self._start = 0.0
        self._fitted_at: float | None = None
        self._fit_s = math.nan
        self._passes = 0

    # window bookkeeping
    def _open_window(self, ctx: RunContext) -> None:
        self.rss.reset()
        device = _cuda_device(ctx.strategy)
        if device is not None:
            torch.cuda.reset_peak_memory_stats(device)
        self._passes = self._forward_images(ctx)
        self._fitted_at = None
        self._start = time.perf_counter()

    @staticmethod
    def _forward_images(ctx: RunContext) -> int:
        cache = getattr(ctx.strategy, "cache", None)
        return int(getattr(cache, "forward_images", 0))

    # hooks
    def on_run_start(self, ctx: RunContext) -> None:
        self.rows = {i: row for i, row in read_rows(ctx.run_dir).items()
                     if i < ctx.n_tasks and row.get("task_name") == ctx.names[i]}  # rows of restored tasks
        self.rss.start()
        self._open_window(ctx)

    def on_task_start(self, ctx: RunContext, i: int, task: Task) -> None:
        """Called by the loop right before task `i` is fitted (where the runner has this hook)."""
        self._open_window(ctx)

    def on_task_fitted(self, ctx: RunContext, i: int, task: Task) -> None:
        now = time.perf_counter()
        self._fit_s, self._fitted_at = now - self._start, now

    def on_row_end(self, ctx: RunContext, i: int, row: dict[str, float]) -> None:
        if self._fitted_at is not None:  # a task restored from a checkpoint keeps its earlier row
            self.rows[i] = self._measure(ctx, i)
            write_rows(ctx.run_dir, self.rows)
        self._open_window(ctx)

    def close(self) -> None:
        self.rss.stop()

    def _measure(self, ctx: RunContext, i: int) -> dict[str, Any]:
        eval_s = time.perf_counter() - self._fitted_at
        strategy = ctx.strategy
        device = _cuda_device(strategy)
        peak_gpu = int(torch.cuda.max_memory_allocated(device)) if device is not None else None
        peak_rss = self.rss.peak()  # before the states below are copied
        model = strategy.model
        model_bytes = tensor_bytes(model.state_dict()) if getattr(model, "fitted_", True) else 0
        plugins = getattr(strategy, "plugins", [])
        replay = next((p for p in plugins if p.name == "replay"), None)
        cache = getattr(strategy, "cache", None)
        return {"task": i, "task_name": ctx.names[i], "fit_s": round(self._fit_s, 6), "eval_s": round(eval_s, 6),
                "peak_rss_bytes": peak_rss, "peak_gpu_bytes": peak_gpu, "model_bytes": model_bytes,
                "plugin_bytes": sum(tensor_bytes(p.state_dict()) for p in plugins),
                "buffer_images": len(replay.buffer_.samples) if replay is not None else None,
                "cache_bytes": int(getattr(cache, "memory_bytes", 0)),
                "backbone_passes": self._forward_images(ctx) - self._passes}


# -- the file ----------------------------------------------------------------------------------
def _parse(value: str) -> Any:
    if value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number


def read_rows(run_dir: Path | str) -> dict[int, dict[str, Any]]:
    """The rows of ``run_dir/resources.csv`` by task index ({} when there is no file)."""
    path = Path(run_dir) / FILENAME
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        rows = [{k: v if k == "task_name" else _parse(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return {int(r["task"]): r for r in rows}


def write_rows(run_dir: Path | str, rows: dict[int, dict[str, Any]]) -> Path:
    """Write `rows` (task index -> row) to ``run_dir/resources.csv`` atomically, in task order."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for i in sorted(rows):
        writer.writerow({k: "" if rows[i].get(k) is None else rows[i][k] for k in COLUMNS})
    path = Path(run_dir) / FILENAME
    atomic_write_text(path, buf.getvalue(), "resources.csv, the cost per task")
    return path


def summarise(run_dir: Path | str) -> dict[str, Any]:
    """One run's cost in a few numbers ({} without resources.csv).

    Growth ratios compare the last task with the first: how time and memory scale with the number
    of tasks seen, the question users of continual methods ask first.
    """
    rows = read_rows(run_dir)
    if not rows:
        return {}
    ordered = [rows[i] for i in sorted(rows)]

    def column(key: str) -> list[float]:
        return [float(r[key]) for r in ordered if r.get(key) is not None]

    def ratio(values: list[float]) -> float:
        return values[-1] / values[0] if len(values) > 1 and values[0] else math.nan

    fit, ev, rss, gpu = column("fit_s"), column("eval_s"), column("peak_rss_bytes"), column("peak_gpu_bytes")
    return {"tasks": len(ordered), "fit_s": sum(fit), "eval_s": sum(ev), "fit_growth": ratio(fit),
            "peak_rss_bytes": max(rss, default=math.nan), "rss_growth": ratio(rss),
            "peak_gpu_bytes": max(gpu, default=math.nan),
            "final_model_bytes": column("model_bytes")[-1] if column("model_bytes") else math.nan,
            "backbone_passes": int(sum(column("backbone_passes")))}


def resources_table(runs: Iterable[tuple[str, Path | str]]) -> pd.DataFrame:
    """One row per run (label, run directory) that has resources.csv, as display text: times in s,
    memory in MiB, growth as last task / first task; empty where not measured (GPU memory on a CPU)."""
    import pandas as pd

    def text(value: float, digits: int) -> str:
        return "" if value is None or math.isnan(value) else f"{value:.{digits}f}"

    mib = 2.0 ** 20
    out = []
    for label, run_dir in runs:
        s = summarise(run_dir)
        if not s:
            continue
        out.append({"method": label, "tasks": str(s["tasks"]), "fit (s)": text(s["fit_s"], 1),
                    "eval (s)": text(s["eval_s"], 1), "fit last/first": text(s["fit_growth"], 2),
                    "peak RSS (MiB)": text(s["peak_rss_bytes"] / mib, 0),
                    "RSS last/first": text(s["rss_growth"], 2),
                    "peak GPU (MiB)": text(s["peak_gpu_bytes"] / mib, 0),
                    "model (MiB)": text(s["final_model_bytes"] / mib, 2),
                    "backbone passes": str(s["backbone_passes"])})
    return pd.DataFrame(out).set_index("method") if out else pd.DataFrame()
