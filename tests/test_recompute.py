"""The last row of every matrix in cells.csv, recomputed from scratch outside the runner.

After a run, the saved model (``RUN_DIR/model``) predicts each task's test images, listed from
disk here; labels come from the folder names and masks from the ground-truth files, read with
PIL. Image and pixel AUROC / AP come from scikit-learn, PRO from a direct implementation of
MVTec AD's definition in this file, routing accuracy from the routed ids. Every value must equal
the runner's cell within 1e-9, which catches labels, masks or predictions paired with the wrong
image or the wrong task.

Why 1e-9 holds: the maps are float32 in both paths and are compared as they are (float32 to
float64 is exact, so thresholds and ties are the same); only the float64 sums differ in order.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from cl_iad.deploy import load_strategy
from cl_iad.runner import run
from cl_iad.scenarios.base import ImageSet, Sample
from cl_iad.strategies import Strategy, build_model

TOL = 1e-9
FPR_LIMIT = 0.3


def _truth_from_disk(image: Path, size: int) -> tuple[int, np.ndarray]:
    """Label and mask of one test image from the MVTec AD layout: test/<defect>/x.png, mask in
    ground_truth/<defect>/x_mask.png; binarised, then resized with nearest neighbour as datasets are."""
    defect = image.parent.name
    if defect == "good":
        return 0, np.zeros((size, size), dtype=bool)
    path = image.parents[2] / "ground_truth" / defect / f"{image.stem}_mask.png"
    with Image.open(path) as im:
        binary = np.asarray(im.convert("L")) > 0
    resized = Image.fromarray(binary.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    return 1, np.asarray(resized) > 0


def _pro_by_definition(maps: np.ndarray, masks: np.ndarray, limit: float = FPR_LIMIT) -> float:
    """MVTec AD's PRO: 8-connected ground-truth regions; at every distinct score t, FPR = share of
    normal pixels >= t and PRO = mean over regions of the share of the region's pixels >= t; the
    trapezoid area of PRO over FPR in [0, limit] (PRO interpolated at the limit), divided by limit."""
    regions = []
    for m, g in zip(maps, masks):
        labelled, n = ndimage.label(g, structure=np.ones((3, 3), dtype=int))
        regions += [np.sort(m[labelled == k]) for k in range(1, n + 1)]
    thresholds = np.unique(maps)[::-1]  # every distinct score, highest first

    def share_at_or_above(sorted_values: np.ndarray) -> np.ndarray:
        return (sorted_values.size - np.searchsorted(sorted_values, thresholds, side="left")) / sorted_values.size

    fpr = np.r_[0.0, share_at_or_above(np.sort(maps[~masks]))]
    pro = np.r_[0.0, np.mean([share_at_or_above(r) for r in regions], axis=0)]
    inside = int(np.searchsorted(fpr, limit, side="right"))  # points with fpr <= limit (fpr is sorted)
    area = float(np.sum(np.diff(fpr[:inside]) * (pro[1:inside] + pro[: inside - 1]) / 2))
    x0, y0, x1, y1 = fpr[inside - 1], pro[inside - 1], fpr[inside], pro[inside]
    y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
    return (area + (limit - x0) * (y0 + y_limit) / 2) / limit


def test_pro_by_definition_agrees_with_the_one_threshold_at_a_time_brute_force():
    from test_metrics_pro import brute_force_pro  # the literal loop; too slow for 64x64 test sets

    rng = np.random.default_rng(3)
    masks = np.zeros((4, 16, 16), dtype=bool)
    masks[1, 2:6, 3:8] = masks[2, 9:12, 9:10] = masks[2, 12, 10] = masks[3, 0:2, 0:16] = True  # one diagonal touch
    maps = (rng.random((4, 16, 16)) + 0.4 * masks).astype(np.float32)
    maps[0, :4] = 0.5  # ties
    assert _pro_by_definition(maps, masks) == pytest.approx(brute_force_pro(maps, masks, FPR_LIMIT), abs=1e-12)


def _recompute_last_row(model_dir: Path, root: Path) -> dict[tuple[str, str], float]:
    """Every metric of the last row, from the saved model and the files on disk."""
    loaded = load_strategy(model_dir)
    strategy, size = loaded.strategy, loaded.image_size
    out = {}
    for name in loaded.task_names:
        images = sorted((root / name / "test").glob("*/*.png"))
        truth = [_truth_from_disk(p, size) for p in images]
        labels = np.array([t[0] for t in truth])
        masks = np.stack([t[1] for t in truth])
        samples = [Sample(p, 0, name) for p in images]  # predict reads only the images
        pred = strategy.predict(ImageSet(samples, size), task_id=loaded.task_id(name) if strategy.task_aware else None)
        maps = pred.anomaly_map
        out[name, "image_auroc"] = roc_auc_score(labels, pred.pred_score)
        out[name, "image_aupr"] = average_precision_score(labels, pred.pred_score)
        out[name, "pixel_auroc"] = roc_auc_score(masks.ravel(), maps.ravel())
        out[name, "pixel_aupr"] = average_precision_score(masks.ravel(), maps.ravel())
        out[name, "pro"] = _pro_by_definition(maps, masks)
        if strategy.routes:
            out[name, "routing_accuracy"] = float(np.mean(pred.routed_task == loaded.task_id(name)))
    return out


@pytest.mark.parametrize("eval_mode", ["aware", "agnostic"], ids=["task_aware", "routed"])
def test_last_row_of_every_matrix_equals_an_independent_recomputation(eval_mode, tiny_stream, shared_cache, tmp_path):
    strategy = Strategy(build_model("patchcore"), "per_task", eval_mode=eval_mode, cache=shared_cache)
    result = run(strategy, tiny_stream, tmp_path, name="r", wandb="off", progress=False)
    cells = pd.read_csv(result.run_dir / "cells.csv")
    last = cells[cells.trained_upto == len(tiny_stream) - 1]
    stored = {(r.eval_task, r.metric): r.value for r in last.itertuples()}
    expected = _recompute_last_row(result.run_dir / "model", Path(tiny_stream.root))
    assert set(stored) == set(expected), sorted(set(stored) ^ set(expected))
    assert all(math.isfinite(v) for v in expected.values()), expected
    wrong = {k: (stored[k], v) for k, v in expected.items() if abs(stored[k] - v) > TOL}
    assert not wrong, f"cells.csv differs from the recomputation (stored, recomputed): {wrong}"
