"""Our separable Gaussian equals anomalib's 2-D GaussianBlur2d, and PatchCore maps equal anomalib's generator."""

from __future__ import annotations

import torch

from cl_iad.models.ops.blur import separable_blur


def test_separable_blur_matches_anomalib_gaussian_blur():
    from anomalib.models.image.patchcore.anomaly_map import AnomalyMapGenerator

    gen = AnomalyMapGenerator()
    torch.manual_seed(0)
    x = torch.rand(3, 1, 64, 64) * 10
    ref = gen.blur(x)
    ours = separable_blur(gen.blur, x)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_patchcore_maps_equal_anomalib_generator(tiny_stream, shared_cache):
    from cl_iad.strategies import build_model

    model = build_model("patchcore")
    model.fit_features(shared_cache.embeddings(model, tiny_stream[0].train))
    emb = shared_cache.embeddings(model, tiny_stream[0].test)[:4]
    _, ours = model.score(emb, (64, 64))
    flat = model.module.reshape_embedding(emb)
    d = torch.cdist(flat, model.module.memory_bank).min(1).values.reshape(4, 1, *emb.shape[-2:])
    ref = model.module.anomaly_map_generator(d, (64, 64))[:, 0]
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-4)
