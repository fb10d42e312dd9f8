"""Streaming metrics as ``torchmetrics.Metric``: ``update`` per batch, ``compute`` at the end, ``reset``.

Why classes when the runner uses the functions: the runner scores one test set at a time, which
fits in memory, so it calls :func:`~cl_iad.metrics.pixel_auroc` and friends. These classes are for
users who evaluate inside a Lightning or anomalib loop: they are ``torchmetrics.Metric`` objects,
so ``self.log(name, metric)``, ``MetricCollection``, ``anomalib.metrics.create_anomalib_metric``,
``.to(device)``, ``forward`` and multi-process sync all work, on test sets too large to hold.

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

State and sync. A histogram of distinct scores has a different length on every process, so it
cannot be summed across processes. The registered state ``score_bins`` is instead a *list* of
float64 tensors, ``dist_reduce_fx="cat"``, each holding histogram rows ``(lo, hi, neg, pos[,
weight])`` (``_histogram.py``): ``update`` appends the rows of its batch (one per distinct
score), and the list is merged into one histogram, coarsened past ``max_bins``, as soon as the
waiting batches are more than ``PENDING_SHARE`` of the first tensor, more than ``MAX_CHUNKS``
tensors or more than ``max_bins`` rows in all. Rows may overlap and come in any order, so the
concatenation torchmetrics makes when it syncs processes (or in ``merge_state`` and
``forward``) is still a valid state: ``compute`` merges all rows into one histogram, which,
while under ``max_bins``, is exactly the histogram of the union of the data, as one process
would have it. PRO adds ``n_regions``, summed. (A tensor state could not be gathered: the
lengths differ; per-bin tensors of fixed edges would lose exactness.)

Memory: at most ``max_bins`` rows after every ``update``, ``forward`` and ``merge_state``, plus,
during them, a few copies of one batch. The states stay float64 whatever ``set_dtype`` or
``.to(dtype)`` asks (``_apply``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

from . import _bins
from ._histogram import DEFAULT_MAX_BINS, ScoreHistogram, batch_rows
from ._validate import prepare_maps, prepare_scores, undefined
from .functional import region_weights

__all__ = ["DEFAULT_MAX_BINS", "PRO", "ImageAUPR", "ImageAUROC", "PixelAUPR", "PixelAUROC",
           "ScoreHistogram"]

# Batches wait in the list, unmerged, while they are few and small next to the merged histogram (the
# first tensor), so that many small updates (image scores) do not copy the histogram each time. A
# big batch is merged at once: merging many waiting batches together needs three copies of them,
# merging one batch into the histogram about two (measured: 1.8x the peak memory otherwise).
MAX_CHUNKS = 32
PENDING_SHARE = 1 / 16


class _RankingMetric(Metric):
    """Shared update/compute over a list of histogram rows (see the module docstring)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False  # batch states concatenate: forward needs one update, merge_state works
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    metric = "auroc"  # the _bins function
    fn_name = "image_auroc"  # the functional form, named in warnings and errors
    pixel = False
    weighted = False

    def __init__(self, max_bins: int = DEFAULT_MAX_BINS, **kwargs: Any) -> None:
        """``kwargs`` are torchmetrics' (``dist_sync_on_step``, ``process_group``, ``sync_on_compute``...)."""
        if max_bins < 16:
            raise ValueError(f"max_bins must be at least 16, got {max_bins}")
        super().__init__(**kwargs)
        self.max_bins = max_bins
        self.add_state("score_bins", default=[], dist_reduce_fx="cat")

    @property
    def _n_cols(self) -> int:
        return 5 if self.weighted else 4

    def update(self, preds: Any, target: Any) -> None:
        """Add a batch: image scores (B,) and labels (B,), or maps (B,H,W) and masks (B,H,W)."""
        prepare = prepare_maps if self.pixel else prepare_scores
        self._append(batch_rows(*prepare(preds, target, self.fn_name)))

    def compute(self) -> torch.Tensor:
        """The metric over everything seen, a float64 scalar; exact while :attr:`exact`."""
        hist = self._histogram()
        reason = self._undefined(hist)
        value = undefined(self.fn_name, reason) if reason else self._value(hist)
        return torch.tensor(value, dtype=torch.float64, device=self.device)

    def bounds(self) -> tuple[float, float]:
        """An interval guaranteed to hold the exact value; (v, v) while exact. Syncs processes as
        ``compute`` does, so call it on every process."""
        if self._is_synced:
            return self._bounds()
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync,
                               should_unsync=self._should_unsync):
            return self._bounds()  # inside: PRO's n_regions is a synced state too

    def _bounds(self) -> tuple[float, float]:
        hist = self._histogram()
        reason = self._undefined(hist)
        if reason:
            nan = undefined(self.fn_name, reason)
            return nan, nan
        return _bins.bounds(self.metric, hist.bins(), **self._kw(hist))

    @property
    def exact(self) -> bool:
        """True while no bin of this process's state merges several distinct scores."""
        return self._histogram().exact

    @property
    def n_bins(self) -> int:
        """Rows held in the state, over all its tensors: at most ``max_bins`` after each update."""
        return sum(c.shape[0] for c in self._chunks())

    @property
    def nbytes(self) -> int:
        """Bytes held in the state."""
        return sum(c.nelement() * c.element_size() for c in self._chunks())

    # ------------------------------------------------------------------ state

    def _append(self, rows: np.ndarray) -> None:
        if rows.shape[0]:
            self.score_bins = [*self._chunks(), torch.from_numpy(rows).to(self.device)]
            del rows  # the state holds it now; compacting may free it
            self._compact_if_needed()

    def _chunks(self) -> list[torch.Tensor]:
        """The state as a list of (k, C) tensors; after a sync torchmetrics leaves one tensor."""
        state = self.score_bins
        return [state] if isinstance(state, torch.Tensor) else list(state)

    def _compact_if_needed(self) -> None:
        sizes = [c.shape[0] for c in self._chunks()] or [0]
        pending = sum(sizes[1:])
        if len(sizes) > MAX_CHUNKS or pending > PENDING_SHARE * sizes[0] or sizes[0] + pending > self.max_bins:
            self._histogram()

    def _histogram(self) -> ScoreHistogram:
        """All rows of the state merged into one histogram, coarsened past max_bins, which then
        replaces the state (the same data, so later calls are cheap)."""
        chunks = [c.reshape(-1, self._n_cols) for c in self._chunks()]
        if not chunks:
            return ScoreHistogram(self.max_bins, weighted=self.weighted)
        arrays = [c.double().cpu().numpy() for c in chunks]
        self.score_bins = chunks = []  # hold one copy of the rows at a time: memory is the point
        hist = ScoreHistogram(self.max_bins, weighted=self.weighted)
        hist.merge_rows(arrays.pop(0))  # after a compaction: canonical, kept as it is
        if arrays:  # the batches since, as one sorted run (numpy's concatenate: 6x torch.cat's speed)
            hist.merge_rows(np.concatenate(arrays) if len(arrays) > 1 else arrays[0])
        del arrays
        self.score_bins = [torch.from_numpy(hist.rows()).to(self.device)]
        return hist

    def _undefined(self, hist: ScoreHistogram) -> str | None:
        if hist.n_pos == 0:
            return "no anomalous item seen (only one class present)"
        if self.metric == "auroc" and hist.n_neg == 0:
            return "no normal item seen (only one class present)"
        return None

    def _value(self, hist: ScoreHistogram) -> float:
        return {"auroc": _bins.auroc, "aupr": _bins.aupr}[self.metric](hist.bins())

    def _kw(self, hist: ScoreHistogram) -> dict:
        return {}

    # ------------------------------------------------------ torchmetrics hooks
    # Overridden as torchmetrics' own MeanAveragePrecision overrides them for its non-standard states.

    def _reduce_states(self, incoming_state: dict[str, Any]) -> None:
        """``forward`` and ``merge_state`` concatenate states here, never through ``update``:
        compact afterwards so that memory stays bounded in a loop that only calls ``forward``."""
        incoming = dict(incoming_state)
        if isinstance(incoming.get("score_bins"), torch.Tensor):  # a synced state
            incoming["score_bins"] = [incoming["score_bins"]]
        self.score_bins = self._chunks()
        super()._reduce_states(incoming)
        self._compact_if_needed()

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None) -> None:
        """A process that saw no data would send torchmetrics' placeholder, a 1-D tensor of the default
        dtype, which does not line up with the others' (k, C) float64 rows; send empty rows instead."""
        if not self._chunks():
            self.score_bins = [torch.zeros((0, self._n_cols), dtype=torch.float64, device=self.device)]
        super()._sync_dist(dist_sync_fn, process_group)

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = ()) -> torch.nn.Module:
        """States follow the metric's device but are never cast: ``set_dtype`` and ``.to(dtype)``
        (Lightning's true half precision) would round scores and make counts inexact."""
        this = super()._apply(fn, exclude_state=(*exclude_state, *self._defaults))
        for key in self._defaults:
            value = getattr(this, key)
            if isinstance(value, torch.Tensor):
                setattr(this, key, value.to(this.device))
                this._defaults[key] = this._defaults[key].to(this.device)
            else:
                setattr(this, key, [v.to(this.device) for v in value])
        return this


