"""AUROC and AUPR, image and pixel, functional and streaming, against scikit-learn; edge cases."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from cl_iad import metrics as M
from cl_iad.runner import evaluate
from cl_iad.strategies.base import Predictions


def _maps(seed: int, n: int = 6, size: int = 16, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(1, n):
        r, c = rng.integers(0, size - 4, 2)
        masks[i, r : r + rng.integers(1, 5), c : c + rng.integers(1, 5)] = 1
    maps = (rng.random((n, size, size)) + 0.4 * masks).astype(np.float32)
    if decimals is not None:
        maps = np.round(maps, decimals)
    return maps, masks


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_image_metrics_equal_sklearn_on_random_and_tied_scores(seed, decimals):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    s = rng.random(200) + 0.3 * y
    if decimals is not None:
        s = np.round(s, decimals)
    assert abs(M.image_auroc(s, y) - roc_auc_score(y, s)) <= 1e-9
    assert abs(M.image_aupr(s, y) - average_precision_score(y, s)) <= 1e-9


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("decimals", [None, 1])
def test_pixel_metrics_equal_sklearn_on_random_and_tied_maps(seed, decimals):
    maps, masks = _maps(seed, decimals=decimals)
    y, s = masks.ravel(), maps.ravel()
    assert abs(M.pixel_auroc(maps, masks) - roc_auc_score(y, s)) <= 1e-9
    assert abs(M.pixel_aupr(maps, masks) - average_precision_score(y, s)) <= 1e-9


def test_torch_tensors_give_the_numpy_result():
    maps, masks = _maps(0)
    tm, tg = torch.from_numpy(maps), torch.from_numpy(masks).bool()
    assert M.pixel_auroc(tm, tg) == M.pixel_auroc(maps, masks)
    assert M.pixel_aupr(tm, tg) == M.pixel_aupr(maps, masks)
    assert M.pro_score(tm, tg) == M.pro_score(maps, masks)
    s, y = tm.amax(dim=(1, 2)), tg.any(dim=(1, 2))
    assert M.image_auroc(s, y) == M.image_auroc(s.numpy(), y.numpy())
    assert M.pixel_auroc(tm.to(torch.bfloat16), tg) == pytest.approx(
        roc_auc_score(masks.ravel(), tm.to(torch.bfloat16).float().numpy().ravel()), abs=1e-9)


def test_constant_scores_give_auroc_one_half():
    maps, masks = _maps(1)
    assert M.pixel_auroc(np.full_like(maps, 0.7), masks) == 0.5
    assert M.image_auroc(np.zeros(6), [0, 1, 0, 1, 1, 0]) == 0.5
    # a constant map ranks at random: PRO is the chance value 0.15 at fpr_limit 0.3
    assert M.pro_score(np.zeros_like(maps), masks) == pytest.approx(0.15, abs=1e-12)


def test_no_anomalous_item_gives_nan_with_a_warning():
    with pytest.warns(M.UndefinedMetricWarning, match="no anomalous"):
        assert np.isnan(M.image_auroc([0.1, 0.2], [0, 0]))
    with pytest.warns(M.UndefinedMetricWarning, match="no anomalous"):
        assert np.isnan(M.image_aupr([0.1, 0.2], [0, 0]))
    maps, _ = _maps(0)
    for fn in (M.pixel_auroc, M.pixel_aupr, M.pro_score):
        with pytest.warns(M.UndefinedMetricWarning):
            assert np.isnan(fn(maps, np.zeros_like(maps, dtype=int)))
    with pytest.warns(M.UndefinedMetricWarning, match="no normal"):
        assert np.isnan(M.pro_score(maps, np.ones_like(maps, dtype=int)))


def test_runner_message_names_the_task_and_metric_of_a_test_set_without_anomalies(caplog):
    # the run itself warns once per such task up front (tests/test_bad_input.py); per cell the
    # undefined metric is logged at debug level, naming the task and the metric
    maps, masks = _maps(0)
    pred = Predictions(pred_score=maps.max(axis=(1, 2)), anomaly_map=maps)
    labels = np.zeros(len(maps), dtype=int)
    with caplog.at_level(logging.DEBUG, logger="cl_iad.runner"):
        out = evaluate(pred, labels, np.zeros_like(masks), ["image_auroc", "pixel_auroc"], "screw")
    assert np.isnan(out["image_auroc"]) and np.isnan(out["pixel_auroc"])
    assert any("screw" in r.getMessage() and "image_auroc" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bad", [2, 255, 0.5, -1])
def test_masks_that_are_not_binary_raise_a_clear_error(bad):
    maps, masks = _maps(0)
    masks = masks.astype(np.float64)
    masks[2, 0, 0] = bad
    for fn in (M.pixel_auroc, M.pixel_aupr, M.pro_score):
        with pytest.raises(ValueError, match=r"must be 0/1.*1 value\(s\)"):
            fn(maps, masks)
    with pytest.raises(ValueError, match="must be 0/1"):
        M.image_auroc([0.1, 0.2, 0.3], [0, 1, bad])


def test_255_masks_get_a_hint():
    maps, masks = _maps(0)
    with pytest.raises(ValueError, match="divide by 255"):
        M.pixel_auroc(maps, masks * 255)


def test_shape_mismatch_raises_naming_both_shapes():
    maps, masks = _maps(0)
    for fn in (M.pixel_auroc, M.pixel_aupr, M.pro_score):
        with pytest.raises(ValueError, match=r"\(6, 16, 16\).*\(6, 8, 8\)"):
            fn(maps, masks[:, :8, :8])
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        M.image_auroc([0.1, 0.2, 0.3], [0, 1])


def test_nan_and_inf_in_maps_raise_naming_how_many():
    maps, masks = _maps(0)
    maps[0, 0, :3] = np.nan
    maps[1, 0, 0] = np.inf
    for fn in (M.pixel_auroc, M.pixel_aupr, M.pro_score):
        with pytest.raises(ValueError, match="3 NaN and 1 inf"):
            fn(maps, masks)
    with pytest.raises(ValueError, match="1 NaN and 0 inf"):
        M.image_aupr([np.nan, 0.2], [0, 1])


def test_single_channel_axis_is_accepted_on_both_sides():
    maps, masks = _maps(0)
    assert M.pixel_auroc(maps[:, None], masks[:, None]) == M.pixel_auroc(maps, masks)


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("decimals", [None, 2])
def test_streaming_equals_functional_while_exact(decimals):
    maps, masks = _maps(3, n=8, decimals=decimals)
    pairs = [(M.PixelAUROC(), M.pixel_auroc), (M.PixelAUPR(), M.pixel_aupr), (M.PRO(), M.pro_score),
             (M.PRO(fpr_limit=0.05), lambda m, g: M.pro_score(m, g, 0.05))]
    for metric, fn in pairs:
        for i in range(0, 8, 3):
            metric.update(maps[i : i + 3], masks[i : i + 3])
        assert metric.exact
        assert float(metric.compute()) == pytest.approx(fn(maps, masks), abs=1e-12)
        assert metric.bounds()[0] == metric.bounds()[1] == float(metric.compute())
    s, y = maps.max(axis=(1, 2)), masks.any(axis=(1, 2))
    for metric, fn in ((M.ImageAUROC(), M.image_auroc), (M.ImageAUPR(), M.image_aupr)):
        metric.update(s[:4], y[:4])
        metric.update(torch.from_numpy(s[4:]), torch.from_numpy(y[4:]))
        assert float(metric.compute()) == pytest.approx(fn(s, y), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_streaming_memory_is_bounded_and_bounds_hold_the_exact_value(seed):
    maps, masks = _maps(seed, n=12, size=24)
    for metric, fn in ((M.PixelAUROC(64), M.pixel_auroc), (M.PixelAUPR(64), M.pixel_aupr),
                       (M.PRO(max_bins=64), M.pro_score)):
        for i in range(12):
            metric.update(maps[i : i + 1], masks[i : i + 1])
            assert metric.n_bins <= 64
        lo, hi = metric.bounds()
        exact = fn(maps, masks)
        assert not metric.exact
        assert lo - 1e-12 <= exact <= hi + 1e-12
        assert lo - 1e-12 <= float(metric.compute()) <= hi + 1e-12
        if metric.metric != "aupr":  # AP's bound is loose with few anomalous pixels (75 here)
            assert hi - lo < 0.15


def test_streaming_reset_forgets_and_undefined_is_nan():
    maps, masks = _maps(0)
    metric = M.PixelAUROC()
    metric.update(maps, masks)
    metric.reset()
    with pytest.warns(M.UndefinedMetricWarning), pytest.warns(UserWarning, match="before the ``update``"):
        assert np.isnan(float(metric.compute()))  # torchmetrics warns of compute before update too
    metric.update(maps, np.zeros_like(masks))
    with pytest.warns(M.UndefinedMetricWarning):
        assert np.isnan(float(metric.compute()))
