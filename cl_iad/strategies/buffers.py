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

    # -- checkpointing --------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The buffer's contents and its policy's random weights, as plain data and tensors."""
        from ..checkpoint import encode_samples

        def group(storage) -> dict:
            data = storage.buffer
            return {"max_size": storage.max_size, "samples": encode_samples([data[i] for i in range(len(data))]),
                    "weights": storage._buffer_weights.clone()}

        state = {"size": self.size, "policy": self.policy, "seed": self.seed, "updates": self._updates}
        if self.policy == "reservoir":
            state["groups"] = {0: group(self._storage)}
        else:
            state["num_exps"] = self._storage._num_exps
            state["groups"] = {int(k): group(g) for k, g in self._storage.buffer_groups.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore contents saved by :meth:`state_dict`; later updates then match an unbroken run."""
        from avalanche.benchmarks.utils import AvalancheDataset
        from avalanche.training.storage_policy import ReservoirSamplingBuffer

        from ..checkpoint import decode_samples

        mine = (self.size, self.policy, self.seed)
        if (state["size"], state["policy"], state["seed"]) != mine:
            raise ValueError(f"replay buffer checkpoint is for size/policy/seed {state['size'], state['policy'], state['seed']}, "
                             f"this buffer is {mine}; delete the checkpoint or use the same settings")

        def group(g: dict) -> ReservoirSamplingBuffer:
            storage = ReservoirSamplingBuffer(g["max_size"])
            storage.buffer = AvalancheDataset([_Records(decode_samples(g["samples"]))])
            storage._buffer_weights = g["weights"].clone()
            return storage

        if self.policy == "reservoir":
            restored = group(state["groups"][0])
            self._storage.buffer, self._storage._buffer_weights = restored.buffer, restored._buffer_weights
        else:
            self._storage._num_exps = state["num_exps"]
            self._storage.buffer_groups = {int(k): group(g) for k, g in sorted(state["groups"].items())}
        self._updates = state["updates"]
