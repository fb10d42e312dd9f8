"""MAS, memory aware synapses (Aljundi et al., ECCV 2018), for gradient-trained anomaly models.

After each task, a parameter's importance is the mean absolute gradient of the squared L2 norm
of the model's outputs on that task's images: how much the function the model computes moves
when the parameter moves. No labels and no loss are needed, which suits unsupervised anomaly
models (the "outputs" are those LwF distils: flow latents, student features, reconstructions;
:meth:`~cl_iad.models.trainable.GradientModel.distill_outputs`). Training on later tasks adds
``mas_lambda / 2 * sum(importance * (weight - anchor)^2)``. Importances accumulate as a running
mean over tasks, and the anchor is the weights after the latest task, as Avalanche's
``MASPlugin`` does with ``alpha = t / (t + 1)``.

Written as the worked example of adding a regime: this file and ``tests/test_mas.py`` are
all it touches (see ``docs/contributing.md``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch.utils.data import DataLoader

from .plugin import RegimePlugin


def output_importance(model, data) -> list[torch.Tensor]:
    """Mean |d ||outputs||^2 / d theta| over `data`'s batches, one tensor per regularised parameter."""
    params = model.regularised_parameters()
    importance = [torch.zeros_like(p) for p in params]
    model.train_mode()
    batches = 0
    for batch in DataLoader(data, batch_size=model.batch_size, shuffle=False):
        for p in params:
            p.grad = None
        outputs = model.distill_outputs(model.module, batch["image"])
        sum(o.pow(2).sum() / len(o) for o in outputs).backward()
        for imp, p in zip(importance, params, strict=True):
            if p.grad is not None:
                imp += p.grad.detach().abs()
        batches += 1
    for p in params:
        p.grad = None
    return [imp / max(batches, 1) for imp in importance]


class MAS(RegimePlugin):
    """Naive fine-tuning plus a pull towards past weights, weighted by output sensitivity."""

    name = "mas"
    summary = "memory aware synapses"
    params: ClassVar[dict] = {"mas_lambda": 1.0}
    requires_gradient = True

    def setup(self, strategy) -> None:
        if self.mas_lambda < 0:
            raise ValueError(f"mas_lambda must be >= 0, got {self.mas_lambda}")
        self.importance_: list[torch.Tensor] = []
        self.anchor_: list[torch.Tensor] = []
        self.tasks_ = 0

    def penalty(self, strategy):
        if not self.anchor_:
            return None
        return lambda images: self.mas_penalty(strategy.model)

    def mas_penalty(self, model) -> torch.Tensor:
        params = model.regularised_parameters()
        total = sum((imp * (p - a).pow(2)).sum() for p, a, imp in zip(params, self.anchor_, self.importance_,
                                                                          strict=True))
        return 0.5 * self.mas_lambda * total

    def after_training(self, strategy, model, data) -> None:
        new = output_importance(model, data)
        t = self.tasks_
        self.importance_ = new if t == 0 else [(t * old + n) / (t + 1) for old, n in zip(self.importance_, new,
                                                                                          strict=True)]
        self.anchor_ = [p.detach().clone() for p in model.regularised_parameters()]
        self.tasks_ = t + 1

    def state_dict(self) -> dict:
        return {"importance": list(self.importance_), "anchor": list(self.anchor_), "tasks": self.tasks_}

    def load_state_dict(self, state, strategy) -> None:
        device = strategy.model.device
        self.importance_ = [t.to(device) for t in state.get("importance", [])]
        self.anchor_ = [t.to(device) for t in state.get("anchor", [])]
        self.tasks_ = int(state.get("tasks", 0))
