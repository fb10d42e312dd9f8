"""DFKDE: a Gaussian KDE over PCA-reduced, globally pooled deep features (image scores only).

Like anomalib's ``Dfkde`` (``layers=("layer4",)`` on resnet18), the default layer is the
backbone's deepest feature stage, at /32: ``layer4`` for the ResNets, ``blocks.6`` for the
default EfficientNet-Lite0 (see :func:`deepest_stage`).
"""

from __future__ import annotations

from functools import cache
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..backbones import backbone_spec
from .frozen import FrozenFeatureModel
from .offline import assign_tensors


@cache
def deepest_stage(timm_name: str) -> str:
    """The last feature stage timm exposes for `timm_name` (resnet18: ``layer4``, tf_efficientnet_lite0: ``blocks.6``)."""
    import timm

    with torch.device("meta"):  # only the stage list is read: no weights are allocated
        net = timm.create_model(timm_name, pretrained=False, features_only=True)
    return net.feature_info.module_name()[-1]


class DFKDE(FrozenFeatureModel):
    """DFKDE via anomalib's ``KDEClassifier``; a classification model, so no anomaly map."""

    name = "dfkde"
    title = "DFKDE"
    presets: ClassVar[dict] = {"benchmark": {"backbone": "resnet18",
                                             "layers": ["layer4"],  # anomalib's default
                                             "n_pca_components": 16},
                               "light": {"n_pca_components": 4}}
    notes = "image scores only; pixel metrics NaN"
    family = "density/statistical"
    task_type = "classification"

    def __init__(self, *args, n_pca_components: int = 16, feature_scaling_method: str = "scale",
                 max_training_points: int = 40000, **kwargs) -> None:
        self.n_pca_components = n_pca_components
        self.feature_scaling_method = feature_scaling_method
        self.max_training_points = max_training_points
        super().__init__(*args, **kwargs)

    def default_layers(self, backbone: str) -> list[str]:
        """The deepest stage, as anomalib's ``layer4`` (not one of the three /4-/16 stages the others pick from)."""
        return [deepest_stage(backbone_spec(backbone).timm_name)]

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
        mean = state.get("pca_model.mean")
        width = sum(self.module.feature_extractor.out_dims)
        if mean is not None and mean.numel() != width:
            # e.g. a model saved when the default layer was blocks.4 (112 channels), before issue 13
            raise ValueError(
                f"this DFKDE state was fitted on {mean.numel()}-channel features, but layers {self.layers} of "
                f"{self.backbone} give {width}; rebuild the model with the layers it was fitted with "
                "(the default is the deepest stage since issue 13: pass layers=['blocks.4'] for states saved "
                "with the earlier EfficientNet-Lite0 default)")
        assign_tensors(self.module.classifier, state, self.device)
        self.fitted_ = True
