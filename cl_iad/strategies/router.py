"""Task routers for task-agnostic evaluation of per-task models.

When the task id is not given at test time, ``per_task`` must pick which task's model scores
an image. :class:`FeatureStatsRouter` keeps, per task, the mean and per-channel variance of
one pooled feature vector per *training* image (normal images only; no test data is used) and
sends a test image to the task under which its vector is most likely (a diagonal Gaussian;
``metric="euclidean"`` uses the distance to the task mean instead).

The vectors come from the model: :meth:`FrozenFeatureModel.routing_features` pools the same
cached embeddings the model is fitted on (channel-first maps averaged over positions by
default, RKDE's region features averaged over regions), so routing costs no extra backbone
pass and the router never guesses an embedding's layout.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.base import Predictions

ROUTER_METRICS = ("gaussian", "euclidean")


class FeatureStatsRouter:
    """Nearest task by pooled-embedding statistics of each task's train set."""

    def __init__(self, metric: str = "gaussian", eps: float = 1e-4) -> None:
        if metric not in ROUTER_METRICS:
            raise ValueError(f"unknown router metric {metric!r}; choose from {ROUTER_METRICS}")
        self.metric = metric
        self.eps = eps
        self.task_ids_: list[int] = []
        self.means_: list[torch.Tensor] = []
        self.vars_: list[torch.Tensor] = []

    @staticmethod
    def pool(features: torch.Tensor) -> torch.Tensor:
        """Feature vectors (N, D) as float; channel-first maps (N, C, h, w) are averaged over positions.

        Any other shape is refused rather than guessed: (N, A, B) could be regions x features
        or channels x positions. Pool such embeddings with the model's ``routing_features`` first.
        """
        x = features.float()
        if x.ndim == 2:
            return x
        if x.ndim == 4:
            return x.mean(dim=(-2, -1))
        raise ValueError(f"the task router takes (N, D) feature vectors or (N, C, h, w) maps, got shape "
                         f"{tuple(features.shape)}; pool them with model.routing_features(embeddings) first")

    def add_task(self, task_id: int, train_features: torch.Tensor) -> FeatureStatsRouter:
        """Record the statistics of one task's training features (replacing earlier ones of that id)."""
        pooled = self.pool(train_features)
        mean = pooled.mean(0)
        var = pooled.var(0, unbiased=False) if len(pooled) > 1 else torch.zeros_like(mean)
        # floor the variance by a fraction of its average, so a channel that is constant in a
        # small train set does not dominate the likelihood
        var = var + self.eps + 0.01 * var.mean()
        if task_id in self.task_ids_:
            k = self.task_ids_.index(task_id)
            self.means_[k], self.vars_[k] = mean, var
        else:
            self.task_ids_.append(task_id)
            self.means_.append(mean)
            self.vars_.append(var)
        return self

    def state_dict(self) -> dict:
        """Per-task statistics as plain data and tensors (for checkpoints and saved models)."""
        return {"metric": self.metric, "eps": self.eps, "task_ids": list(self.task_ids_),
                "means": [m.clone() for m in self.means_], "vars": [v.clone() for v in self.vars_]}

    def load_state_dict(self, state: dict) -> None:
        self.metric, self.eps = state["metric"], state["eps"]
        self.task_ids_ = [int(t) for t in state["task_ids"]]
        self.means_ = [m.clone() for m in state["means"]]
        self.vars_ = [v.clone() for v in state["vars"]]

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """(N, K) cost of each image under each known task (lower is closer)."""
        if not self.task_ids_:
            raise RuntimeError("the router knows no task yet; fit at least one task before predicting")
        x = self.pool(features)
        if x.shape[1] != self.means_[0].shape[0]:
            raise ValueError(f"the router was fitted on {self.means_[0].shape[0]}-dim features, got "
                             f"{x.shape[1]}-dim ones; route with the model and settings it was fitted with")
        means = torch.stack(self.means_)  # (K, C)
        diff = x[:, None, :] - means[None]
        if self.metric == "euclidean":
            return diff.pow(2).sum(-1)
        var = torch.stack(self.vars_)
        return (diff.pow(2) / var[None]).sum(-1) + var.log().sum(-1)[None]

    def route(self, features: torch.Tensor) -> torch.Tensor:
        """The chosen task id for each image."""
        idx = self.scores(features).argmin(dim=1)
        return torch.tensor(self.task_ids_, dtype=torch.long)[idx]


def scatter_predictions(parts: list[tuple[np.ndarray, Predictions]], n: int, routed: np.ndarray) -> Predictions:
    """Each routed group's predictions back at its images' positions (maps None if a group has none)."""
    scores = np.zeros(n, dtype=np.float64)
    has_maps = bool(parts) and all(p.anomaly_map is not None for _, p in parts)
    maps = np.zeros((n, *parts[0][1].anomaly_map.shape[1:]), dtype=np.float32) if has_maps else None
    for idx, p in parts:
        scores[idx] = p.pred_score
        if maps is not None:
            maps[idx] = p.anomaly_map
    return Predictions(scores, maps, routed)


@torch.no_grad()
def predict_routed(model, emb: torch.Tensor, routed: torch.Tensor, task_states: dict, image_size: int) -> Predictions:
    """Predictions of each image by the fitted state of the task it was routed to (`routed`, on the CPU).

    One ``load_state_dict`` per routed task, then :func:`scatter_predictions`; used by every regime that
    keeps one fitted state per task and picks one per image (per_task without the task id, UCAD).
    """
    parts: list[tuple[np.ndarray, Predictions]] = []
    for tid in routed.unique().tolist():
        idx = (routed == tid).nonzero().flatten()
        model.load_state_dict(task_states[tid])
        parts.append((idx.numpy(), model.predict_features(emb[idx.to(emb.device)], image_size)))
    return scatter_predictions(parts, len(emb), routed.numpy())
