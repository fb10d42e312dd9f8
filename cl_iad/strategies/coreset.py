"""Greedy k-center coreset selection, the same algorithm as anomalib's ``KCenterGreedy``.

Why our own: anomalib's loop allocates a fresh N x d difference array, an N x 1 distance
array and a new running-minimum tensor on every step and keeps 0-d index tensors in a list.
Inside long Lightning processes that churn fragments the heap until the OOM killer fires, and
it dominates PatchCore's fit time. Here every buffer is allocated once and updated in place.
The arithmetic is the same (same random projection, same start index, same
``vector_norm(features - center)``, same first-index tie breaking), so for the same torch seed
the selected indices are identical; ``tests/test_coreset.py`` pins this against anomalib and
``benchmarks/bench_coreset.py`` measures the speed ratio.
"""

from __future__ import annotations

import numpy as np
import torch


def greedy_coreset_indices(embedding: torch.Tensor, sampling_ratio: float, seed: int | None = None) -> torch.Tensor:
    """Indices of a k-center-greedy coreset of `embedding` (N, D), k = int(N * sampling_ratio).

    Randomness (the projection, which draws from numpy's global RNG, and the start index, from
    torch's) is consumed exactly as anomalib consumes it. With `seed`, both global generators are
    seeded for the call and restored afterwards, so the caller's random streams are untouched.
    """
    if seed is None:
        return _greedy(embedding, sampling_ratio)
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            np.random.seed(seed)
            return _greedy(embedding, sampling_ratio)
    finally:
        np.random.set_state(np_state)


def _greedy(embedding: torch.Tensor, sampling_ratio: float) -> torch.Tensor:
    from anomalib.models.components.dimensionality_reduction import SparseRandomProjection

    if embedding.ndim != 2:
        raise ValueError(f"embedding must be 2-D (N, D), got shape {tuple(embedding.shape)}")
    n = embedding.shape[0]
    k = int(n * sampling_ratio)
    if k <= 0:
        raise ValueError(f"coreset size is 0 for {n} embeddings at sampling_ratio={sampling_ratio}; raise the ratio")
    projector = SparseRandomProjection(eps=0.9).fit(embedding)
    features = projector.transform(embedding)
    selected = torch.empty(k, dtype=torch.long)
    idx = torch.randint(high=n, size=(1,), device=features.device).squeeze()
    selected[0] = idx
    diff = torch.empty_like(features)
    dist = torch.empty(n, dtype=features.dtype, device=features.device)
    min_dist = torch.full((n,), float("inf"), dtype=features.dtype, device=features.device)
    for step in range(1, k):
        torch.sub(features, features[idx], out=diff)
        torch.linalg.vector_norm(diff, ord=2, dim=1, out=dist)
        torch.minimum(min_dist, dist, out=min_dist)
        idx = torch.argmax(min_dist)
        min_dist[idx] = 0.0
        selected[step] = idx
    return selected
