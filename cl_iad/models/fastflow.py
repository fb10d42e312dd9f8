"""FastFlow (Yu et al., 2021): 2D normalising flows over frozen multi-scale CNN features."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from .offline import load_backbone, no_downloads
from .trainable import GradientModel, freeze


class FastFlow(GradientModel):
    """anomalib's ``FastflowModel`` with our backbone.

    anomalib accepts only resnet18/wide_resnet50_2/CaiT/DeiT names. We build it for resnet18
    without downloads, then swap in our timm feature net and rebuild the per-scale LayerNorms
    and flow blocks for its channels, exactly as its constructor does for CNN backbones.
    """

    name = "fastflow"
    title = "FastFlow"
    presets: ClassVar[dict] = {"benchmark": {"backbone": "resnet18",
                                             "flow_steps": 8,
                                             "hidden_ratio": 1.0,
                                             "conv3x3_only": False,
                                             "epochs": 500,
                                             "batch_size": 32},
                               "light": {"epochs": 1,
                                         "batch_size": 8,
                                         "flow_steps": 2,
                                         "hidden_ratio": 0.5}}
    family = "normalizing flow"
    default_epochs = 500
    hp_defaults: ClassVar[dict] = {"flow_steps": 8, "conv3x3_only": False, "hidden_ratio": 1.0, "weight_decay": 1e-5}

    def _build(self, image_size):
        import timm
        from anomalib.models.image.fastflow.loss import FastflowLoss
        from anomalib.models.image.fastflow.torch_model import FastflowModel, create_fast_flow_block

        from ..backbones import backbone_spec

        size = (image_size, image_size)
        with no_downloads():
            module = FastflowModel(input_size=size, backbone="resnet18", pre_trained=False,
                                   flow_steps=self.hp["flow_steps"], conv3x3_only=self.hp["conv3x3_only"],
                                   hidden_ratio=self.hp["hidden_ratio"])
        spec = backbone_spec(self.backbone)
        probe = timm.create_model(spec.timm_name, pretrained=False, features_only=True)
        names = [i["module"] for i in probe.feature_info.info]
        net = timm.create_model(spec.timm_name, pretrained=False, features_only=True,
                                out_indices=[names.index(layer) for layer in self.layers])
        load_backbone(net, self.backbone, self.weights)
        module.feature_extractor = freeze(net)
        channels, scales = net.feature_info.channels(), net.feature_info.reduction()
        module.norms = nn.ModuleList(
            nn.LayerNorm([c, image_size // s, image_size // s], elementwise_affine=True)
            for c, s in zip(channels, scales, strict=True))
        module.fast_flow_blocks = nn.ModuleList(
            create_fast_flow_block([c, image_size // s, image_size // s], self.hp["conv3x3_only"],
                                   self.hp["hidden_ratio"], self.hp["flow_steps"])
            for c, s in zip(channels, scales, strict=True))
        self._loss = FastflowLoss()
        return module

    def training_loss(self, images):
        hidden, jacobians = self.module(self.normalise(images))
        return self._loss(hidden, jacobians)

    def distill_outputs(self, module, images):
        return list(module(self.normalise(images))[0])
