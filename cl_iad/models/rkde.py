"""RKDE, region-based kernel density estimation (Adey et al., ICMLA 2019), ported into cl_iad.

anomalib 2 removed RKDE. The method has three stages, kept here:

1. **Region proposals.** The paper (and anomalib 1.x) use a Faster R-CNN's region proposals.
   That needs detector weights, which this machine cannot download, so the default proposer is
   :class:`GridProposer`: deterministic multi-scale sliding windows plus the whole image. It
   needs no weights and covers every location at every scale, but it does not adapt to object
   boundaries: a small defect inside a large window is diluted, and windows do not hug parts.
   :class:`FasterRCNNProposer` gives the paper's behaviour from a torchvision
   ``fasterrcnn_resnet50_fpn`` state-dict file that the user supplies.
2. **Deep features per region**: ``roi_align`` of the frozen backbone's feature maps over each
   box, average-pooled to one vector per region (the paper pools a CNN's features per box too).
3. **KDE over normal region features**: anomalib's ``KDEClassifier`` (PCA, scaling, Gaussian KDE)
   fitted on every region of the normal training images. A region's score is its anomaly
   probability; the image score is the maximum over its regions.

RKDE is a detection model: it localises with boxes, not pixel maps, so our pixel metrics are NaN.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ..backbones import WeightsError
from .frozen import FrozenFeatureModel
from .offline import assign_tensors, fetch_fasterrcnn

log = logging.getLogger(__name__)


class GridProposer:
    """Sliding windows at several scales (fractions of the image side), plus the whole image."""

    kind = "grid"

    def __init__(self, scales: tuple[float, ...] = (0.25, 0.5), overlap: float = 0.5) -> None:
        if not 0 <= overlap < 1:
            raise ValueError(f"grid proposer overlap must be in [0, 1), got {overlap}")
        self.scales = tuple(scales)
        self.overlap = overlap

    def boxes(self, size: int) -> torch.Tensor:
        """All windows (R, 4) as x1, y1, x2, y2 in pixels of a `size` x `size` image."""
        out = [[0.0, 0.0, float(size), float(size)]]
        for scale in self.scales:
            side = max(1, round(size * scale))
            step = max(1, round(side * (1 - self.overlap)))
            starts = list(range(0, size - side + 1, step))
            if starts[-1] != size - side:
                starts.append(size - side)
            out += [[float(x), float(y), float(x + side), float(y + side)] for y in starts for x in starts]
        return torch.tensor(out)

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        b = self.boxes(images.shape[-1])
        return [b.clone() for _ in range(len(images))]

    def config(self) -> dict:
        return {"proposer": self.kind, "scales": list(self.scales), "overlap": self.overlap}


class FasterRCNNProposer:
    """torchvision's ``fasterrcnn_resnet50_fpn`` with weights from a user file, as in the paper.

    Returns the top `max_regions` detections per image (any class, score above a low threshold),
    padded with the whole-image box so every image has the same number of regions.
    """

    kind = "faster_rcnn"

    def __init__(self, weights: str | Path, max_regions: int = 32, score_thresh: float = 0.001,
                 nms_thresh: float = 0.3, min_box_size: int = 4, min_size: int = 800) -> None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(
                f"RKDE Faster R-CNN weights not found: {path}. Save them on a machine with internet: "
                "torch.save(torchvision.models.detection.fasterrcnn_resnet50_fpn(weights='DEFAULT')"
                ".state_dict(), 'fasterrcnn_resnet50_fpn.pth'), then pass proposer_weights=<that file>, or leave "
                "proposer_weights unset to use torch hub's cache; or use the offline grid proposer (proposer='grid').")
        from torchvision.models.detection import fasterrcnn_resnet50_fpn

        self.weights = path
        self.max_regions = max_regions
        self.min_box_size = min_box_size
        self.detector = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=score_thresh,
                                                box_nms_thresh=nms_thresh, box_detections_per_img=max_regions,
                                                min_size=min_size, max_size=max(1333, min_size))
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.detector.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        self.detector.eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        size = float(images.shape[-1])
        whole = torch.tensor([[0.0, 0.0, size, size]])
        out = []
        for det in self.detector(list(images)):
            boxes = det["boxes"]
            wh = boxes[:, 2:] - boxes[:, :2]
            boxes = boxes[(wh >= self.min_box_size).all(dim=1)][: self.max_regions - 1]
            pad = whole.repeat(self.max_regions - len(boxes), 1)
            out.append(torch.cat([boxes, pad]))
        return out

    def config(self) -> dict:
        return {"proposer": self.kind, "proposer_weights": self.weights.name, "max_regions": self.max_regions}


class _RkdeModule(nn.Module):
    def __init__(self, timm_name: str, layers: list[str], n_pca_components: int, max_training_points: int,
                 feature_scaling_method: str) -> None:
        super().__init__()
        from anomalib.models.components import TimmFeatureExtractor
        from anomalib.models.components.classification import FeatureScalingMethod, KDEClassifier

        self.feature_extractor = TimmFeatureExtractor(backbone=timm_name, layers=layers, pre_trained=False).eval()
        self.classifier = KDEClassifier(n_pca_components=n_pca_components,
                                        feature_scaling_method=FeatureScalingMethod(feature_scaling_method),
                                        max_training_points=max_training_points)


class RKDE(FrozenFeatureModel):
    """Region proposals + deep region features + KDE over normal regions (detection)."""

    name = "rkde"
    title = "RKDE"
    presets: ClassVar[dict] = {"benchmark": {"backbone": "resnet18",
                                             "layers": ["layer2", "layer3"],
                                             "proposer": "faster_rcnn",
                                             "n_pca_components": 16},
                               "light": {"n_pca_components": 8}}
    notes = ("region scores only (boxes, no pixel map): pixel metrics NaN; offline grid proposer by "
             "default")
    family = "density/statistical"
    task_type = "detection"
    default_layer_picks = (1, 2)

    def __init__(self, *args, proposer: str = "grid", proposer_weights: str | Path | None = None,
                 grid_scales: tuple[float, ...] = (0.25, 0.5), grid_overlap: float = 0.5, max_regions: int = 32,
                 proposer_min_size: int = 800, roi_size: int = 2, n_pca_components: int = 16, max_training_points: int = 40000,
                 feature_scaling_method: str = "scale", **kwargs) -> None:
        self.n_pca_components = n_pca_components
        self.max_training_points = max_training_points
        self.feature_scaling_method = feature_scaling_method
        self.roi_size = roi_size
        if proposer == "grid":
            self.proposer = GridProposer(tuple(grid_scales), grid_overlap)
        elif proposer == "faster_rcnn":
            # torchvision's COCO weights from torch hub's cache (downloaded there once when online), as
            # anomalib 1's RKDE got them; proposer_weights=FILE wins
            self.proposer = FasterRCNNProposer(proposer_weights or fetch_fasterrcnn(), max_regions,
                                               min_size=proposer_min_size)
        else:
            raise ValueError(f"unknown RKDE proposer {proposer!r}; choose 'grid' or 'faster_rcnn'")
        super().__init__(*args, **kwargs)

    def _build(self, timm_name: str) -> nn.Module:
        return _RkdeModule(timm_name, self.layers, self.n_pca_components, self.max_training_points,
                           self.feature_scaling_method)

    def config(self) -> dict:
        return {**super().config(), **self.proposer.config(), "roi_size": self.roi_size,
                "n_pca_components": self.n_pca_components, "max_training_points": self.max_training_points}

    @property
    def feature_key(self) -> str:
        p = self.proposer.config()
        return super().feature_key + "|" + ",".join(f"{k}={v}" for k, v in sorted(p.items())) + f"|roi{self.roi_size}"

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """Region features (B, R, D): each proposal's roi_align-pooled backbone features."""
        from torchvision.ops import roi_align

        boxes = self.proposer(images)
        features = self.module.feature_extractor(self.normalise(images))
        per_layer = []
        for f in features.values():
            scale = f.shape[-1] / images.shape[-1]
            pooled = roi_align(f, boxes, output_size=self.roi_size, spatial_scale=scale, aligned=True)
            per_layer.append(pooled.mean(dim=(-2, -1)))
        regions = torch.cat(per_layer, dim=1)
        return regions.reshape(len(images), -1, regions.shape[-1])

    def routing_features(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, R, D) region features -> (N, D): the mean over an image's regions, for the task router.

        Every image has the same regions (grid windows, or detections padded with the whole
        image), so the mean over regions is a fixed-length summary of the image's features.
        """
        if embeddings.ndim != 3:
            raise ValueError(f"RKDE embeddings must be (images, regions, features), got shape "
                             f"{tuple(embeddings.shape)}; pass what RKDE.extract returns")
        return embeddings.float().mean(dim=1)

    def fit_features(self, embeddings: torch.Tensor) -> RKDE:
        flat = embeddings.reshape(-1, embeddings.shape[-1]).clone()
        if len(flat) < self.n_pca_components:
            raise ValueError(f"RKDE has {len(flat)} training regions, fewer than n_pca_components="
                             f"{self.n_pca_components}; add images or lower n_pca_components")
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            self.module.classifier.fit(flat)
        self.fitted_ = True
        return self

    @torch.no_grad()
    def region_scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Anomaly probability (B, R) of every region."""
        self._require_fitted()
        b, r, d = embeddings.shape
        return self.module.classifier(embeddings.reshape(-1, d).clone()).reshape(b, r)

    @torch.no_grad()
    def score(self, embeddings, image_size):
        return self.region_scores(embeddings).amax(dim=1), None

    def state_dict(self):
        return {k: v.clone() for k, v in self.module.classifier.state_dict().items()}

    def load_state_dict(self, state):
        assign_tensors(self.module.classifier, state, self.device)
        self.fitted_ = True
