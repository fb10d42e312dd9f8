"""Threshold-free detection metrics and continual-learning measures.

Functions (numpy arrays or torch tensors in, a float out): :func:`image_auroc`,
:func:`image_aupr`, :func:`pixel_auroc`, :func:`pixel_aupr`, :func:`pro_score` (MVTec AD's
AUPRO, exact) and :func:`pro_curve`. Streaming classes with ``update``/``compute``/``reset``
and bounded memory: :class:`ImageAUROC`, :class:`ImageAUPR`, :class:`PixelAUROC`,
:class:`PixelAUPR`, :class:`PRO`. Both forms share one implementation (``_bins.py``).
Continual measures of a T x T matrix: :func:`average_accuracy`, :func:`backward_transfer`,
:func:`forward_transfer`, :func:`forgetting`, :func:`average_forgetting`.
Definitions and sources: docs/metrics.md.
"""

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
from .streaming import PRO, ImageAUPR, ImageAUROC, PixelAUPR, PixelAUROC, ScoreHistogram

__all__ = [
    "FORGETTING_DEFINITIONS", "PRO", "ImageAUPR", "ImageAUROC", "PixelAUPR", "PixelAUROC", "ScoreHistogram",
    "UndefinedMetricWarning", "average_accuracy", "average_forgetting", "backward_transfer", "forgetting",
    "forward_transfer", "image_aupr", "image_auroc", "pixel_aupr", "pixel_auroc", "pro_curve", "pro_score",
]