class ImageAUROC(_RankingMetric):
    """Streaming :func:`~cl_iad.metrics.image_auroc`."""

    metric, fn_name = "auroc", "image_auroc"


class ImageAUPR(_RankingMetric):
    """Streaming :func:`~cl_iad.metrics.image_aupr`."""

    metric, fn_name = "aupr", "image_aupr"


class PixelAUROC(_RankingMetric):
    """Streaming :func:`~cl_iad.metrics.pixel_auroc` with bounded memory."""

    metric, fn_name, pixel = "auroc", "pixel_auroc", True


class PixelAUPR(_RankingMetric):
    """Streaming :func:`~cl_iad.metrics.pixel_aupr` with bounded memory."""

    metric, fn_name, pixel = "aupr", "pixel_aupr", True


class PRO(_RankingMetric):
    """Streaming :func:`~cl_iad.metrics.pro_score` with bounded memory.

    Regions never span images, so each pixel's weight 1/|region| is known when its image
    arrives; the histogram sums these weights per score bin.
    """

    metric, fn_name, pixel, weighted = "pro", "pro_score", True, True

    def __init__(self, fpr_limit: float = 0.3, max_bins: int = DEFAULT_MAX_BINS, **kwargs: Any) -> None:
        if not 0 < fpr_limit <= 1:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}; MVTec AD uses 0.3")
        super().__init__(max_bins, **kwargs)
        self.fpr_limit = fpr_limit
        self.add_state("n_regions", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Any, target: Any) -> None:
        """Add anomaly maps (B,H,W) and ground-truth masks (B,H,W)."""
        m, g = prepare_maps(preds, target, self.fn_name)
        _, w, n = region_weights(m, g)
        self._append(batch_rows(m, g, w))
        self.n_regions += n

    def _undefined(self, hist: ScoreHistogram) -> str | None:
        if int(self.n_regions) == 0:
            return "no anomalous region seen"
        if hist.n_neg == 0:
            return "no normal pixel seen, so the false-positive rate is undefined"
        return None

    def _kw(self, hist: ScoreHistogram) -> dict:
        return {"n_neg": hist.n_neg, "n_regions": int(self.n_regions), "fpr_limit": self.fpr_limit}

    def _value(self, hist: ScoreHistogram) -> float:
        return _bins.pro_area(hist.bins(), **self._kw(hist))
