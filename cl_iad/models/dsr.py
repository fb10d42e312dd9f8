"""DSR (Zavrtanik et al., ECCV 2022): dual subspace re-projection over a pretrained VQ-VAE."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from ..backbones import WeightsError
from .offline import fetch_dsr_vq
from .trainable import Extra, GradientModel

VQ_URL = ("https://github.com/open-edge-platform/anomalib/releases/download/dsr_pretrained_weights/"
          "dsr_vq_model_pretrained.zip")


class DSR(GradientModel):
    """anomalib's ``DsrModel`` with its second- and third-stage losses.

    DSR cannot train without its discrete latent model: a VQ-VAE pretrained on ImageNet that
    anomalib downloads (``vq_model_pretrained_128_4096.pckl``). Only that model's weights can
    provide the quantised feature space DSR re-projects, so there is no offline fallback: pass
    ``vq_weights=<file>`` (``--vq-weights`` in the CLI), or construction fails with instructions.

    Each task's training follows anomalib's two phases: the first ``int(epochs *
    upsampling_train_ratio)`` epochs train the subspace-restriction, reconstruction and detection
    modules on latent anomalies; the rest train the upsampling module on Perlin anomalies. When
    that is zero epochs (a one-epoch CPU preset, where anomalib would train only the upsampling
    module) we split the task's steps by the same ratio instead, so both phases train.

    anomalib also configures a ``StepLR`` for the first phase, but DSR optimises manually
    (``automatic_optimization = False``) and never steps it, so its rate stays at 2e-4; so does ours.
    """

    name = "dsr"
    title = "DSR"
    presets: ClassVar[dict] = {"benchmark": {"epochs": 700,
                                             "batch_size": 8},
                               "light": {"epochs": 1, "batch_size": 8}}
    notes = ("cannot train without its pretrained VQ-VAE weights file (vq_weights=...); no offline "
             "fallback")
    family = "reconstruction"
    default_epochs = 700
    uses_backbone = False
    default_lr = 2e-4
    hp_defaults: ClassVar[dict] = {"vq_weights": None, "latent_anomaly_strength": 0.2, "upsampling_train_ratio": 0.7}

    def _vq_state(self) -> dict[str, torch.Tensor]:
        path = self.hp["vq_weights"] or fetch_dsr_vq()  # anomalib's cache, downloaded there when online
        if path is None or not Path(path).is_file():
            raise WeightsError(
                f"DSR needs its pretrained VQ-VAE weights (vq_model_pretrained_128_4096.pckl); got {path!r}. "
                f"On a machine with internet download and unzip {VQ_URL}, then pass "
                "vq_weights=/path/to/vq_model_pretrained_128_4096.pckl (CLI: --vq-weights PATH). DSR cannot train "
                "without them.")
        return torch.load(path, map_location="cpu", weights_only=True)

    def _build(self, image_size):
        from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
        from anomalib.models.image.dsr.anomaly_generator import DsrAnomalyGenerator
        from anomalib.models.image.dsr.loss import DsrSecondStageLoss, DsrThirdStageLoss
        from anomalib.models.image.dsr.torch_model import DsrModel

        state = self._vq_state()
        module = DsrModel(latent_anomaly_strength=self.hp["latent_anomaly_strength"])
        module.discrete_latent_model.load_state_dict(state)
        self._latent_anomalies = DsrAnomalyGenerator()
        self._perlin = PerlinAnomalyGenerator()
        self._second, self._third = DsrSecondStageLoss(), DsrThirdStageLoss()
        return module

    def second_phase_epochs(self) -> int:
        """anomalib's ``second_phase``: epochs of a task before switching to the upsampling module."""
        return int(self.epochs * self.hp["upsampling_train_ratio"])

    def second_phase_steps(self, total: int) -> int:
        """Steps of a task's `total` before the switch, when it cannot fall between epochs."""
        if total < 2:
            return total
        return min(max(1, int(total * self.hp["upsampling_train_ratio"])), total - 1)

    def in_second_phase(self, step: int, total: int) -> bool:
        """Whether this step trains the reconstruction modules (anomalib's phase 2) rather than upsampling."""
        epochs = self.second_phase_epochs()
        if epochs == 0 and self.hp["upsampling_train_ratio"] > 0:
            return step < self.second_phase_steps(total)
        return self.epoch_ < epochs

    def make_optimizers(self):
        m = self.module
        params = (list(m.image_reconstruction_network.parameters()) + list(m.subspace_restriction_module_hi.parameters())
                  + list(m.subspace_restriction_module_lo.parameters()) + list(m.anomaly_detection_module.parameters()))
        return [torch.optim.Adam(params, lr=self.lr), torch.optim.Adam(m.upsampling_module.parameters(), lr=self.lr)]

    def _stage_two_loss(self, module, images):
        images = self.normalise(images)  # DSR takes [0, 1] images; this only moves them to the device
        mask = self._latent_anomalies.augment_batch(images)
        o = module(images, mask)
        return self._second(o["recon_feat_hi"], o["recon_feat_lo"], o["embedding_bot"], o["embedding_top"], images,
                            o["obj_spec_image"], o["anomaly_map"], o["true_anomaly_map"])

    def training_loss(self, images):
        return self._stage_two_loss(self.module, images)

    def train_step(self, images, extra: Extra | None = None, step: int = 0, total: int = 1) -> float:
        if self.in_second_phase(step, total):
            loss, opt = self.training_loss(images), self.optimizers_[0]
        else:
            augmented, masks = self._perlin(self.normalise(images))
            loss = self._third(self.module(augmented)["anomaly_map"], masks)
            opt = self.optimizers_[1]
        if extra is not None:
            loss = loss + extra(images)
        self.optimise(loss, opt)
        return float(loss.detach())

    def distill_outputs(self, module, images):
        return [module(self.normalise(images))["anomaly_map"]]
