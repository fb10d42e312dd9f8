"""DRAEM (Zavrtanik et al., ICCV 2021): reconstruct, then segment simulated anomalies."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .offline import fetch_dtd
from .trainable import GradientModel, Schedule

log = logging.getLogger(__name__)

ANOMALY_SOURCES = ("perlin", "synthetic", "dtd")


def render_texture_folder(folder: Path, n: int = 40, size: int = 128, seed: int = 0) -> Path:
    """Write `n` textures from our synthetic generator to `folder`, for use as an anomaly source."""
    from PIL import Image

    from ..scenarios.synthetic import TEXTURES, render_normal

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img, _ = render_normal(TEXTURES[i % len(TEXTURES)], size, rng)
        Image.fromarray((img * 255).round().astype(np.uint8)).save(folder / f"texture_{i:03d}.png")
    return folder


class DRAEM(GradientModel):
    """anomalib's ``DraemModel`` and ``DraemLoss``, trained on images with simulated anomalies.

    Anomalies are made by anomalib's ``PerlinAnomalyGenerator``: Perlin-noise masks filled from
    an anomaly source. anomalib downloads the DTD texture set for that source; offline we take:

    * ``anomaly_source="dtd"`` with ``dtd_dir``: a DTD (or any texture) folder the user has;
    * ``"perlin"`` (default): no source images; the masks are filled with augmented Perlin noise;
    * ``"synthetic"``: textures rendered by our synthetic generator. Do not use it on synthetic
      streams that contain texture categories: the model would learn to flag those textures.

    The learning rate follows anomalib's ``MultiStepLR`` (x0.1 at epochs 400 and 600 of each task).
    """

    name = "draem"
    title = "DRAEM"
    presets: ClassVar[dict] = {"benchmark": {"epochs": 700,
                                             "batch_size": 8,
                                             "anomaly_source": "dtd"},
                               "light": {"epochs": 1,
                                         "batch_size": 8,
                                         "recon_width": 16,
                                         "disc_width": 16}}
    notes = "anomaly source: DTD folder if given, else Perlin noise (or our synthetic textures)"
    family = "reconstruction"
    default_epochs = 700
    uses_backbone = False
    default_lr = 1e-4
    hp_defaults: ClassVar[dict] = {"anomaly_source": "perlin", "dtd_dir": None, "beta": (0.1, 1.0), "recon_width": 128, "disc_width": 64}

    def _anomaly_source(self) -> Path | None:
        source, dtd = self.hp["anomaly_source"], self.hp["dtd_dir"]
        if source not in ANOMALY_SOURCES:
            raise ValueError(f"unknown DRAEM anomaly_source {source!r}; choose from {ANOMALY_SOURCES}")
        if source == "dtd" and dtd is None:
            dtd = fetch_dtd()  # anomalib's cache, downloaded there when online
        if source == "dtd" or dtd is not None:
            if dtd is None or not Path(dtd).is_dir():
                raise ValueError(f"DRAEM dtd_dir {dtd!r} is not a folder. Download DTD "
                                 "(https://www.robots.ox.ac.uk/~vgg/data/dtd/) on a machine with internet and pass "
                                 "its images folder, or use anomaly_source='perlin' (no files needed)")
            return Path(dtd)
        if source == "synthetic":
            return render_texture_folder(Path(tempfile.mkdtemp(prefix="cl_iad_textures_")), seed=self.seed)
        return None

    def _build(self, image_size):
        from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
        from anomalib.models.image.draem.loss import DraemLoss
        from anomalib.models.image.draem.torch_model import (
            DiscriminativeSubNetwork,
            DraemModel,
            ReconstructiveSubNetwork,
        )

        # SSPCAB (an optional add-on in anomalib, off by default) is not offered here.
        module = DraemModel(sspcab=False)
        if self.hp["recon_width"] != 128 or self.hp["disc_width"] != 64:  # lighter networks for CPU presets
            module.reconstructive_subnetwork = ReconstructiveSubNetwork(base_width=self.hp["recon_width"])
            module.discriminative_subnetwork = DiscriminativeSubNetwork(in_channels=6, out_channels=2,
                                                                        base_width=self.hp["disc_width"])
        beta = self.hp["beta"]
        self._augmenter = PerlinAnomalyGenerator(anomaly_source_path=self._anomaly_source(),
                                                 blend_factor=tuple(beta) if isinstance(beta, list) else beta)
        self._loss = DraemLoss()
        return module

    def make_schedulers(self):
        return [Schedule(torch.optim.lr_scheduler.MultiStepLR(self.optimizers_[0], milestones=[400, 600], gamma=0.1))]

    def training_loss(self, images):
        images = self.normalise(images)  # DRAEM takes [0, 1] images; this only moves them to the device
        augmented, mask = self._augmenter(images)
        reconstruction, prediction = self.module(augmented)
        return self._loss(images, reconstruction, mask, prediction)

    def distill_outputs(self, module, images):
        return list(module(self.normalise(images)))
