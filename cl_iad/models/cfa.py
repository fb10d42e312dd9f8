"""CFA (Lee et al., IEEE Access 2022): a trainable patch descriptor pulled towards memorised centroids."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .offline import timm_extractor
from .trainable import GradientModel, freeze


class _Features(nn.Module):
    """Our frozen feature net, returning the list of feature maps CFA's descriptor expects."""

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.extractor(images)


class CFA(GradientModel):
    """anomalib's ``CfaModel`` built offline.

    anomalib builds CFA's extractor from torchvision with ``weights=DEFAULT`` (a download) and
    hard-codes the descriptor width for four backbones. We build it with our feature net and
    size the descriptor's CoordConv from that net's channels (the sum over layers, as anomalib's
    table does). Centroids are (re-)initialised from the current task's training images at the
    start of every task, as anomalib's ``on_train_start`` does for each ``fit``; the descriptor
    keeps training across tasks. Early stopping holds out ``val_fraction`` of each task's images
    (neither trained on nor used for the centroids).
    """

    name = "cfa"
    title = "CFA"
    presets: ClassVar[dict] = {"benchmark": {"backbone": "wide_resnet50_2",
                                             "gamma_c": 1,
                                             "gamma_d": 1,
                                             "num_nearest_neighbors": 3,
                                             "num_hard_negative_features": 3,
                                             "radius": 1e-05,
                                             "epochs": 30,
                                             "batch_size": 32,
                                             "patience": 5,
                                             "val_fraction": 0.1},
                               "light": {"epochs": 1, "batch_size": 8, "patience": 0}}
    notes = "centroids re-initialised from each task's images; descriptor trained by gradient"
    family = "memory bank"
    default_epochs = 30
    hp_defaults: ClassVar[dict] = {"gamma_c": 1, "gamma_d": 1, "num_nearest_neighbors": 3, "num_hard_negative_features": 3,
                   "radius": 1e-5, "weight_decay": 5e-4, "patience": 5, "val_fraction": 0.1}

    def _build(self, image_size):
        import anomalib.models.image.cfa.torch_model as cfa_torch
        from anomalib.models.image.cfa.loss import CfaLoss
        from anomalib.models.image.cfa.torch_model import CfaModel, CoordConv2d

        extractor = freeze(timm_extractor(self.backbone, self.weights, self.layers))
        original = cfa_torch.get_feature_extractor
        cfa_torch.get_feature_extractor = lambda backbone, return_nodes: _Features(extractor)
        try:
            # "resnet18" only passes anomalib's name checks; its layers are replaced below.
            module = CfaModel(backbone="resnet18", gamma_c=self.hp["gamma_c"], gamma_d=self.hp["gamma_d"],
                              num_nearest_neighbors=self.hp["num_nearest_neighbors"],
                              num_hard_negative_features=self.hp["num_hard_negative_features"],
                              radius=self.hp["radius"])
        finally:
            cfa_torch.get_feature_extractor = original
        if self.hp["gamma_c"] != 1:
            raise ValueError("CFA with gamma_c != 1 (k-means centroids) is not supported offline; use gamma_c=1")
        dim = sum(extractor.out_dims)
        module.descriptor.layer = CoordConv2d(in_channels=dim, out_channels=dim // self.hp["gamma_d"], kernel_size=1)
        self._loss = CfaLoss(self.hp["num_nearest_neighbors"], self.hp["num_hard_negative_features"],
                             self.hp["radius"])
        # CfaLoss.radius is `ones(requires_grad=True) * radius`: a constant that carries a graph
        # node, which is why anomalib backprops with retain_graph=True. Detach it instead.
        self._loss.radius = self._loss.radius.detach()
        module.radius = module.radius.detach()  # same on the model (unused there); lets LwF deepcopy it
        return module

    def make_optimizers(self):
        return [torch.optim.AdamW(self.trainable_parameters(), lr=self.lr, weight_decay=self.hp["weight_decay"],
                                  amsgrad=True)]

    @torch.no_grad()
    def begin_task(self, loader):
        super().begin_task(loader)
        m = self.module
        m.memory_bank = torch.tensor(0.0)
        for i, batch in enumerate(loader):
            target = m.descriptor(list(m.feature_extractor(self.normalise(batch["image"])).values()))
            m.memory_bank = (m.memory_bank * i + target.mean(dim=0, keepdim=True)) / (i + 1)
        m.memory_bank = m.memory_bank.permute(0, 2, 3, 1).reshape(-1, m.memory_bank.shape[1]).T.contiguous()

    def training_loss(self, images):
        return self._loss(self.module(self.normalise(images)))

    def distill_outputs(self, module, images):
        return [module(self.normalise(images))]
