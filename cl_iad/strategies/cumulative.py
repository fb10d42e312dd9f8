"""Cumulative: all data seen so far (an upper bound that grows with the stream)."""

from __future__ import annotations

from ..scenarios.base import decode_samples, encode_samples
from .plugin import RegimePlugin


class Cumulative(RegimePlugin):
    """Fit on every past task's training images plus the new task's."""

    name = "cumulative"
    summary = "train on all data seen so far"
    chooses_data = True

    def setup(self, strategy) -> None:
        self.seen_ = []

    def training_samples(self, strategy, task, scenario, samples):
        return self.seen_ + samples

    def after_task(self, strategy, task, data) -> None:
        self.seen_.extend(task.train.samples)

    def state_dict(self) -> dict:
        return {"seen": encode_samples(self.seen_)}

    def load_state_dict(self, state, strategy) -> None:
        self.seen_ = decode_samples(state.get("seen", []))
