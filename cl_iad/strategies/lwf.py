"""LwF (Li and Hoiem, 2016) for anomaly models, which have no class logits.

Avalanche's ``LwFPlugin`` distils softmax logits with a temperature (a KL divergence over
classes). Anomaly models have no class logits; we keep the outputs the anomaly score is made
from (flow latents, student features, reconstructions) close to the previous model's with a mean
squared error.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from torch import nn

from ..models.trainable import GradientModel
from .plugin import RegimePlugin


class LwF:
    """Learning without forgetting: match the previous model's outputs on the new task's images."""

    def __init__(self, alpha: float = 1.0) -> None:
        if alpha < 0:
            raise ValueError(f"lwf alpha must be >= 0, got {alpha}")
        self.alpha = alpha
        self.teacher: nn.Module | None = None

    def penalty(self, model: GradientModel, images: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            return torch.zeros(())
        # The teacher's parameters are all frozen, so mirror the student's per-layer modes (batch
        # norms in training mode) rather than re-deriving them from requires_grad.
        for student, teacher in zip(model.module.modules(), self.teacher.modules(), strict=True):
            teacher.training = student.training
        with torch.no_grad(), torch.random.fork_rng():
            targets = model.distill_outputs(self.teacher, images)
        outputs = model.distill_outputs(model.module, images)
        loss = sum(nn.functional.mse_loss(o, t.detach()) for o, t in zip(outputs, targets, strict=True))
        return self.alpha * loss / len(outputs)

    def end_task(self, model: GradientModel) -> None:
        """Freeze a copy of the model as it is after this task."""
        self.teacher = copy.deepcopy(model.module)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def state(self) -> dict[str, torch.Tensor]:
        return {} if self.teacher is None else {f"teacher.{k}": v.clone() for k, v in self.teacher.state_dict().items()}

    def load_state(self, state: dict[str, torch.Tensor], model: GradientModel) -> None:
        if not state:
            self.teacher = None
            return
        self.end_task(model)
        self.teacher.load_state_dict({k.removeprefix("teacher."): v for k, v in state.items()})


class LwFRegime(RegimePlugin):
    """Naive fine-tuning plus distillation towards the previous task's model (``lwf_alpha``)."""

    name = "lwf"
    summary = "learning without forgetting"
    params: ClassVar[dict] = {"lwf_alpha": 1.0}
    requires_gradient = True

    def setup(self, strategy) -> None:
        self.lwf_ = LwF(self.lwf_alpha)

    def penalty(self, strategy):
        if self.lwf_.teacher is None:
            return None
        return lambda images: self.lwf_.penalty(strategy.model, images)

    def after_training(self, strategy, model, data) -> None:
        self.lwf_.end_task(model)

    def state_dict(self) -> dict:
        return self.lwf_.state()

    def load_state_dict(self, state, strategy) -> None:
        self.lwf_.load_state(state, strategy.model)
