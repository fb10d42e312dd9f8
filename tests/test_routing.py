"""Task-agnostic ``per_task``: every model that can route runs the real loop, and routing pools each
model's embedding layout correctly.

Issue 11 found DFKDE (no anomaly maps: the routed path wrote ``None`` into a float array) and RKDE
((N, regions, D) embeddings the router did not reduce) crashing although the registry lists both.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cl_iad.models.registry import MODEL_INFOS, REGISTRY, build_model
from cl_iad.runner import ROUTING_METRIC, run
from cl_iad.strategies import Strategy, regimes_for
from cl_iad.strategies.router import FeatureStatsRouter

PIXEL_METRICS = ("pixel_auroc", "pro", "pixel_aupr")
IMAGE_METRICS = ("image_auroc", "image_aupr")
# every model that can route: per_task is in its regimes and its features are frozen
ROUTABLE = [info.name for info in MODEL_INFOS if "per_task" in regimes_for(info) and not info.trains_by_gradient]
# how each routable model's embedding is laid out; the reference pooling below follows it
LAYOUT = {"dfkde": "vector", "dfm": "channels_first", "padim": "channels_first", "patchcore": "channels_first",
          "rkde": "regions", "mhpatchcore": "channels_first"}


def test_every_frozen_feature_model_is_listed_as_routable():
    assert {"dfkde", "rkde", "patchcore", "padim", "dfm"} <= set(ROUTABLE)
    assert set(LAYOUT) == set(ROUTABLE), "declare the embedding layout of each new routable model here"


@pytest.mark.parametrize("name", ROUTABLE)
def test_routed_per_task_gives_complete_matrices_and_nan_pixel_metrics_without_maps(name, tiny_stream, shared_cache,
                                                                                    tmp_path):
    stream = tiny_stream[:2]
    strategy = Strategy(build_model(name, "light"), "per_task", eval_mode="agnostic", cache=shared_cache)
    result = run(strategy, stream, tmp_path, wandb="off", progress=False)
    has_maps = REGISTRY[name].task_type == "segmentation"
    for metric in (*IMAGE_METRICS, *PIXEL_METRICS):
        values = result.matrices[metric].to_numpy()
        assert values.shape == (2, 2), (metric, values)
        if metric in PIXEL_METRICS and not has_maps:
            assert np.isnan(values).all(), f"{name} gives no maps: {metric} must be NaN, got {values}"
        else:
            assert np.isfinite(values).all(), f"{name}: {metric} = {values}"
    routing = result.matrices[ROUTING_METRIC].to_numpy()
    seen = np.tril(np.ones_like(routing, dtype=bool))  # R[i][j] for j <= i: tasks already trained
    assert ((routing[seen] >= 0) & (routing[seen] <= 1)).all(), routing
    assert np.isnan(routing[~seen]).all(), f"untrained tasks have no right route: {routing}"


@pytest.fixture(scope="module")
def embeddings_by_model(tiny_stream) -> dict[str, tuple[object, torch.Tensor]]:
    """Each routable model (light preset) and its real embeddings of three 64x64 test images."""
    images = torch.stack([tiny_stream[0].test[k]["image"] for k in range(3)])
    out = {}
    for name in ROUTABLE:
        model = build_model(name, "light")
        out[name] = (model, model.extract(images))
    return out


def _reference_pool(emb: np.ndarray, layout: str) -> np.ndarray:
    """One vector per image, written from the layout alone: positions or regions averaged in float64."""
    emb = emb.astype(np.float64)
    if layout == "vector":
        return emb
    if layout == "channels_first":
        return emb.reshape(emb.shape[0], emb.shape[1], -1).mean(axis=2)
    if layout == "regions":
        return emb.mean(axis=1)
    raise AssertionError(layout)


@pytest.mark.parametrize("name", ROUTABLE)
def test_routing_features_reduce_each_models_embedding_to_one_vector_per_image(name, embeddings_by_model):
    model, emb = embeddings_by_model[name]
    feats = model.routing_features(emb)
    expected = _reference_pool(emb.numpy(), LAYOUT[name])
    assert feats.shape == expected.shape and feats.ndim == 2 and feats.shape[0] == 3, (emb.shape, feats.shape)
    np.testing.assert_allclose(feats.numpy(), expected, rtol=1e-5, atol=1e-6)
    # the router accepts them as they are
    assert torch.equal(FeatureStatsRouter.pool(feats), feats.float())


def test_rkde_routing_averages_regions_so_images_go_to_their_own_task(embeddings_by_model):
    model, _ = embeddings_by_model["rkde"]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20, 7, 8, generator=gen)  # (images, regions, features)
    b = torch.randn(20, 7, 8, generator=gen) + 3.0
    router = FeatureStatsRouter().add_task(0, model.routing_features(a)).add_task(4, model.routing_features(b))
    test = torch.cat([torch.randn(5, 7, 8, generator=gen), torch.randn(3, 7, 8, generator=gen) + 3.0])
    assert router.route(model.routing_features(test)).tolist() == [0] * 5 + [4] * 3


def test_router_pools_vectors_as_given_and_maps_over_positions():
    gen = torch.Generator().manual_seed(1)
    vectors = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    maps = torch.randn(4, 6, 3, 5, generator=gen)
    assert torch.equal(FeatureStatsRouter.pool(vectors), vectors.float())
    expected = maps.numpy().astype(np.float64).reshape(4, 6, 15).mean(axis=2)
    np.testing.assert_allclose(FeatureStatsRouter.pool(maps).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_router_refuses_three_axis_embeddings_instead_of_guessing_their_layout():
    router = FeatureStatsRouter().add_task(0, torch.randn(5, 4))
    with pytest.raises(ValueError, match="routing_features"):
        router.add_task(1, torch.randn(5, 7, 4))
    with pytest.raises(ValueError, match="routing_features"):
        router.route(torch.randn(2, 7, 4))
    with pytest.raises(ValueError, match="fitted on 4-dim features"):
        router.route(torch.randn(2, 6))
    assert math.isfinite(float(router.scores(torch.randn(2, 4)).sum()))


@pytest.mark.parametrize("name", ROUTABLE)
def test_fitting_never_changes_the_callers_embeddings(name, tiny_stream):
    """anomalib's PCA centres its input in place; DFM once fitted its router on the centred copy."""
    model = build_model(name, "light")
    emb = model.embed(tiny_stream[0].train)
    before = emb.clone()
    model.fit_features(emb)
    assert torch.equal(emb, before)
