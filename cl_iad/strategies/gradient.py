"""Continual regimes for gradient-trained models: we own the training loop (no Lightning Engine).

The model keeps its weights from task to task and trains ``model.epochs`` epochs on each task's
training set, which is what each regime changes:

* ``naive``: fine-tune on task t only (the lower bound);
* ``replay``: task t plus a fixed-size buffer of past normal images (Avalanche storage policy);
* ``cumulative``: continue training on everything seen so far;
* ``joint``: train once, on all tasks together, when the first task arrives (the upper bound);
* ``per_task``: a separate model per task, each trained from the same initial weights and chosen
  by the task id at test time (task-aware; forgetting is zero by construction);
* ``ewc``: naive plus an elastic-weight-consolidation penalty (``ewc_lambda``);
* ``lwf``: naive plus distillation towards the previous task's model (``lwf_alpha``).
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader

from ..models.trainable import GradientModel
from ..scenarios.base import ImageSet, Scenario, Task
from .base import GRADIENT_REGIMES, Predictions, Strategy, predictions
from .regularizers import EWC, LwF

log = logging.getLogger(__name__)


class GradientStrategy(Strategy):
    """A gradient-trained anomaly model under one continual regime."""

    regimes = GRADIENT_REGIMES

    def __init__(self, model: GradientModel, regime: str = "naive", buffer_size: int = 20,
                 buffer_policy: str = "reservoir", batch_size: int | None = None, cache=None, seed: int = 0,
                 eval_mode: str = "aware", router_metric: str = "gaussian", ewc_lambda: float = 100.0,
                 lwf_alpha: float = 1.0) -> None:
        if regime == "per_task" and eval_mode == "agnostic":
            # The router compares frozen-backbone embeddings; a gradient model's features move as it trains.
            raise ValueError(f"task-agnostic per_task needs a frozen-feature model (patchcore, padim, dfm, dfkde, "
                             f"rkde) for its router; {model.name} trains its features. Use --eval-mode aware.")
        super().__init__(model, regime, buffer_size, buffer_policy, batch_size or model.batch_size, cache, seed,
                         eval_mode, router_metric)
        self.ewc_lambda = ewc_lambda
        self.lwf_alpha = lwf_alpha
        self.ewc_ = EWC(ewc_lambda) if regime == "ewc" else None
        self.lwf_ = LwF(lwf_alpha) if regime == "lwf" else None
        self.initial_state_: dict[str, torch.Tensor] | None = None
        self.losses_: dict[int, list[float]] = {}

    def build_args(self) -> dict:
        return {**super().build_args(), "ewc_lambda": self.ewc_lambda, "lwf_alpha": self.lwf_alpha}

    def config(self) -> dict:
        extra = {"ewc_lambda": self.ewc_lambda} if self.regime == "ewc" else {}
        if self.regime == "lwf":
            extra["lwf_alpha"] = self.lwf_alpha
        return {**super().config(), **extra}

    def _training_samples(self, task: Task, scenario: Scenario):
        if self.regime in ("ewc", "lwf"):
            return list(task.train.samples)
        return super()._training_samples(task, scenario)

    def _extra(self):
        if self.ewc_ is not None and self.ewc_.anchors:
            return lambda images: self.ewc_.penalty(self.model)
        if self.lwf_ is not None and self.lwf_.teacher is not None:
            return lambda images: self.lwf_.penalty(self.model, images)
        return None

    def _train(self, data: ImageSet, task_id: int) -> None:
        model = self.model
        gen = torch.Generator().manual_seed(self.seed * 1000 + task_id)
        loader = DataLoader(data, batch_size=self.batch_size, shuffle=True, generator=gen)
        losses = []
        with torch.random.fork_rng():
            torch.manual_seed(self.seed * 1000 + task_id)  # augmentations (DRAEM, DSR) and flows' noise
            model.begin_task(DataLoader(data, batch_size=self.batch_size, shuffle=False))
            model.train_mode()
            extra = self._extra()
            total = model.epochs * len(loader)
            for _ in range(model.epochs):
                for batch in loader:
                    losses.append(model.train_step(batch["image"], extra, len(losses), total))
            model.fitted_ = True
            if self.ewc_ is not None:
                self.ewc_.end_task(model, DataLoader(data, batch_size=self.batch_size, shuffle=False))
            if self.lwf_ is not None:
                self.lwf_.end_task(model)
        self.losses_[task_id] = losses
        if losses and not all(torch.isfinite(torch.tensor(losses))):
            raise FloatingPointError(f"{model.name} training diverged on task {task_id} (loss {losses[-1]}); "
                                     "lower lr or check the inputs")

    def _begin_task(self, task: Task) -> None:
        self.model.setup(task.train.image_size)
        if self.initial_state_ is None:
            self.initial_state_ = self.model.get_state()

    def _fit(self, data: ImageSet, task: Task) -> None:
        """Continue training on `data` (per_task: restart from the initial weights)."""
        if self.regime == "per_task":
            self.model.set_state(self.initial_state_)
        self._train(data, task.task_id)
        log.info("task %d (%s): trained %s for %d epochs on %d images", task.task_id, task.name,
                 self.model.name, self.model.epochs, len(data))

    @torch.no_grad()
    def predict(self, data: ImageSet, task_id: int | None = None) -> Predictions:
        """Scores and maps on `data`; `task_id` selects the per-task weights when task-aware."""
        if self.regime == "per_task":
            if task_id is None:
                raise ValueError("per_task needs the task id at test time (task-aware evaluation)")
            chosen = task_id if task_id in self.task_states_ else self.trained_tasks_[-1]
            self.model.set_state(self.task_states_[chosen])
        scores, maps = [], []
        for batch in DataLoader(data, batch_size=self.batch_size, shuffle=False):
            s, m = self.model.predict(batch["image"])
            scores.append(s)
            maps.append(m)
        return predictions(scores, maps)

    def _extra_state(self) -> dict:
        """What a resumed run needs beyond the weights: image size (to build the module before
        loading weights), the initial weights (per_task restarts from them), EWC/LwF state."""
        return {"image_size": self.model.image_size_, "initial": self.initial_state_,
                "regulariser": self.regulariser_state()}

    def _load_extra_state(self, extra: dict) -> None:
        if extra.get("image_size") is not None:
            self.model.setup(int(extra["image_size"]))
        self.initial_state_ = extra.get("initial")
        reg = extra.get("regulariser") or {}
        if self.ewc_ is not None:
            self.ewc_.load_state(reg)
        if self.lwf_ is not None:
            self.lwf_.load_state(reg, self.model)

    def regulariser_state(self) -> dict[str, torch.Tensor]:
        """EWC anchors/Fishers or the LwF teacher, for checkpoints alongside ``model.get_state()``."""
        if self.ewc_ is not None:
            return self.ewc_.state()
        if self.lwf_ is not None:
            return self.lwf_.state()
        return {}
