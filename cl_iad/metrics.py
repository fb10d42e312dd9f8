"""Threshold-free detection metrics and continual-learning measures.

Every function accepts numpy arrays or torch tensors. Ranking metrics are computed exactly
from one sort with ties grouped, which is what scikit-learn does, so results agree with
``roc_auc_score`` and ``average_precision_score`` to rounding. See docs/metrics.md for each
definition and its source.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

log = logging.getLogger(__name__)


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_scores(scores: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(scores)
    if bad.any():
        raise ValueError(f"{what} contain {int(bad.sum())} NaN/inf values; the model produced invalid scores")


def _check_labels(labels: np.ndarray, what: str) -> np.ndarray:
    uniq = np.unique(labels)
    if not np.isin(uniq, (0, 1)).all():
        raise ValueError(f"{what} must be 0/1 (1 = anomalous); found values {uniq[:10].tolist()}")
    return labels.astype(bool)


def _prepare(scores, labels, what: str) -> tuple[np.ndarray, np.ndarray]:
    s = _np(scores).astype(np.float64, copy=False).ravel()
    y = _np(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{what}: scores have {s.size} values but labels have {y.size}; shapes must match")
    _check_scores(s, f"{what} scores")
    return s, _check_labels(y, f"{what} labels")


def _ranked_counts(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true/false positives at each distinct threshold, highest score first."""
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each tie group
    tps = np.cumsum(y)[last].astype(np.float64)
    fps = (last + 1) - tps
    return tps, fps


def _auroc(s: np.ndarray, y: np.ndarray, what: str) -> float:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        warnings.warn(f"{what}: AUROC undefined with only one class present; returning NaN", stacklevel=3)
        return float("nan")
    tps, fps = _ranked_counts(s, y)
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.trapezoid(tpr, fpr))


def _aupr(s: np.ndarray, y: np.ndarray, what: str) -> float:
    if not y.any():
        warnings.warn(f"{what}: AUPR undefined without positives; returning NaN", stacklevel=3)
        return float("nan")
    tps, fps = _ranked_counts(s, y)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def image_auroc(scores, labels) -> float:
    """Area under the ROC curve of image scores (N,) against labels (N,), 1 = anomalous."""
    return _auroc(*_prepare(scores, labels, "image_auroc"), "image_auroc")


def image_aupr(scores, labels) -> float:
    """Average precision (step-wise area under the PR curve), as scikit-learn computes it."""
    return _aupr(*_prepare(scores, labels, "image_aupr"), "image_aupr")


def _prepare_maps(maps, masks, what: str) -> tuple[np.ndarray, np.ndarray]:
    m = _np(maps)
    g = _np(masks)
    if m.shape != g.shape:
        raise ValueError(f"{what}: maps have shape {m.shape} but masks have shape {g.shape}; they must match")
    if m.ndim == 2:
        m, g = m[None], g[None]
    m = m.astype(np.float64, copy=False)
    _check_scores(m, f"{what} maps")
    return m, _check_labels(g, f"{what} masks")


def pixel_auroc(maps, masks) -> float:
    """AUROC over all pixels of anomaly maps (N,H,W) against ground-truth masks (N,H,W)."""
    m, g = _prepare_maps(maps, masks, "pixel_auroc")
    return _auroc(m.ravel(), g.ravel(), "pixel_auroc")


def pixel_aupr(maps, masks) -> float:
    """Average precision over all pixels."""
    m, g = _prepare_maps(maps, masks, "pixel_aupr")
    return _aupr(m.ravel(), g.ravel(), "pixel_aupr")


def _regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Globally numbered 8-connected ground-truth regions (0 = background) and their count."""
    from scipy import ndimage

    structure = np.ones((3, 3), dtype=bool)
    labels = np.zeros(masks.shape, dtype=np.int64)
    offset = 0
    for i, mask in enumerate(masks):
        lab, n = ndimage.label(mask, structure=structure)
        labels[i] = np.where(lab > 0, lab + offset, 0)
        offset += n
    return labels, offset


def pro_curve(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """Exact (FPR, PRO) points at every distinct score, highest threshold first, starting at (0, 0).

    PRO at a threshold is the mean over all ground-truth regions (8-connected components) of
    the fraction of the region's pixels scored at or above the threshold; FPR is the fraction
    of all normal pixels scored at or above it (MVTec AD, Bergmann et al., IJCV 2021).
    """
    m, g = _prepare_maps(maps, masks, "pro_score")
    regions, n_regions = _regions(g)
    if n_regions == 0:
        return np.array([0.0]), np.array([0.0])
    n_normal = int((~g).sum())
    if n_normal == 0:
        raise ValueError("pro_score: no normal pixel, so the false-positive rate is undefined")
    sizes = np.bincount(regions.ravel(), minlength=n_regions + 1).astype(np.float64)
    flat_regions = regions.ravel()
    pro_w = np.where(flat_regions > 0, 1.0 / (n_regions * sizes[flat_regions]), 0.0)
    fpr_w = np.where(flat_regions > 0, 0.0, 1.0 / n_normal)
    s = m.ravel()
    order = np.argsort(-s, kind="stable")
    s = s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    pro = np.cumsum(pro_w[order])[last]
    fpr = np.cumsum(fpr_w[order])[last]
    return np.r_[0.0, fpr], np.r_[0.0, pro]


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under y(x) for x in [0, limit], interpolating y at the limit."""
    k = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:k], y[:k]
    if k < x.size and xs[-1] < limit:
        x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        xs, ys = np.r_[xs, limit], np.r_[ys, y_lim]
    return float(np.trapezoid(ys, xs))


