"""Blocked nearest-neighbour search equals the one-shot search, at any block size."""

from __future__ import annotations

import pytest
import torch

from cl_iad.models.ops.knn import euclidean_dist, nearest_neighbors
from cl_iad.strategies import build_model


@pytest.mark.parametrize("max_elements", [64 * 9, 64 * 50, 2**22])
def test_blocked_search_equals_full_distance_matrix(max_elements):
    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(300, 12, generator=g), torch.randn(530, 12, generator=g)
    bank[100] = bank[400]  # a tie: the lower index wins
    q[0] = bank[100]
    full = euclidean_dist(q, bank)
    d, i = nearest_neighbors(q, bank, 1, max_elements=max_elements)
    ref_d, ref_i = full.min(1)
    assert torch.allclose(d, ref_d, atol=1e-5) and torch.equal(i, ref_i) and i[0] == 100
    d9, i9 = nearest_neighbors(q, bank, 9, max_elements=max_elements)
    ref9 = full.topk(9, dim=1, largest=False)
    assert torch.allclose(d9, ref9.values, atol=1e-5)
    assert torch.allclose(full.gather(1, i9), ref9.values, atol=1e-5)
    with pytest.raises(ValueError, match="k=600"):
        nearest_neighbors(q, bank, 600)


def test_bank_budget_caps_patchcore_memory_bank(tiny_stream, shared_cache):
    capped = build_model("patchcore", max_bank_size=25)
    emb = shared_cache.embeddings(capped, tiny_stream[0].train + tiny_stream[1].train)
    capped.fit_features(emb)
    free = build_model("patchcore").fit_features(emb)
    assert capped.state_dict()["memory_bank"].shape[0] == 25 < free.state_dict()["memory_bank"].shape[0]
    # the budget keeps the greedy order: the capped bank is the first 25 picks of the free one
    assert torch.equal(capped.state_dict()["memory_bank"], free.state_dict()["memory_bank"][:25])
    with pytest.raises(ValueError, match="max_bank_size"):
        build_model("patchcore", max_bank_size=0)
