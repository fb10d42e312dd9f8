"""Parity: each frozen-feature model gives anomalib's own torch model's scores and maps.

For PatchCore, PaDiM, DFM and DFKDE we build anomalib's ``<X>Model`` with ``pre_trained=False``,
load the very same backbone weights into it, fit it the way anomalib's Lightning module does
(training-mode forward passes collect the embeddings batch by batch, then the module's ``fit``:
``Patchcore.fit`` -> ``subsample_embedding``, ``Padim``/``Dfm``/``Dfkde.fit`` -> ``model.fit()``),
and compare its eval-mode outputs with ours on the same images: image scores within 1e-5
relative, anomaly maps within 1e-4 of the maps' range.

RKDE has no anomalib 2 model; its KDE stage is compared with anomalib's ``KDEClassifier`` fitted
on the same region features (docs/models.md lists what else differs from the paper).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from cl_iad.backbones import load_into, resolve_state_dict
from cl_iad.models.registry import build_model

log = logging.getLogger(__name__)
SCORE_RTOL = 1e-5
MAP_TOL = 1e-4  # of the range of anomalib's maps


@pytest.fixture(scope="module")
def parity_data(tiny_stream):
    """20 normal training images (two tasks) and the two tasks' test images, at 64 px."""
    train = tiny_stream[0].train + tiny_stream[1].train
    test = tiny_stream[0].test + tiny_stream[1].test
    return train, test


def _batches(ours, data):
    """Normalised images in batches of our batch size, zero-padded as our feature cache pads them.

    CPU convolutions pick their kernels by input shape, so features change in the last bits with
    the batch size; ill-conditioned fits (PaDiM's 100x100 covariances from 20 images) amplify that
    to 1e-4. Feeding anomalib the same shapes compares the models, not the batch sizes.
    """
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    size = ours.batch_size
    for start in range(0, len(images), size):
        x = images[start : start + size]
        n = len(x)
        yield ours.normalise(torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))])), n


def _twin(ours, build):
    """anomalib's torch model, built under our seed (PaDiM's channel draw), with our backbone weights."""
    with torch.random.fork_rng():
        torch.manual_seed(ours.seed)
        theirs = build()
    load_into(theirs.feature_extractor.feature_extractor, resolve_state_dict(ours.backbone, ours.weights),
              ours.backbone)
    return theirs


