"""DFM (Ahuja et al., 2019): PCA of pooled deep features, scored by feature reconstruction error."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from .frozen import FrozenFeatureModel
from .offline import assign_tensors


def fit_single_class_gaussian(gaussian: torch.nn.Module, dataset: torch.Tensor) -> None:
    """anomalib's ``SingleClassGaussian.fit`` on `dataset` (features, samples), line for line.

    anomalib 2.7's own ``fit`` calls ``torch.mean(dataset, dim=1, device=...)``, which torch
    rejects (TypeError), so ``score_type="nll"`` cannot be fitted through it; the arithmetic here is
    the same without that argument (tests/test_parity_frozen.py compares the scores).
    """
    num_samples = dataset.shape[1]
    gaussian.mean_vec = torch.mean(dataset, dim=1)
    centred = (dataset - gaussian.mean_vec.reshape(-1, 1)) / math.sqrt(num_samples)
    gaussian.u_mat, gaussian.sigma_mat, _ = torch.linalg.svd(centred, full_matrices=False)


class DFM(FrozenFeatureModel):
    """DFM via anomalib's ``DFMModel`` (its PCA and Gaussian); fitting is our explicit ``fit``."""

    name = "dfm"
    title = "DFM"
    presets: ClassVar[dict] = {"benchmark": {"backbone": "resnet50",
                                             "layers": ["layer3"],
                                             "pooling_kernel_size": 4,
                                             "n_comps": 0.97,
                                             "score_type": "fre"},
                               "light": {"pooling_kernel_size": 2}}
    family = "density/statistical"
    task_type = "segmentation"
    default_layer_picks = (2,)

    def __init__(self, *args, pooling_kernel_size: int = 4, n_comps: float = 0.97, score_type: str = "fre",
                 **kwargs) -> None:
        if score_type not in ("fre", "nll"):
            raise ValueError(f"DFM score_type must be 'fre' or 'nll', got {score_type!r}")
        self.pooling_kernel_size = pooling_kernel_size
        self.n_comps = n_comps
        self.score_type = score_type
        super().__init__(*args, **kwargs)
        if len(self.layers) != 1:
            raise ValueError(f"DFM uses exactly one layer, got {self.layers}; pass layers=['<one stage>']")

    def _build(self, timm_name: str) -> torch.nn.Module:
        from anomalib.models.image.dfm.torch_model import DFMModel

        return DFMModel(backbone=timm_name, layer=self.layers[0], pre_trained=False,
                        pooling_kernel_size=self.pooling_kernel_size, n_comps=self.n_comps,
                        score_type=self.score_type)

    def config(self) -> dict:
        return {**super().config(), "pooling_kernel_size": self.pooling_kernel_size, "n_comps": self.n_comps,
                "score_type": self.score_type}

    @property
    def feature_key(self) -> str:
        return f"{super().feature_key}|pool{self.pooling_kernel_size}"

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> torch.Tensor:
        features = self.module.feature_extractor(self.normalise(images))[self.layers[0]]
        if self.pooling_kernel_size > 1:
            features = F.avg_pool2d(features, kernel_size=self.pooling_kernel_size)
        return features

    def fit_features(self, embeddings: torch.Tensor) -> DFM:
        m = self.module
        # a copy: anomalib's PCA.fit centres its input in place, which corrupted the caller's
        # embeddings (the router of task-agnostic per_task was fitted on centred features)
        flat = embeddings.reshape(len(embeddings), -1).clone()
        m.pca_model.fit(flat)
        if self.score_type == "nll":
            fit_single_class_gaussian(m.gaussian_model, m.pca_model.transform(flat).T)
        self.fitted_ = True
        return self

    @torch.no_grad()
    def score(self, embeddings, image_size):
        self._require_fitted()
        flat = embeddings.reshape(len(embeddings), -1)
        score, amap = self.module.score(flat, embeddings.shape)
        if amap is None:
            return score, None
        amap = F.interpolate(amap, size=image_size, mode="bilinear", align_corners=False)
        return score, amap.reshape(len(embeddings), *image_size)

    def state_dict(self):
        m = self.module
        state = {f"pca_model.{k}": v.clone() for k, v in m.pca_model.state_dict().items()}
        if self.score_type == "nll":
            state.update({f"gaussian_model.{k}": v.clone() for k, v in m.gaussian_model.state_dict().items()})
        return state

    def load_state_dict(self, state):
        assign_tensors(self.module, state, self.device)
        self.fitted_ = True
