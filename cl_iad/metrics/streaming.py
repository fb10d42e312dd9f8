"""torchmetrics-style metrics: ``update`` per batch, ``compute`` at the end, ``reset`` to reuse.

State is a histogram over scores, not the scores themselves, so memory stays bounded:

* Every distinct score keeps its own bin while the number of bins is at most ``max_bins``;
  ``compute`` is then *exact* and equals the functional form (same code, ``_bins.py``).
* Past ``max_bins`` (default 2**20, 32-40 MiB of state), neighbouring bins are merged into
  about ``max_bins // 2`` bins of equal mass, each class weighing 1 in total. Later scores
  falling inside a merged bin's range join it. ``compute`` then treats each merged bin as tied
  scores and :meth:`bounds` returns an interval guaranteed to contain the exact value. For
  AUROC its half width is 0.5 * sum_b pos_b * neg_b / (P * N) over merged bins, at most half
  the largest merged bin's share of the normal items, which merging keeps near 4 / max_bins
  (measured: 0.9e-6 on 98 M pixels). AP and PRO bounds come from ordering each merged bin
  worst-first and best-first (measured in benchmarks/bench_metrics.py; AP's is loose when
  there are few anomalous items).

Memory: the state plus, during ``update``, a few copies of one batch.
"""

from __future__ import annotations

import numpy as np

from . import _bins
from ._validate import prepare_maps, prepare_scores, undefined
from .functional import region_weights

DEFAULT_MAX_BINS = 2**20


