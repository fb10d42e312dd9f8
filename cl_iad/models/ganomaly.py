"""GANomaly (Akcay et al., ACCV 2018): an encoder-decoder-encoder GAN scored by latent distance."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..backbones import IMAGENET_MEAN, IMAGENET_STD
from .trainable import Extra, GradientModel


class GANomaly(GradientModel):
    """anomalib's ``GanomalyModel`` with its generator and discriminator losses and Adam optimisers.

    GANomaly scores whole images (the distance between its two latent codes) and produces no
    anomaly map, so its pixel metrics are NaN. The regime terms (EWC, LwF) act on the generator,
    which produces the score; the discriminator trains as usual.
    """

    name = "ganomaly"
    title = "GANomaly"
    presets: ClassVar[dict] = {"benchmark": {"n_features": 64,
                                             "latent_vec_size": 100,
                                             "epochs": 100,
                                             "batch_size": 32},
                               "light": {"epochs": 1,
                                         "batch_size": 8,
                                         "n_features": 16,
                                         "latent_vec_size": 32}}
    notes = ("the benchmark table lists it under segmentation, but it gives no anomaly map: pixel "
             "metrics NaN")
    family = "reconstruction"
    default_epochs = 100
    task_type = "classification"
    uses_backbone = False
    default_lr = 2e-4
    hp_defaults: ClassVar[dict] = {"n_features": 64, "latent_vec_size": 100, "extra_layers": 0, "add_final_conv_layer": True,
                   "wadv": 1, "wcon": 50, "wenc": 1, "beta1": 0.5, "beta2": 0.999}

    def _build(self, image_size):
        from anomalib.models.image.ganomaly.loss import DiscriminatorLoss, GeneratorLoss
        from anomalib.models.image.ganomaly.torch_model import GanomalyModel

        module = GanomalyModel(input_size=(image_size, image_size), latent_vec_size=self.hp["latent_vec_size"],
                               num_input_channels=3, n_features=self.hp["n_features"],
                               extra_layers=self.hp["extra_layers"],
                               add_final_conv_layer=self.hp["add_final_conv_layer"])
        self._g_loss = GeneratorLoss(self.hp["wadv"], self.hp["wcon"], self.hp["wenc"])
        self._d_loss = DiscriminatorLoss()
        return module

    def normalise(self, images):
        # anomalib's default pre-processor normalises with ImageNet statistics.
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        return (images.to(self.device) - mean) / std

    def regularised_parameters(self):
        return [p for p in self.module.generator.parameters() if p.requires_grad]

    def make_optimizers(self):
        betas = (self.hp["beta1"], self.hp["beta2"])
        return [torch.optim.Adam(self.module.generator.parameters(), lr=self.lr, betas=betas),
                torch.optim.Adam(self.module.discriminator.parameters(), lr=self.lr, betas=betas)]

    def _generator_loss(self, images):
        padded, fake, latent_i, latent_o = self.module(self.normalise(images))
        pred_real, _ = self.module.discriminator(padded)
        pred_fake, _ = self.module.discriminator(fake)
        return self._g_loss(latent_i, latent_o, padded, fake, pred_real, pred_fake), padded, fake

    def training_loss(self, images):
        return self._generator_loss(images)[0]

    def train_step(self, images, extra: Extra | None = None, step: int = 0, total: int = 1) -> float:
        """``Ganomaly.training_step``: a generator step, then a discriminator step reusing its real-image output."""
        g_opt, d_opt = self.optimizers_
        padded, fake, latent_i, latent_o = self.module(self.normalise(images))
        pred_real, _ = self.module.discriminator(padded)
        pred_fake, _ = self.module.discriminator(fake)
        g_loss = self._g_loss(latent_i, latent_o, padded, fake, pred_real, pred_fake)
        if extra is not None:
            g_loss = g_loss + extra(images)
        self.optimise(g_loss, g_opt, retain_graph=True)  # pred_real's graph is needed again below
        pred_fake, _ = self.module.discriminator(fake.detach())
        self.optimise(self._d_loss(pred_real, pred_fake), d_opt)
        return float(g_loss.detach())

    def distill_outputs(self, module, images):
        _, fake, _, latent_o = module(self.normalise(images))
        return [fake, latent_o]
