"""The strategy template: one anomaly model under one continual regime, made of plugins.

``Strategy(model, "replay+ewc", buffer_size=50, ewc_lambda=10)`` builds the plugins the regime
string names (each file of this package defines one; see :mod:`cl_iad.strategies.plugin`) and
hands each the hyper-parameters it takes. ``fit_task`` is the template every regime shares:

1. the model prepares for the task's image size; plugins run ``before_task``;
2. plugins choose the training samples in turn (replay adds its buffer, joint fits once);
3. the model fits on them (:meth:`~cl_iad.models.base.AnomalyModel.fit`), with the plugins'
   loss penalties and ``after_training`` callbacks in its :class:`~cl_iad.models.base.FitContext`;
4. plugins run ``after_task``.

``predict`` asks the plugins first (per-task states, routing) and otherwise the model. The
template knows no regime by name.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch

from ..cache import FeatureCache
from ..models.base import AnomalyModel, FitContext, Penalty, Predictions, predictions
from ..scenarios.base import ImageSet, Scenario, Task
from .registry import SEPARATOR, parse_regime, regime_names

log = logging.getLogger(__name__)

EVAL_MODES = ("aware", "agnostic")
STATE_FORMAT = 2
__all__ = ["EVAL_MODES", "FeatureCache", "Predictions", "Strategy", "predictions"]


class Strategy:
    """One model under one continual regime (``naive``, ``replay``, ``replay+ewc``, ...).

    ``__init__`` only stores parameters and builds the plugins; learned state lives in
    attributes ending in ``_`` (here and in the plugins). `params` are the regimes'
    hyper-parameters (``buffer_size``, ``ewc_lambda``, ...); those of regimes not in `regime`
    are ignored, so one set of settings can serve a sweep over regimes.
    """

    def __init__(self, model: AnomalyModel, regime: str = "naive", *, seed: int = 0, eval_mode: str = "aware",
                 cache: FeatureCache | None = None, batch_size: int | None = None, **params: Any) -> None:
        if eval_mode not in EVAL_MODES:
            raise ValueError(f"unknown eval mode {eval_mode!r}; choose from {', '.join(EVAL_MODES)}")
        self.model = model
        self.plugins = parse_regime(regime, params)
        self.regime = SEPARATOR.join(p.name for p in self.plugins)
        self.seed = seed
        self.eval_mode = eval_mode
        self.params = dict(params)
        for plugin in self.plugins:
            plugin.check(model, eval_mode)
        if batch_size is not None:
            model.batch_size = batch_size
        self.cache = cache if cache is not None else FeatureCache()
        if hasattr(model, "use_cache"):
            model.use_cache(self.cache)
        self.trained_tasks_: list[int] = []
        self.image_size_: int | None = None
        for plugin in self.plugins:
            plugin.setup(self)

    # -- what the runner asks ------------------------------------------------------------------
    @property
    def task_aware(self) -> bool:
        """Whether predictions use the task id at test time."""
        return any(p.task_aware(self) for p in self.plugins)

    @property
    def routes(self) -> bool:
        """Whether test images are routed to a task model (task-agnostic ``per_task``)."""
        return any(p.routes(self) for p in self.plugins)

    def plugin(self, name: str):
        """The plugin of regime `name` (e.g. ``strategy.plugin("replay").buffer_``), or None."""
        return next((p for p in self.plugins if p.name == name), None)

    def build_args(self) -> dict:
        """Constructor arguments (besides the model and cache) that rebuild this strategy."""
        args: dict[str, Any] = {"regime": self.regime, "seed": self.seed, "eval_mode": self.eval_mode}
        for plugin in self.plugins:
            args.update(plugin.config())
        return args

    def config(self) -> dict:
        """Settings of the strategy and its model, for config.json."""
        replay = self.plugin("replay")
        out = {"regime": self.regime, "buffer_size": replay.buffer_size if replay else None,
               "buffer_policy": replay.buffer_policy if replay else None, "task_aware": self.task_aware,
               "strategy_seed": self.seed, "eval_mode": "aware" if self.task_aware else "agnostic",
               "router": next((p.router_name(self) for p in self.plugins if p.routes(self)), None)}
        for plugin in self.plugins:
            out.update({k: v for k, v in plugin.config().items() if k not in out and k != "router_metric"})
        return {**out, **self.model.config()}

    # -- the template ----------------------------------------------------------------------------
    def fit_task(self, task: Task, scenario: Scenario) -> Strategy:
        """Train on one task of `scenario` under this regime."""
        self.model.prepare(task.train.image_size)
        self.image_size_ = task.train.image_size
        for plugin in self.plugins:
            plugin.before_task(self, task)
        samples = list(task.train.samples)
        for plugin in self.plugins:
            samples = plugin.training_samples(self, task, scenario, samples) if samples is not None else None
        data = None if samples is None else ImageSet(samples, task.train.image_size)
        if data is not None:
            ctx = FitContext(task_id=task.task_id, seed=self.seed, penalty=self._penalty(),
                             on_trained=tuple(partial(p.after_training, self, data=data) for p in self.plugins))
            self.model.fit(data, ctx)
            log.debug("task %d (%s): fitted %s on %d images", task.task_id, task.name, self.model.name, len(data))
        for plugin in self.plugins:
            plugin.after_task(self, task, data)
        self.trained_tasks_.append(task.task_id)
        return self

    def _penalty(self) -> Penalty | None:
        terms = [t for t in (p.penalty(self) for p in self.plugins) if t is not None]
        if not terms:
            return None
        if len(terms) == 1:
            return terms[0]
        return lambda images: sum(term(images) for term in terms)

    @torch.no_grad()
    def predict(self, data: ImageSet, task_id: int | None = None) -> Predictions:
        """Scores and maps on `data`; `task_id` selects the per-task state when task-aware."""
        for plugin in self.plugins:
            out = plugin.predict(self, data, task_id)
            if out is not None:
                return out
        return self.model.predict(data)

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything fitting has learned, as nested dicts/lists of tensors and plain data
        (``torch.load(weights_only=True)`` reads it; see :mod:`cl_iad.checkpoint`)."""
        fitted = getattr(self.model, "fitted_", True)
        return {"format": STATE_FORMAT, "regime": self.regime, "model_config": self.model.config(),
                "image_size": self.image_size_, "model": self.model.state_dict() if fitted else None,
                "plugins": {p.name: p.state_dict() for p in self.plugins},
                "trained_tasks": [int(t) for t in self.trained_tasks_]}

    def load_state_dict(self, state: dict) -> Strategy:
        """Restore what :meth:`state_dict` saved; refuses a state of another model or regime."""
        state = upgrade_state(state)
        if state["regime"] != self.regime or _portable(state["model_config"]) != _portable(self.model.config()):
            raise ValueError(f"strategy state is for {state['regime']} {state['model_config']}, not {self.regime} "
                             f"{self.model.config()}; load it into a strategy built with the same settings")
        if state.get("image_size") is not None:
            self.image_size_ = int(state["image_size"])
            self.model.prepare(self.image_size_)
        for plugin in self.plugins:
            plugin.load_state_dict(state["plugins"].get(plugin.name, {}), self)
        if state["model"] is not None:
            self.model.load_state_dict(state["model"])
        self.trained_tasks_ = [int(t) for t in state["trained_tasks"]]
        return self


def _portable(config: dict) -> dict:
    """A model config without where it ran: a state saved on a GPU loads on a CPU."""
    return {k: v for k, v in config.items() if k != "device"}


def upgrade_state(state: dict) -> dict:
    """A state written before regimes were plugins (format 1), in today's layout."""
    if state.get("format", 1) >= STATE_FORMAT:
        return state
    extra = state.get("extra") or {}
    plugins: dict[str, dict] = {"replay": {"buffer": state.get("buffer")}, "cumulative": {"seen": state.get("seen", [])},
                                "per_task": {"task_states": state.get("task_states", {}),
                                             "initial": extra.get("initial"), "router": extra.get("router")}}
    regulariser = extra.get("regulariser") or {}
    plugins["ewc"] = plugins["lwf"] = regulariser
    return {"format": STATE_FORMAT, "regime": state["regime"], "model_config": state["model_config"],
            "image_size": extra.get("image_size"), "model": state["model"], "plugins": plugins,
            "trained_tasks": state["trained_tasks"]}


def available_regimes() -> tuple[str, ...]:
    """Every regime name (for help texts)."""
    return regime_names()
