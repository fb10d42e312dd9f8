"""A continual strategy: one anomaly model under one regime, and the feature cache it reads.

Regimes for models that fit in one pass from frozen features:

* ``naive``: after task t the model is fitted on task t's data only (state replaced).
* ``replay``: task t's data plus a fixed-size buffer of past normal images.
* ``cumulative``: all data seen so far.
* ``joint``: all tasks at once, fitted when the first task arrives (the upper bound); every
  row of the matrix then comes from the same model.
* ``per_task``: one fitted state per task. With ``eval_mode="aware"`` the task id given at
  test time picks the state (tasks not yet trained are scored with the newest state, for
  forward transfer). With ``eval_mode="agnostic"`` no id is given: a
  :class:`~.router.FeatureStatsRouter` picks a state per test image, and the predictions
  carry the routed task ids so the runner can report routing accuracy.

Other regimes keep one model and never use the task id, so they are task-agnostic anyway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..cache import FeatureCache
from ..scenarios.base import ImageSet, Sample, Scenario, Task
from .buffers import ReplayBuffer
from .models import FrozenFeatureModel
from .router import FeatureStatsRouter

log = logging.getLogger(__name__)

REGIMES = ("naive", "replay", "cumulative", "joint", "per_task")
EVAL_MODES = ("aware", "agnostic")
# Gradient-trained models (see strategies/gradient.py) also support these regularisation regimes.
GRADIENT_REGIMES = (*REGIMES, "ewc", "lwf")
__all__ = ["EVAL_MODES", "GRADIENT_REGIMES", "REGIMES", "FeatureCache", "Predictions", "Strategy"]


@dataclass
class Predictions:
    """Model outputs on one test set."""

    pred_score: np.ndarray  # (N,)
    anomaly_map: np.ndarray | None  # (N, H, W) float32; None for models without pixel maps
    routed_task: np.ndarray | None = None  # (N,) task id chosen per image, task-agnostic per_task only


class Strategy:
    """One model under one continual regime.

    ``__init__`` only stores parameters; learned state lives in attributes ending in ``_``.
    Given a gradient-trained model (:class:`~cl_iad.models.trainable.GradientModel`),
    ``Strategy(model, regime)`` builds a :class:`~cl_iad.strategies.gradient.GradientStrategy`,
    so callers need not know which kind of model they hold.
    """

    regimes: tuple[str, ...] = REGIMES

    def __new__(cls, model=None, *args, **kwargs):
        from ..models.trainable import GradientModel

        if cls is Strategy and isinstance(model, GradientModel):
            from .gradient import GradientStrategy

            return super().__new__(GradientStrategy)
        return super().__new__(cls)

    def __init__(
        self,
        model: FrozenFeatureModel,
        regime: str = "naive",
        buffer_size: int = 20,
        buffer_policy: str = "reservoir",
        batch_size: int = 16,
        cache: FeatureCache | None = None,
        seed: int = 0,
        eval_mode: str = "aware",
        router_metric: str = "gaussian",
    ) -> None:
        if regime not in self.regimes:
            raise ValueError(f"regime {regime!r} is not available for {model.name}; choose from "
                             f"{', '.join(self.regimes)}")
        if eval_mode not in EVAL_MODES:
            raise ValueError(f"unknown eval mode {eval_mode!r}; choose from {', '.join(EVAL_MODES)}")
        self.model = model
        self.regime = regime
        self.buffer_size = buffer_size
        self.buffer_policy = buffer_policy
        self.batch_size = batch_size
        self.cache = cache if cache is not None else FeatureCache()
        self.seed = seed
        self.eval_mode = eval_mode
        self.router_metric = router_metric
        self.router_ = FeatureStatsRouter(router_metric) if self.routes else None
        self.buffer_ = ReplayBuffer(buffer_size, buffer_policy, seed) if regime == "replay" else None
        self.seen_: list[Sample] = []
        self.task_states_: dict[int, dict[str, torch.Tensor]] = {}
        self.trained_tasks_: list[int] = []

    @property
    def task_aware(self) -> bool:
        """Whether predictions use the task id at test time."""
        return self.regime == "per_task" and self.eval_mode == "aware"

    @property
    def routes(self) -> bool:
        """Whether test images are routed to a task model (task-agnostic ``per_task``)."""
        return self.regime == "per_task" and self.eval_mode == "agnostic"

    def build_args(self) -> dict:
        """Constructor arguments (besides the model and cache) that rebuild this strategy."""
        return {"regime": self.regime, "buffer_size": self.buffer_size, "buffer_policy": self.buffer_policy,
                "batch_size": self.batch_size, "seed": self.seed, "eval_mode": self.eval_mode,
                "router_metric": self.router_metric}

    def config(self) -> dict:
        return {"regime": self.regime, "buffer_size": self.buffer_size if self.regime == "replay" else None,
                "buffer_policy": self.buffer_policy if self.regime == "replay" else None,
                "task_aware": self.task_aware, "strategy_seed": self.seed, "eval_mode": "aware" if self.task_aware else "agnostic",
                "router": f"feature_stats:{self.router_metric}" if self.routes else None, **self.model.config()}

    def _training_samples(self, task: Task, scenario: Scenario) -> list[Sample] | None:
        """The normal samples this regime fits on at `task`, or None to keep the current state."""
        if self.regime == "naive" or self.regime == "per_task":
            return list(task.train.samples)
        if self.regime == "replay":
            return list(task.train.samples) + self.buffer_.samples
        if self.regime == "cumulative":
            return self.seen_ + list(task.train.samples)
        if self.regime == "joint":
            if self.trained_tasks_:
                return None
            return [s for t in scenario for s in t.train.samples]
        raise AssertionError(self.regime)

    def fit_task(self, task: Task, scenario: Scenario) -> Strategy:
        """Train on one task of `scenario` under this regime."""
        self._begin_task(task)
        samples = self._training_samples(task, scenario)
        if samples is not None:
            self._fit(ImageSet(samples, task.train.image_size), task)
        if self.buffer_ is not None:
            self.buffer_.update(task.train.samples)
        self.seen_.extend(task.train.samples)
        if self.regime == "per_task":
            self.task_states_[task.task_id] = self.model.get_state()
        self.trained_tasks_.append(task.task_id)
        return self

    def _begin_task(self, task: Task) -> None:
        """Hook before a task's data is chosen (gradient models build their module here)."""

    def _fit(self, data: ImageSet, task: Task) -> None:
        """Fit the model from scratch on `data` (frozen features), and teach the router the task."""
        embeddings = self.cache.embeddings(self.model, data, self.batch_size)
        self.model.fit(embeddings)
        if self.router_ is not None:
            self.router_.add_task(task.task_id, self.model.routing_features(embeddings))
        log.debug("task %d (%s): fitted %s on %d images", task.task_id, task.name, self.model.name, len(data))

    def state_dict(self) -> dict:
        """Everything fitting has learned, as nested dicts/lists of tensors and plain data.

        Covers any model whose ``get_state()`` returns a dict of tensors (gradient-trained
        models included); see :mod:`cl_iad.checkpoint`.
        """
        from ..checkpoint import encode_samples

        fitted = getattr(self.model, "fitted_", True)
        return {"regime": self.regime, "model_config": self.model.config(),
                "model": self.model.get_state() if fitted else None,
                "buffer": self.buffer_.state_dict() if self.buffer_ is not None else None,
                "seen": encode_samples(self.seen_),
                "task_states": {int(k): v for k, v in self.task_states_.items()},
                "trained_tasks": [int(t) for t in self.trained_tasks_],
                "extra": self._extra_state()}

    def _extra_state(self) -> dict:
        """State beyond the model's own that a subclass or option adds (the task router here)."""
        return {"router": self.router_.state_dict()} if self.router_ is not None else {}

    def _load_extra_state(self, extra: dict) -> None:
        if self.router_ is not None and "router" in extra:
            self.router_.load_state_dict(extra["router"])

    def load_state_dict(self, state: dict) -> Strategy:
        """Restore what :meth:`state_dict` saved; refuses a state of another model or regime."""
        from ..checkpoint import decode_samples

        mine = (self.regime, self.model.config())
        if (state["regime"], state["model_config"]) != mine:
            raise ValueError(f"strategy state is for {state['regime']} {state['model_config']}, not {mine[0]} "
                             f"{mine[1]}; load it into a strategy built with the same settings")
        self._load_extra_state(state.get("extra", {}))
        if state["model"] is not None:
            self.model.set_state(state["model"])
        if self.buffer_ is not None and state["buffer"] is not None:
            self.buffer_.load_state_dict(state["buffer"])
        self.seen_ = decode_samples(state["seen"])
        self.task_states_ = {int(k): v for k, v in state["task_states"].items()}
        self.trained_tasks_ = [int(t) for t in state["trained_tasks"]]
        return self

    @torch.no_grad()
    def predict(self, data: ImageSet, task_id: int | None = None) -> Predictions:
        """Scores and maps on `data`; `task_id` selects the per-task state when task-aware."""
        emb = self.cache.embeddings(self.model, data, self.batch_size)
        if self.routes:
            return self._predict_routed(emb, data.image_size)
        if self.regime == "per_task":
            if task_id is None:
                raise ValueError("per_task with eval_mode='aware' needs the task id at test time; "
                                 "use eval_mode='agnostic' to route images to task models instead")
            chosen = task_id if task_id in self.task_states_ else self.trained_tasks_[-1]
            self.model.set_state(self.task_states_[chosen])
        return self._score(emb, data.image_size)

    def _predict_routed(self, emb: torch.Tensor, image_size: int) -> Predictions:
        """Route each image to a trained task, then score it with that task's state.

        Maps are None when the model gives none (detection, classification), as unrouted.
        """
        routed = self.router_.route(self.model.routing_features(emb))
        parts: list[tuple[np.ndarray, Predictions]] = []
        for tid in routed.unique().tolist():
            idx = (routed == tid).nonzero().flatten()
            self.model.set_state(self.task_states_[tid])
            parts.append((idx.numpy(), self._score(emb[idx], image_size)))
        return _scatter(parts, len(emb), routed.numpy())

    def _score(self, emb: torch.Tensor, image_size: int) -> Predictions:
        size = (image_size, image_size)
        scores, maps = [], []
        for start in range(0, len(emb), self.batch_size):
            s, m = self.model.score(emb[start : start + self.batch_size], size)
            scores.append(s)
            maps.append(m)
        return predictions(scores, maps)


def _scatter(parts: list[tuple[np.ndarray, Predictions]], n: int, routed: np.ndarray) -> Predictions:
    """Put each routed group's predictions back at its images' positions (maps None if any group has none)."""
    scores = np.zeros(n, dtype=np.float64)
    has_maps = bool(parts) and all(p.anomaly_map is not None for _, p in parts)
    maps = np.zeros((n, *parts[0][1].anomaly_map.shape[1:]), dtype=np.float32) if has_maps else None
    for idx, p in parts:
        scores[idx] = p.pred_score
        if maps is not None:
            maps[idx] = p.anomaly_map
    return Predictions(scores, maps, routed)


def predictions(scores: list[torch.Tensor], maps: list[torch.Tensor | None]) -> Predictions:
    """Join per-batch outputs; maps stay None when the model gives none."""
    joined = None if any(m is None for m in maps) else torch.cat(maps).numpy().astype(np.float32)
    return Predictions(torch.cat(scores).numpy().astype(np.float64), joined)
