"""CFLOW-AD (Gudovskiy et al., WACV 2022): conditional normalising flows per feature scale."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar

import einops
import torch
import torch.nn.functional as F

from .offline import load_backbone, no_downloads
from .trainable import Extra, GradientModel, freeze


class CFLOW(GradientModel):
    """anomalib's ``CflowModel`` with our backbone weights in its encoder, trained as ``Cflow.training_step`` does.

    Each image batch is encoded once; then, per feature layer, its feature vectors (fibres) are
    shuffled and every ``fiber_batch_size`` of them make one optimiser step on that layer's
    decoder (the last step takes the remainder). At 256 px that is hundreds of steps per image
    batch. A regime's term (EWC, LwF, MAS) is added to every one of those steps; for LwF it
    distils the decoder's outputs on the step's own fibres (:meth:`distill_outputs`).
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
                                         "condition_vector": 32,
                                         "fiber_batch_size": 256}}
    family = "normalizing flow"
    default_epochs = 50
    default_lr = 1e-4
    default_layer_picks = (1, 2)
    hp_defaults: ClassVar[dict] = {"fiber_batch_size": 64, "condition_vector": 128, "coupling_blocks": 8, "clamp_alpha": 1.9,
                   "permute_soft": False}
    _fibres: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (layer, features, conditions) of the current step

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

    def make_optimizers(self):
        params = [p for decoder in self.module.decoders for p in decoder.parameters()]
        return [torch.optim.Adam(params, lr=self.lr)]

    def _fibre_rows(self, module, images) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """Per layer: (features, positional conditions, feature dim), one row per fibre, (b h w) order."""
        from anomalib.models.image.cflow.utils import positional_encoding_2d

        module.encoder.eval()
        with torch.no_grad():
            activation = module.encoder(self.normalise(images))
        rows = []
        for layer in module.pool_layers:
            e = activation[layer].detach()
            b, c, h, w = e.shape
            pos = positional_encoding_2d(module.condition_vector, h, w).to(e)
            rows.append((einops.rearrange(e, "b c h w -> (b h w) c"), einops.repeat(pos, "c h w -> (b h w) c", b=b), c))
        return rows

    @staticmethod
    def _fibre_loss(decoder, e, c, dim) -> torch.Tensor:
        """-log sigmoid of the per-dimension log-likelihood, per fibre (anomalib's training objective)."""
        from anomalib.models.image.cflow.utils import get_logp

        z, log_jac = decoder(e, [c])
        return -F.logsigmoid(get_logp(dim, z, log_jac) / dim)

    def training_loss(self, images):
        """The objective over all fibres of a batch at once (EWC's Fisher, early stopping); training steps per fibre batch."""
        module = self.module
        losses = [self._fibre_loss(module.decoders[i], e, c, dim).mean()
                  for i, (e, c, dim) in enumerate(self._fibre_rows(module, images))]
        return torch.stack(losses).sum()

    def train_step(self, images, extra: Extra | None = None, step: int = 0, total: int = 1) -> float:
        """``Cflow.training_step``: one optimiser step per fibre batch; returns its summed fibre loss."""
        opt, fbs = self.optimizers_[0], self.hp["fiber_batch_size"]
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)  # summed on the device: no sync per step
        for layer_idx, (e_r, c_r, dim) in enumerate(self._fibre_rows(self.module, images)):
            n = len(e_r)
            perm = torch.randperm(n)
            # anomalib raises when a batch has fewer fibres than one fibre batch; we take them all in one step.
            n_steps = max(1, n // fbs)
            for k in range(n_steps):
                idx = perm[k * fbs:(k + 1) * fbs] if k < n_steps - 1 else perm[k * fbs:]
                e_p, c_p = e_r[idx.to(e_r.device)], c_r[idx.to(c_r.device)]
                loss = self._fibre_loss(self.module.decoders[layer_idx], e_p, c_p, dim)
                step_loss = loss.mean()
                if extra is not None:
                    with self._on_fibres(layer_idx, e_p, c_p):
                        step_loss = step_loss + extra(images)
                self.optimise(step_loss, opt)
                total_loss += loss.detach().sum()
        return float(total_loss)

    @contextlib.contextmanager
    def _on_fibres(self, layer_idx: int, e_p: torch.Tensor, c_p: torch.Tensor) -> Iterator[None]:
        self._fibres = (layer_idx, e_p, c_p)
        try:
            yield
        finally:
            self._fibres = None

    def distill_outputs(self, module, images):
        """The decoders' latents: on the current fibre batch during a training step, else on every fibre."""
        if self._fibres is not None:
            layer_idx, e_p, c_p = self._fibres  # the encoder is frozen, so its features are the teacher's too
            return [module.decoders[layer_idx](e_p, [c_p])[0]]
        return [module.decoders[i](e, [c])[0] for i, (e, c, _) in enumerate(self._fibre_rows(module, images))]
