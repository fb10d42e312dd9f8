"""Bounded shared memory: one memory bank of fixed size for all tasks, kept by merge and reduce.

CADIC-style shared incremental coresets and anomalib 2.7's MH-PatchCore keep a single bank whose
size never grows with the stream. This regime gives that to any frozen-feature model with a memory
bank (a ``memory_bank`` tensor (M, D) in its ``state_dict``: PatchCore, MH-PatchCore): after each
task the model's fresh bank (fitted on the task's images alone, as under ``naive``) is *merged*
with the bank kept so far and the union is *reduced* to at most ``bank_size`` rows by the greedy
k-center coreset (PatchCore's own selection, :mod:`cl_iad.models.ops.coreset`). Memory stays at
``bank_size`` rows whatever the number of tasks; a test image is scored against the one shared
bank, with no task id and no routing.

This is one merge-reduce step per task over two summaries (the kept bank and the new task's);
k-center keeps the rows that cover the union, so a task whose patches resemble earlier ones costs
few rows, and a task that differs claims more. The plugin records which task each kept row came
from (``origin_``), so reports can show how the budget is shared.

A model whose bank lives in a space fitted to the data (MH-PatchCore's PCA and whitening) exposes
``freeze_space()``; it is called before the second task, so that every later bank is computed in
the first task's space and the rows can be merged.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import torch

from ..models.ops.coreset import greedy_coreset_indices
from .plugin import RegimePlugin

log = logging.getLogger(__name__)


def merge_reduce(kept: torch.Tensor | None, new: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Indices into ``cat(kept, new)`` of at most `size` rows chosen by the greedy k-center coreset."""
    merged = new if kept is None else torch.cat([kept.to(new.device, new.dtype), new])
    if len(merged) <= size:
        return torch.arange(len(merged))
    return greedy_coreset_indices(merged, 1.0, seed=seed, size=size).cpu()


class BoundedBank(RegimePlugin):
    """One shared memory bank of at most ``bank_size`` rows, merged and reduced after every task."""

    name = "bounded_bank"
    summary = "one shared memory bank of fixed size (bank_size rows), merge-reduce after each task"
    params: ClassVar[dict] = {"bank_size": 1000}

    @classmethod
    def supports(cls, model) -> bool:
        """Frozen-feature models of the memory-bank family."""
        return not getattr(model, "trains_by_gradient", False) and getattr(model, "family", "") == "memory bank"

    def check(self, model, eval_mode: str) -> None:
        super().check(model, eval_mode)
        if not self.supports(model):
            raise ValueError(f"regime bounded_bank keeps a memory bank of fixed size; {model.name} has no memory bank "
                             "(use patchcore or mhpatchcore)")
        if int(self.bank_size) < 1:
            raise ValueError(f"bank_size must be a positive number of rows, got {self.bank_size}")

    def setup(self, strategy) -> None:
        self.kept_: torch.Tensor | None = None  # the bank before the task being fitted (not checkpointed: the model holds it)
        self.origin_ = torch.empty(0, dtype=torch.long)  # task id of each row of the shared bank

    def before_task(self, strategy, task) -> None:
        model = strategy.model
        if not getattr(model, "fitted_", False):
            self.kept_ = None
            return
        freeze = getattr(model, "freeze_space", None)
        if callable(freeze):  # later banks must live in the space of the one kept
            freeze()
        self.kept_ = self._bank(model.state_dict(), model).detach().clone()

    def after_task(self, strategy, task, data) -> None:
        if data is None:
            return
        model = strategy.model
        state = model.state_dict()
        new = self._bank(state, model)
        if self.kept_ is not None and self.kept_.shape[1] != new.shape[1]:
            raise RuntimeError(f"{model.name}'s bank changed width ({self.kept_.shape[1]} -> {new.shape[1]}) between "
                               "tasks, so the banks cannot be merged; the model must keep its feature space")
        idx = merge_reduce(self.kept_, new, int(self.bank_size), seed=strategy.seed + task.task_id)
        origin = torch.cat([self.origin_ if self.kept_ is not None else self.origin_[:0],
                            torch.full((len(new),), int(task.task_id), dtype=torch.long)])
        merged = new if self.kept_ is None else torch.cat([self.kept_.to(new.device, new.dtype), new])
        model.load_state_dict({**state, "memory_bank": merged[idx.to(merged.device)].contiguous()})
        self.origin_ = origin[idx.cpu()]
        self.kept_ = None
        log.debug("bounded_bank after task %d: %d rows (%s)", task.task_id, len(idx), self.rows_per_task())

    def rows_per_task(self) -> dict[int, int]:
        """How many rows of the shared bank each task contributed."""
        ids, counts = self.origin_.unique(return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, counts, strict=True)}

    @staticmethod
    def _bank(state: dict, model) -> torch.Tensor:
        bank = state.get("memory_bank")
        if not isinstance(bank, torch.Tensor) or bank.ndim != 2:
            raise ValueError(f"{model.name}'s state has no 2-D 'memory_bank' tensor; bounded_bank needs a "
                             "memory-bank model (patchcore, mhpatchcore)")
        return bank

    def state_dict(self) -> dict:
        return {"origin": self.origin_.clone()}

    def load_state_dict(self, state, strategy) -> None:
        self.origin_ = state.get("origin", torch.empty(0, dtype=torch.long)).clone()
