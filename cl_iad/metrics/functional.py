"""Exact threshold-free detection metrics: image/pixel AUROC and AUPR, and MVTec's PRO.

Every function accepts numpy arrays or torch tensors and computes the exact value: every
distinct score is a threshold, ties are grouped as scikit-learn groups them. The work is one
sort of the normal scores plus a sort of the (few) anomalous ones; see ``_bins.py``.
"""

from __future__ import annotations

import numpy as np

from . import _bins
from ._validate import prepare_maps, prepare_scores, undefined


def _binary_bins(s: np.ndarray, y: np.ndarray) -> _bins.Bins:
    neg = s[~y]
    neg.sort()
    return _bins.bins_from_scores(s[y], neg)


def _auroc(s: np.ndarray, y: np.ndarray, what: str) -> float:
    n_pos = int(y.sum())
    if n_pos == 0:
        return undefined(what, "no anomalous item (only one class present)")
    if n_pos == y.size:
        return undefined(what, "no normal item (only one class present)")
    return _bins.auroc(_binary_bins(s, y))


def _aupr(s: np.ndarray, y: np.ndarray, what: str) -> float:
    if not y.any():
        return undefined(what, "no anomalous item, so recall is undefined")
    return _bins.aupr(_binary_bins(s, y))


def image_auroc(scores, labels) -> float:
    """Area under the ROC curve of image scores (N,) against labels (N,), 1 = anomalous."""
    return _auroc(*prepare_scores(scores, labels, "image_auroc"), "image_auroc")


def image_aupr(scores, labels) -> float:
    """Average precision (step-wise area under the PR curve), as scikit-learn computes it."""
    return _aupr(*prepare_scores(scores, labels, "image_aupr"), "image_aupr")


def pixel_auroc(maps, masks) -> float:
    """AUROC over all pixels of anomaly maps (N,H,W) against ground-truth masks (N,H,W)."""
    m, g = prepare_maps(maps, masks, "pixel_auroc")
    return _auroc(m.reshape(-1), g.reshape(-1), "pixel_auroc")


def pixel_aupr(maps, masks) -> float:
    """Average precision over all pixels of anomaly maps (N,H,W) against masks (N,H,W)."""
    m, g = prepare_maps(maps, masks, "pixel_aupr")
    return _aupr(m.reshape(-1), g.reshape(-1), "pixel_aupr")


# --------------------------------------------------------------------------- PRO

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def region_weights(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores of the anomalous pixels, each pixel's weight 1/|its region|, and the region count.

    Regions are the 8-connected components of each image's mask (MVTec AD's definition), so
    PRO(t) = (1/R) * sum of the weights of anomalous pixels scored >= t.
    """
    from scipy import ndimage

    vals, weights, n_regions = [], [], 0
    for m, g in zip(maps, masks):
        if not g.any():
            continue
        lab, n = ndimage.label(g, structure=EIGHT_CONNECTED)  # int32, one image at a time
        sizes = np.bincount(lab.ravel())
        vals.append(m[g])
        weights.append(1.0 / sizes[lab[g]])
        n_regions += n
    if not vals:
        return np.zeros(0, maps.dtype), np.zeros(0), 0
    return np.concatenate(vals), np.concatenate(weights), n_regions


def _pro_bins(m: np.ndarray, g: np.ndarray, fpr_limit: float | None) -> tuple[_bins.Bins, int, int]:
    """Exact PRO bins down to the first threshold whose FPR exceeds `fpr_limit` (None: all).

    Scores below the threshold v at which FPR first passes the limit never enter the area, so
    v is found with a linear-time partition of the normal scores and only scores >= v are sorted.
    """
    pos, w, n_regions = region_weights(m, g)
    neg = m[~g]
    n_neg = neg.size
    if n_regions == 0 or n_neg == 0:
        return _bins.Bins(np.zeros(0), np.zeros(0)), n_neg, n_regions
    if fpr_limit is not None and fpr_limit < 1.0:
        k = min(n_neg, int(np.floor(fpr_limit * n_neg)) + 1)  # k normal scores >= v: FPR(v) > limit
        neg.partition(n_neg - k)
        v = neg[n_neg - k]
        neg = neg[neg >= v]  # the top k and any ties with v
        keep = pos >= v
        pos, w = pos[keep], w[keep]
    neg.sort()
    return _bins.bins_from_scores(pos, neg, w), n_neg, n_regions


def pro_curve(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """The exact PRO curve as (FPR, PRO) corner points, from (0, 0) to (1, 1).

    PRO at a threshold is the mean over all ground-truth regions (8-connected components) of
    the fraction of the region's pixels scored at or above the threshold; FPR is the fraction
    of all normal pixels scored at or above it (Bergmann et al., IJCV 2021). Points that lie on
    a straight stretch of the curve are left out; the curve through the rest is identical.
    """
    m, g = prepare_maps(maps, masks, "pro_curve")
    b, n_neg, n_regions = _pro_bins(m, g, None)
    if n_regions == 0 or n_neg == 0:
        return np.array([0.0]), np.array([0.0])
    return np.r_[0.0, np.cumsum(b.neg) / n_neg], np.r_[0.0, np.cumsum(b.pos) / n_regions]


def pro_score(maps, masks, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve for FPR in [0, fpr_limit] (AUPRO@fpr_limit).

    Exact: every distinct score is a threshold, regions are 8-connected, PRO is interpolated
    linearly at ``fpr_limit`` and the area divided by ``fpr_limit`` (MVTec AD's definition).
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}; MVTec AD uses 0.3")
    m, g = prepare_maps(maps, masks, "pro_score")
    b, n_neg, n_regions = _pro_bins(m, g, fpr_limit)
    if n_regions == 0:
        return undefined("pro_score", "no anomalous region in the masks")
    if n_neg == 0:
        return undefined("pro_score", "no normal pixel, so the false-positive rate is undefined")
    return _bins.pro_area(b, n_neg, n_regions, fpr_limit)
