"""EWC (Kirkpatrick et al., PNAS 2017) for anomaly models, whose losses are not classification losses.

Avalanche's ``EWCPlugin.compute_importances`` computes gradients of ``strategy.criterion()``
applied to ``avalanche_forward(model, x, task_labels)`` against labels ``y``. Our losses are
model-specific and unsupervised (flow likelihoods with log-Jacobians, DRAEM's loss on simulated
anomalies, GAN losses on two networks), so the importance must come from each model's own
``training_loss``, which that plugin cannot call. We follow Avalanche's ``separate`` mode: one
diagonal Fisher estimate (mean squared gradient over the task's mini-batches) and one anchor per
past task.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch.utils.data import DataLoader

from ..models.trainable import GradientModel
from .plugin import RegimePlugin


class EWC:
    """Elastic weight consolidation: a quadratic pull towards past tasks' weights."""

    def __init__(self, lam: float = 1.0) -> None:
        if lam < 0:
            raise ValueError(f"ewc lambda must be >= 0, got {lam}")
        self.lam = lam
        self.anchors: list[list[torch.Tensor]] = []
        self.fishers: list[list[torch.Tensor]] = []

    def penalty(self, model: GradientModel) -> torch.Tensor:
        params = model.regularised_parameters()
        total = torch.zeros((), device=params[0].device)
        for anchor, fisher in zip(self.anchors, self.fishers, strict=True):
            for p, a, f in zip(params, anchor, fisher, strict=True):
                total = total + (f * (p - a).pow(2)).sum()
        return 0.5 * self.lam * total

    def end_task(self, model: GradientModel, loader: torch.utils.data.DataLoader) -> None:
        """Estimate the diagonal Fisher of this task's loss at the trained weights."""
        params = model.regularised_parameters()
        fisher = [torch.zeros_like(p) for p in params]
        model.train_mode()
        batches = 0
        for batch in loader:
            for p in params:
                p.grad = None
            model.training_loss(batch["image"]).backward()  # the model moves images to its device
            for f, p in zip(fisher, params, strict=True):
                if p.grad is not None:
                    f += p.grad.detach().pow(2)
            batches += 1
        for p in params:
            p.grad = None
        self.fishers.append([f / max(batches, 1) for f in fisher])
        self.anchors.append([p.detach().clone() for p in params])

    def state(self) -> dict[str, torch.Tensor]:
        """Anchors and Fisher estimates, as a flat dict of tensors (for checkpoints)."""
        out = {}
        for t, (anchor, fisher) in enumerate(zip(self.anchors, self.fishers, strict=True)):
            out.update({f"anchor.{t}.{i}": a for i, a in enumerate(anchor)})
            out.update({f"fisher.{t}.{i}": f for i, f in enumerate(fisher)})
        return out

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        tasks = sorted({int(k.split(".")[1]) for k in state if k.startswith("anchor.")})
        self.anchors, self.fishers = [], []
        for t in tasks:
            n = len([k for k in state if k.startswith(f"anchor.{t}.")])
            self.anchors.append([state[f"anchor.{t}.{i}"].clone() for i in range(n)])
            self.fishers.append([state[f"fisher.{t}.{i}"].clone() for i in range(n)])


class EWCRegime(RegimePlugin):
    """Naive fine-tuning plus a quadratic pull towards past tasks' weights (``ewc_lambda``)."""

    name = "ewc"
    summary = "elastic weight consolidation"
    params: ClassVar[dict] = {"ewc_lambda": 100.0}
    requires_gradient = True

    def setup(self, strategy) -> None:
        self.ewc_ = EWC(self.ewc_lambda)

    def penalty(self, strategy):
        if not self.ewc_.anchors:
            return None
        return lambda images: self.ewc_.penalty(strategy.model)

    def after_training(self, strategy, model, data) -> None:
        self.ewc_.end_task(model, DataLoader(data, batch_size=model.batch_size, shuffle=False))

    def state_dict(self) -> dict:
        return self.ewc_.state()

    def load_state_dict(self, state, strategy) -> None:
        self.ewc_.load_state(state)
