"""Bounded shared memory: one bank of at most bank_size rows, merged and reduced after each task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cl_iad.runner import run
from cl_iad.strategies import Strategy, build_model
from cl_iad.strategies.bounded_bank import merge_reduce


def test_merge_reduce_keeps_the_rows_that_cover_the_union():
    """Union {(0,0), (10,0)} + {(0,0.25), (5,0)} reduced to 3: whatever the start, farthest-first drops
    one of the two near-duplicates and keeps (10,0) and (5,0)."""
    kept = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    new = torch.tensor([[0.0, 0.25], [5.0, 0.0]])
    for seed in range(4):
        idx = merge_reduce(kept, new, 3, seed=seed)
        rows = {tuple(r) for r in torch.cat([kept, new])[idx].tolist()}
        assert len(rows) == 3 and {(10.0, 0.0), (5.0, 0.0)} <= rows
        assert len(rows & {(0.0, 0.0), (0.0, 0.25)}) == 1
    assert merge_reduce(kept, new, 10).tolist() == [0, 1, 2, 3]  # under budget: the union as it is


@pytest.fixture(scope="module")
def bounded(tiny_stream, shared_cache, tmp_path_factory):
    strategy = Strategy(build_model("patchcore", "light"), "bounded_bank", cache=shared_cache, bank_size=40)
    result = run(strategy, tiny_stream, tmp_path_factory.mktemp("bb"), name="bb", wandb="off", progress=False)
    return strategy, result


def test_the_shared_bank_never_exceeds_its_size_and_holds_every_task(bounded):
    strategy, _ = bounded
    bank = strategy.model.state_dict()["memory_bank"]
    plugin = strategy.plugin("bounded_bank")
    assert len(bank) == 40 == len(plugin.origin_)
    assert set(plugin.rows_per_task()) == {0, 1, 2}


def test_bounded_bank_is_task_agnostic_without_routing(bounded):
    strategy, result = bounded
    assert not strategy.task_aware and not strategy.routes
    for metric in ("image_auroc", "pixel_auroc", "pro"):
        assert np.isfinite(result.matrices[metric].to_numpy()).all(), metric


def test_a_budget_above_the_union_keeps_every_task_bank(tiny_stream, shared_cache):
    """Under budget nothing is reduced: the shared bank is the union of the per-task coresets."""
    strategy = Strategy(build_model("patchcore", "light"), "bounded_bank", cache=shared_cache, bank_size=10**6)
    sizes = []
    for task in tiny_stream[:2]:
        alone = build_model("patchcore", "light").use_cache(shared_cache).fit(task.train)
        sizes.append(len(alone.state_dict()["memory_bank"]))
        strategy.fit_task(task, tiny_stream)
    assert len(strategy.model.state_dict()["memory_bank"]) == sum(sizes)


def test_a_model_without_a_bank_is_refused():
    with pytest.raises(ValueError, match="no memory bank"):
        Strategy(build_model("padim", "light"), "bounded_bank")
