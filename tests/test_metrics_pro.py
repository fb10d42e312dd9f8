"""PRO three ways: hand-computed cases, a slow brute force written here, and anomalib's AUPRO."""

from __future__ import annotations

from collections import deque
from itertools import pairwise
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cl_iad import metrics as M


def _components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components by breadth-first search (no scipy)."""
    seen = np.zeros(mask.shape, dtype=bool)
    out = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, region = deque([start]), []
        while queue:
            r, c = queue.popleft()
            region.append((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < mask.shape[0] and 0 <= cc < mask.shape[1] and mask[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        queue.append((rr, cc))
        out.append(region)
    return out


def brute_force_pro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """PRO straight from the definition: every distinct score, one threshold at a time."""
    regions = [[maps[i][tuple(np.array(reg).T)] for reg in _components(masks[i])] for i in range(len(maps))]
    regions = [r for per_image in regions for r in per_image]
    normal = maps[masks == 0]
    points = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        fpr = float(np.mean(normal >= t))
        pro = float(np.mean([np.mean(r >= t) for r in regions]))
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in pairwise(points):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:  # interpolate at the limit
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def _blobs(seed: int, n: int = 5, size: int = 20, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(1, n):
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, size - 5, 2)
            masks[i, r : r + rng.integers(1, 6), c : c + rng.integers(1, 6)] = 1
        masks[i] |= rng.random((size, size)) < 0.02  # single pixels, some touching diagonally only
    maps = (rng.random((n, size, size)) + 0.5 * masks).astype(np.float32)
    if decimals is not None:
        maps = np.round(maps, decimals)
    return maps, masks


def test_perfect_inverse_and_constant_maps():
    maps, masks = _blobs(0)
    assert M.pro_score(masks.astype(float), masks) == pytest.approx(1.0)
    assert M.pro_score(1.0 - masks, masks) == pytest.approx(0.0)
    assert M.pro_score(np.ones_like(maps), masks, fpr_limit=0.3) == pytest.approx(0.15)
    assert M.pro_score(np.ones_like(maps), masks, fpr_limit=1.0) == pytest.approx(0.5)


def test_regions_are_eight_connected():
    # (0,0) touches (1,1) only diagonally: one region of 3 pixels with 8-connectivity
    # (4-connectivity would give regions of 1 and 2 pixels and PRO 0.5 at the top threshold)
    mask = np.zeros((1, 4, 4), dtype=int)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 1, 2] = 1
    amap = np.zeros((1, 4, 4))
    amap[0, 0, 0] = 1.0
    # curve (0,0) -> (0,1/3) -> (1,1): PRO(f) = 1/3 + 2f/3; area to 0.3 = 0.1 + 0.03
    assert M.pro_score(amap, mask) == pytest.approx(0.13 / 0.3)


def test_interpolation_at_the_limit_on_a_tied_segment():
    # 4 normal pixels at 0.9, 0.8, 0.1, 0.0 and one anomalous pixel tied with the normal 0.8:
    # points (0,0) -> (0.25,0) -> (0.5,1): at FPR 0.3 PRO is 0.2, area 0.5 * 0.05 * 0.2
    amap = np.array([[[0.9, 0.8, 0.1, 0.0, 0.8]]])
    mask = np.array([[[0, 0, 0, 0, 1]]])
    assert M.pro_score(amap, mask, 0.3) == pytest.approx(0.005 / 0.3)
    fpr, pro = M.pro_curve(amap, mask)
    assert np.interp(0.3, fpr, pro) == pytest.approx(0.2)


def test_regions_weigh_equally_whatever_their_size():
    # the seed's case: a 2-pixel region found, a 1-pixel region missed: PRO 0.5 at FPR 0
    mask = np.zeros((1, 4, 4), dtype=int)
    mask[0, 0, 0:2] = 1
    mask[0, 3, 3] = 1
    amap = np.zeros((1, 4, 4))
    amap[0, 0, 0:2] = 1.0
    assert M.pro_score(amap, mask, 0.3) == pytest.approx((0.15 + 0.0225) / 0.3)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_pro_equals_brute_force(seed, decimals):
    maps, masks = _blobs(seed, n=4, size=12, decimals=decimals)
    for limit in (0.01, 0.3, 0.77, 1.0):
        assert M.pro_score(maps, masks, limit) == pytest.approx(brute_force_pro(maps, masks, limit), abs=1e-12)


def test_pro_curve_ends_at_one_one_and_is_monotone():
    maps, masks = _blobs(1)
    fpr, pro = M.pro_curve(maps, masks)
    assert fpr[0] == pro[0] == 0.0
    assert fpr[-1] == pytest.approx(1.0) and pro[-1] == pytest.approx(1.0)
    assert (np.diff(fpr) >= 0).all() and (np.diff(pro) >= 0).all()


def test_bad_fpr_limit_raises():
    maps, masks = _blobs(0)
    with pytest.raises(ValueError, match="fpr_limit"):
        M.pro_score(maps, masks, 0.0)


def _anomalib_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    from anomalib.metrics import AUPRO

    metric = AUPRO(fields=("anomaly_map", "gt_mask"), fpr_limit=fpr_limit)
    metric.update(SimpleNamespace(anomaly_map=torch.from_numpy(maps), gt_mask=torch.from_numpy(masks)))
    return float(metric.compute())


@pytest.mark.parametrize("seed", range(6))
def test_pro_agrees_with_anomalib_aupro_on_float32_maps(seed):
    # anomalib 2.7 computes the same curve (8-connected cv2 components, every distinct float32
    # score, interpolation at the limit) but in float32: agreement to float32 rounding
    maps, masks = _blobs(seed, n=6, size=32)
    for limit in (0.05, 0.3):
        assert abs(M.pro_score(maps, masks, limit) - _anomalib_aupro(maps, masks, limit)) < 1e-5


def test_anomalib_differs_where_float64_scores_collide_in_float32():
    # anomalib casts scores to float32: two float64 scores 1e-9 apart become a tie there
    amap = np.array([[[0.5 + 1e-9, 0.5, 0.0, 0.0]]])
    mask = np.array([[[0, 1, 0, 0]]])
    ours = M.pro_score(amap, mask, 1.0)  # normal first, then anomalous: (0,0)->(1/3,0)->(1/3,1)->(1,1)
    assert ours == pytest.approx(2 / 3)
    assert _anomalib_aupro(amap, mask, 1.0) == pytest.approx(2 / 3 + 1 / 6, abs=1e-6)  # tie: diagonal
