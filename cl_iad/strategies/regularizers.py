"""EWC and LwF for anomaly models whose losses are not classification losses.

Avalanche's ``EWCPlugin`` and ``LwFPlugin`` do not fit these models, so we write the few lines
ourselves:

* ``EWCPlugin.compute_importances`` computes gradients of ``strategy.criterion()`` applied to
  ``avalanche_forward(model, x, task_labels)`` against labels ``y``. Our losses are
  model-specific and unsupervised (flow likelihoods with log-Jacobians, DRAEM's loss on
  simulated anomalies, GAN losses on two networks), so the importance must come from each
  model's own ``training_loss``, which that plugin cannot call.
* ``LwFPlugin`` distils softmax logits with a temperature (a KL divergence over classes). Anomaly
  models have no class logits; we keep the outputs the anomaly score is made from (flow latents,
  student features, reconstructions) close to the previous model's with a mean squared error.

EWC follows Kirkpatrick et al. (PNAS 2017) in Avalanche's ``separate`` mode: one diagonal Fisher
estimate (mean squared gradient over the task's mini-batches) and one anchor per past task.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..models.trainable import GradientModel


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
