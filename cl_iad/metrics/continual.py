"""Continual-learning measures of a T x T matrix R, R[i][j] = score on task j after training 0..i.

NaN cells (an undefined metric, e.g. image AUROC on a test set without anomalies) are skipped
by every measure, and a warning names them. See docs/metrics.md for definitions and sources.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

FORGETTING_DEFINITIONS = ("chaudhry", "avalanche", "im-iad", "max-all")
# One line of citation per definition, written beside each value in summary.json and reports.
FORGETTING_LABELS = {
    "chaudhry": "Chaudhry et al. (ECCV 2018): mean over the T-1 old tasks of max_{l in [j, T-2]} R[l][j] - R[T-1][j]",
    "im-iad": "IM-IAD (Xie et al., 2023): the same per-task values, summed and divided by T (the newest task counts 0)",
    "avalanche": "Avalanche: mean over the T-1 old tasks of R[j][j] - R[T-1][j] (right after learning minus final)",
    "max-all": "mean over the T-1 old tasks of max over every row l of R[l][j] - R[T-1][j]",
    "joint-gap": "joint minus continual: mean over tasks of R_joint[T-1][j] - R[T-1][j], against a joint run of the "
                 "same settings",
}


def _matrix(R) -> np.ndarray:
    r = np.asarray(getattr(R, "values", R), dtype=np.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1]:
        raise ValueError(f"expected a square T x T matrix (rows: trained up to task i, columns: evaluated "
                         f"task j), got shape {r.shape}")
    return r


def _warn_nan_cells(r: np.ndarray, cells: list[tuple[int, int]], what: str) -> None:
    bad = [c for c in cells if not np.isfinite(r[c])]
    if bad:
        log.warning("%s: skipping %d NaN cell(s) R[i][j] at %s", what, len(bad), bad)


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    return float(values[finite].mean()) if finite.any() else float("nan")


def average_accuracy(R) -> float:
    """ACC: mean of the last row, the score on every task after training all of them."""
    r = _matrix(R)
    t = r.shape[0]
    _warn_nan_cells(r, [(t - 1, j) for j in range(t)], "average_accuracy")
    return _nanmean(r[-1])


def backward_transfer(R) -> float:
    """BWT = mean over j < T-1 of R[T-1][j] - R[j][j] (Lopez-Paz & Ranzato, 2017)."""
    r = _matrix(R)
    t = r.shape[0]
    if t < 2:
        return float("nan")
    _warn_nan_cells(r, [c for j in range(t - 1) for c in ((t - 1, j), (j, j))], "backward_transfer")
    return _nanmean(np.array([r[-1, j] - r[j, j] for j in range(t - 1)]))


def forward_transfer(R, baseline: float | np.ndarray = 0.5) -> float:
    """FWT = mean over j >= 1 of R[j-1][j] - b_j (Lopez-Paz & Ranzato, 2017).

    b_j is the score on task j of a model that has not learnt it; we use a detector ranking at
    random: 0.5 for AUROC (the default), 0.15 for PRO@0.3, the prevalence for AUPR (the runner
    passes these per task; see cl_iad.results.chance_baseline).
    """
    r = _matrix(R)
    t = r.shape[0]
    if t < 2:
        return float("nan")
    b = np.broadcast_to(np.asarray(baseline, dtype=np.float64), (t,))
    _warn_nan_cells(r, [(j - 1, j) for j in range(1, t)], "forward_transfer")
    return _nanmean(np.array([r[j - 1, j] - b[j] for j in range(1, t)]))


def forgetting(R, definition: str = "chaudhry") -> np.ndarray:
    """Per-task forgetting after the last task, for the old tasks j = 0..T-2.

    * ``chaudhry`` (default; Chaudhry et al., ECCV 2018): max over l in [j, T-2] of R[l][j] - R[T-1][j].
    * ``avalanche`` (Avalanche's ``forgetting`` metric): R[j][j] - R[T-1][j], the score right after
      learning minus the final one.
    * ``max-all``: max over all rows l of R[l][j] - R[T-1][j] (includes rows before task j was trained).
    * ``im-iad``: same per-task values as ``chaudhry``; only its average differs.

    NaN cells are skipped inside the max; a task whose final score is NaN gets NaN.
    """
    if definition not in FORGETTING_DEFINITIONS:
        raise ValueError(f"unknown forgetting definition {definition!r}; choose from {FORGETTING_DEFINITIONS}")
    r = _matrix(R)
    t = r.shape[0]
    out = np.full(max(t - 1, 0), np.nan)
    for j in range(t - 1):
        if definition == "avalanche":
            rows = [j]
        elif definition == "max-all":
            rows = list(range(t))
        else:
            rows = list(range(j, t - 1))
        _warn_nan_cells(r, [(i, j) for i in rows] + [(t - 1, j)], f"forgetting[{definition}] of task {j}")
        col = r[rows, j]
        if np.isfinite(col).any():
            out[j] = np.nanmax(col) - r[-1, j]
    return out


def average_forgetting(R, definition: str = "chaudhry") -> float:
    """Mean forgetting over the T-1 old tasks (NaN ones skipped); ``im-iad`` divides the sum by T
    instead (IM-IAD, Xie et al., 2023), which counts the newest task as zero forgetting."""
    fm = forgetting(R, definition)
    if fm.size == 0:
        return float("nan")
    finite = fm[np.isfinite(fm)]
    if not finite.size:
        return float("nan")
    if definition == "im-iad":
        return float(finite.sum() / (finite.size + 1))
    return float(finite.mean())


def joint_gap_per_task(R, R_joint) -> np.ndarray:
    """Per task j, the final score of joint training minus the final continual score: R_joint[-1][j] - R[-1][j].

    "Forgetting relative to joint training", as papers comparing against the joint upper bound use
    it: what the continual run loses, after the last task, against one model trained on every task
    at once under the same settings. Both matrices have the same tasks in the same order; NaN cells
    stay NaN.
    """
    r, j = _matrix(R), _matrix(R_joint)
    if r.shape != j.shape:
        raise ValueError(f"joint gap: the continual matrix is {r.shape} and the joint one {j.shape}; compare runs "
                         "of the same tasks")
    return j[-1] - r[-1]


def joint_gap(R, R_joint) -> float:
    """Mean over tasks of :func:`joint_gap_per_task` (NaN tasks skipped): ACC of joint minus ACC of continual."""
    return _nanmean(joint_gap_per_task(R, R_joint))
