"""Replay: each task's data plus a fixed-size buffer of past normal images."""

from __future__ import annotations

from typing import ClassVar

from .buffers import ReplayBuffer
from .plugin import RegimePlugin


class Replay(RegimePlugin):
    """Task t's images plus up to `buffer_size` past images, kept by an Avalanche storage policy."""

    name = "replay"
    summary = "train on each task plus a fixed-size buffer of past normal images"
    params: ClassVar[dict] = {"buffer_size": 20, "buffer_policy": "reservoir"}
    chooses_data = True

    def setup(self, strategy) -> None:
        self.buffer_ = ReplayBuffer(self.buffer_size, self.buffer_policy, strategy.seed)

    def training_samples(self, strategy, task, scenario, samples):
        return samples + self.buffer_.samples

    def after_task(self, strategy, task, data) -> None:
        self.buffer_.update(task.train.samples)

    def state_dict(self) -> dict:
        return {"buffer": self.buffer_.state_dict()}

    def load_state_dict(self, state, strategy) -> None:
        if state.get("buffer") is not None:
            self.buffer_.load_state_dict(state["buffer"])
