"""Threshold-free detection metrics and continual-learning measures.

Functions (numpy arrays or torch tensors in, a float out): :func:`image_auroc`,
:func:`image_aupr`, :func:`pixel_auroc`, :func:`pixel_aupr`, :func:`pro_score` (MVTec AD's
AUPRO, exact) and :func:`pro_curve`. Streaming ``torchmetrics.Metric`` classes with bounded
memory, for Lightning and anomalib loops: :class:`ImageAUROC`, :class:`ImageAUPR`,
:class:`PixelAUROC`, :class:`PixelAUPR`, :class:`PRO` (imported on first use: torchmetrics
takes seconds to import). Both forms share one implementation (``_bins.py``).
Continual measures of a T x T matrix: :func:`average_accuracy`, :func:`backward_transfer`,
:func:`forward_transfer`, :func:`forgetting`, :func:`average_forgetting`.
Definitions and sources: docs/metrics.md.
"""

from ._histogram import ScoreHistogram
from ._validate import UndefinedMetricWarning
from .continual import (
    FORGETTING_DEFINITIONS,
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forgetting,
    forward_transfer,
)
from .functional import image_aupr, image_auroc, pixel_aupr, pixel_auroc, pro_curve, pro_score

_STREAMING = ("PRO", "ImageAUPR", "ImageAUROC", "PixelAUPR", "PixelAUROC")

__all__ = [
    "FORGETTING_DEFINITIONS", "PRO", "ImageAUPR", "ImageAUROC", "PixelAUPR", "PixelAUROC", "ScoreHistogram",
    "UndefinedMetricWarning", "average_accuracy", "average_forgetting", "backward_transfer", "forgetting",
    "forward_transfer", "image_aupr", "image_auroc", "pixel_aupr", "pixel_auroc", "pro_curve", "pro_score",
]


def __getattr__(name: str) -> type:
    """The streaming classes, imported on first use so that the functions stay light to import."""
    if name in _STREAMING:
        from . import streaming

        return getattr(streaming, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
