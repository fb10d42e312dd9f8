"""UCAD-style method: per-task keys pick each test image's task, that task's memory scores it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cl_iad.runner import run
from cl_iad.scenarios.base import ImageSet
from cl_iad.strategies import Strategy, build_model
from cl_iad.strategies.ucad import key_distances, patch_vectors


def test_key_distance_is_the_mean_nearest_key_distance_over_patches():
    keys = [torch.tensor([[0.0, 0.0], [0.0, 4.0]]), torch.tensor([[10.0, 0.0]])]
    # one image with patches (1, 0) and (3, 0); another with (9, 0) and (0, 5)
    patches = torch.tensor([[[1.0, 0.0], [3.0, 0.0]], [[9.0, 0.0], [0.0, 5.0]]])
    d = key_distances(patches, keys)
    # image 0: task 0 -> mean(1, 3) = 2; task 1 -> mean(9, 7) = 8
    # image 1: task 0 -> mean(9, 1) = 5; task 1 -> mean(1, sqrt(125)) = (1 + 11.1803) / 2
    assert d[0].tolist() == pytest.approx([2.0, 8.0])
    assert d[1].tolist() == pytest.approx([5.0, (1 + 125 ** 0.5) / 2])
    assert d.argmin(dim=1).tolist() == [0, 0]


def test_patch_vectors_read_channel_first_maps_patch_by_patch():
    emb = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    p = patch_vectors(None, emb)
    assert p.shape == (2, 4, 3)
    assert p[1, 3].tolist() == emb[1, :, 1, 1].tolist()


@pytest.fixture(scope="module")
def ucad_run(tiny_stream, shared_cache, tmp_path_factory):
    strategy = Strategy(build_model("patchcore", "light"), "ucad", cache=shared_cache, ucad_keys=16)
    result = run(strategy, tiny_stream[:2], tmp_path_factory.mktemp("ucad"), name="ucad", wandb="off",
                 progress=False)
    return strategy, result


def test_ucad_runs_task_agnostic_with_routing_accuracy(ucad_run):
    strategy, result = ucad_run
    assert not strategy.task_aware and strategy.routes
    settings = json.loads((result.run_dir / "config.json").read_text())["settings"]
    assert settings["eval_mode"] == "agnostic" and settings["router"] == "ucad:keys16"
    for metric in ("image_auroc", "pixel_auroc", "pro"):
        assert np.isfinite(result.matrices[metric].to_numpy()).all(), metric
    routing = result.matrices["routing_accuracy"].to_numpy()
    assert np.isfinite(routing[np.tril_indices(2)]).all()
    assert strategy.plugin("ucad").keys_[0].shape[0] == 16


def test_the_task_is_chosen_per_image_not_per_test_set(ucad_run, tiny_stream):
    """A test set mixing two tasks' images: each image is routed to its own task (UCAD's code routes whole sets)."""
    strategy, _ = ucad_run
    a, b = tiny_stream[0].test, tiny_stream[1].test
    mixed = ImageSet(a.samples + b.samples, a.image_size)
    pred = strategy.predict(mixed)
    assert pred.routed_task.tolist() == [0] * len(a) + [1] * len(b)


def test_a_routed_image_is_scored_by_its_task_memory_alone(ucad_run, tiny_stream, shared_cache):
    strategy, _ = ucad_run
    alone = build_model("patchcore", "light").use_cache(shared_cache)
    alone.fit(tiny_stream[0].train)
    test = tiny_stream[0].test
    pred = strategy.predict(test)
    assert (pred.routed_task == 0).all()
    expected = alone.predict(test)
    assert np.allclose(pred.pred_score, expected.pred_score) and np.allclose(pred.anomaly_map, expected.anomaly_map)
