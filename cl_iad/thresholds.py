"""Decision thresholds for deployment.

Metrics are threshold-free, but a line needs a yes/no per image and a mask per pixel. After each
task we compute that task's F1-optimal threshold on its test set (or on a held-out split), for
image scores and for pixel maps, and report how thresholds drift across training steps.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

NO_POSITIVES = "the test set has no anomalous {what}, so no F1-optimal threshold exists"


@dataclass(frozen=True)
class Threshold:
    """A decision threshold with the F1 it reached where it was fitted."""

    value: float
    f1: float


def f1_optimal_threshold(scores, labels) -> Threshold:
    """The score threshold maximising F1 (predict anomalous when score >= threshold).

    Exact: every distinct score is tried. Without positives the threshold is the maximum score
    (nothing flagged) and F1 is NaN.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    if not y.any():
        return Threshold(float(s.max()) if s.size else float("nan"), float("nan"))
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    fn = y.sum() - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    k = int(np.argmax(f1))
    return Threshold(float(s[last[k]]), float(f1[k]))


def fit_task_thresholds(pred_score, labels, anomaly_map=None, masks=None, held_out: float = 0.0,
                        seed: int = 0) -> dict:
    """Image and pixel thresholds for one task, as JSON-ready data (NaN written as None).

    With ``held_out`` in (0, 1), thresholds are fitted on that fraction of the test images
    (stratified by label) and the F1 they reach on the remaining images is reported too.
    Without an anomalous image (or pixel) there is nothing to fit: the "image" (or "pixel")
    entry is left out and ``undefined`` says why, so deployment falls back to the threshold
    fitted on all tasks pooled instead of using one that flags a normal image.
    """
    scores = np.asarray(pred_score, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    idx_fit = np.arange(scores.size)
    idx_eval = np.array([], dtype=int)
    if held_out:
        if not 0 < held_out < 1:
            raise ValueError(f"held_out must be in (0, 1), got {held_out}")
        rng = np.random.default_rng(seed)
        fit, ev = [], []
        for cls in (0, 1):
            members = rng.permutation(np.flatnonzero(labels == cls))
            n = max(1, round(held_out * members.size)) if members.size else 0
            fit.append(members[:n])
            ev.append(members[n:])
        idx_fit, idx_eval = np.sort(np.concatenate(fit)), np.sort(np.concatenate(ev))
    out: dict[str, Any] = {"held_out": held_out}
    if labels[idx_fit].any():
        out["image"] = f1_optimal_threshold(scores[idx_fit], labels[idx_fit]).__dict__
        if idx_eval.size:
            out["image"]["f1_eval"] = _f1_at(scores[idx_eval], labels[idx_eval], out["image"]["value"])
    else:
        out["undefined"] = {"image": NO_POSITIVES.format(what="image")}
    if anomaly_map is not None and masks is not None:
        maps = np.asarray(anomaly_map)
        gt = np.asarray(masks)
        if gt[idx_fit].any():
            out["pixel"] = _pixel_threshold(maps[idx_fit], gt[idx_fit]).__dict__
            if idx_eval.size:
                out["pixel"]["f1_eval"] = _f1_at(maps[idx_eval], gt[idx_eval], out["pixel"]["value"])
        else:
            out.setdefault("undefined", {})["pixel"] = NO_POSITIVES.format(what="pixel")
    return json_safe(out)


def json_safe(obj: Any) -> Any:
    """`obj` with NaN and infinite floats replaced by None, since JSON has no NaN (``json.dumps``
    would write the invalid token ``NaN``) and numpy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _pixel_threshold(maps: np.ndarray, masks: np.ndarray, max_pixels: int = 2_000_000) -> Threshold:
    """F1-optimal pixel threshold; above `max_pixels` it is fitted on a fixed-seed subsample."""
    s, y = maps.ravel(), masks.ravel()
    if s.size > max_pixels:
        pick = np.random.default_rng(0).choice(s.size, max_pixels, replace=False)
        s, y = s[pick], y[pick]
    return f1_optimal_threshold(s, y)


def _f1_at(scores, labels, threshold: float) -> float:
    pred = np.asarray(scores).ravel() >= threshold
    y = np.asarray(labels).ravel().astype(bool)
    tp = float((pred & y).sum())
    denom = 2 * tp + float((pred & ~y).sum()) + float((~pred & y).sum())
    return 2 * tp / denom if denom else float("nan")


def threshold_drift(history: dict[int, dict[int, dict]], kind: str = "image") -> dict:
    """How the threshold of each task moves over training steps.

    `history[i][j]` is task j's threshold record after training task i. Returns per task the
    values over steps, their range (max - min) and the relative range (range / first value);
    steps without a threshold (no anomalous image) are left out, and undefined numbers are None.
    """
    tasks = sorted({j for row in history.values() for j in row})
    out = {}
    for j in tasks:
        vals = [history[i][j][kind]["value"] for i in sorted(history)
                if j in history[i] and (history[i][j].get(kind) or {}).get("value") is not None]
        if not vals:
            continue
        rng = float(max(vals) - min(vals))
        out[j] = {"values": vals, "range": rng,
                  "relative_range": rng / abs(vals[0]) if vals[0] else float("nan")}
    return json_safe(out)


# -- RUN_DIR/thresholds.jsonl ---------------------------------------------------------------
def append_record(run_dir: Path, record: dict) -> None:
    """Add one record (one cell's thresholds) as a JSON line to ``run_dir/thresholds.jsonl``."""
    with (Path(run_dir) / "thresholds.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(json_safe(record)) + "\n")


def load_thresholds(run_dir: Path | str) -> dict[int, dict[Any, dict]]:
    """thresholds.jsonl as history[trained_upto][eval_task_name]; the last record of a cell wins."""
    history: dict[int, dict] = {}
    path = Path(run_dir) / "thresholds.jsonl"
    if path.is_file():
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for n, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines) - 1:  # a line torn by a crash: its cell was never stored, so it is redone
                    log.warning("%s: ignoring a torn last line (written when a run stopped)", path)
                    continue
                raise ValueError(f"{path} line {n + 1} is not JSON; delete the file and rerun the same command to "
                                 "rebuild it from the run") from None
            history.setdefault(rec["trained_upto"], {})[rec["eval_task"]] = rec
    return history


# -- one threshold for all tasks ------------------------------------------------------------
PooledSample = tuple[np.ndarray, np.ndarray, "np.ndarray | None", "np.ndarray | None"]


def pooled_sample(pred_score: np.ndarray, labels: np.ndarray, anomaly_map: np.ndarray | None, masks: np.ndarray,
                  has_pixel_gt: bool, pixels: int = 200_000) -> PooledSample:
    """Scores and labels of one task, and a fixed-seed sample of its pixels, for :func:`pooled_thresholds`."""
    if anomaly_map is None or not has_pixel_gt:
        return pred_score, labels, None, None
    flat_map, flat_gt = anomaly_map.ravel(), masks.ravel()
    if flat_map.size > pixels:
        pick = np.random.default_rng(0).choice(flat_map.size, pixels, replace=False)
        flat_map, flat_gt = flat_map[pick], flat_gt[pick]
    return pred_score, labels, flat_map, flat_gt


def pooled_thresholds(pooled: list[PooledSample]) -> dict:
    """Image (and, where maps exist, pixel) thresholds fitted on several tasks' samples pooled, for
    images whose task is unknown at deployment."""
    rec = fit_task_thresholds(np.concatenate([p[0] for p in pooled]), np.concatenate([p[1] for p in pooled]))
    with_maps = [p for p in pooled if p[2] is not None]
    if with_maps:
        gts = np.concatenate([p[3] for p in with_maps])
        if gts.any():
            rec["pixel"] = f1_optimal_threshold(np.concatenate([p[2] for p in with_maps]), gts).__dict__
    return rec
