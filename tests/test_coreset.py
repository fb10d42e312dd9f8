"""Our k-center-greedy coreset picks exactly anomalib's indices, faster and without churn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cl_iad.models.ops.coreset import greedy_coreset_indices


def _anomalib_indices(x: torch.Tensor, ratio: float, seed: int) -> list[int]:
    from anomalib.models.components.sampling import KCenterGreedy

    # anomalib's projection draws from numpy's and torch's global RNGs, its start index from torch's
    torch.manual_seed(seed)
    np.random.seed(seed)
    return KCenterGreedy(x, ratio).select_coreset_idxs()


def _clustered(n: int, d: int, seed: int) -> torch.Tensor:
    """Points around a few centers with duplicates: the pruned search skips most of them."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(8, d, generator=g) * 4
    x = centers[torch.randint(0, 8, (n,), generator=g)] + torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g)
    x[5:15] = x[0]
    return x


def test_coreset_selects_anomalibs_indices_for_the_same_seed(tiny_stream, shared_cache):
    from cl_iad.strategies import build_model

    model = build_model("patchcore")
    real = model.module.reshape_embedding(shared_cache.embeddings(model, tiny_stream[0].train))
    cases = [(real, 0.1, 0), (_clustered(2000, 32, 1), 0.1, 5), (torch.randn(800, 16), 0.2, 2)]
    for x, ratio, seed in cases:
        expected = _anomalib_indices(x, ratio, seed)
        for method in ("pruned", "dense"):
            ours = greedy_coreset_indices(x, ratio, seed=seed, method=method).tolist()
            assert ours == expected, (method, tuple(x.shape), ratio, seed)


def test_coreset_leaves_global_random_state_alone_and_honours_a_size_budget():
    x = _clustered(800, 16, 3)
    torch.manual_seed(123)
    np.random.seed(123)
    before = torch.rand(1), np.random.rand()
    torch.manual_seed(123)
    np.random.seed(123)
    picked = greedy_coreset_indices(x, 0.5, seed=7, size=40)
    assert (torch.rand(1), np.random.rand()) == before
    assert len(picked) == 40 and len(set(picked.tolist())) == 40
    assert picked.tolist() == greedy_coreset_indices(x, 0.5, seed=7, size=40, method="dense").tolist()
    with pytest.raises(ValueError, match="coreset size is 0"):
        greedy_coreset_indices(x, 0.0001, seed=0)
