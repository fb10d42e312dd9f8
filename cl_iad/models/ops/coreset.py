"""Greedy k-center coreset selection, the same algorithm as anomalib's ``KCenterGreedy``.

Why our own: anomalib's loop allocates a fresh N x d difference array, an N x 1 distance
array and a new running-minimum tensor on every step and keeps 0-d index tensors in a list.
Inside long Lightning processes that churn fragments the heap until the OOM killer fires, and
it dominates PatchCore's fit time.

Two exact variants, both selecting anomalib's indices for the same seed (same random
projection, same start index, same ``vector_norm(features - center)`` arithmetic, same
first-index tie breaking):

* ``dense``: anomalib's loop with every buffer allocated once and updated in place. Each step
  still reads all N x d projected features.
* ``pruned`` (default): the same distances, computed only where they can change the running
  minimum. Every point x remembers the center a that gave its minimum m(x) = d(x, a). By the
  triangle inequality d(x, c) >= d(a, c) - m(x), so a new center c cannot lower m(x) when
  d(a, c) >= 2 m(x), and x is skipped (Elkan's bound for k-means, here for k-center). A step
  then costs O(N) scalar work plus full distances for the few points near c, instead of
  O(N x d). A 1e-3 relative safety margin on the bound covers float rounding (the rounding
  of a norm of a few hundred float32 terms is below 1e-4 relative). The distances that are computed use the
  very same ``vector_norm`` on the same rows, so the running minima, and hence every argmax,
  are bit-identical to the dense loop.

``tests/test_coreset.py`` pins both against anomalib; ``benchmarks/bench_coreset.py``
measures the speed ratios.
"""

from __future__ import annotations

import numpy as np
import torch

METHODS = ("pruned", "dense")
_MARGIN = 1.0 + 1e-3


def greedy_coreset_indices(embedding: torch.Tensor, sampling_ratio: float, seed: int | None = None,
                           size: int | None = None, method: str = "pruned") -> torch.Tensor:
    """Indices of a k-center-greedy coreset of `embedding` (N, D).

    k = int(N * sampling_ratio), or `size` when given (a memory-bank budget). Randomness (the
    projection, which draws from numpy's and torch's global RNGs, and the start index, from
    torch's) is consumed exactly as anomalib consumes it. With `seed`, the global generators
    are seeded for the call and restored afterwards, so the caller's random streams are
    untouched.
    """
    if method not in METHODS:
        raise ValueError(f"unknown coreset method {method!r}; choose from {METHODS}")
    if seed is None:
        return _select(embedding, sampling_ratio, size, method)
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            np.random.seed(seed)
            return _select(embedding, sampling_ratio, size, method)
    finally:
        np.random.set_state(np_state)


def _select(embedding: torch.Tensor, sampling_ratio: float, size: int | None, method: str) -> torch.Tensor:
    from anomalib.models.components.dimensionality_reduction import SparseRandomProjection

    if embedding.ndim != 2:
        raise ValueError(f"embedding must be 2-D (N, D), got shape {tuple(embedding.shape)}")
    n = embedding.shape[0]
    k = int(n * sampling_ratio) if size is None else min(int(size), n)
    if k <= 0:
        raise ValueError(f"coreset size is 0 for {n} embeddings at sampling_ratio={sampling_ratio}, size={size}; "
                         "raise the ratio or the size")
    features = SparseRandomProjection(eps=0.9).fit(embedding).transform(embedding)
    start = torch.randint(high=n, size=(1,), device=features.device).squeeze()
    return (_pruned if method == "pruned" else _dense)(features, k, int(start))


def _dense(features: torch.Tensor, k: int, idx: int) -> torch.Tensor:
    n = features.shape[0]
    selected = torch.empty(k, dtype=torch.long)
    selected[0] = idx
    diff = torch.empty_like(features)
    dist = torch.empty(n, dtype=features.dtype, device=features.device)
    min_dist = torch.full((n,), float("inf"), dtype=features.dtype, device=features.device)
    for step in range(1, k):
        torch.sub(features, features[idx], out=diff)
        torch.linalg.vector_norm(diff, ord=2, dim=1, out=dist)
        torch.minimum(min_dist, dist, out=min_dist)
        idx = int(torch.argmax(min_dist))
        min_dist[idx] = 0.0
        selected[step] = idx
    return selected


def _pruned(features: torch.Tensor, k: int, idx: int) -> torch.Tensor:
    n, d = features.shape
    dev, dt = features.device, features.dtype
    selected = torch.empty(k, dtype=torch.long)
    selected[0] = idx
    rows = torch.empty_like(features)  # gathered candidate rows, reused every step
    dist = torch.empty(n, dtype=dt, device=dev)
    bound = torch.empty(n, dtype=dt, device=dev)
    owner = torch.zeros(n, dtype=torch.long, device=dev)  # step of the center giving each minimum
    centers = torch.empty(k, d, dtype=dt, device=dev)
    center_diff = torch.empty(k, d, dtype=dt, device=dev)
    center_dist = torch.empty(k, dtype=dt, device=dev)
    # the first center touches every point, exactly as the dense loop does
    torch.sub(features, features[idx], out=rows)
    min_dist = torch.linalg.vector_norm(rows, ord=2, dim=1)
    centers[0] = features[idx]
    for step in range(1, k):
        idx = int(torch.argmax(min_dist))
        min_dist[idx] = 0.0
        owner[idx] = step
        selected[step] = idx
        if step == k - 1:
            break  # the last center never updates distances (as in anomalib)
        center = features[idx]
        centers[step] = center
        # d(x, c) >= d(owner(x), c) - min_dist(x): only points with d(owner, c) < 2 min_dist can move
        torch.sub(centers[:step], center, out=center_diff[:step])
        torch.linalg.vector_norm(center_diff[:step], ord=2, dim=1, out=center_dist[:step])
        center_dist[step] = 0.0
        torch.mul(min_dist, 2.0 * _MARGIN, out=bound)
        candidates = torch.nonzero(center_dist[owner] < bound).squeeze(1)
        m = candidates.numel()
        if m == 0:
            continue
        block = rows[:m]
        torch.index_select(features, 0, candidates, out=block)
        block.sub_(center)
        torch.linalg.vector_norm(block, ord=2, dim=1, out=dist[:m])
        lower = dist[:m] < min_dist[candidates]
        changed = candidates[lower]
        min_dist[changed] = dist[:m][lower]
        owner[changed] = step
    return selected
