"""Per-task models: one fitted state per task (the oracle when the task id is known).

With ``eval_mode="aware"`` the task id given at test time picks the state (a task not yet
trained is scored with the newest state, for forward transfer); forgetting is zero by
construction. With ``eval_mode="agnostic"`` no id is given: a
:class:`~cl_iad.strategies.router.FeatureStatsRouter` picks a state per test image from its
frozen-backbone features, and the predictions carry the routed task ids so the runner can
report routing accuracy. Gradient-trained models restart from the same initial weights for
every task.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..models.base import Predictions
from .plugin import RegimePlugin
from .router import FeatureStatsRouter, predict_routed


class PerTask(RegimePlugin):
    """One state per task, chosen by the task id (aware) or by a router (agnostic)."""

    name = "per_task"
    summary = "a separate model per task"
    params: ClassVar[dict] = {"router_metric": "gaussian"}
    exclusive = True

    def check(self, model, eval_mode: str) -> None:
        super().check(model, eval_mode)
        if eval_mode == "agnostic" and getattr(model, "trains_by_gradient", False):
            # The router compares frozen-backbone features; a gradient model's features move as it trains.
            raise ValueError(f"task-agnostic per_task needs a frozen-feature model (patchcore, padim, dfm, dfkde, "
                             f"rkde) for its router; {model.name} trains its features. Use --eval-mode aware.")

    def setup(self, strategy) -> None:
        self.task_states_: dict[int, dict[str, torch.Tensor]] = {}
        self.initial_: dict[str, torch.Tensor] | None = None
        self.router_ = FeatureStatsRouter(self.router_metric) if self.routes(strategy) else None

    def task_aware(self, strategy) -> bool:
        return strategy.eval_mode == "aware"

    def routes(self, strategy) -> bool:
        return strategy.eval_mode == "agnostic"

    def router_name(self, strategy) -> str:
        return f"feature_stats:{self.router_metric}"

    def before_task(self, strategy, task) -> None:
        model = strategy.model
        if model.trains_by_gradient:  # every task starts from the same initial weights
            if self.initial_ is None:
                self.initial_ = model.state_dict()
            model.load_state_dict(self.initial_)

    def after_task(self, strategy, task, data) -> None:
        model = strategy.model
        self.task_states_[task.task_id] = model.state_dict()
        if self.router_ is not None and data is not None:
            self.router_.add_task(task.task_id, model.routing_features(model.embed(data)))

    @torch.no_grad()
    def predict(self, strategy, data, task_id):
        model = strategy.model
        if self.router_ is not None:
            return self._predict_routed(model, data)
        if task_id is None:
            raise ValueError("per_task with eval_mode='aware' needs the task id at test time; "
                             "use eval_mode='agnostic' to route images to task models instead")
        chosen = task_id if task_id in self.task_states_ else strategy.trained_tasks_[-1]
        model.load_state_dict(self.task_states_[chosen])
        return model.predict(data)

    def _predict_routed(self, model, data) -> Predictions:
        """Route each image to a trained task, then score it with that task's state.

        Maps are None when the model gives none (detection, classification), as unrouted.
        """
        emb = model.embed(data)
        routed = self.router_.route(model.routing_features(emb)).cpu()
        return predict_routed(model, emb, routed, self.task_states_, data.image_size)

    def state_dict(self) -> dict:
        return {"task_states": {int(k): v for k, v in self.task_states_.items()}, "initial": self.initial_,
                "router": self.router_.state_dict() if self.router_ is not None else None}

    def load_state_dict(self, state, strategy) -> None:
        self.task_states_ = {int(k): v for k, v in (state.get("task_states") or {}).items()}
        self.initial_ = state.get("initial")
        if self.router_ is not None and state.get("router") is not None:
            self.router_.load_state_dict(state["router"])
