"""Metrics against scikit-learn and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cl_iad import metrics as M


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_aupr_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 1)  # heavy ties
    assert M.image_auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.image_aupr(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_forgetting_on_a_hand_written_matrix():
    R = np.array([[0.9, 0.5, 0.4], [0.7, 0.8, 0.5], [0.6, 0.75, 0.95]])
    assert M.forgetting(R).tolist() == pytest.approx([0.3, 0.05])
    assert M.average_forgetting(R) == pytest.approx(0.175)
    assert M.average_accuracy(R) == pytest.approx(np.mean([0.6, 0.75, 0.95]))
    assert M.backward_transfer(R) == pytest.approx(((0.6 - 0.9) + (0.75 - 0.8)) / 2)
