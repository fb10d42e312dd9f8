"""CS-Flow (Rudolph et al., WACV 2022): a fully convolutional cross-scale normalising flow."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .offline import timm_extractor
from .trainable import GradientModel, freeze


class _MultiScaleFeatures(nn.Module):
    """One frozen feature map of the image at full, half and quarter resolution."""

    def __init__(self, extractor: nn.Module, layer: str, image_size: int) -> None:
        super().__init__()
        self.extractor, self.layer, self.image_size = extractor, layer, image_size

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for scale in range(3):
            x = images if scale == 0 else F.interpolate(images, size=self.image_size // 2**scale)
            out.append(self.extractor(x)[self.layer])
        return out


def _cross_scale_flow(channels: int, sizes: list[int], n_blocks: int, clamp: float, hidden: int) -> nn.Module:
    """anomalib's ``CrossScaleFlow`` graph with our channel count and map sizes.

    anomalib hard-codes 304 channels and input/32, /64, /128 maps (EfficientNet-B5 at 768 px);
    this is the same graph (permute + parallel Glow coupling blocks, kernel 3 then 5) for any
    single-layer feature net.
    """
    from anomalib.models.image.csflow.torch_model import CrossScaleFlow, ParallelGlowCouplingLayer, ParallelPermute
    from FrEIA.framework import GraphINN, InputNode, Node, OutputNode

    flow = CrossScaleFlow.__new__(CrossScaleFlow)
    nn.Module.__init__(flow)
    flow.n_coupling_blocks, flow.clamp, flow.cross_conv_hidden_channels = n_blocks, clamp, hidden
    flow.kernel_sizes = [3] * (n_blocks - 1) + [5]
    nodes: list = [InputNode(channels, s, s, name=f"input{i}") for i, s in enumerate(sizes)]
    for block in range(n_blocks):
        src = [nodes[-3].out0, nodes[-2].out0, nodes[-1].out0] if block == 0 else \
            [nodes[-1].out0, nodes[-1].out1, nodes[-1].out2]
        nodes.append(Node(src, ParallelPermute, {"seed": block}, name=f"permute_{block}"))
        nodes.append(Node([nodes[-1].out0, nodes[-1].out1, nodes[-1].out2], ParallelGlowCouplingLayer,
                          {"clamp": clamp, "subnet_args": {"channels_hidden": hidden,
                                                           "kernel_size": flow.kernel_sizes[block]}},
                          name=f"fc1_{block}"))
    nodes += [OutputNode([nodes[-1].out0], name="output_end0"), OutputNode([nodes[-1].out1], name="output_end1"),
              OutputNode([nodes[-1].out2], name="output_end2")]
    flow.graph = GraphINN(nodes)
    return flow


class CSFlow(GradientModel):
    """anomalib's ``CsFlowModel`` with a cross-scale flow sized for our feature net.

    anomalib's extractor is torchvision's EfficientNet-B5 with ``weights=IMAGENET1K_V1`` (a
    download). We use one stage of our resolved backbone (default: its deepest, /16) at three
    input scales, as CS-Flow does with B5's /32 stage. Gradients are clipped to norm 1 (anomalib's
    ``gradient_clip_val``); early stopping holds out ``val_fraction`` of each task's images.
    """

    name = "csflow"
    title = "CS-Flow"
    presets: ClassVar[dict] = {"benchmark": {"backbone": "wide_resnet50_2",
                                             "layers": ["layer3"],
                                             "cross_conv_hidden_channels": 1024,
                                             "n_coupling_blocks": 4,
                                             "clamp": 3,
                                             "epochs": 240,
                                             "batch_size": 16,
                                             "patience": 3,
                                             "val_fraction": 0.1},
                               "light": {"epochs": 1,
                                         "batch_size": 8,
                                         "cross_conv_hidden_channels": 32,
                                         "n_coupling_blocks": 2,
                                         "patience": 0}}
    notes = "anomalib's EfficientNet-B5 extractor needs a download; one stage of our backbone instead"
    family = "normalizing flow"
    default_epochs = 240
    default_lr = 2e-4
    default_layer_picks = (2,)
    hp_defaults: ClassVar[dict] = {"cross_conv_hidden_channels": 1024, "n_coupling_blocks": 4, "clamp": 3, "weight_decay": 1e-5,
                   "patience": 3, "val_fraction": 0.1}
    grad_clip_norm = 1.0

    def _build(self, image_size):
        from anomalib.models.image.csflow.anomaly_map import AnomalyMapGenerator, AnomalyMapMode
        from anomalib.models.image.csflow.loss import CsFlowLoss
        from anomalib.models.image.csflow.torch_model import CsFlowModel

        if len(self.layers) != 1:
            raise ValueError(f"CS-Flow uses one feature layer, got {self.layers}")
        extractor = freeze(timm_extractor(self.backbone, self.weights, self.layers))
        features = _MultiScaleFeatures(extractor, self.layers[0], image_size)
        with torch.no_grad():
            maps = features(torch.zeros(1, 3, image_size, image_size))
        sizes = [m.shape[-1] for m in maps]
        if min(sizes) < 1:
            raise ValueError(f"CS-Flow: {image_size}px images give empty feature maps at quarter scale")
        module = CsFlowModel.__new__(CsFlowModel)
        nn.Module.__init__(module)  # its constructor would download EfficientNet-B5
        module.input_dims = (3, image_size, image_size)
        module.clamp = self.hp["clamp"]
        module.cross_conv_hidden_channels = self.hp["cross_conv_hidden_channels"]
        module.feature_extractor = features
        module.graph = _cross_scale_flow(maps[0].shape[1], sizes, self.hp["n_coupling_blocks"], self.hp["clamp"],
                                         self.hp["cross_conv_hidden_channels"])
        module.anomaly_map_generator = AnomalyMapGenerator(input_dims=module.input_dims, mode=AnomalyMapMode.ALL)
        self._loss = CsFlowLoss()
        return module

    def make_optimizers(self):
        return [torch.optim.Adam(self.trainable_parameters(), lr=self.lr, eps=1e-4,
                                 weight_decay=self.hp["weight_decay"], betas=(0.5, 0.9))]

    def training_loss(self, images):
        z, jac = self.module(self.normalise(images))
        return self._loss(z, jac)

    def distill_outputs(self, module, images):
        return list(module(self.normalise(images))[0])
