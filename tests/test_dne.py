"""DNE: a Gaussian of global embeddings per task; the closest Gaussian names the task and scores the image."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cl_iad.runner import run
from cl_iad.strategies import Strategy, build_model
from cl_iad.strategies.dne import DNE, gaussian, mahalanobis


def test_gaussian_and_distance_match_a_hand_computed_case():
    # (0,0), (4,0), (0,2), (4,2): mean (2,1), empirical covariance diag(4, 1)
    x = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 2.0], [4.0, 2.0]])
    mean, precision = gaussian(x, shrinkage=0.0)
    assert mean.tolist() == [2.0, 1.0]
    assert precision.numpy() == pytest.approx(np.diag([1 / 4, 1.0]), rel=1e-5)
    # (5, 1) is 3 away along x: d^2 = 9 / 4
    d = mahalanobis(torch.tensor([[5.0, 1.0]]), mean[None], precision[None])
    assert float(d) == pytest.approx(1.5, rel=1e-5)
    # shrinkage 0.5 towards tr(S)/D = 2.5: covariance diag(3.25, 1.75)
    mean, precision = gaussian(x, shrinkage=0.5)
    d = mahalanobis(torch.tensor([[5.0, 1.0]]), mean[None], precision[None])
    assert float(d) == pytest.approx(3 / math.sqrt(3.25), rel=1e-5)


def test_default_shrinkage_is_ledoit_wolf():
    from sklearn.covariance import LedoitWolf

    x = torch.randn(12, 5, dtype=torch.float64)
    _, precision = gaussian(x)
    expected = np.linalg.inv(LedoitWolf().fit(x.numpy()).covariance_)
    assert precision.numpy() == pytest.approx(expected, rel=1e-4)


def test_each_image_goes_to_its_closest_gaussian_and_scores_by_that_distance():
    """Two tasks far apart; an image near task 1's mean is routed to 1 and scored by its distance there."""
    plugin = DNE(dne_shrinkage=0.0)
    plugin.setup(None)
    square = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 2.0], [4.0, 2.0]])
    feats = {0: square, 1: square + 100.0}
    model = SimpleNamespace(embed=lambda data: data, routing_features=lambda emb: emb)
    strategy = SimpleNamespace(model=model)
    for tid in (0, 1):
        plugin.after_task(strategy, SimpleNamespace(task_id=tid, train=feats[tid]), None)
    test = torch.tensor([[105.0, 101.0], [2.0, 1.0], [2.0, 3.0]])
    pred = plugin.predict(strategy, test, task_id=None)
    assert pred.routed_task.tolist() == [1, 0, 0]
    assert pred.pred_score == pytest.approx([1.5, 0.0, 2.0], abs=1e-5)  # (2,3): 2 away along y, variance 1
    assert pred.anomaly_map is None  # image-level: pixel metrics are NaN


@pytest.fixture(scope="module")
def dne_run(tiny_stream, shared_cache, tmp_path_factory):
    strategy = Strategy(build_model("patchcore", "light"), "dne", cache=shared_cache)
    result = run(strategy, tiny_stream[:2], tmp_path_factory.mktemp("dne"), name="dne", wandb="off",
                 progress=False)
    return strategy, result


def test_dne_runs_task_agnostic_with_routing_accuracy_and_no_pixel_metrics(dne_run):
    strategy, result = dne_run
    assert not strategy.task_aware and strategy.routes
    settings = json.loads((result.run_dir / "config.json").read_text())["settings"]
    assert settings["eval_mode"] == "agnostic" and settings["router"] == "dne:mahalanobis"
    image = result.matrices["image_auroc"].to_numpy()
    assert np.isfinite(image).all()
    assert np.isnan(result.matrices["pixel_auroc"].to_numpy()).all()
    routing = result.matrices["routing_accuracy"].to_numpy()
    assert np.isfinite(routing[np.tril_indices(2)]).all() and np.isnan(routing[0, 1])
    assert not strategy.model.fitted_  # DNE never fits the model: it only reads its features


def test_dne_state_round_trips(dne_run, tiny_stream, shared_cache):
    strategy, _ = dne_run
    again = Strategy(build_model("patchcore", "light"), "dne", cache=shared_cache)
    again.load_state_dict(strategy.state_dict())
    test = tiny_stream[1].test
    a, b = strategy.predict(test), again.predict(test)
    assert np.array_equal(a.pred_score, b.pred_score) and np.array_equal(a.routed_task, b.routed_task)


def test_dne_refuses_a_gradient_trained_model():
    with pytest.raises(ValueError, match="frozen-feature"):
        Strategy(build_model("stfpm", "light"), "dne")