def _fit_like_lightning(ours, theirs, train, store: str, fit) -> None:
    """Training-mode forward per batch (``training_step``), then the Lightning module's ``fit``.

    `store` is the list the training forward appends to; rows of padding images are dropped from it.
    """
    theirs.train()
    with torch.no_grad():
        for x, n in _batches(ours, train):
            theirs(x)
            stored = getattr(theirs, store)
            stored[-1] = stored[-1][: len(stored[-1]) * n // len(x)]  # patch rows are image-major
    fit()
    theirs.eval()


def _their_outputs(ours, theirs, test) -> tuple[np.ndarray, np.ndarray | None]:
    scores, maps = [], []
    with torch.no_grad():
        for x, n in _batches(ours, test):
            out = theirs(x)
            scores.append(out.pred_score.reshape(len(x))[:n])
            maps.append(None if out.anomaly_map is None else out.anomaly_map.reshape(len(x), *x.shape[-2:])[:n])
    amap = None if maps[0] is None else torch.cat(maps).numpy()
    return torch.cat(scores).numpy(), amap


def assert_same_outputs(ours, test, score: np.ndarray, amap: np.ndarray | None) -> tuple[float, float]:
    """Our predictions on `test` equal anomalib's; returns (max relative score error, max map error / range).

    Run with ``-o log_cli=true --log-cli-level=INFO`` to see the measured differences.
    """
    pred = ours.predict(test)
    assert pred.pred_score.shape == score.shape
    assert np.ptp(score) > 0, f"{ours.name}: anomalib's scores are constant; the comparison proves nothing"
    tiny = np.finfo(np.float32).tiny
    score_err = float((np.abs(pred.pred_score - score) / np.maximum(np.abs(score), tiny)).max())
    assert score_err <= SCORE_RTOL, f"{ours.name}: scores differ by {score_err:.2e} (relative)"
    if amap is None:
        assert pred.anomaly_map is None
        log.info("%s: max relative score difference %.2e (no maps)", ours.name, score_err)
        return score_err, float("nan")
    map_err = float(np.abs(pred.anomaly_map - amap).max() / np.ptp(amap))
    assert map_err <= MAP_TOL, f"{ours.name}: maps differ by {map_err:.2e} of their range"
    log.info("%s: max relative score difference %.2e, max map difference %.2e of the map range",
             ours.name, score_err, map_err)
    return score_err, map_err


def test_patchcore_equals_anomalibs_patchcore_model(parity_data):
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    train, test = parity_data
    ours = build_model("patchcore", device="cpu").fit(train)
    theirs = _twin(ours, lambda: PatchcoreModel(layers=ours.layers, backbone="tf_efficientnet_lite0",
                                                pre_trained=False, num_neighbors=ours.num_neighbors))

    def fit():  # Patchcore.fit; KCenterGreedy draws from numpy's and torch's global RNGs, seeded as ours
        torch.manual_seed(ours.seed)
        np.random.seed(ours.seed)
        theirs.subsample_embedding(ours.coreset_ratio)

    _fit_like_lightning(ours, theirs, train, "embedding_store", fit)
    assert torch.equal(ours.module.memory_bank, theirs.memory_bank), "the coresets differ"
    assert_same_outputs(ours, test, *_their_outputs(ours, theirs, test))


def test_padim_equals_anomalibs_padim_model(parity_data):
    from anomalib.models.image.padim.torch_model import PadimModel

    train, test = parity_data
    ours = build_model("padim", device="cpu").fit(train)
    theirs = _twin(ours, lambda: PadimModel(backbone="tf_efficientnet_lite0", layers=list(ours.layers),
                                            pre_trained=False, n_features=ours.n_features))
    assert torch.equal(ours.module.idx, theirs.idx), "the random channel selection differs"
    _fit_like_lightning(ours, theirs, train, "memory_bank", theirs.fit)
    assert_same_outputs(ours, test, *_their_outputs(ours, theirs, test))


@pytest.mark.parametrize("score_type", ["fre", "nll"])
def test_dfm_equals_anomalibs_dfm_model(parity_data, score_type, monkeypatch):
    from anomalib.models.image.dfm.torch_model import DFMModel

    if score_type == "nll":
        # anomalib 2.7's SingleClassGaussian.fit passes device= to torch.mean, which raises a
        # TypeError; drop that one argument for anomalib's fit (ours does the same, see dfm.py)
        mean = torch.mean
        monkeypatch.setattr(torch, "mean", lambda *a, device=None, **k: mean(*a, **k))
    train, test = parity_data
    # pooling 2: at 64 px the default kernel of 4 pools the /16 stage to one cell, a flat map
    ours = build_model("dfm", device="cpu", pooling_kernel_size=2, score_type=score_type).fit(train)
    theirs = _twin(ours, lambda: DFMModel(backbone="tf_efficientnet_lite0", layer=ours.layers[0], pre_trained=False,
                                          pooling_kernel_size=2, n_comps=ours.n_comps, score_type=score_type))
    _fit_like_lightning(ours, theirs, train, "memory_bank", theirs.fit)
    assert_same_outputs(ours, test, *_their_outputs(ours, theirs, test))


def test_dfkde_equals_anomalibs_dfkde_model_at_its_default_layer(parity_data):
    from anomalib.models.components.classification import FeatureScalingMethod
    from anomalib.models.image.dfkde.torch_model import DfkdeModel

    train, test = parity_data
    ours = build_model("dfkde", device="cpu").fit(train)
    assert ours.layers == ["blocks.6"], "the deepest stage (/32), as anomalib's layer4 of resnet18"
    theirs = _twin(ours, lambda: DfkdeModel(backbone="tf_efficientnet_lite0", layers=list(ours.layers),
                                            pre_trained=False, n_pca_components=ours.n_pca_components,
                                            feature_scaling_method=FeatureScalingMethod.SCALE,
                                            max_training_points=ours.max_training_points))
    _fit_like_lightning(ours, theirs, train, "memory_bank", theirs.fit)
    assert_same_outputs(ours, test, *_their_outputs(ours, theirs, test))


@pytest.mark.parametrize("max_training_points", [40000, 100])
def test_rkde_kde_stage_equals_anomalibs_kde_classifier(parity_data, max_training_points):
    """With 100 points the classifier subsamples the regions: the same seeded draw as anomalib's."""
    from anomalib.models.components.classification import FeatureScalingMethod, KDEClassifier

    train, test = parity_data
    ours = build_model("rkde", device="cpu", max_training_points=max_training_points).fit(train)
    regions = ours.embed(train)
    theirs = KDEClassifier(n_pca_components=ours.n_pca_components, feature_scaling_method=FeatureScalingMethod.SCALE,
                           max_training_points=max_training_points)
    torch.manual_seed(ours.seed)
    assert theirs.fit(regions.reshape(-1, regions.shape[-1]).clone())
    test_regions = ours.embed(test)
    b, r, d = test_regions.shape
    with torch.no_grad():
        region_scores = theirs(test_regions.reshape(-1, d).clone()).reshape(b, r)
    torch.testing.assert_close(ours.region_scores(test_regions), region_scores, rtol=SCORE_RTOL, atol=0)
    assert_same_outputs(ours, test, region_scores.amax(dim=1).numpy(), None)


def test_dfkde_defaults_to_the_deepest_stage_as_anomalib_does():
    import inspect

    from anomalib.models import Dfkde

    from cl_iad.backbones import BACKBONES
    from cl_iad.models.dfkde import deepest_stage
    from cl_iad.models.registry import model_info

    anomalib_layers = list(inspect.signature(Dfkde.__init__).parameters["layers"].default)
    assert anomalib_layers == ["layer4"] == [deepest_stage("resnet18")]
    assert model_info("dfkde").presets["benchmark"]["layers"] == anomalib_layers
    expected = {"efficientnet_lite0": "blocks.6", "resnet18": "layer4", "resnet50": "layer4", "wide_resnet50_2": "layer4"}
    assert {name: deepest_stage(BACKBONES[name].timm_name) for name in expected} == expected


def test_a_dfkde_state_fitted_on_other_layers_is_refused_with_the_fix():
    """A state saved under the earlier default (blocks.4, 112 channels) must not load silently into blocks.6."""
    old = build_model("dfkde", device="cpu", layers=["blocks.4"], n_pca_components=4)
    old.fit_features(torch.randn(10, 112))
    with pytest.raises(ValueError, match=r"112-channel features.*layers=\['blocks.4'\]"):
        build_model("dfkde", device="cpu", n_pca_components=4).load_state_dict(old.state_dict())
    build_model("dfkde", device="cpu", layers=["blocks.4"], n_pca_components=4).load_state_dict(old.state_dict())
