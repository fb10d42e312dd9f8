"""The one implementation behind every ranking metric, functional and streaming.

Both forms reduce their data to *score bins* in descending score order: bin b holds the
positive weight ``pos[b]`` (a count of anomalous items, or for PRO the sum of 1/|region| over
its anomalous pixels) and the count ``neg[b]`` of normal items whose scores fall in it. The
ROC, PR and PRO curves move from one bin to the next in a straight line, which is exactly
how a group of tied scores is handled (scikit-learn's convention), so:

* a bin of *one* distinct score gives the exact curve;
* a run of distinct scores holding only normal items (or only anomalous ones, for AUROC and
  PRO) lies on a straight line of the exact curve, so one bin for the run loses nothing;
* a bin that merges several distinct scores of both classes (the streaming path does this
  only when it exceeds its memory budget) makes the order inside it unknown. Each metric is
  then returned as if those scores were tied, and :func:`bounds` gives the exact interval
  the true value lies in, obtained by ordering every uncertain bin worst-first and best-first
  (for AP, a merged bin of anomalous items only is uncertain too: ties raise precision).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Bins:
    """Descending score bins: positive weight and negative count per bin, and which bins merge
    several distinct scores (None: every bin holds one score, or a run that loses nothing)."""

    pos: np.ndarray
    neg: np.ndarray
    merged: np.ndarray | None = None


def bins_from_scores(pos_vals: np.ndarray, neg_sorted: np.ndarray, pos_w: np.ndarray | None = None) -> Bins:
    """Exact bins from anomalous scores and the *ascending-sorted* normal scores.

    One bin per distinct anomalous score (with the normal scores tied to it) and one per run of
    normal scores between consecutive anomalous scores: 2K+1 bins for K distinct anomalous
    scores, however many normal items there are.
    """
    if pos_w is None:
        u, cnt = np.unique(pos_vals, return_counts=True)
        w = cnt.astype(np.float64)
    else:
        order = np.argsort(pos_vals, kind="stable")
        v = pos_vals[order]
        starts = np.r_[0, np.flatnonzero(v[1:] != v[:-1]) + 1] if v.size else np.zeros(0, dtype=np.intp)
        u = v[starts]
        w = np.add.reduceat(pos_w[order], starts) if v.size else np.zeros(0)
    lt = np.searchsorted(neg_sorted, u, side="left")
    le = np.searchsorted(neg_sorted, u, side="right")
    neg = np.zeros(2 * u.size + 1)
    pos = np.zeros(2 * u.size + 1)
    neg[0::2] = _runs(lt, le, neg_sorted.size)
    neg[1::2] = le - lt
    pos[1::2] = w
    return Bins(pos[::-1].copy(), neg[::-1].copy())


def _runs(lt: np.ndarray, le: np.ndarray, n: int) -> np.ndarray:
    """Counts of normal scores strictly between consecutive anomalous scores (ascending)."""
    return np.r_[lt, n] - np.r_[0, le]


def auroc(b: Bins) -> float:
    """Mann-Whitney form of the trapezoid ROC area: P(s+ > s-) + P(s+ = s-)/2."""
    p, n = b.pos.sum(), b.neg.sum()
    below = n - np.cumsum(b.neg)  # normal items scored strictly below each bin
    return float(np.dot(b.pos, below + 0.5 * b.neg) / (p * n))


def aupr(b: Bins) -> float:
    """Average precision: sum over thresholds of (recall step) x precision, as scikit-learn."""
    tp, fp = np.cumsum(b.pos), np.cumsum(b.neg)
    k = b.pos > 0
    return float(np.sum(b.pos[k] * tp[k] / (tp[k] + fp[k])) / tp[-1])


def pro_area(b: Bins, n_neg: int, n_regions: int, fpr_limit: float) -> float:
    """Normalised area under PRO(FPR) from 0 to `fpr_limit`; the bins may stop once FPR passes it."""
    fpr = np.r_[0.0, np.cumsum(b.neg) / n_neg]
    pro = np.r_[0.0, np.cumsum(b.pos) / n_regions]
    return area_up_to(fpr, pro, fpr_limit) / fpr_limit


def area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under y(x) for x in [0, limit], interpolating y linearly at the limit."""
    k = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:k], y[:k]
    if k < x.size and xs[-1] < limit:
        x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
        xs, ys = np.r_[xs, limit], np.r_[ys, y0 + (y1 - y0) * (limit - x0) / (x1 - x0)]
    return float(np.trapezoid(ys, xs))


def _split(b: Bins, u: np.ndarray, positives_first: bool) -> Bins:
    """Each uncertain bin (mask `u`) split in two, its positives before (or after) its normal items."""
    pos, neg = np.zeros((b.pos.size, 2)), np.zeros((b.pos.size, 2))
    first, second = (0, 1) if positives_first else (1, 0)
    pos[:, 1], neg[:, 1] = b.pos, b.neg  # exact bins: everything in the second half
    pos[u, 1], neg[u, 1] = 0.0, 0.0
    pos[u, first], neg[u, second] = b.pos[u], b.neg[u]
    return Bins(pos.ravel(), neg.ravel())


def bounds(metric: str, b: Bins, **kw) -> tuple[float, float]:
    """[lower, upper] guaranteed to hold the exact value whatever the order inside uncertain bins."""
    fn = {"auroc": auroc, "aupr": aupr, "pro": pro_area}[metric]
    u = np.zeros(b.pos.size, dtype=bool) if b.merged is None else b.merged & (b.pos > 0)
    if metric != "aupr":  # AUROC and PRO are exact on a merged bin of one class; AP is not
        u &= b.neg > 0
    if not u.any():
        v = fn(b, **kw)
        return v, v
    if metric == "auroc":
        mid = auroc(b)
        half = 0.5 * float(np.dot(b.pos[u], b.neg[u])) / (b.pos.sum() * b.neg.sum())
        return float(mid - half), float(mid + half)
    if metric == "pro":
        return pro_area(_split(b, u, False), **kw), pro_area(_split(b, u, True), **kw)
    return float(_aupr_lower(b, u)), float(aupr(_split(b, u, True)))


def _aupr_lower(b: Bins, u: np.ndarray) -> float:
    """AP with every uncertain bin's normal items first and its anomalous items after, each at
    its own threshold: the i-th of k gets precision (a+i)/(a+i+c); the sum over i is bounded
    below by the integral k - c*log1p(k/(a+c)) since the terms increase with i."""
    tp, fp = np.cumsum(b.pos), np.cumsum(b.neg)
    exact = (b.pos > 0) & ~u
    total = float(np.sum(b.pos[exact] * tp[exact] / (tp[exact] + fp[exact])))
    k, a, c = b.pos[u], tp[u] - b.pos[u], fp[u]
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = np.where(c > 0, c * np.log1p(k / (a + c)), 0.0)  # c = 0: every precision is 1
    total += float(np.sum(k - loss))
    return total / tp[-1]
