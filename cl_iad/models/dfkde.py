"""DFKDE: a Gaussian KDE over PCA-reduced, globally pooled deep features (image scores only)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from .frozen import FrozenFeatureModel
from .offline import assign_tensors


class DFKDE(FrozenFeatureModel):
    """DFKDE via anomalib's ``KDEClassifier``; a classification model, so no anomaly map."""

    name = "dfkde"
    title = "DFKDE"
    presets: ClassVar[dict] = {"benchmark": {"backbone": "resnet18",
                                             "layers": ["layer3"],
                                             "n_pca_components": 16},
                               "light": {"n_pca_components": 4}}
    notes = "image scores only; pixel metrics NaN"
    family = "density/statistical"
    task_type = "classification"
    default_layer_picks = (2,)

    def __init__(self, *args, n_pca_components: int = 16, feature_scaling_method: str = "scale",
                 max_training_points: int = 40000, **kwargs) -> None:
        self.n_pca_components = n_pca_components
        self.feature_scaling_method = feature_scaling_method
        self.max_training_points = max_training_points
        super().__init__(*args, **kwargs)

    def _build(self, timm_name: str) -> torch.nn.Module:
        from anomalib.models.components.classification import FeatureScalingMethod
        from anomalib.models.image.dfkde.torch_model import DfkdeModel

        return DfkdeModel(backbone=timm_name, layers=self.layers, pre_trained=False,
                          n_pca_components=self.n_pca_components,
                          feature_scaling_method=FeatureScalingMethod(self.feature_scaling_method),
                          max_training_points=self.max_training_points)

    def config(self) -> dict:
        return {**super().config(), "n_pca_components": self.n_pca_components,
                "feature_scaling_method": self.feature_scaling_method,
                "max_training_points": self.max_training_points}

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> torch.Tensor:
        outputs = self.module.feature_extractor(self.normalise(images))
        # anomalib's DfkdeModel.get_features concatenates layers along the batch axis (dim 0),
        # which breaks with more than one layer; pool each layer and join along channels.
        pooled = [F.adaptive_avg_pool2d(f, 1).flatten(1) for f in outputs.values()]
        return torch.cat(pooled, dim=1)

    def fit_features(self, embeddings: torch.Tensor) -> DFKDE:
        if len(embeddings) <= self.n_pca_components:
            # n images span at most n-1 centred directions: the KDE covariance would be singular.
            raise ValueError(
                f"DFKDE needs more than n_pca_components={self.n_pca_components} training images, got "
                f"{len(embeddings)}; lower n_pca_components (e.g. --preset light) or add images")
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)  # the subsample above max_training_points
            self.module.classifier.fit(embeddings.clone())
        self.fitted_ = True
        return self

    @torch.no_grad()
    def score(self, embeddings, image_size):
        self._require_fitted()
        return self.module.classifier(embeddings.clone()), None

    def state_dict(self):
        return {k: v.clone() for k, v in self.module.classifier.state_dict().items()}

    def load_state_dict(self, state):
        assign_tensors(self.module.classifier, state, self.device)
        self.fitted_ = True
