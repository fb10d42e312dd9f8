"""The one contract every anomaly model meets, whatever it learns from.

A model is fitted on a task's normal images and predicts image scores and anomaly maps:

* ``fit(data, ctx)`` learns from an :class:`~cl_iad.scenarios.base.ImageSet`. A frozen-feature
  model (:class:`~cl_iad.models.frozen.FrozenFeatureModel`) replaces its fitted state; a
  gradient-trained one (:class:`~cl_iad.models.trainable.GradientModel`) continues training
  from its current weights. ``ctx`` carries what a continual regime adds (a loss penalty, the
  task id, the feature cache); the model needs to know nothing else of regimes.
* ``predict(data)`` returns :class:`Predictions` for a whole image set.
* ``state_dict()`` / ``load_state_dict()`` hold everything fitting learned, as tensors.
* ``to(device)`` moves the model; ``device`` tells where it runs.
* ``prepare(image_size)`` builds whatever depends on the image size, before a fit or a load.

A model declares what it is once, as class attributes (``name``, ``title``, ``family``,
``task_type``, ``presets``, ``notes``); :mod:`cl_iad.models.registry` reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

FAMILIES = ("memory bank", "density/statistical", "normalizing flow", "reconstruction", "teacher-student")
TASK_TYPES = ("segmentation", "detection", "classification")

Penalty = Callable[[torch.Tensor], torch.Tensor]  # images -> a scalar loss term added by a regime


@dataclass
class Predictions:
    """Model outputs on one test set."""

    pred_score: np.ndarray  # (N,)
    anomaly_map: np.ndarray | None  # (N, H, W) float32; None for models without pixel maps
    routed_task: np.ndarray | None = None  # (N,) task id chosen per image, task-agnostic per_task only


@dataclass
class FitContext:
    """What a strategy hands a model for one fit.

    `penalty` is the regimes' extra loss term (gradient-trained models only; None when no
    regime adds one). `on_trained` callbacks run right after training, under the same random
    state, for regimes that measure the trained model on the task's data (EWC's Fisher, MAS).
    """

    task_id: int = 0
    seed: int = 0
    cache: Any = None  # cl_iad.cache.FeatureCache; frozen-feature models read their features through it
    penalty: Penalty | None = None
    on_trained: tuple[Callable[[Any], None], ...] = ()


def predictions(scores: list[torch.Tensor], maps: list[torch.Tensor | None]) -> Predictions:
    """Join per-batch outputs; maps stay None when the model gives none."""
    joined = None if any(m is None for m in maps) else torch.cat([m.cpu() for m in maps]).numpy().astype(np.float32)
    return Predictions(torch.cat([s.cpu() for s in scores]).numpy().astype(np.float64), joined)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (or None) is CUDA when present, else the CPU; anything else as torch reads it."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r} ({exc}); use auto, cpu, cuda or cuda:N") from None


class AnomalyModel:
    """The contract (see the module docstring). Subclass one of the two base classes, not this."""

    name: ClassVar[str] = "base"
    title: ClassVar[str] = ""
    family: ClassVar[str] = "memory bank"
    task_type: ClassVar[str] = "segmentation"
    trains_by_gradient: ClassVar[bool] = False
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    notes: ClassVar[str] = ""

    device: torch.device
    fitted_: bool

    def prepare(self, image_size: int) -> AnomalyModel:
        """Build what depends on the image size (no-op for most frozen-feature models)."""
        return self

    def fit(self, data, ctx: FitContext | None = None) -> AnomalyModel:
        raise NotImplementedError

    def predict(self, data) -> Predictions:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def to(self, device: str | torch.device) -> AnomalyModel:
        raise NotImplementedError

    def config(self) -> dict:
        """Settings that define this model, for config.json and cache keys."""
        raise NotImplementedError

    def _require_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise RuntimeError(f"{self.name} has not been fitted; call fit() (or a strategy's fit_task) first")
