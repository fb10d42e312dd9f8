"""U-Flow (Tailanian et al., 2022): a U-shaped normalising flow over multi-scale features."""

from __future__ import annotations

from typing import ClassVar

import torch

from .offline import load_backbone, no_downloads
from .trainable import GradientModel, Schedule, freeze


class UFlow(GradientModel):
    """anomalib's ``UflowModel`` with its ResNet-style extractor (LayerNorm per scale) on our backbone.

    anomalib's default extractor (``mcait``: two CaiT transformers) and its ResNet extractor both
    download weights in their constructors. We build the ResNet-style extractor for our backbone
    without downloads and load our weights. The learning rate follows anomalib's ``LinearLR``
    (1.0x to 0.4x over 25,000 scheduler steps). anomalib configures it without
    ``"interval": "step"``, so Lightning steps it once per epoch: over 200 epochs the rate falls by
    only 0.5 %. Ours restarts with each task's fresh optimiser.
    """

    name = "uflow"
    title = "U-Flow"
    presets: ClassVar[dict] = {"benchmark": {"backbone": "wide_resnet50_2",
                                             "flow_steps": 4,
                                             "epochs": 200,
                                             "batch_size": 32},
                               "light": {"epochs": 1, "batch_size": 8, "flow_steps": 1}}
    notes = ("anomalib's default extractor (two CaiT nets) needs downloads; ResNet-style extractor "
             "instead")
    family = "normalizing flow"
    default_epochs = 200
    default_lr = 1e-3
    hp_defaults: ClassVar[dict] = {"flow_steps": 4, "affine_clamp": 2.0, "affine_subnet_channels_ratio": 1.0,
                   "permute_soft": False, "weight_decay": 1e-5}

    def _build(self, image_size):
        import anomalib.models.image.uflow.torch_model as uflow_torch
        from anomalib.models.image.uflow.feature_extraction import LayerNormFeatureExtractor
        from anomalib.models.image.uflow.loss import UFlowLoss

        from ..backbones import backbone_spec

        timm_name = backbone_spec(self.backbone).timm_name
        size = (image_size, image_size)
        with no_downloads():
            extractor = LayerNormFeatureExtractor(timm_name, size, layers=tuple(self.layers)).eval()
        load_backbone(extractor.feature_extractor, self.backbone, self.weights)
        freeze(extractor.feature_extractor)
        original = uflow_torch.get_feature_extractor
        uflow_torch.get_feature_extractor = lambda backbone, input_size: extractor
        try:
            module = uflow_torch.UflowModel(input_size=size, flow_steps=self.hp["flow_steps"], backbone="resnet18",
                                            affine_clamp=self.hp["affine_clamp"],
                                            affine_subnet_channels_ratio=self.hp["affine_subnet_channels_ratio"],
                                            permute_soft=self.hp["permute_soft"])
        finally:
            uflow_torch.get_feature_extractor = original
        self._loss = UFlowLoss()
        return module

    def make_optimizers(self):
        group = {"params": self.trainable_parameters(), "initial_lr": self.lr}
        return [torch.optim.Adam([group], lr=self.lr, weight_decay=self.hp["weight_decay"])]

    def make_schedulers(self):
        return [Schedule(torch.optim.lr_scheduler.LinearLR(self.optimizers_[0], start_factor=1.0, end_factor=0.4,
                                                           total_iters=25000))]

    def training_loss(self, images):
        z, ljd = self.module(self.normalise(images))
        return self._loss(z, ljd)

    def distill_outputs(self, module, images):
        return list(module(self.normalise(images))[0])