class ScoreHistogram:
    """Disjoint score intervals [lo, hi] in ascending order with, per interval, the normal
    count, the anomalous count and (for PRO) the anomalous weight."""

    def __init__(self, max_bins: int = DEFAULT_MAX_BINS, weighted: bool = False) -> None:
        if max_bins < 16:
            raise ValueError(f"max_bins must be at least 16, got {max_bins}")
        self.max_bins = max_bins
        self.n_cols = 3 if weighted else 2
        self.reset()

    def reset(self) -> None:
        self.lo = np.zeros(0)
        self.hi = np.zeros(0)
        self.cols = np.zeros((0, self.n_cols))  # neg count, pos count[, pos weight]
        self.n_merges = 0

    def add(self, values: np.ndarray, is_pos: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Add scores, their 0/1 labels and (weighted histograms) the anomalous items' weights."""
        u, cols = self._batch_histogram(values.reshape(-1), is_pos.reshape(-1), weights)
        idx = np.searchsorted(self.hi, u, side="left")
        inside = idx < self.hi.size
        inside[inside] = self.lo[idx[inside]] <= u[inside]
        for c in range(self.n_cols):
            self.cols[:, c] += np.bincount(idx[inside], weights=cols[inside, c], minlength=self.lo.size)
        new = ~inside
        if new.any():
            self._insert(u[new], cols[new])
        if self.lo.size > self.max_bins:
            self._coarsen()

    def _batch_histogram(self, v: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Distinct scores of a batch (ascending, float64) and their columns; sorts, no argsort of
        the (many) normal scores."""
        neg = np.sort(v[~y])
        pos_order = np.argsort(v[y], kind="stable")
        pos = v[y][pos_order]
        neg_u, neg_start = _distinct(neg)
        pos_u, pos_start = _distinct(pos)
        u = np.union1d(neg_u, pos_u)
        cols = np.zeros((u.size, self.n_cols))
        cols[np.searchsorted(u, neg_u), 0] = np.diff(np.r_[neg_start, neg.size])
        at = np.searchsorted(u, pos_u)
        cols[at, 1] = np.diff(np.r_[pos_start, pos.size])
        if self.n_cols == 3 and pos.size:
            cols[at, 2] = np.add.reduceat(w[pos_order], pos_start)
        return u.astype(np.float64), cols

    def _insert(self, u: np.ndarray, cols: np.ndarray) -> None:
        """Merge new single-score bins (sorted, outside every bin) into the sorted state, no sort."""
        at = np.searchsorted(self.lo, u) + np.arange(u.size)
        old = np.ones(self.lo.size + u.size, dtype=bool)
        old[at] = False
        lo = np.empty(old.size)
        lo[at], lo[old] = u, self.lo
        hi = np.empty(old.size)
        hi[at], hi[old] = u, self.hi
        new_cols = np.empty((old.size, self.n_cols))
        new_cols[at], new_cols[old] = cols, self.cols
        self.lo, self.hi, self.cols = lo, hi, new_cols

    def _coarsen(self) -> None:
        """Merge neighbours into about max_bins // 2 bins of equal mass, each class weighing 1 in
        total, so the (few) anomalous items keep fine bins, which AP and PRO need at the top.

        (Merging runs of normal-only bins first looks lossless but is not: later anomalous
        scores fall inside the wide runs. Measured, it made the bounds ten times wider.)"""
        neg, pos = self.cols[:, 0], self.cols[:, 1]
        mass = neg / max(neg.sum(), 1.0) + pos / max(pos.sum(), 1.0)
        width = mass.sum() / (self.max_bins // 2)
        group = np.floor((np.cumsum(mass) - mass) / width).astype(np.int64)
        starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
        ends = np.r_[starts[1:], self.lo.size] - 1
        self.lo, self.hi = self.lo[starts], self.hi[ends]
        self.cols = np.add.reduceat(self.cols, starts, axis=0)
        self.n_merges += 1

    @property
    def exact(self) -> bool:
        """True while every bin holds a single distinct score."""
        return self.n_merges == 0

    def bins(self) -> _bins.Bins:
        """Descending bins; column 2 (weights) is the positive mass when present."""
        pos = self.cols[::-1, self.n_cols - 1].copy()
        neg = self.cols[::-1, 0].copy()
        merged = None if self.exact else (self.lo < self.hi)[::-1].copy()
        return _bins.Bins(pos, neg, merged)

    @property
    def n_pos(self) -> int:
        return int(self.cols[:, 1].sum())

    @property
    def n_neg(self) -> int:
        return int(self.cols[:, 0].sum())

    @property
    def nbytes(self) -> int:
        return self.lo.nbytes + self.hi.nbytes + self.cols.nbytes


def _distinct(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and the index where each first occurs."""
    if not sorted_values.size:
        return sorted_values, np.zeros(0, dtype=np.intp)
    start = np.r_[0, np.flatnonzero(sorted_values[1:] != sorted_values[:-1]) + 1]
    return sorted_values[start], start


class _RankingMetric:
    """Shared update/compute/reset over a :class:`ScoreHistogram`."""

    metric = "auroc"
    name = "auroc"
    pixel = False

    def __init__(self, max_bins: int = DEFAULT_MAX_BINS) -> None:
        self.max_bins = max_bins
        self.hist_ = ScoreHistogram(max_bins)

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.hist_.reset()

    def update(self, preds, target) -> None:
        """Add a batch: image scores (B,) and labels (B,), or maps (B,H,W) and masks (B,H,W)."""
        if self.pixel:
            s, y = prepare_maps(preds, target, self.name)
        else:
            s, y = prepare_scores(preds, target, self.name)
        self.hist_.add(s, y)

    def _undefined(self) -> str | None:
        if self.hist_.n_pos == 0:
            return "no anomalous item seen (only one class present)"
        if self.metric == "auroc" and self.hist_.n_neg == 0:
            return "no normal item seen (only one class present)"
        return None

    def compute(self) -> float:
        """The metric over everything seen; exact while :attr:`exact` (see module docstring)."""
        reason = self._undefined()
        if reason:
            return undefined(self.name, reason)
        return {"auroc": _bins.auroc, "aupr": _bins.aupr}[self.metric](self.hist_.bins())

    def bounds(self) -> tuple[float, float]:
        """An interval guaranteed to hold the exact value; (v, v) while exact."""
        reason = self._undefined()
        if reason:
            nan = undefined(self.name, reason)
            return nan, nan
        return _bins.bounds(self.metric, self.hist_.bins())

    @property
    def exact(self) -> bool:
        return self.hist_.exact


class ImageAUROC(_RankingMetric):
    """Streaming :func:`~cl_iad.metrics.image_auroc`."""

    metric, name = "auroc", "image_auroc"


class ImageAUPR(_RankingMetric):
    """Streaming :func:`~cl_iad.metrics.image_aupr`."""

    metric, name = "aupr", "image_aupr"


class PixelAUROC(_RankingMetric):
    """Streaming :func:`~cl_iad.metrics.pixel_auroc` with bounded memory."""

    metric, name, pixel = "auroc", "pixel_auroc", True


class PixelAUPR(_RankingMetric):
    """Streaming :func:`~cl_iad.metrics.pixel_aupr` with bounded memory."""

    metric, name, pixel = "aupr", "pixel_aupr", True


class PRO(_RankingMetric):
    """Streaming :func:`~cl_iad.metrics.pro_score` with bounded memory.

    Regions never span images, so each pixel's weight 1/|region| is known when its image
    arrives; the histogram sums these weights per score bin.
    """

    metric, name, pixel = "pro", "pro_score", True

    def __init__(self, fpr_limit: float = 0.3, max_bins: int = DEFAULT_MAX_BINS) -> None:
        if not 0 < fpr_limit <= 1:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}; MVTec AD uses 0.3")
        self.fpr_limit = fpr_limit
        self.max_bins = max_bins
        self.hist_ = ScoreHistogram(max_bins, weighted=True)
        self.n_regions_ = 0

    def reset(self) -> None:
        self.hist_.reset()
        self.n_regions_ = 0

    def update(self, preds, target) -> None:
        m, g = prepare_maps(preds, target, self.name)
        _, w, n = region_weights(m, g)
        self.hist_.add(m, g, w)
        self.n_regions_ += n

    def _undefined(self) -> str | None:
        if self.n_regions_ == 0:
            return "no anomalous region seen"
        if self.hist_.n_neg == 0:
            return "no normal pixel seen, so the false-positive rate is undefined"
        return None

    def _kw(self) -> dict:
        return {"n_neg": self.hist_.n_neg, "n_regions": self.n_regions_, "fpr_limit": self.fpr_limit}

    def compute(self) -> float:
        reason = self._undefined()
        if reason:
            return undefined(self.name, reason)
        return _bins.pro_area(self.hist_.bins(), **self._kw())

    def bounds(self) -> tuple[float, float]:
        reason = self._undefined()
        if reason:
            nan = undefined(self.name, reason)
            return nan, nan
        return _bins.bounds("pro", self.hist_.bins(), **self._kw())
