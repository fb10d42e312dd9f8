"""The bounded state behind the streaming metrics: a histogram over scores (numpy only).

A histogram is a set of *rows* ``(lo, hi, neg, pos[, pos weight])``: the normal count, the
anomalous count and (for PRO) the anomalous weight of the scores in [lo, hi]. A row of one
distinct score has lo = hi. Rows may come in any order and overlap (one per batch, per process,
...); :meth:`ScoreHistogram.merge_rows` makes them canonical: sorted, disjoint, overlapping or
touching intervals summed into one. For single-score rows that is exactly the multiset of
scores, so merging is order-free: any split of the data into batches or processes gives the
same histogram while no bin is coarsened.

Past ``max_bins`` rows the histogram is coarsened (see :meth:`ScoreHistogram._coarsen`);
``_bins.py`` turns the rows into a value (merged rows as ties) and into guaranteed bounds.
"""

from __future__ import annotations

import numpy as np

from . import _bins

DEFAULT_MAX_BINS = 2**20


def batch_rows(values: np.ndarray, is_pos: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Rows of one batch, one per distinct score (ascending, float64): lo = hi = the score.

    ``weights`` (PRO) are the anomalous items' weights in the order of ``values[is_pos]``; they
    add a fifth column. Sorts the (many) normal scores without an index array.
    """
    v, y = values.reshape(-1), is_pos.reshape(-1)
    neg = np.sort(v[~y])
    pos_order = np.argsort(v[y], kind="stable")
    pos = v[y][pos_order]
    neg_u, neg_start = _distinct(neg)
    pos_u, pos_start = _distinct(pos)
    u = np.union1d(neg_u, pos_u).astype(np.float64)
    rows = np.zeros((u.size, 4 if weights is None else 5))
    rows[:, 0] = rows[:, 1] = u
    rows[np.searchsorted(u, neg_u), 2] = np.diff(np.r_[neg_start, neg.size])
    at = np.searchsorted(u, pos_u)
    rows[at, 3] = np.diff(np.r_[pos_start, pos.size])
    if weights is not None and pos.size:
        rows[at, 4] = np.add.reduceat(weights[pos_order], pos_start)
    return rows


def _distinct(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and the index where each first occurs."""
    if not sorted_values.size:
        return sorted_values, np.zeros(0, dtype=np.intp)
    start = np.r_[0, np.flatnonzero(sorted_values[1:] != sorted_values[:-1]) + 1]
    return sorted_values[start], start


class ScoreHistogram:
    """Disjoint score intervals [lo, hi] in ascending order with, per interval, the normal
    count, the anomalous count and (for PRO) the anomalous weight: one row each of ``data``."""

    def __init__(self, max_bins: int = DEFAULT_MAX_BINS, weighted: bool = False) -> None:
        if max_bins < 16:
            raise ValueError(f"max_bins must be at least 16, got {max_bins}")
        self.max_bins = max_bins
        self.n_cols = 3 if weighted else 2
        self.reset()

    @classmethod
    def from_rows(cls, rows: np.ndarray, max_bins: int = DEFAULT_MAX_BINS, weighted: bool = False) -> ScoreHistogram:
        """The histogram of rows in any order, overlapping or not (e.g. several processes' states)."""
        hist = cls(max_bins, weighted)
        hist.merge_rows(rows)
        return hist

    def reset(self) -> None:
        self.data = np.zeros((0, 2 + self.n_cols))  # lo, hi, neg count, pos count[, pos weight]
        self.n_merges = 0

    @property
    def lo(self) -> np.ndarray:
        return self.data[:, 0]

    @property
    def hi(self) -> np.ndarray:
        return self.data[:, 1]

    @property
    def cols(self) -> np.ndarray:
        return self.data[:, 2:]

    def add(self, values: np.ndarray, is_pos: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Add scores, their 0/1 labels and (weighted histograms) the anomalous items' weights.
        A score inside a merged bin's range joins that bin."""
        if (weights is not None) != (self.n_cols == 3):
            raise ValueError("a weighted histogram (PRO) needs the anomalous items' weights; "
                             "an unweighted one takes none")
        self.merge_rows(batch_rows(values, is_pos, weights))

    def merge_rows(self, rows: np.ndarray) -> None:
        """Merge rows (lo, hi, neg, pos[, weight]) into the histogram, then coarsen past max_bins.

        Canonical rows may be kept without a copy; nothing here writes into an array in place.
        Single-score rows (a batch's) are inserted without copying the histogram twice."""
        if rows.ndim != 2 or rows.shape[1] != 2 + self.n_cols:
            raise ValueError(f"expected rows of {2 + self.n_cols} columns (lo, hi, neg, pos[, weight]), "
                             f"got shape {rows.shape}")
        if not _is_canonical(rows):
            rows = _canonical(rows)
        if not self.data.shape[0]:
            self.data = rows
        elif np.array_equal(rows[:, 0], rows[:, 1]):
            self.data = _insert_points(self.data, rows)
        else:
            self.data = _canonical(np.concatenate([self.data, rows]))
        del rows  # the caller may pass its only reference: free it before coarsening
        if self.data.shape[0] > self.max_bins:
            self._coarsen()

    def rows(self) -> np.ndarray:
        """The histogram as rows (lo, hi, neg, pos[, weight]), ascending (a view of ``data``)."""
        return self.data

    def _coarsen(self) -> None:
        """Merge neighbours into about max_bins // 2 bins of equal mass, each class weighing 1 in
        total, so the (few) anomalous items keep fine bins, which AP and PRO need at the top.

        (Merging runs of normal-only bins first looks lossless but is not: later anomalous
        scores fall inside the wide runs. Measured, it made the bounds ten times wider.)"""
        neg, pos = self.cols[:, 0], self.cols[:, 1]
        mass = neg / max(neg.sum(), 1.0)
        mass += pos / max(pos.sum(), 1.0)
        width = mass.sum() / (self.max_bins // 2)
        before = np.cumsum(mass)
        before -= mass  # the mass of the bins before each; in place: the state is the memory bound
        del mass
        before /= width
        group = np.floor(before, out=before)
        starts = np.r_[0, np.flatnonzero(group[1:] != group[:-1]) + 1]
        del before, group
        ends = np.r_[starts[1:], self.data.shape[0]] - 1
        out = np.empty((starts.size, self.data.shape[1]))
        out[:, 0], out[:, 1] = self.lo[starts], self.hi[ends]
        out[:, 2:] = np.add.reduceat(self.cols, starts, axis=0)
        self.data = out
        self.n_merges += 1

    @property
    def exact(self) -> bool:
        """True while every bin holds a single distinct score."""
        return not bool(np.any(self.lo < self.hi))

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
        return self.data.nbytes


def _canonical(rows: np.ndarray) -> np.ndarray:
    """Rows sorted by lo, every run of overlapping or touching intervals summed into one. The
    stable sort is a timsort, linear on a few concatenated sorted runs (one per batch or process).
    Columns are gathered one at a time into the output (``out=``): besides the output, the peak
    is four numbers per row, since the rows are the memory bound."""
    if not rows.shape[0]:
        return rows.reshape(0, rows.shape[1])
    order = np.argsort(rows[:, 0], kind="stable")
    reach = np.take(rows[:, 1], order)
    np.maximum.accumulate(reach, out=reach)  # the highest score reached so far
    lo = np.take(rows[:, 0], order)
    new = np.ones(lo.size, dtype=bool)
    np.greater(lo[1:], reach[:-1], out=new[1:])  # a gap before this row: a new interval starts
    starts = np.flatnonzero(new)
    del new
    out = np.empty((starts.size, rows.shape[1]))
    np.take(lo, starts, out=out[:, 0], mode="clip")  # in range: clip only skips buffering
    del lo
    np.maximum.reduceat(reach, starts, out=out[:, 1])
    del reach
    for c in range(2, rows.shape[1]):
        np.add.reduceat(np.take(rows[:, c], order), starts, out=out[:, c])
    return out


def _is_canonical(rows: np.ndarray) -> bool:
    """Sorted, disjoint intervals: a gap between each interval and the next."""
    return bool(np.all(rows[1:, 0] > rows[:-1, 1]))


def _insert_points(data: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Canonical rows plus canonical single-score rows: a point inside an interval joins it, the
    others are inserted in order. Memory: the output and a few numbers per point."""
    lo, hi, u = data[:, 0], data[:, 1], points[:, 0]
    idx = np.searchsorted(hi, u, side="left")  # the first interval ending at or above each point
    inside = idx < hi.size
    inside[inside] = lo[idx[inside]] <= u[inside]
    new = points[~inside]
    at = np.searchsorted(lo, new[:, 0]) + np.arange(new.shape[0])  # rows of the new points in the output
    out = np.empty((data.shape[0] + new.shape[0], data.shape[1]))
    keep = np.ones(out.shape[0], dtype=bool)
    keep[at] = False
    out[keep] = data
    out[at] = new
    joined = idx[inside]
    joined += np.searchsorted(new[:, 0], lo[joined])  # shifted by the new points inserted before
    np.add.at(out[:, 2:], joined, points[inside, 2:])
    return out
