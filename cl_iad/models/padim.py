"""PaDiM (Defard et al., ICPR 2021) over anomalib's ``PadimModel`` (embedding, Gaussian, maps)."""

from __future__ import annotations

from typing import ClassVar

import torch

from .frozen import FrozenFeatureModel


class Padim(FrozenFeatureModel):
    """PaDiM (Defard et al., ICPR 2021) via anomalib's ``PadimModel``."""

    name = "padim"
    title = "PaDiM"
    family = "density/statistical"
    presets: ClassVar[dict] = {"benchmark": {"backbone": "resnet18", "layers": ["layer1", "layer2", "layer3"]},
                               "light": {}}

    def __init__(self, *args, n_features: int | None = None, **kwargs) -> None:
        self.n_features = n_features
        super().__init__(*args, **kwargs)

    def _build(self, timm_name: str) -> torch.nn.Module:
        from anomalib.models.image.padim.torch_model import PadimModel

        n = self.n_features
        if n is None:
            # anomalib's defaults are for resnet18 (100) and wide_resnet50_2 (550); for other
            # nets keep all channels up to 100, the resnet18 setting. The probe is built on the
            # meta device: it draws no random numbers, so PadimModel's channel draw (torch.randperm
            # after its own extractor) is anomalib's for the same seed (tests/test_parity_frozen.py).
            import timm

            with torch.device("meta"):
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

    def fit_features(self, embeddings):
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

    def state_dict(self):
        g = self.module.gaussian
        return {"mean": g.mean.clone(), "inv_covariance": g.inv_covariance.clone()}

    def load_state_dict(self, state):
        g = self.module.gaussian
        g.mean = state["mean"].to(self.device, copy=True)
        g.inv_covariance = state["inv_covariance"].to(self.device, copy=True)
        self.fitted_ = True
