"""Replay buffers: Avalanche storage policies over lightweight sample records.

The buffer holds :class:`~cl_iad.scenarios.base.Sample` records (paths and labels), not
decoded images, so it costs almost no memory and its images go through the same feature
cache as everything else. Selection is delegated to Avalanche's storage policies
(``ReservoirSamplingBuffer``, ``ExperienceBalancedBuffer``), seeded per task so that runs are
reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import torch
from torch.utils.data import Dataset

from ..scenarios.base import Sample

POLICIES = ("reservoir", "task_balanced")


class _Records(Dataset):
    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


class ReplayBuffer:
    """A fixed-size memory of past normal images.

    `policy` is ``reservoir`` (uniform over everything seen) or ``task_balanced`` (equal share
    per past task).
    """

    def __init__(self, size: int, policy: str = "reservoir", seed: int = 0) -> None:
        if size <= 0:
            raise ValueError(f"replay buffer size must be positive, got {size}")
        if policy not in POLICIES:
            raise ValueError(f"unknown buffer policy {policy!r}; choose from {POLICIES}")
        self.size, self.policy, self.seed = size, policy, seed
        from avalanche.training.storage_policy import ExperienceBalancedBuffer, ReservoirSamplingBuffer

        self._storage = (ReservoirSamplingBuffer(size) if policy == "reservoir"
                         else ExperienceBalancedBuffer(size, adaptive_size=True))
        self._updates = 0

    @property
    def samples(self) -> list[Sample]:
        data = self._storage.buffer
        return [data[i] for i in range(len(data))]

    def update(self, samples: Sequence[Sample]) -> None:
        """Offer one task's normal samples to the buffer."""
        from avalanche.benchmarks.utils import AvalancheDataset

        data = AvalancheDataset([_Records(samples)])
        with torch.random.fork_rng():
            torch.manual_seed(self.seed * 1000 + self._updates)
            if self.policy == "reservoir":
                self._storage.update_from_dataset(data)
            else:
                self._storage.post_adapt(None, SimpleNamespace(dataset=data))
        self._updates += 1
