"""Nearest-neighbour search against a memory bank, in blocks of bounded size.

anomalib's ``PatchcoreModel.nearest_neighbors`` chunks the queries (1024 at a time) but
compares each chunk with the whole bank at once: a 1024 x M distance matrix plus a
temporary of the same size. With the bank of a cumulative run over many categories (M in
the hundreds of thousands) that is gigabytes per chunk. Here both sides are chunked so no
distance block exceeds `max_elements` entries, whatever the bank size.
"""

from __future__ import annotations

import torch

DEFAULT_MAX_ELEMENTS = 2**22  # 16 MiB of float32 per distance block


def euclidean_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances (n, m), the same arithmetic as anomalib's PatchCore."""
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    return PatchcoreModel.euclidean_dist(x, y)


@torch.no_grad()
def nearest_neighbors(query: torch.Tensor, bank: torch.Tensor, k: int = 1,
                      max_elements: int = DEFAULT_MAX_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances and bank indices of the `k` nearest bank rows of each query row.

    Returns shapes (n,) for k=1 and (n, k) otherwise, like anomalib. Ties keep the lower
    bank index. Peak extra memory is about 2 * max_elements floats.
    """
    n, m = query.shape[0], bank.shape[0]
    if m == 0:
        raise ValueError("the memory bank is empty; fit the model before scoring")
    if not 1 <= k <= m:
        raise ValueError(f"k={k} neighbours requested from a bank of {m} rows; use 1 <= k <= {m}")
    bank_chunk = min(m, max(k, max_elements // 64))
    query_chunk = max(1, max_elements // bank_chunk)
    out_d = torch.empty(n, k, dtype=query.dtype, device=query.device)
    out_i = torch.empty(n, k, dtype=torch.long, device=query.device)
    for qs in range(0, n, query_chunk):
        q = query[qs : qs + query_chunk]
        best_d = best_i = None
        for bs in range(0, m, bank_chunk):
            d = euclidean_dist(q, bank[bs : bs + bank_chunk])
            if k == 1:
                cd, ci = d.min(dim=1, keepdim=True)
            else:
                cd, ci = d.topk(min(k, d.shape[1]), dim=1, largest=False)
            ci += bs
            if best_d is None:
                best_d, best_i = cd, ci
            elif k == 1:
                better = cd < best_d  # strict: an earlier chunk wins ties
                best_d = torch.where(better, cd, best_d)
                best_i = torch.where(better, ci, best_i)
            else:
                cat_d, cat_i = torch.cat([best_d, cd], 1), torch.cat([best_i, ci], 1)
                best_d, pos = cat_d.topk(k, dim=1, largest=False, sorted=True)
                best_i = cat_i.gather(1, pos)
        out_d[qs : qs + len(q)] = best_d
        out_i[qs : qs + len(q)] = best_i
    if k == 1:
        return out_d.squeeze(1), out_i.squeeze(1)
    return out_d, out_i
