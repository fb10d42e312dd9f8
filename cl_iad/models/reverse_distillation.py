"""Reverse Distillation (Deng & Li, CVPR 2022): a student decoder reconstructs a frozen encoder's features."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .offline import timm_extractor
from .trainable import GradientModel, freeze

_RESNET_WIDTHS = (64, 128, 256)  # resnet18 layer1..3, the shape anomalib's smallest decoder expects


class _ProjectedEncoder(nn.Module):
    """A frozen feature net whose maps are lifted to resnet18's widths by fixed 1x1 projections.

    anomalib's bottleneck (OCBE) and decoder exist only for ResNet widths. For other backbones
    (the EfficientNet-Lite0 default) each map is multiplied by a fixed, seeded matrix with
    orthonormal columns: an isometry, so cosine similarities between encoder and decoder
    features, which RD's loss and anomaly map use, equal those in the backbone's own space.
    """

    def __init__(self, extractor: nn.Module, seed: int) -> None:
        super().__init__()
        self.extractor = extractor
        gen = torch.Generator().manual_seed(seed)
        self.projections = nn.ParameterList()
        for c_in, c_out in zip(extractor.out_dims, _RESNET_WIDTHS, strict=True):
            if c_in > c_out:
                raise ValueError(f"reverse distillation cannot lift {c_in} channels to {c_out}; use a ResNet backbone")
            q, _ = torch.linalg.qr(torch.randn(c_out, c_in, generator=gen))
            self.projections.append(nn.Parameter(q, requires_grad=False))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.extractor(images)
        return {k: torch.einsum("oc,bchw->bohw", p, f).contiguous() for (k, f), p in zip(feats.items(), self.projections,
                                                                             strict=True)}


class ReverseDistillation(GradientModel):
    """anomalib's ``ReverseDistillationModel``; exact for ResNet backbones, lifted otherwise."""

    name = "reverse_distillation"
    title = "Reverse Distillation"
    presets: ClassVar[dict] = {"benchmark": {"backbone": "wide_resnet50_2",
                                             "layers": ["layer1", "layer2", "layer3"],
                                             "epochs": 200,
                                             "batch_size": 32,
                                             "patience": 3,
                                             "val_fraction": 0.1},
                               "light": {"epochs": 1, "batch_size": 8, "patience": 0}}
    notes = "non-ResNet backbones are lifted to ResNet widths by fixed orthonormal projections"
    family = "teacher-student"
    default_epochs = 200
    default_lr = 0.005
    hp_defaults: ClassVar[dict] = {"anomaly_map_mode": "add", "beta1": 0.5, "beta2": 0.99, "patience": 3,
                                   "val_fraction": 0.1}

    def _build(self, image_size):
        from anomalib.models.components.backbone import get_decoder
        from anomalib.models.image.reverse_distillation.anomaly_map import (
            AnomalyMapGenerationMode,
            AnomalyMapGenerator,
        )
        from anomalib.models.image.reverse_distillation.components import get_bottleneck_layer
        from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
        from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

        if len(self.layers) != 3:
            raise ValueError(f"reverse distillation needs three encoder layers, got {self.layers}")
        resnet = self.backbone in ("resnet18", "wide_resnet50_2")
        arch = self.backbone if resnet else "resnet18"
        extractor = freeze(timm_extractor(self.backbone, self.weights, self.layers))
        encoder = extractor if resnet else freeze(_ProjectedEncoder(extractor, self.seed))
        module = ReverseDistillationModel.__new__(ReverseDistillationModel)
        nn.Module.__init__(module)  # its constructor would build (and download) the encoder itself
        module.tiler = None
        module.encoder = encoder
        module.bottleneck = get_bottleneck_layer(arch)
        module.decoder = get_decoder(arch)
        module.anomaly_map_generator = AnomalyMapGenerator(
            image_size=(image_size, image_size), mode=AnomalyMapGenerationMode(self.hp["anomaly_map_mode"]))
        self._loss = ReverseDistillationLoss()
        return module

    def make_optimizers(self):
        params = list(self.module.decoder.parameters()) + list(self.module.bottleneck.parameters())
        return [torch.optim.Adam(params, lr=self.lr, betas=(self.hp["beta1"], self.hp["beta2"]))]

    def training_loss(self, images):
        return self._loss(*self.module(self.normalise(images)))

    def distill_outputs(self, module, images):
        return list(module(self.normalise(images))[1])
