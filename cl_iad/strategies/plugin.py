"""A continual regime as a plugin of the strategy template (see :mod:`cl_iad.strategies.base`).

In the spirit of Avalanche's ``SupervisedPlugin``, with six hooks instead of 26. A regime
subclasses :class:`RegimePlugin`, sets ``name`` and, if it has any, its hyper-parameters in
``params`` (names and defaults), and overrides the hooks it needs:

=====================  ==========================================================================
``setup``              once, when the strategy is built (check the model, make buffers)
``before_task``        before a task's training data is chosen
``training_samples``   the samples to fit on: may add to them (replay), or return None (no fit)
``penalty``            a loss term added to every training step (gradient-trained models)
``after_training``     right after the model trained, under the fit's random state (EWC's Fisher)
``after_task``         after the task is fitted (buffer update, per-task states)
``predict``            predictions of a whole test set, or None to let the model predict
=====================  ==========================================================================

A plugin keeps its learned state in attributes ending in ``_`` and returns it from
``state_dict`` as tensors and plain data (checkpoints load with ``weights_only=True``).
Putting a new file with one subclass into ``cl_iad/strategies/`` is all it takes: the
registry (:mod:`cl_iad.strategies.registry`) finds it, and ``--strategy NAME`` runs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ..models.base import Penalty, Predictions
    from ..scenarios.base import ImageSet, Sample, Scenario, Task


class RegimePlugin:
    """One continual regime; see the module docstring for the hooks."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}  # hyper-parameter -> default; settable from the CLI and YAML
    requires_gradient: ClassVar[bool] = False  # only for models trained by gradient (EWC, LwF, MAS)
    exclusive: ClassVar[bool] = False  # cannot be combined with any other regime (joint, per_task)
    chooses_data: ClassVar[bool] = False  # decides what is trained on: at most one per strategy
    gives_maps: ClassVar[bool] = True  # False: predictions carry no anomaly map whatever the model (DNE)

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise ValueError(f"regime {self.name} has no parameter(s) {unknown}; "
                             f"it takes {sorted(self.params) or 'none'}")
        for key, default in self.params.items():
            setattr(self, key, params.get(key, default))

    def config(self) -> dict[str, Any]:
        """The hyper-parameters, for config.json and rebuilding the strategy."""
        return {key: getattr(self, key) for key in self.params}

    def check(self, model: Any, eval_mode: str) -> None:
        """Raise ValueError (with the reason) if this regime cannot run `model` in `eval_mode`."""
        if self.requires_gradient and not getattr(model, "trains_by_gradient", False):
            raise ValueError(f"regime {self.name} regularises gradient training, and {model.name} fits from frozen "
                             "features in one pass; use it with a gradient-trained model (e.g. stfpm, fastflow)")

    # -- hooks ------------------------------------------------------------------------------
    def setup(self, strategy: Any) -> None:
        """Once, when the strategy is built."""

    def before_task(self, strategy: Any, task: Task) -> None:
        """Before `task`'s training data is chosen."""

    def training_samples(self, strategy: Any, task: Task, scenario: Scenario,
                         samples: list[Sample]) -> list[Sample] | None:
        """The normal samples to fit on at `task` (None: keep the current state, fit nothing)."""
        return samples

    def penalty(self, strategy: Any) -> Penalty | None:
        """A loss term for this task's training steps, or None."""
        return None

    def after_training(self, strategy: Any, model: Any, data: ImageSet) -> None:
        """Right after the model trained on `data`, under the same random state."""

    def after_task(self, strategy: Any, task: Task, data: ImageSet | None) -> None:
        """After `task` was fitted (`data` is what it was fitted on; None if nothing was)."""

    def predict(self, strategy: Any, data: ImageSet, task_id: int | None) -> Predictions | None:
        """Predictions for `data`, or None to let the model predict with its current state."""
        return None

    def task_aware(self, strategy: Any) -> bool:
        """Whether predictions use the task id given at test time."""
        return False

    def routes(self, strategy: Any) -> bool:
        """Whether test images are routed to a task's state (task-agnostic per-task models)."""
        return False

    def router_name(self, strategy: Any) -> str | None:
        """What picks each test image's task when :meth:`routes` (``router`` in config.json)."""
        return None

    @classmethod
    def supports(cls, model: Any) -> bool:
        """Whether this regime can run `model` (class, instance or ModelInfo); ``cl-iad models`` lists these."""
        return bool(getattr(model, "trains_by_gradient", False)) or not cls.requires_gradient

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], strategy: Any) -> None:
        """Restore :meth:`state_dict`; the model is built (prepared) by then."""
