"""DNE (Li et al., ACM MM 2022): one Gaussian of global image embeddings per task, task-agnostic.

"Towards Continual Adaptation in Industrial Anomaly Detection" keeps, for every task, the mean and
covariance of the global embeddings of its normal training images, and nothing else: no image, no
network copy. A test image is scored by its Mahalanobis distance to every stored Gaussian; the
closest one names its task and its distance is the anomaly score. The method is image-level, so
predictions carry no anomaly map and pixel metrics are NaN.

What we built: the memory and the scoring of the paper over any frozen-feature model's features.
The global embedding of an image is the model's ``routing_features`` of its cached embedding (the
backbone maps averaged over positions), so DNE costs one backbone pass per image, shared with every
other regime of a run through the feature cache; the model itself is never fitted. The paper's
ViT backbone and its optional fine-tuning on the first task are not reproduced. Covariances are
shrunk towards a scaled identity, with Ledoit and Wolf's coefficient by default (as Rippel et al.'s
Gaussian AD, which DNE builds on), or a fixed ``dne_shrinkage``.

The predictions carry the chosen task per image, so runs report routing accuracy.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from ..models.base import Predictions
from .plugin import RegimePlugin

_EPS = 1e-6  # relative ridge on the covariance: a task with fewer images than dimensions stays invertible


def gaussian(features: torch.Tensor, shrinkage: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and precision matrix (D, D) of feature vectors (N, D), in float64.

    The covariance is the empirical one (divided by N), shrunk as ``(1 - a) S + a tr(S)/D I`` with
    ``a`` = `shrinkage`, or Ledoit and Wolf's coefficient when `shrinkage` is None (sklearn's
    ``ledoit_wolf_shrinkage``), plus a ridge of ``1e-6 tr(S)/D`` so that it is invertible.
    """
    x = features.detach().to("cpu", torch.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"DNE needs feature vectors (N, D) with N >= 1, got shape {tuple(x.shape)}")
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / len(x)
    d = cov.shape[0]
    scale = float(torch.trace(cov)) / d if len(x) > 1 else 1.0
    scale = scale if scale > 0 else 1.0
    if shrinkage is None:
        shrinkage = _ledoit_wolf(x) if len(x) > 1 else 1.0
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"dne_shrinkage must be in [0, 1] (or null for Ledoit-Wolf), got {shrinkage}")
    eye = torch.eye(d, dtype=torch.float64)
    cov = (1 - shrinkage) * cov + (shrinkage + _EPS) * scale * eye
    return mean, torch.linalg.inv(cov)


def _ledoit_wolf(x: torch.Tensor) -> float:
    from sklearn.covariance import ledoit_wolf_shrinkage

    return float(ledoit_wolf_shrinkage(x.numpy()))


def mahalanobis(features: torch.Tensor, means: torch.Tensor, precisions: torch.Tensor) -> torch.Tensor:
    """(N, K) Mahalanobis distances of feature vectors (N, D) to K Gaussians (means (K, D), precisions (K, D, D))."""
    x = features.detach().to("cpu", torch.float64)
    diff = x[:, None, :] - means[None]  # (N, K, D)
    sq = torch.einsum("nkd,kde,nke->nk", diff, precisions, diff)
    return sq.clamp_min(0).sqrt()


class DNE(RegimePlugin):
    """One Gaussian of global embeddings per task; score = Mahalanobis distance to the closest task's."""

    name = "dne"
    summary = "DNE: a Gaussian of global image embeddings per task, the closest one scores (task-agnostic)"
    params: ClassVar[dict] = {"dne_shrinkage": None}
    exclusive = True
    chooses_data = True
    gives_maps: ClassVar[bool] = False  # image-level: pixel metrics are NaN whatever the model

    @classmethod
    def supports(cls, model) -> bool:
        """Frozen-feature models only: DNE reads their cached embeddings (a trained backbone would move them)."""
        return not getattr(model, "trains_by_gradient", False)

    def check(self, model, eval_mode: str) -> None:
        super().check(model, eval_mode)
        if not self.supports(model) or not hasattr(model, "routing_features"):
            raise ValueError(f"regime dne keeps Gaussians of frozen-backbone embeddings; {model.name} trains its "
                             "features. Use a frozen-feature model (patchcore, padim, dfm, dfkde, rkde, mhpatchcore).")

    def setup(self, strategy) -> None:
        self.task_ids_: list[int] = []
        self.means_: list[torch.Tensor] = []
        self.precisions_: list[torch.Tensor] = []

    def task_aware(self, strategy) -> bool:
        return False

    def routes(self, strategy) -> bool:
        return True

    def router_name(self, strategy) -> str:
        return "dne:mahalanobis"

    def training_samples(self, strategy, task, scenario, samples):
        return None  # the model is a feature extractor here: nothing to fit

    def after_task(self, strategy, task, data) -> None:
        model = strategy.model
        mean, precision = gaussian(model.routing_features(model.embed(task.train)), self.dne_shrinkage)
        if task.task_id in self.task_ids_:
            k = self.task_ids_.index(task.task_id)
            self.means_[k], self.precisions_[k] = mean, precision
        else:
            self.task_ids_.append(task.task_id)
            self.means_.append(mean)
            self.precisions_.append(precision)

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """(N, K) distances of global embeddings to each stored task's Gaussian."""
        if not self.task_ids_:
            raise RuntimeError("DNE holds no task yet; fit a task before predicting")
        return mahalanobis(features, torch.stack(self.means_), torch.stack(self.precisions_))

    @torch.no_grad()
    def predict(self, strategy, data, task_id):
        model = strategy.model
        dist = self.distances(model.routing_features(model.embed(data)))
        best = dist.argmin(dim=1)
        routed = np.asarray(self.task_ids_, dtype=np.int64)[best.numpy()]
        return Predictions(dist.min(dim=1).values.numpy().astype(np.float64), None, routed)

    def state_dict(self) -> dict:
        return {"task_ids": list(self.task_ids_), "means": [m.clone() for m in self.means_],
                "precisions": [p.clone() for p in self.precisions_]}

    def load_state_dict(self, state, strategy) -> None:
        self.task_ids_ = [int(t) for t in state.get("task_ids", [])]
        self.means_ = [m.clone() for m in state.get("means", [])]
        self.precisions_ = [p.clone() for p in state.get("precisions", [])]
