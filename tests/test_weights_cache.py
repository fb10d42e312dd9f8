"""Pretrained files come from the ecosystem's caches: timm's Hugging Face cache or torch hub's
checkpoints for backbones, anomalib's cache for DSR's VQ model and DTD, torch hub for RKDE's
detector. Offline with a seeded cache they load with no --weights; with an empty one the error
names the full path where the file belongs.

Every path below is spelled out by hand, as the ecosystem lays it out, so a change of layout on
our side fails here rather than sending users' files to the wrong place.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from cl_iad.backbones import WeightsError, resolve_state_dict
from cl_iad.models.offline import FetchError, fetch_dsr_vq, fetch_dtd, fetch_fasterrcnn
from cl_iad.strategies import build_model

HF_REPO = "models--timm--resnet18.a1_in1k"  # timm's default resnet18 weights, as anomalib loads them
TIMM_URL_FILE = "resnet18_a1_0-d63eafa0.pth"  # the same weights' file name in timm's pretrained_cfg url
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def caches(tmp_path, monkeypatch) -> Path:
    """Empty HF, torch hub and anomalib caches under tmp_path; downloads switched off."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def _random_resnet18(seed: int) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(seed)
    return {k: v.clone() for k, v in timm.create_model("resnet18", pretrained=False).state_dict().items()}


def _backbone_state(model) -> dict[str, torch.Tensor]:
    return model.module.feature_extractor.feature_extractor.state_dict()


def _assert_loaded(model, seeded: dict[str, torch.Tensor]) -> None:
    net = _backbone_state(model)
    assert set(net) <= set(seeded)
    for key, tensor in net.items():
        assert torch.equal(tensor, seeded[key]), key


def test_resnet18_without_weights_loads_a_seeded_hugging_face_cache_offline(caches):
    from safetensors.torch import save_file

    seeded = _random_resnet18(seed=1)
    repo = caches / "hf" / "hub" / HF_REPO
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    save_file(seeded, str(snapshot / "model.safetensors"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)

    _assert_loaded(build_model("padim", backbone="resnet18"), seeded)


def test_resnet18_without_weights_loads_a_seeded_torch_hub_checkpoint_offline(caches):
    seeded = _random_resnet18(seed=2)
    folder = caches / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(seeded, folder / TIMM_URL_FILE)

    _assert_loaded(build_model("padim", backbone="resnet18"), seeded)


def test_an_empty_cache_offline_gives_one_line_naming_the_full_path(caches):
    with pytest.raises(WeightsError) as err:
        resolve_state_dict("resnet18", None)
    message = str(err.value)
    assert "\n" not in message
    assert str(caches / "torch" / "hub" / "checkpoints" / TIMM_URL_FILE) in message
    assert str(caches / "hf" / "hub" / HF_REPO) in message
    assert "--weights /path/to/resnet18.pth" in message


def test_a_weights_file_wins_over_the_cache(caches):
    folder = caches / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(_random_resnet18(seed=3), folder / TIMM_URL_FILE)
    mine = _random_resnet18(seed=4)
    torch.save(mine, caches / "mine.pth")

    _assert_loaded(build_model("padim", backbone="resnet18", weights=caches / "mine.pth"), mine)


def test_torchvision_weights_come_from_torch_hub_checkpoints(caches):
    import torchvision

    torch.manual_seed(5)
    seeded = torchvision.models.resnet18(weights=None).state_dict()
    folder = caches / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(seeded, folder / "resnet18-f37072fd.pth")  # torchvision's ResNet18_Weights.DEFAULT file

    state = resolve_state_dict("resnet18", "torchvision")
    assert all(torch.equal(state[k], v) for k, v in seeded.items())
    (folder / "resnet18-f37072fd.pth").unlink()
    with pytest.raises(WeightsError, match=re.escape(str(folder / "resnet18-f37072fd.pth"))):
        resolve_state_dict("resnet18", "torchvision")


def test_dsr_vq_weights_come_from_anomalibs_cache(caches):
    path = caches / "xdg" / "anomalib" / "pre_trained" / "dsr" / "vq_model_pretrained_128_4096.pckl"
    with pytest.raises(FetchError, match=f"{re.escape(str(path))}.*vq_weights=.*cannot train without"):
        fetch_dsr_vq()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"seeded")
    assert fetch_dsr_vq() == path


def test_dtd_images_come_from_anomalibs_cache(caches):
    folder = caches / "xdg" / "anomalib" / "datasets" / "dtd"
    with pytest.raises(FetchError, match=f"{re.escape(str(folder))}.*anomaly_source='perlin'"):
        fetch_dtd()
    image = folder / "dtd" / "images" / "banded" / "banded_0001.jpg"
    image.parent.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    assert fetch_dtd() == folder


def test_rkde_detector_weights_come_from_torch_hub_checkpoints(caches):
    path = caches / "torch" / "hub" / "checkpoints" / "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"
    with pytest.raises(FetchError, match=f"{re.escape(str(path))}.*proposer='grid'"):
        fetch_fasterrcnn()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"seeded")
    assert fetch_fasterrcnn() == path


def test_rkde_faster_rcnn_without_proposer_weights_loads_the_seeded_torch_hub_file_offline(caches):
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(3)
    seeded = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    path = caches / "torch" / "hub" / "checkpoints" / "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"
    with pytest.raises(FetchError, match=re.escape(str(path))):  # empty cache, offline: names the file
        build_model("rkde", proposer="faster_rcnn", weights="random")
    path.parent.mkdir(parents=True)
    torch.save(seeded, path)

    model = build_model("rkde", proposer="faster_rcnn", weights="random")
    assert model.proposer.weights == path
    loaded = model.proposer.detector.state_dict()
    assert set(loaded) == set(seeded)
    assert all(torch.equal(loaded[k], seeded[k]) for k in seeded)
