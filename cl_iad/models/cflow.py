"""CFLOW-AD (Gudovskiy et al., WACV 2022): conditional normalising flows per feature scale."""

from __future__ import annotations

from typing import ClassVar

import einops
import torch
import torch.nn.functional as F

from .offline import load_backbone, no_downloads
from .trainable import GradientModel, freeze


class CFLOW(GradientModel):
    """anomalib's ``CflowModel`` with our backbone weights in its encoder.

    anomalib's Lightning step updates the decoders once per *fiber batch* (64 feature vectors).
    We take one step per image batch over all its feature vectors, so that a regime's term
    (EWC, LwF) is added once per step; the objective (-logsigmoid of the per-dimension
    log-likelihood) is the same. Raise ``epochs`` to match anomalib's number of updates.
    """

    name = "cflow"
    title = "CFLOW"
    presets: ClassVar[dict] = {"benchmark": {"backbone": "wide_resnet50_2",
                                             "layers": ["layer2", "layer3"],
                                             "epochs": 50,
                                             "batch_size": 32},
                               "light": {"epochs": 1,
                                         "batch_size": 8,
                                         "coupling_blocks": 2,
                                         "condition_vector": 32}}
    family = "normalizing flow"
    default_epochs = 50
    default_lr = 1e-4
    default_layer_picks = (1, 2)
    hp_defaults: ClassVar[dict] = {"fiber_batch_size": 64, "condition_vector": 128, "coupling_blocks": 8, "clamp_alpha": 1.9,
                   "permute_soft": False}

    def _build(self, image_size):
        from anomalib.models.image.cflow.torch_model import CflowModel

        from ..backbones import backbone_spec

        with no_downloads():
            module = CflowModel(backbone=backbone_spec(self.backbone).timm_name, layers=self.layers,
                                pre_trained=False, fiber_batch_size=self.hp["fiber_batch_size"],
                                condition_vector=self.hp["condition_vector"],
                                coupling_blocks=self.hp["coupling_blocks"], clamp_alpha=self.hp["clamp_alpha"],
                                permute_soft=self.hp["permute_soft"])
        load_backbone(module.encoder.feature_extractor, self.backbone, self.weights)
        freeze(module.encoder)
        return module

    def _flows(self, module, images):
        """Per layer: (z, log|det J|, feature dim) for every feature vector of the batch."""
        from anomalib.models.image.cflow.utils import positional_encoding_2d

        with torch.no_grad():
            activation = module.encoder(self.normalise(images))
        out = []
        for idx, layer in enumerate(module.pool_layers):
            e = activation[layer].detach()
            b, c, h, w = e.shape
            pos = positional_encoding_2d(module.condition_vector, h, w).to(e)
            c_r = einops.repeat(pos, "c h w -> (b h w) c", b=b)
            e_r = einops.rearrange(e, "b c h w -> (b h w) c")
            z, log_jac = module.decoders[idx](e_r, [c_r])
            out.append((z, log_jac, c))
        return out

    def training_loss(self, images):
        from anomalib.models.image.cflow.utils import get_logp

        module = self.module
        module.encoder.eval()
        losses = []
        for z, log_jac, dim in self._flows(module, images):
            log_prob = get_logp(dim, z, log_jac) / dim
            losses.append(-F.logsigmoid(log_prob).mean())
        return torch.stack(losses).sum()

    def distill_outputs(self, module, images):
        return [z for z, _, _ in self._flows(module, images)]
