"""Anomaly models over a frozen backbone, wrapped around anomalib's torch models.

We use anomalib's ``PatchcoreModel`` and ``PadimModel`` (their feature extractors, embedding
code, nearest-neighbour search, Gaussian fit and anomaly-map generators) but not their
Lightning glue: fitting is an explicit ``fit(embeddings)`` that *replaces* the fitted state,
which avoids ``MemoryBankMixin``'s never-refit trap and PatchCore's bank replacement surprise.

Each model splits inference in two: ``extract`` (frozen backbone -> embedding, cacheable per
image) and ``score`` (embedding -> image score and anomaly map). The fitted state is a small
dict of tensors (``get_state``/``set_state``), so the per-task regime keeps one state per task
over a single shared backbone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..backbones import DEFAULT_BACKBONE, backbone_spec, load_into, resolve_state_dict, weights_tag
from .blur import separable_blur
from .coreset import greedy_coreset_indices
from .knn import nearest_neighbors

log = logging.getLogger(__name__)


NORMALIZATIONS = ("backbone", "imagenet", "none")


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


class FrozenFeatureModel:
    """Base for models that fit from frozen-backbone embeddings in one pass (no gradients)."""

    name = "base"
    family = "memory bank"
    task_type = "segmentation"
    default_layer_picks: tuple[int, ...] = (0, 1, 2)
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
    ) -> None:
        self.backbone = backbone
        self.weights = weights
        spec = backbone_spec(backbone)
        self.layers = list(layers) if layers else [spec.layers[i] for i in self.default_layer_picks]
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
        self.fitted_ = False

    # -- construction -------------------------------------------------------------------
    def _build(self, timm_name: str) -> torch.nn.Module:
        raise NotImplementedError

    def config(self) -> dict:
        """Settings that define this model, for config.json and cache keys."""
        return {"model": self.name, "backbone": self.backbone, "weights": weights_tag(self.weights),
                "layers": list(self.layers), "seed": self.seed, "normalization": self.normalization}

    @property
    def feature_key(self) -> str:
        """Identifies the embeddings `extract` returns; equal keys mean reusable features."""
        c = self.config()
        return (f"{self.name}|{c['backbone']}|{c['weights']}|{','.join(self.layers)}|seed{self.seed}"
                f"|norm:{self.normalization}")

    # -- inference pieces ---------------------------------------------------------------
    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self._mean) / self._std

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, C, h, w) of images in [0, 1]; deterministic, frozen backbone."""
        raise NotImplementedError

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

    def fit(self, embeddings: torch.Tensor) -> FrozenFeatureModel:
        """Fit from scratch on normal embeddings (N, C, h, w), replacing any previous state."""
        raise NotImplementedError

    @torch.no_grad()
    def score(self, embeddings: torch.Tensor, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (B,) and anomaly maps (B, H, W) for embeddings of a batch."""
        raise NotImplementedError

    def get_state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def _require_fitted(self) -> None:
        if not self.fitted_:
            raise RuntimeError(f"{self.name} has not been fitted; call fit() first")


class PatchCore(FrozenFeatureModel):
    """PatchCore (Roth et al., CVPR 2022) via anomalib's ``PatchcoreModel``."""

    name = "patchcore"
    family = "memory bank"
    default_layer_picks = (1, 2)

    def __init__(self, *args, coreset_ratio: float = 0.1, num_neighbors: int = 9,
                 max_bank_size: int | None = None, **kwargs) -> None:
        if max_bank_size is not None and max_bank_size <= 0:
            raise ValueError(f"max_bank_size must be a positive number of rows, got {max_bank_size}")
        self.coreset_ratio = coreset_ratio
        self.num_neighbors = num_neighbors
        self.max_bank_size = max_bank_size  # memory-bank budget: the coreset never exceeds it
        super().__init__(*args, **kwargs)

    def _build(self, timm_name: str) -> torch.nn.Module:
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        return PatchcoreModel(layers=self.layers, backbone=timm_name, pre_trained=False,
                              num_neighbors=self.num_neighbors)

    def config(self) -> dict:
        return {**super().config(), "coreset_ratio": self.coreset_ratio, "num_neighbors": self.num_neighbors,
                "max_bank_size": self.max_bank_size}

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> torch.Tensor:
        m = self.module
        features = m.feature_extractor(self.normalise(images))
        features = {layer: m.feature_pooler(f) for layer, f in features.items()}
        return m.generate_embedding(features)

    def fit(self, embeddings: torch.Tensor) -> PatchCore:
        flat = self.module.reshape_embedding(embeddings)
        n = flat.shape[0]
        k = int(n * self.coreset_ratio) if self.coreset_ratio < 1 else n
        budget = self.max_bank_size if self.max_bank_size is not None and self.max_bank_size < k else None
        idx = greedy_coreset_indices(flat, self.coreset_ratio, seed=self.seed, size=budget) if budget or k < n else None
        bank = flat[idx] if idx is not None else flat
        self.module.memory_bank = bank.contiguous().clone()
        self.fitted_ = True
        return self

    @torch.no_grad()
    def score(self, embeddings, image_size):
        self._require_fitted()
        m = self.module
        b, _, h, w = embeddings.shape
        flat = m.reshape_embedding(embeddings)
        patch_scores, locations = nearest_neighbors(flat, m.memory_bank, 1)  # bounded memory, any bank size
        patch_scores = patch_scores.reshape(b, -1)
        pred = m.compute_anomaly_score(patch_scores, locations.reshape(b, -1), flat)
        # anomalib's compute_anomaly_map (nearest upsampling, then its Gaussian), with the blur
        # done as two 1-D passes: same map, 16x fewer operations (see strategies/blur.py)
        up = F.interpolate(patch_scores.reshape(b, 1, h, w), size=tuple(image_size))
        amap = separable_blur(m.anomaly_map_generator.blur, up)
        return pred, amap.reshape(b, *image_size)

    def get_state(self):
        return {"memory_bank": self.module.memory_bank.clone()}

    def set_state(self, state):
        self.module.memory_bank = state["memory_bank"].clone()
        self.fitted_ = True


class Padim(FrozenFeatureModel):
    """PaDiM (Defard et al., ICPR 2021) via anomalib's ``PadimModel``."""

    name = "padim"
    family = "density/statistical"

    def __init__(self, *args, n_features: int | None = None, **kwargs) -> None:
        self.n_features = n_features
        super().__init__(*args, **kwargs)

    def _build(self, timm_name: str) -> torch.nn.Module:
        from anomalib.models.image.padim.torch_model import PadimModel

        n = self.n_features
        if n is None:
            # anomalib's defaults are for resnet18 (100) and wide_resnet50_2 (550); for other
            # nets keep all channels up to 100, the resnet18 setting.
            import timm

            probe = timm.create_model(timm_name, pretrained=False, features_only=True)
            names = [i["module"] for i in probe.feature_info.info]
            total = sum(probe.feature_info.channels()[names.index(layer)] for layer in self.layers)
            n = {"resnet18": 100, "wide_resnet50_2": 550}.get(timm_name, min(100, total))
            self.n_features = n
        return PadimModel(backbone=timm_name, layers=self.layers, pre_trained=False, n_features=n)

    def config(self) -> dict:
        return {**super().config(), "n_features": self.n_features}

    @property
    def feature_key(self) -> str:
        # the embedding keeps n_features randomly chosen channels, so they are part of its identity
        return f"{super().feature_key}|nf{self.n_features}"

    @torch.no_grad()
    def extract(self, images):
        m = self.module
        return m.generate_embedding(m.feature_extractor(self.normalise(images)))

    def fit(self, embeddings):
        self.module.gaussian.fit(embeddings)
        self.fitted_ = True
        return self

    @torch.no_grad()
    def score(self, embeddings, image_size):
        self._require_fitted()
        g = self.module.gaussian
        amap = self.module.anomaly_map_generator(embedding=embeddings, mean=g.mean,
                                                 inv_covariance=g.inv_covariance, image_size=image_size)
        amap = amap.reshape(embeddings.shape[0], *image_size)
        return amap.amax(dim=(-2, -1)), amap

    def get_state(self):
        g = self.module.gaussian
        return {"mean": g.mean.clone(), "inv_covariance": g.inv_covariance.clone()}

    def set_state(self, state):
        g = self.module.gaussian
        g.mean = state["mean"].clone()
        g.inv_covariance = state["inv_covariance"].clone()
        self.fitted_ = True


def build_model(name: str, preset: str | None = None, **kwargs):
    """Construct any registered model by name (see :mod:`cl_iad.models.registry`)."""
    from ..models.registry import build_model as build

    return build(name, preset, **kwargs)
