"""Joint: all tasks at once, fitted when the first task arrives (the upper bound)."""

from __future__ import annotations

from .plugin import RegimePlugin


class Joint(RegimePlugin):
    """Fit once on every task's training images; every row of the matrix comes from that model."""

    name = "joint"
    summary = "one fit on all tasks together, the upper bound"
    exclusive = True
    chooses_data = True

    def training_samples(self, strategy, task, scenario, samples):
        if strategy.trained_tasks_:
            return None
        return [s for t in scenario for s in t.train.samples]