def pro_score(maps, masks, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve for FPR in [0, fpr_limit] (AUPRO@fpr_limit)."""
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(maps, masks)
    if fpr.size == 1:
        warnings.warn("pro_score: no anomalous region in the masks; returning NaN", stacklevel=2)
        return float("nan")
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


# --------------------------------------------------------------------------- continual measures


def _matrix(R) -> np.ndarray:
    r = np.asarray(getattr(R, "values", R), dtype=np.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1]:
        raise ValueError(f"expected a square T x T accuracy matrix, got shape {r.shape}")
    return r


def _nanmean(values: np.ndarray, what: str) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        log.info("%s: skipping %d NaN cell(s)", what, int((~finite).sum()))
    return float(values[finite].mean()) if finite.any() else float("nan")


def average_accuracy(R) -> float:
    """ACC: mean of the last row, the score on every task after training all of them."""
    r = _matrix(R)
    return _nanmean(r[-1], "average_accuracy")


def backward_transfer(R) -> float:
    """BWT = mean over j < T-1 of R[T-1][j] - R[j][j] (Lopez-Paz & Ranzato, 2017)."""
    r = _matrix(R)
    t = r.shape[0]
    if t < 2:
        return float("nan")
    return _nanmean(np.array([r[-1, j] - r[j, j] for j in range(t - 1)]), "backward_transfer")


def forward_transfer(R, baseline: float | np.ndarray = 0.5) -> float:
    """FWT = mean over j >= 1 of R[j-1][j] - b_j (Lopez-Paz & Ranzato, 2017).

    b_j is the score of an untrained model on task j; 0.5 (chance AUROC) by default.
    """
    r = _matrix(R)
    t = r.shape[0]
    if t < 2:
        return float("nan")
    b = np.broadcast_to(np.asarray(baseline, dtype=np.float64), (t,))
    return _nanmean(np.array([r[j - 1, j] - b[j] for j in range(1, t)]), "forward_transfer")


FORGETTING_DEFINITIONS = ("chaudhry", "avalanche", "im-iad", "max-all")


def forgetting(R, definition: str = "chaudhry") -> np.ndarray:
    """Per-task forgetting after the last task, for the old tasks j = 0..T-2.

    * ``chaudhry`` (default; Chaudhry et al., ECCV 2018): max over l in [j, T-2] of R[l][j] - R[T-1][j].
    * ``avalanche``: R[j][j] - R[T-1][j], the score right after learning minus the final one.
    * ``max-all``: max over all rows l of R[l][j] - R[T-1][j] (includes not-yet-trained rows).
    * ``im-iad``: same per-task values as ``chaudhry``; only its average differs.
    """
    r = _matrix(R)
    t = r.shape[0]
    if definition not in FORGETTING_DEFINITIONS:
        raise ValueError(f"unknown forgetting definition {definition!r}; choose from {FORGETTING_DEFINITIONS}")
    out = np.full(max(t - 1, 0), np.nan)
    for j in range(t - 1):
        if definition == "avalanche":
            out[j] = r[j, j] - r[-1, j]
        elif definition == "max-all":
            out[j] = np.nanmax(r[:, j]) - r[-1, j]
        else:
            col = r[j : t - 1, j]
            out[j] = np.nanmax(col) - r[-1, j] if np.isfinite(col).any() else np.nan
    return out


def average_forgetting(R, definition: str = "chaudhry") -> float:
    """Mean forgetting over the T-1 old tasks; ``im-iad`` divides the sum by T instead
    (IM-IAD, Xie et al., 2023), which counts the newest task as zero forgetting."""
    fm = forgetting(R, definition)
    if fm.size == 0:
        return float("nan")
    if definition == "im-iad":
        finite = fm[np.isfinite(fm)]
        return float(finite.sum() / (fm.size + 1)) if finite.size else float("nan")
    return _nanmean(fm, "average_forgetting")
