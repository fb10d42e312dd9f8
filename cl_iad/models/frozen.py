"""Base class for models that fit from frozen-backbone features in one pass (no gradients).

Inference is split in two: ``extract`` (frozen backbone -> embedding, the same every time for an
image, so :class:`~cl_iad.cache.FeatureCache` keeps it) and ``score`` (embedding -> image score
and anomaly map). Fitting (``fit_features``) *replaces* the fitted state, which avoids
anomalib's ``MemoryBankMixin`` never-refit trap. The fitted state is a small dict of tensors, so
the per-task regime keeps one state per task over one shared backbone.

Everything runs on ``self.device``: the backbone pass, the cached features (kept where they
were computed), the coreset, the k-NN search and the maps; predictions come back as numpy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch

from ..backbones import DEFAULT_BACKBONE, backbone_spec, load_into, resolve_state_dict, weights_tag
from ..cache import FeatureCache
from .base import AnomalyModel, FitContext, Predictions, predictions, resolve_device

log = logging.getLogger(__name__)


NORMALIZATIONS = ("backbone", "imagenet", "none")
# backbone-pass precisions, named as Lightning names them (``Trainer(precision=...)``)
PRECISIONS = {"32": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def check_precision(value) -> str:
    """`value` as one of PRECISIONS' names (32 may be given as an int); ValueError naming the choices."""
    text = str(value)
    if text in ("32-true", "32"):
        return "32"
    if text not in PRECISIONS:
        raise ValueError(f"unknown precision {value!r}; choose from {', '.join(PRECISIONS)}")
    return text


def _normalization_stats(name: str, spec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean/std: the backbone's own (default; ImageNet for ResNets, as anomalib's
    PreProcessor), ImageNet's, or none (images stay in [0, 1])."""
    from ..backbones import IMAGENET_MEAN, IMAGENET_STD

    if name == "backbone":
        return spec.mean, spec.std
    if name == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if name == "none":
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    raise ValueError(f"unknown normalization {name!r}; choose from {', '.join(NORMALIZATIONS)}")


