"""UCAD-style continual anomaly detection: per task a key set and a memory, per image a task.

UCAD (Liu et al., AAAI 2024, "Unsupervised Continual Anomaly Detection with Contrastively-learned
Prompt") keeps, for every task, *keys* (features of the task's training images, used only to tell
tasks apart) and *knowledge* (a PatchCore patch memory bank), and scores a test image in two steps:
pick the task whose keys are closest to the image, then score the image PatchCore-style against
that task's memory. Its released code picks the task once for the whole test set (by the majority
over its images), which leaks test-set statistics and was criticised by its users; here the task
is picked **per image**.

What we built:

* knowledge: the wrapped model's own fitted state per task (PatchCore's coreset bank; any
  frozen-feature model works, e.g. PaDiM's Gaussians), fitted on the task's images alone;
* keys: ``ucad_keys`` patch features of the task's training images, picked by the greedy k-center
  coreset (the same selection as PatchCore's bank) from the model's cached embedding. A model
  whose embedding is not a channel-first map (RKDE's regions) keys on one vector per image;
* task selection: for each task, the mean over the image's patches of the distance to the nearest
  key; the task with the smallest mean is chosen, and the predictions carry it (routing accuracy).

Not built: UCAD's contrastively trained prompts and its structure-based contrastive learning
(SCL with SAM masks), which fine-tune the ViT's prompts per task. Keys and memory here come from
the frozen backbone the model uses, so the method runs offline on any backbone.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..models.ops.coreset import greedy_coreset_indices
from ..models.ops.knn import nearest_neighbors
from .plugin import RegimePlugin
from .router import predict_routed


def patch_vectors(model, embeddings: torch.Tensor) -> torch.Tensor:
    """(N, P, C) patch feature vectors of embeddings; P = 1 (the routing vector) when they are no (N, C, h, w) map."""
    if embeddings.ndim == 4:
        n, c = embeddings.shape[:2]
        return embeddings.float().reshape(n, c, -1).transpose(1, 2)
    return model.routing_features(embeddings).float()[:, None, :]


def key_distances(patches: torch.Tensor, keys: list[torch.Tensor]) -> torch.Tensor:
    """(N, K): per image (patches (N, P, C)), the mean over its patches of the distance to the nearest key of each task."""
    n, p, c = patches.shape
    flat = patches.reshape(n * p, c)
    cols = []
    for k in keys:
        d, _ = nearest_neighbors(flat, k.to(flat.device, flat.dtype), 1)
        cols.append(d.reshape(n, p).mean(dim=1))
    return torch.stack(cols, dim=1)


class UCAD(RegimePlugin):
    """Per task a key set and the model's fitted state; each test image goes to the task of its nearest keys."""

    name = "ucad"
    summary = "UCAD-style: per-task keys pick the task of each test image, that task's memory scores it"
    params: ClassVar[dict] = {"ucad_keys": 64}
    exclusive = True

    @classmethod
    def supports(cls, model) -> bool:
        """Frozen-feature models only: keys compare cached backbone features, which a trained backbone would move."""
        return not getattr(model, "trains_by_gradient", False)

    def check(self, model, eval_mode: str) -> None:
        super().check(model, eval_mode)
        if not self.supports(model) or not hasattr(model, "predict_features"):
            raise ValueError(f"regime ucad keys tasks by frozen-backbone features; {model.name} trains its features. "
                             "Use a frozen-feature model (patchcore, padim, dfm, dfkde, rkde, mhpatchcore).")
        if int(self.ucad_keys) < 1:
            raise ValueError(f"ucad_keys must be a positive number of key vectors per task, got {self.ucad_keys}")

    def setup(self, strategy) -> None:
        self.task_states_: dict[int, dict[str, torch.Tensor]] = {}
        self.keys_: dict[int, torch.Tensor] = {}

    def task_aware(self, strategy) -> bool:
        return False

    def routes(self, strategy) -> bool:
        return True

    def router_name(self, strategy) -> str:
        return f"ucad:keys{int(self.ucad_keys)}"

    def after_task(self, strategy, task, data) -> None:
        model = strategy.model
        self.task_states_[task.task_id] = model.state_dict()
        patches = patch_vectors(model, model.embed(task.train))
        flat = patches.reshape(-1, patches.shape[-1])
        k = min(int(self.ucad_keys), len(flat))
        idx = greedy_coreset_indices(flat, 1.0, seed=strategy.seed, size=k) if k < len(flat) else None
        self.keys_[task.task_id] = (flat if idx is None else flat[idx]).detach().clone()

    @torch.no_grad()
    def route(self, model, embeddings: torch.Tensor) -> torch.Tensor:
        """The chosen task id (N,) of each image's embedding."""
        if not self.keys_:
            raise RuntimeError("UCAD holds no task yet; fit a task before predicting")
        ids = sorted(self.keys_)
        dist = key_distances(patch_vectors(model, embeddings), [self.keys_[t] for t in ids])
        return torch.tensor(ids, dtype=torch.long)[dist.argmin(dim=1).cpu()]

    @torch.no_grad()
    def predict(self, strategy, data, task_id):
        model = strategy.model
        emb = model.embed(data)
        routed = self.route(model, emb)
        return predict_routed(model, emb, routed, self.task_states_, data.image_size)

    def state_dict(self) -> dict:
        return {"task_states": {int(k): v for k, v in self.task_states_.items()},
                "keys": {int(k): v.clone() for k, v in self.keys_.items()}}

    def load_state_dict(self, state, strategy) -> None:
        self.task_states_ = {int(k): v for k, v in (state.get("task_states") or {}).items()}
        self.keys_ = {int(k): v.clone() for k, v in (state.get("keys") or {}).items()}
