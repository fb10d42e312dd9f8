"""Build anomalib torch models without network access, then load our resolved weights.

anomalib 2.7 builds backbones with ``timm.create_model(..., pretrained=True)`` (STFPM's teacher,
U-Flow's extractor) or torchvision ``weights=DEFAULT`` (CFA, CS-Flow), both of which download.
:func:`no_downloads` forces ``pretrained=False`` while a model is constructed; the caller then
loads real weights from :mod:`cl_iad.backbones` into every backbone it built
(:func:`load_backbone`). Nothing is left with silently random backbone weights: a backbone
that should be pretrained either gets its weights or construction raises ``WeightsError``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from ..backbones import backbone_spec, load_into, resolve_state_dict

log = logging.getLogger(__name__)


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """Within the block, ``timm.create_model`` never fetches pretrained weights."""
    import timm

    original = timm.create_model

    def create_model(*args, **kwargs):
        kwargs["pretrained"] = False
        return original(*args, **kwargs)

    timm.create_model = create_model
    try:
        yield
    finally:
        timm.create_model = original


def load_backbone(module: nn.Module, backbone: str, weights: str | Path | None) -> None:
    """Load `backbone`'s resolved weights into a timm module; ``weights='random'`` keeps init."""
    state = resolve_state_dict(backbone, weights)
    if state is not None:
        load_into(module, state, backbone)


def timm_extractor(backbone: str, weights: str | Path | None, layers: Sequence[str],
                   requires_grad: bool = False) -> nn.Module:
    """anomalib's ``TimmFeatureExtractor`` for our backbone name, with our weights loaded."""
    from anomalib.models.components import TimmFeatureExtractor

    spec = backbone_spec(backbone)
    fe = TimmFeatureExtractor(backbone=spec.timm_name, layers=list(layers), pre_trained=False,
                              requires_grad=requires_grad)
    load_backbone(fe.feature_extractor, backbone, weights)
    return fe


def default_layers(backbone: str, picks: Sequence[int]) -> list[str]:
    """The stage names at the given positions of the backbone's (/4, /8, /16) stages."""
    spec = backbone_spec(backbone)
    return [spec.layers[i] for i in picks]


def normaliser(backbone: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (1, 3, 1, 1) the backbone expects for inputs in [0, 1]."""
    spec = backbone_spec(backbone)
    return torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)


def assign_tensors(module: nn.Module, state: dict[str, torch.Tensor], device: torch.device | None = None) -> None:
    """Set (possibly reshaped) buffers by dotted name, where ``load_state_dict`` would refuse.

    Fitted statistics (PCA bases, KDE datasets) change shape with the data, so their
    registered buffers cannot be loaded with ``load_state_dict``'s shape check.
    """
    for name, value in state.items():
        owner = module
        *path, leaf = name.split(".")
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, leaf, value.clone() if device is None else value.to(device, copy=True))
