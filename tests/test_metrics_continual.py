"""ACC, BWT, FWT and every forgetting definition on hand-written matrices, NaN cells included."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from cl_iad import metrics as M

# R[i][j]: score on task j after training tasks 0..i
R = np.array([
    [0.90, 0.55, 0.40, 0.50],
    [0.70, 0.80, 0.45, 0.52],
    [0.80, 0.60, 0.95, 0.60],
    [0.60, 0.75, 0.85, 0.99],
])


def test_acc_bwt_fwt_by_hand():
    assert M.average_accuracy(R) == pytest.approx((0.60 + 0.75 + 0.85 + 0.99) / 4)
    assert M.backward_transfer(R) == pytest.approx(((0.60 - 0.90) + (0.75 - 0.80) + (0.85 - 0.95)) / 3)
    assert M.forward_transfer(R) == pytest.approx(((0.55 - 0.5) + (0.45 - 0.5) + (0.60 - 0.5)) / 3)
    assert M.forward_transfer(R, baseline=[0.5, 0.5, 0.4, 0.6]) == pytest.approx(
        ((0.55 - 0.5) + (0.45 - 0.4) + (0.60 - 0.6)) / 3)


@pytest.mark.parametrize("definition, per_task, mean", [
    # max over l in [j, T-2]: task 0 peaks at row 0 (0.90) though row 2 recovers to 0.80
    ("chaudhry", [0.90 - 0.60, 0.80 - 0.75, 0.95 - 0.85], (0.30 + 0.05 + 0.10) / 3),
    ("avalanche", [0.90 - 0.60, 0.80 - 0.75, 0.95 - 0.85], (0.30 + 0.05 + 0.10) / 3),
    ("im-iad", [0.30, 0.05, 0.10], (0.30 + 0.05 + 0.10) / 4),
    ("max-all", [0.30, 0.05, 0.10], (0.30 + 0.05 + 0.10) / 3),
])
def test_forgetting_definitions_by_hand(definition, per_task, mean):
    assert M.forgetting(R, definition) == pytest.approx(per_task)
    assert M.average_forgetting(R, definition) == pytest.approx(mean)


def test_definitions_differ_where_the_literature_does():
    r = np.array([[0.6, 0.9, 0.5], [0.8, 0.7, 0.5], [0.5, 0.6, 0.9]])
    assert M.forgetting(r, "chaudhry") == pytest.approx([0.3, 0.1])   # max(0.6, 0.8) - 0.5
    assert M.forgetting(r, "avalanche") == pytest.approx([0.1, 0.1])  # 0.6 - 0.5
    assert M.forgetting(r, "max-all") == pytest.approx([0.3, 0.3])    # task 1 peaked before training
    assert M.average_forgetting(r, "im-iad") == pytest.approx(0.4 / 3)


def test_dataframe_input_equals_array_input():
    df = pd.DataFrame(R, index=list("abcd"), columns=list("abcd"))
    assert M.average_forgetting(df) == M.average_forgetting(R)
    assert M.backward_transfer(df) == M.backward_transfer(R)


def test_nan_cells_are_skipped_and_named(caplog):
    r = R.copy()
    r[0, 0] = np.nan   # task 0 right after training
    r[3, 1] = np.nan   # task 1 at the end
    with caplog.at_level(logging.WARNING, logger="cl_iad.metrics.continual"):
        assert M.average_accuracy(r) == pytest.approx((0.60 + 0.85 + 0.99) / 3)
        assert M.backward_transfer(r) == pytest.approx(0.85 - 0.95)
        fm = M.forgetting(r)
        assert np.isnan(fm[1])
        assert fm[0] == pytest.approx(0.80 - 0.60) and fm[2] == pytest.approx(0.10)
        assert M.average_forgetting(r) == pytest.approx(0.15)
    text = caplog.text
    assert "average_accuracy: skipping 1 NaN cell(s)" in text and "(3, 1)" in text
    assert "backward_transfer: skipping 2 NaN cell(s)" in text and "(0, 0)" in text


def test_all_nan_and_tiny_matrices_give_nan():
    assert np.isnan(M.average_forgetting(np.full((3, 3), np.nan)))
    assert np.isnan(M.backward_transfer([[0.9]]))
    assert M.forgetting([[0.9]]).size == 0


def test_bad_input_raises():
    with pytest.raises(ValueError, match="square"):
        M.average_accuracy(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="chaudhry"):
        M.forgetting(R, "nope")
