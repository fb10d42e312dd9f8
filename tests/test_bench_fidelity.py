"""The fidelity table's arithmetic: pooling runs split over seeds, paired standard errors, verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

OURS = [{"image_auroc": 0.80, "pixel_auroc": 0.90, "pro": 0.70}, {"image_auroc": 0.86, "pixel_auroc": 0.92, "pro": 0.74},
        {"image_auroc": 0.77, "pixel_auroc": 0.91, "pro": 0.66}]
THEIRS = [{"image_auroc": 0.83, "pixel_auroc": 0.90, "pro": 0.75}, {"image_auroc": 0.84, "pixel_auroc": 0.93, "pro": 0.73},
          {"image_auroc": 0.80, "pixel_auroc": 0.90, "pro": 0.72}]


def _row(fidelity, seeds: list[int]) -> dict:
    row = {"model": "stfpm", "epochs": 40, "batches": "each side's own", "epochs_scale": 1.0, "minutes": 1.0,
           "seed_list": ";".join(map(str, seeds))}
    fidelity.summarise(row, [OURS[s] for s in seeds], [THEIRS[s] for s in seeds])
    row["verdict"] = fidelity.verdict(row)
    return row


def test_pooled_runs_on_other_seeds_equal_one_run_on_all_seeds(fidelity):
    pooled = fidelity.pool(_row(fidelity, [0]), _row(fidelity, [1, 2]))
    whole = _row(fidelity, [0, 1, 2])
    assert pooled["seed_list"] == "0;1;2" and pooled["seeds"] == 3 and pooled["minutes"] == 2.0
    for m in fidelity.METRICS:
        assert pooled[f"{m}_diff"] == pytest.approx(whole[f"{m}_diff"])
        paired = np.array([o[m] - t[m] for o, t in zip(OURS, THEIRS, strict=True)])
        assert pooled[f"{m}_diff_se"] == pytest.approx(paired.std(ddof=1) / math.sqrt(3))  # by hand
    assert pooled["image_auroc_range_cl_iad"] == "0.770-0.860"


def test_the_same_seeds_twice_are_not_pooled_the_later_run_wins(fidelity):
    first, again = _row(fidelity, [0, 1]), _row(fidelity, [1, 2])
    assert fidelity.pool(first, again) is again


def test_verdicts_name_a_miss_within_two_standard_errors_as_noise(fidelity):
    row = {"image_auroc_diff": 0.01, "pixel_auroc_diff": -0.005, "pro_diff": 0.0}
    assert fidelity.verdict(row) == "yes"
    assert fidelity.verdict({**row, "pro_diff": -0.03}) == "NO"  # one seed: no standard error
    assert fidelity.verdict({**row, "pro_diff": -0.03, "pro_diff_se": 0.02}) == "NO, within 2 SE of 0"
    assert fidelity.verdict({**row, "pro_diff": -0.05, "pro_diff_se": 0.02}) == "NO"
    assert fidelity.verdict({"image_auroc_diff": float("nan")}) == "n/a"
