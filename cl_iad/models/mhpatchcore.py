"""MH-PatchCore (anomalib 2.7's ``MHPatchcore``): PatchCore in a whitened PCA space, with a bank of fixed size.

anomalib fits its ``MHPatchcoreModel`` in three passes over the training data (incremental PCA,
streaming covariance whitening, then a merge-reduce coreset of at most ``memory_bank_size`` rows
built batch by batch) and scores a patch by its squared distance to the nearest bank row, the
image by its most anomalous patch reweighted by the neighbourhood of its nearest row. We use
anomalib's feature extractor, patch embedding (``generate_embedding``), its ``StreamingPCA``,
``CovarianceWhitening`` and ``MergeReduceMemoryBank`` (fed in batches of ``batch_size`` images, as
anomalib's loader would) and its anomaly-map generator. Scoring is written out here from the
cached embeddings (the same arithmetic as anomalib's ``forward``, whose helpers are private), with
our bounded k-NN search; ``tests/test_mhpatchcore.py`` checks it against anomalib's forward.

The bank never exceeds ``memory_bank_size`` rows whatever the amount of data, which makes it the
natural member of the bounded shared-memory regime (``--strategy bounded_bank``): there the PCA and
whitening of the first task are kept (:meth:`freeze_space`) so every task's bank rows live in one
space and can be merged. Under ``naive`` each fit replaces everything, as the contract says.
anomalib's Lightning module resizes to 256 and centre-crops 224; in our loop the model sees the
run's images at their size, like every other model.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .frozen import FrozenFeatureModel
from .offline import assign_tensors
from .ops.knn import nearest_neighbors

_STATE = ("pca.components", "pca.mean", "pca.projected_mean", "pca.num_components", "covariance.mean",
          "covariance.whitening_matrix")


def reweighted_score(patch_scores: torch.Tensor, locations: torch.Tensor, embeddings: torch.Tensor,
                     bank: torch.Tensor, num_neighbors: int) -> torch.Tensor:
    """anomalib MH-PatchCore's image score: the top patch score, weighted by 1 - softmax over its support.

    `patch_scores` (B, P) are squared distances to the nearest bank rows `locations` (B, P);
    `embeddings` (B*P, D) the whitened patches. As ``anomalib.models.image.mh_patchcore.torch_model``.
    """
    b, p = patch_scores.shape
    rows = torch.arange(b, device=patch_scores.device)
    anchor = patch_scores.argmax(dim=1)
    anchor_scores = patch_scores[rows, anchor]
    k = min(num_neighbors, len(bank))
    if k <= 1:
        return anchor_scores
    queries = embeddings.reshape(b, p, -1)[rows, anchor]
    anchor_rows = bank[locations[rows, anchor]]
    _, support = nearest_neighbors(anchor_rows, bank, k)
    support = bank[support.reshape(b, k)].to(torch.float64)
    dist = (support - queries.unsqueeze(1).to(torch.float64)).square().sum(dim=2)
    top = dist.amax(dim=1)
    denominator = torch.exp(dist - top.unsqueeze(1)).sum(dim=1)
    numerator = torch.exp(anchor_scores.to(torch.float64) - top)
    valid = (denominator > 0) & torch.isfinite(denominator)
    weights = torch.where(valid, 1 - numerator / denominator, torch.ones_like(denominator))
    return (weights.clamp(0, 1) * anchor_scores).to(patch_scores.dtype)


class MHPatchCore(FrozenFeatureModel):
    """anomalib 2.7's MH-PatchCore: whitened-PCA PatchCore with a merge-reduce bank of fixed size."""

    name = "mhpatchcore"
    title = "MH-PatchCore"
    family = "memory bank"
    default_layer_picks = (1, 2)
    presets: ClassVar[dict] = {
        "benchmark": {"backbone": "wide_resnet50_2", "layers": ["layer2", "layer3"], "pca_variance_ratio": 0.99,
                      "covariance_shrinkage": 0.07, "memory_bank_size": 1000, "local_coreset_size": 256,
                      "num_neighbors": 9},
        "light": {"memory_bank_size": 200, "local_coreset_size": 64},
    }
    notes: ClassVar[str] = "anomalib 2.7 MHPatchcore; bank of at most memory_bank_size rows (bounded_bank keeps one)"

    def __init__(self, *args, pca_variance_ratio: float = 0.99, covariance_shrinkage: float = 0.07,
                 memory_bank_size: int = 1000, local_coreset_size: int = 256, num_neighbors: int = 9,
                 **kwargs) -> None:
        self.pca_variance_ratio = pca_variance_ratio
        self.covariance_shrinkage = covariance_shrinkage
        self.memory_bank_size = memory_bank_size
        self.local_coreset_size = local_coreset_size
        self.num_neighbors = num_neighbors
        self.space_frozen_ = False
        super().__init__(*args, **kwargs)

    def _build(self, timm_name: str) -> torch.nn.Module:
        from anomalib.models.image.mh_patchcore.torch_model import MHPatchcoreModel

        return MHPatchcoreModel(backbone=timm_name, layers=self.layers, pre_trained=False,
                                pca_variance_ratio=self.pca_variance_ratio,
                                covariance_shrinkage=self.covariance_shrinkage,
                                memory_bank_size=self.memory_bank_size, local_coreset_size=self.local_coreset_size,
                                num_neighbors=self.num_neighbors)

    def config(self) -> dict:
        return {**super().config(), "pca_variance_ratio": self.pca_variance_ratio,
                "covariance_shrinkage": self.covariance_shrinkage, "memory_bank_size": self.memory_bank_size,
                "local_coreset_size": self.local_coreset_size, "num_neighbors": self.num_neighbors}

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embeddings as a channel-first map (B, 1024, h, w) on the first layer's grid."""
        m = self.module
        features = m.feature_extractor(self.normalise(images))
        h, w = features[self.layers[0]].shape[-2:]
        flat = m.generate_embedding(features)  # (B*h*w, D), batch-major, row-major patches
        return flat.reshape(len(images), h, w, -1).permute(0, 3, 1, 2).contiguous()

    def freeze_space(self) -> None:
        """Keep the fitted PCA and whitening from now on: later fits rebuild only the bank, in this space."""
        self._require_fitted()
        self.space_frozen_ = True

    def _chunks(self, embeddings: torch.Tensor):
        for start in range(0, len(embeddings), self.batch_size):
            e = embeddings[start : start + self.batch_size]
            yield e.permute(0, 2, 3, 1).reshape(-1, e.shape[1])

    @torch.no_grad()
    def fit_features(self, embeddings: torch.Tensor) -> MHPatchCore:
        """anomalib's three passes over the images, in batches of ``batch_size``: PCA, whitening, bank."""
        from anomalib.models.image.mh_patchcore.components import (
            CovarianceWhitening,
            MergeReduceMemoryBank,
            StreamingPCA,
        )

        m = self.module
        if not self.space_frozen_:
            pca = StreamingPCA(variance_ratio=self.pca_variance_ratio)
            for chunk in self._chunks(embeddings):
                pca.update(chunk)
            pca.finalize()
            m.pca = pca.to(self.device)
            cov = CovarianceWhitening(shrinkage=self.covariance_shrinkage)
            for chunk in self._chunks(embeddings):
                cov.update(m.pca(chunk))
            cov.finalize()
            m.covariance = cov.to(self.device)
        bank = MergeReduceMemoryBank(memory_bank_size=self.memory_bank_size, local_coreset_size=self.local_coreset_size)
        for chunk in self._chunks(embeddings):
            bank.update(m.covariance(m.pca(chunk)))
        bank.finalize()
        m.memory_bank = bank.to(self.device)
        self.fitted_ = True
        return self

    @torch.no_grad()
    def score(self, embeddings, image_size):
        self._require_fitted()
        m = self.module
        b, _, h, w = embeddings.shape
        bank = m.memory_bank.bank
        flat = embeddings.permute(0, 2, 3, 1).reshape(b * h * w, -1)
        white = m.covariance(m.pca(flat)).to(bank.dtype)
        dist, locations = nearest_neighbors(white, bank, 1)
        patch_scores = dist.square().reshape(b, -1)  # anomalib scores squared distances
        pred = reweighted_score(patch_scores, locations.reshape(b, -1), white, bank, self.num_neighbors)
        amap = m.anomaly_map_generator(patch_scores.reshape(b, 1, h, w), tuple(image_size))
        return pred, amap.reshape(b, *image_size)

    def state_dict(self):
        m = self.module
        state = {name: getattr(getattr(m, name.split(".")[0]), name.split(".")[1]).clone() for name in _STATE}
        return {**state, "memory_bank": m.memory_bank.bank.clone(),
                "space_frozen": torch.tensor(self.space_frozen_)}

    def load_state_dict(self, state):
        assign_tensors(self.module, {k: state[k] for k in _STATE}, self.device)
        assign_tensors(self.module, {"memory_bank.bank": state["memory_bank"]}, self.device)
        self.space_frozen_ = bool(state.get("space_frozen", torch.tensor(False)))
        self.fitted_ = True