class FrozenFeatureModel(AnomalyModel):
    """Base for models that fit from frozen-backbone embeddings in one pass (no gradients)."""

    default_layer_picks: ClassVar[tuple[int, ...]] = (0, 1, 2)
    # False for models whose training changes what `extract` returns (a trained backbone or
    # feature adaptor): the feature cache then never stores their features.
    frozen_backbone = True

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        weights: str | Path | None = None,
        layers: Sequence[str] | None = None,
        seed: int = 0,
        normalization: str = "backbone",
        device: str | torch.device | None = "auto",
        batch_size: int = 16,
        precision: str = "32",
    ) -> None:
        self.precision = check_precision(precision)
        self.backbone = backbone
        self.weights = weights
        spec = backbone_spec(backbone)
        self.layers = list(layers) if layers else self.default_layers(backbone)
        self.seed = seed
        self.normalization = normalization
        mean, std = _normalization_stats(normalization, spec)
        self._mean = torch.tensor(mean).view(1, 3, 1, 1)
        self._std = torch.tensor(std).view(1, 3, 1, 1)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.module = self._build(spec.timm_name)
        state = resolve_state_dict(backbone, weights)
        if state is not None:
            load_into(self.module.feature_extractor.feature_extractor, state, backbone)
        self.module.eval()
        self.batch_size = batch_size
        self.cache = FeatureCache()  # a strategy hands its shared cache over with use_cache()
        self.device = torch.device("cpu")
        self.fitted_ = False
        self.to(resolve_device(device))

    def to(self, device: str | torch.device) -> FrozenFeatureModel:
        """Move the backbone and the fitted state to `device`."""
        self.device = torch.device(device)
        self.module.to(self.device)
        self._mean, self._std = self._mean.to(self.device), self._std.to(self.device)
        if self.fitted_:
            self.load_state_dict(self.state_dict())
        return self

    def use_cache(self, cache: FeatureCache) -> FrozenFeatureModel:
        """Read features through `cache` (shared by every regime of a run)."""
        self.cache = cache
        return self

    # -- the contract -------------------------------------------------------------------
    def embed(self, data) -> torch.Tensor:
        """Embeddings of every image of `data`, through the feature cache, on the model's device."""
        return self.cache.embeddings(self, data, self.batch_size).to(self.device)

    def fit(self, data, ctx: FitContext | None = None) -> FrozenFeatureModel:
        """Fit from scratch on the normal images of `data`, replacing any previous state."""
        return self.fit_features(self.embed(data))

    def predict(self, data) -> Predictions:
        """Scores and maps for every image of `data`."""
        return self.predict_features(self.embed(data), data.image_size)

    @torch.no_grad()
    def predict_features(self, embeddings: torch.Tensor, image_size: int) -> Predictions:
        """Scores and maps from embeddings, in batches of `batch_size`."""
        size = (image_size, image_size)
        scores, maps = [], []
        for start in range(0, len(embeddings), self.batch_size):
            s, m = self.score(embeddings[start : start + self.batch_size], size)
            scores.append(s)
            maps.append(m)
        return predictions(scores, maps)

    # -- construction -------------------------------------------------------------------
    def default_layers(self, backbone: str) -> list[str]:
        """Layers used when none are given: ``default_layer_picks`` of the backbone's (/4, /8, /16) stages."""
        spec = backbone_spec(backbone)
        return [spec.layers[i] for i in self.default_layer_picks]

    def _build(self, timm_name: str) -> torch.nn.Module:
        raise NotImplementedError

    def config(self) -> dict:
        """Settings that define this model, for config.json and cache keys."""
        return {"model": self.name, "backbone": self.backbone, "weights": weights_tag(self.weights),
                "layers": list(self.layers), "seed": self.seed, "normalization": self.normalization,
                "device": str(self.device), **({"precision": self.precision} if self.precision != "32" else {})}

    @property
    def feature_key(self) -> str:
        """Identifies the embeddings `extract` returns; equal keys mean reusable features."""
        c = self.config()
        key = (f"{self.name}|{c['backbone']}|{c['weights']}|{','.join(self.layers)}|seed{self.seed}"
               f"|norm:{self.normalization}")
        return key if self.precision == "32" else f"{key}|{self.precision}"  # 32: the keys cached runs already hold

    # -- inference pieces ---------------------------------------------------------------
    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] on the model's device, normalised as the backbone expects."""
        return (images.to(self.device) - self._mean) / self._std

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, C, h, w) of images in [0, 1]; deterministic, frozen backbone."""
        raise NotImplementedError

    @torch.no_grad()
    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """`extract` at the model's precision; the embeddings come back in float32.

        With ``precision="16-mixed"`` or ``"bf16-mixed"`` the backbone pass runs under
        ``torch.autocast`` (Lightning's names for the same thing); everything after it (coreset,
        k-NN, Gaussians, KDE) stays in float32, so only the features carry the rounding.
        """
        if self.precision == "32":
            return self.extract(images)
        with torch.autocast(self.device.type, dtype=PRECISIONS[self.precision]):
            emb = self.extract(images)
        return emb.float() if emb.is_floating_point() else emb

    def routing_features(self, embeddings: torch.Tensor) -> torch.Tensor:
        """One float vector (N, D) per image, for the task router of task-agnostic ``per_task``.

        The default reads embeddings as channel-first, (N, C) or (N, C, h, w, ...), and averages
        every axis after the channels. A model whose embedding has another layout (RKDE's
        (N, regions, D)) overrides this, so the router never guesses which axis holds channels.
        """
        x = embeddings.float()
        if x.ndim < 2:
            raise ValueError(f"{self.name} embeddings of shape {tuple(x.shape)} have no channel axis; "
                             "override routing_features() to return one (N, D) vector per image")
        return x if x.ndim == 2 else x.mean(dim=tuple(range(2, x.ndim)))

    def fit_features(self, embeddings: torch.Tensor) -> FrozenFeatureModel:
        """Fit from scratch on normal embeddings (N, C, h, w), replacing any previous state."""
        raise NotImplementedError

    @torch.no_grad()
    def score(self, embeddings: torch.Tensor, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (B,) and anomaly maps (B, H, W) for embeddings of a batch."""
        raise NotImplementedError
