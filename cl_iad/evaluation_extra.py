"""Comparing continual methods side by side: the joint gap and the methods table of ``cl-iad report``.

* :func:`joint_twins` finds, for each run, the joint run of the same settings beside it (same
  ``data`` and ``model`` sections of ``config.yaml`` and the same seed; only the strategy differs),
  and :func:`joint_gaps` computes the "joint minus continual" gap of every metric against it
  (:func:`cl_iad.metrics.continual.joint_gap`).
* :func:`methods_table` is the comparison the issue asks for, one row per method (mean ± std over
  task orders): final image AUROC, pixel AUROC and PRO (the mean of the last matrix row), forgetting
  under Chaudhry's and IM-IAD's averages and the joint gap, the mixed-task image and pixel AUROC
  (``mixed.csv``, :mod:`cl_iad.mixed`), routing accuracy after the last task, and the bytes the
  method stores after the last task (model state plus regime states, from ``resources.csv``).

Runs are read duck-typed (``run_dir``, ``method``, ``matrices``, ``summary``, ``settings``), as
:class:`cl_iad.report.RunRecord` holds them, so this module does not import the report.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .metrics.continual import joint_gap
from .mixed import final_mixed

log = logging.getLogger(__name__)

JOINT = "joint"
METHOD_METRICS = ("image_auroc", "pixel_auroc", "pro")
NOTES = (
    ("Final: mean over tasks of the last matrix row (ACC). FM: Chaudhry et al. (mean over the T-1 old tasks); "
     "FM IM-IAD: the same sum divided by T; joint gap: joint run's final score minus this run's, when a joint run "
     "of the same settings was found beside it."),
    ("Mixed: AUROC of every task's test images scored together after the last task (no task id, one scale); "
     "routing: share of test images sent to their own task; stored: bytes of the model state and the regimes' "
     "states after the last task (resources.csv)."),
    "Task-aware methods (per_task with the task id) have zero forgetting by construction.",
)


def _spec(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return spec if isinstance(spec, dict) else None


def _twin_key(spec: dict) -> str:
    """What a joint run must share with a run to be its twin: data, model and seed (not the strategy)."""
    import json

    run = spec.get("run") or {}
    return json.dumps({"data": spec.get("data"), "model": spec.get("model"), "seed": run.get("seed")},
                      sort_keys=True, default=str)


def joint_twins(run_dirs: Iterable[Path | str]) -> dict[Path, Path]:
    """For each non-joint run, the joint run among `run_dirs` with the same data, model and seed (config.yaml)."""
    specs = {Path(d): _spec(Path(d)) for d in run_dirs}
    joints = {_twin_key(s): d for d, s in specs.items()
              if s is not None and str((s.get("strategy") or {}).get("name")) == JOINT}
    out = {}
    for d, s in specs.items():
        if s is None or str((s.get("strategy") or {}).get("name")) == JOINT:
            continue
        twin = joints.get(_twin_key(s))
        if twin is not None:
            out[d] = twin
    return out


def joint_gaps(runs: Sequence[Any]) -> dict[Path, dict[str, float]]:
    """Per run with a joint twin among `runs`: metric -> joint minus continual gap (``fm`` of ``joint-gap``)."""
    by_dir = {Path(r.run_dir): r for r in runs}
    out: dict[Path, dict[str, float]] = {}
    for d, twin in joint_twins(by_dir).items():
        run, joint = by_dir[d], by_dir[twin]
        gaps = {}
        for metric, R in run.matrices.items():
            Rj = joint.matrices.get(metric)
            if Rj is not None and list(Rj.columns) == list(R.columns):
                gaps[metric] = joint_gap(R, Rj)
        out[d] = gaps
    return out


def final_routing(run: Any) -> float:
    """Mean routing accuracy over the tasks after the last one (NaN for methods that do not route)."""
    R = run.matrices.get("routing_accuracy")
    if R is None:
        return float("nan")
    last = R.iloc[-1].to_numpy(dtype=float)
    return float(np.nanmean(last)) if np.isfinite(last).any() else float("nan")


def stored_bytes(run_dir: Path | str) -> float:
    """Bytes of model and regime states after the last task, from resources.csv (NaN without it)."""
    path = Path(run_dir) / "resources.csv"
    if not path.is_file():
        return float("nan")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return float("nan")
    last = max(rows, key=lambda r: int(r.get("task") or 0))
    total = 0.0
    for key in ("model_bytes", "plugin_bytes"):
        try:
            total += float(last.get(key) or 0)
        except ValueError:
            return float("nan")
    return total


def final_value(run: Any, metric: str) -> float:
    """Mean of the last matrix row (ACC) of `metric`; NaN when the run has no such output."""
    R = run.matrices.get(metric)
    if R is None:
        return float("nan")
    last = R.iloc[-1].to_numpy(dtype=float)
    return float(np.nanmean(last)) if np.isfinite(last).any() else float("nan")


def _fm(run: Any, metric: str, definition: str) -> float:
    entry = (run.summary.get(metric) or {}).get("forgetting", {}).get(definition, {})
    value = entry.get("fm")
    if value is None and definition == "chaudhry":
        value = (run.summary.get(metric) or {}).get("fm")  # a summary.json written before the side-by-side entry
    return float("nan") if value is None else float(value)


def _fmt(values: list[float], digits: int = 3) -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return "-"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def _fmt_bytes(values: list[float]) -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return "-"
    mean = v.mean()
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if mean >= scale:
            return f"{mean / scale:.1f} {unit}"
    return f"{mean:.0f} B"


def method_values(run: Any, gaps: dict[str, float] | None = None) -> dict[str, float]:
    """One run's row of :func:`methods_table`, as numbers."""
    mixed = final_mixed(run.run_dir) or {}
    out = {f"final {m}": final_value(run, m) for m in METHOD_METRICS}
    out["FM image (Chaudhry)"] = _fm(run, "image_auroc", "chaudhry")
    out["FM image (IM-IAD)"] = _fm(run, "image_auroc", "im-iad")
    out["joint gap image"] = (gaps or {}).get("image_auroc", float("nan"))
    out["mixed image AUROC"] = float(mixed.get("mixed_image_auroc", float("nan")))
    out["mixed pixel AUROC"] = float(mixed.get("mixed_pixel_auroc", float("nan")))
    out["routing accuracy"] = final_routing(run)
    out["stored bytes"] = stored_bytes(run.run_dir)
    return out


def methods_table(runs: Sequence[Any]) -> pd.DataFrame:
    """Methods x the comparison columns, mean ± std over task orders (see the module docstring)."""
    gaps = joint_gaps(runs)
    per: dict[str, dict[str, list[float]]] = {}
    orders: dict[str, set] = {}
    aware: dict[str, bool] = {}
    for r in runs:
        row = per.setdefault(r.method, {})
        orders.setdefault(r.method, set()).add(getattr(r, "order", "?"))
        aware[r.method] = bool(getattr(r, "task_aware", False))
        for key, value in method_values(r, gaps.get(Path(r.run_dir))).items():
            row.setdefault(key, []).append(value)
    columns = list(next(iter(per.values()), {}))
    table = pd.DataFrame({c: {m: (_fmt_bytes(v[c]) if c == "stored bytes" else _fmt(v.get(c, [])))
                              for m, v in per.items()} for c in columns})
    table.insert(0, "orders", pd.Series({m: len(o) for m, o in orders.items()}))
    table.insert(1, "task_aware", pd.Series(aware))
    table.index.name = "method"
    return table
