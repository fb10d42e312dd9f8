"""STFPM (Wang et al., BMVC 2021): a student network regresses a frozen teacher's feature pyramid."""

from __future__ import annotations

from typing import ClassVar

import torch

from .offline import load_backbone, no_downloads
from .trainable import GradientModel, freeze


class STFPM(GradientModel):
    """anomalib's ``STFPMModel``; the teacher gets our resolved weights, the student starts random."""

    name = "stfpm"
    title = "STFPM"
    presets: ClassVar[dict] = {"benchmark": {"backbone": "resnet18",
                                             "layers": ["layer1", "layer2", "layer3"],
                                             "epochs": 100,
                                             "batch_size": 32},
                               "light": {"epochs": 1, "batch_size": 8}}
    family = "teacher-student"
    default_epochs = 100
    default_lr = 0.4
    hp_defaults: ClassVar[dict] = {"momentum": 0.9, "weight_decay": 1e-3}

    def _build(self, image_size):
        from anomalib.models.image.stfpm.loss import STFPMLoss
        from anomalib.models.image.stfpm.torch_model import STFPMModel

        from ..backbones import backbone_spec

        # STFPMModel builds its teacher with pre_trained=True (a download); build without, then load.
        with no_downloads():
            module = STFPMModel(layers=self.layers, backbone=backbone_spec(self.backbone).timm_name)
        load_backbone(module.teacher_model.feature_extractor, self.backbone, self.weights)
        freeze(module.teacher_model)
        self._loss = STFPMLoss()
        return module

    def make_optimizers(self):
        return [torch.optim.SGD(self.trainable_parameters(), lr=self.lr, momentum=self.hp["momentum"],
                                weight_decay=self.hp["weight_decay"])]

    def training_loss(self, images):
        teacher, student = self.module(self.normalise(images))
        return self._loss(teacher, student)

    def distill_outputs(self, module, images):
        return list(module.student_model(self.normalise(images)).values())
