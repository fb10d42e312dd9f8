"""Base for gradient-trained anomaly models (flows, reconstruction, teacher-student).

Each subclass wraps one anomalib 2.7 torch model (the ``nn.Module`` in its ``torch_model.py``)
and supplies the pieces anomalib's Lightning module would: its training loss, its optimiser
and, for the continual regimes, the outputs that LwF distils. We own the loop (:meth:`fit`)
instead of anomalib's Lightning
``Engine``: the Engine rebuilds optimisers, callbacks and loggers per ``fit`` call, gives no hook
for adding a regularisation term to a model's loss, and costs several seconds of start-up per
task on CPU, which at 64x64 is longer than the training itself.

Conventions:

* ``__init__`` only stores hyper-parameters; the module is built lazily by :meth:`setup` once the
  image size is known (several models size layers from it: FastFlow, U-Flow, CS-Flow, GANomaly).
* Optimisers and learning-rate schedulers are created afresh at the start of every task
  (``begin_task``), as a Lightning ``fit`` per task would; so the full learned state after a task
  is the module's state dict (weights, buffers, fitted statistics such as CFA's centroids), which
  :meth:`state_dict` returns. A resumed run restarts a task's training from scratch, so nothing of
  an optimiser or scheduler needs to be checkpointed.
* Schedulers (:meth:`make_schedulers`) are stepped as Lightning steps them: after every epoch, or
  after every optimiser step for ``interval="step"``. Gradients are clipped by norm when the model
  sets ``grad_clip_norm`` (anomalib's ``gradient_clip_val``).
* Early stopping (models with a ``patience`` hyper-parameter > 0): a seeded ``val_fraction`` of the
  task's normal images is held out and the model's loss on it is checked after every epoch; training
  stops after ``patience`` epochs without a new minimum, keeping the last weights, as Lightning's
  ``EarlyStopping`` does. anomalib monitors a validation metric on anomalous images instead; a
  training set has none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..backbones import DEFAULT_BACKBONE, backbone_spec, weights_tag
from .base import AnomalyModel, FitContext, Penalty, Predictions, predictions, resolve_device

log = logging.getLogger(__name__)

Extra = Penalty  # images -> a scalar loss term added by a regime

_SPLIT_SALT = 7919  # keeps the held-out split's random stream apart from the batch order's


@dataclass
class Schedule:
    """A learning-rate scheduler and when the loop steps it, as in Lightning's scheduler config."""

    scheduler: torch.optim.lr_scheduler.LRScheduler
    interval: str = "epoch"  # "epoch" (Lightning's default) or "step"

    def __post_init__(self) -> None:
        if self.interval not in ("epoch", "step"):
            raise ValueError(f"scheduler interval must be 'epoch' or 'step', got {self.interval!r}")


def freeze(module: nn.Module) -> nn.Module:
    """No gradients for `module`'s parameters (a frozen, pretrained backbone)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def as_maps(amap: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    """Anomaly maps as (B, H, W) at the image size."""
    if amap is None:
        return None
    if amap.ndim == 3:
        amap = amap.unsqueeze(1)
    if tuple(amap.shape[-2:]) != tuple(size):
        amap = F.interpolate(amap, size=size, mode="bilinear", align_corners=False)
    return amap[:, 0]


class GradientModel(AnomalyModel):
    """An anomalib torch model trained by gradient descent, task after task."""

    family = "normalizing flow"
    trains_by_gradient = True
    uses_backbone = True
    default_layer_picks: tuple[int, ...] = (0, 1, 2)
    # hyper-parameter name -> default; subclasses extend it
    hp_defaults: ClassVar[dict[str, Any]] = {}
    default_lr = 1e-3
    default_epochs = 1
    grad_clip_norm: ClassVar[float | None] = None  # anomalib's trainer_arguments["gradient_clip_val"]

    def __init__(self, backbone: str = DEFAULT_BACKBONE, weights: str | Path | None = None,
                 layers: list[str] | None = None, epochs: int | None = None, lr: float | None = None,
                 batch_size: int = 8, seed: int = 0, device: str | torch.device | None = "auto", **hp: Any) -> None:
        unknown = sorted(set(hp) - set(self.hp_defaults))
        if "precision" in unknown:
            raise ValueError(f"precision applies to the backbone pass of frozen-feature models; {self.name} trains "
                             "by gradient and runs in float32: drop --precision (or params.precision) for it")
        if unknown:
            raise ValueError(f"{self.name} has no hyper-parameter(s) {unknown}; "
                             f"choose from {sorted(self.hp_defaults) or 'none'} or the common ones "
                             "(backbone, weights, layers, epochs, lr, batch_size, seed)")
        epochs = self.default_epochs if epochs is None else epochs
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        self.backbone = backbone
        self.weights = weights
        if self.uses_backbone:
            spec = backbone_spec(backbone)
            self.layers = list(layers) if layers else [spec.layers[i] for i in self.default_layer_picks]
        else:
            self.layers = []
        self.epochs = epochs
        self.lr = self.default_lr if lr is None else lr
        self.batch_size = batch_size
        self.seed = seed
        self.device = resolve_device(device)
        self.hp = {**self.hp_defaults, **hp}
        self.module: nn.Module | None = None
        self.image_size_: int | None = None
        self.optimizers_: list[torch.optim.Optimizer] = []
        self.schedulers_: list[Schedule] = []
        self.losses_: dict[int, list[float]] = {}
        self.val_losses_: dict[int, list[float]] = {}  # per epoch, when early stopping is on
        self.epochs_run_: dict[int, int] = {}
        self.epoch_ = 0  # the epoch being trained, within the current task
        self.fitted_ = False

    # -- construction -------------------------------------------------------------------
    def setup(self, image_size: int) -> GradientModel:
        """Build the module for square images of `image_size` (once; same size afterwards)."""
        if self.module is not None:
            if image_size != self.image_size_:
                raise ValueError(f"{self.name} was built for {self.image_size_}px images, got {image_size}px; "
                                 "use one image size per run")
            return self
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            self.module = self._build(image_size).to(self.device)
        self.image_size_ = image_size
        if self.uses_backbone:
            spec = backbone_spec(self.backbone)
            self._mean = torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1)
            self._std = torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1)
        return self

    def prepare(self, image_size: int) -> GradientModel:
        """The contract's name for :meth:`setup`."""
        return self.setup(image_size)

    def to(self, device: str | torch.device) -> GradientModel:
        """Move the module (if built) and everything built from it to `device`."""
        self.device = torch.device(device)
        if self.module is not None:
            self.module.to(self.device)
            if self.uses_backbone:
                self._mean, self._std = self._mean.to(self.device), self._std.to(self.device)
            # optimisers hold state on the old device; begin_task makes new ones
            self.optimizers_, self.schedulers_ = [], []
        return self

    def _build(self, image_size: int) -> nn.Module:
        raise NotImplementedError

    def config(self) -> dict:
        """Settings that define this model, for config.json."""
        base = {"model": self.name, "device": str(self.device), "epochs": self.epochs, "lr": self.lr,
                "batch_size": self.batch_size, "seed": self.seed, **self.hp}
        if self.uses_backbone:
            base.update(backbone=self.backbone, weights=weights_tag(self.weights), layers=list(self.layers))
        return base

    # -- pieces the training loop calls ---------------------------------------------------
    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] on the model's device, normalised as its backbone expects."""
        images = images.to(self.device)
        return (images - self._mean) / self._std if self.uses_backbone else images

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def regularised_parameters(self) -> list[nn.Parameter]:
        """The parameters EWC anchors (default: all trainable ones)."""
        return self.trainable_parameters()

    def make_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam over the trainable parameters, with the model's `weight_decay` when it has one."""
        return [torch.optim.Adam(self.trainable_parameters(), lr=self.lr,
                                 weight_decay=self.hp.get("weight_decay", 0.0))]

    def make_schedulers(self) -> list[Schedule]:
        """Learning-rate schedulers over :attr:`optimizers_` (none by default), as anomalib configures them."""
        return []

    def train_mode(self, module: nn.Module | None = None) -> None:
        """Training mode, with frozen batch-norm layers (pretrained backbones) kept in eval."""
        module = self.module if module is None else module
        module.train()
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in m.parameters(recurse=False)):
                m.eval()

    def begin_task(self, loader: torch.utils.data.DataLoader) -> None:
        """Called before a task's epochs: fresh optimisers and schedulers (and model-specific set-up)."""
        self.optimizers_ = self.make_optimizers()
        self.schedulers_ = self.make_schedulers()

    def training_loss(self, images: torch.Tensor) -> torch.Tensor:
        """The model's own training loss on a batch of normal images in [0, 1]."""
        raise NotImplementedError

    def distill_outputs(self, module: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
        """What LwF keeps close to the previous model: `module`'s training-mode outputs."""
        raise NotImplementedError

    def train_step(self, images: torch.Tensor, extra: Extra | None = None, step: int = 0, total: int = 1) -> float:
        """One optimisation step on a batch; `extra` adds a regime's term (EWC, LwF).

        `step` of `total` counts this task's steps, for models whose training has phases (DSR).
        """
        loss = self.training_loss(images)
        if extra is not None:
            loss = loss + extra(images)
        self.optimise(loss, self.optimizers_[0])
        return float(loss.detach())

    def optimise(self, loss: torch.Tensor, opt: torch.optim.Optimizer, retain_graph: bool = False) -> None:
        """zero_grad, backward, clip (``grad_clip_norm``), step: Lightning's automatic optimisation."""
        opt.zero_grad()
        loss.backward(retain_graph=retain_graph)
        if self.grad_clip_norm:
            params = [p for group in opt.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip_norm)
        opt.step()

    def step_schedulers(self, interval: str) -> None:
        """Step the schedulers configured for `interval` ("epoch" or "step")."""
        for schedule in self.schedulers_:
            if schedule.interval == interval:
                schedule.scheduler.step()

    @torch.no_grad()
    def validation_loss(self, data) -> float:
        """Mean training loss over `data`, without changing the model: batch norms use their running statistics."""
        self.train_mode()  # the models' forward returns its training outputs only in training mode
        for m in self.module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        total, n = 0.0, 0
        with torch.random.fork_rng():
            for batch in DataLoader(data, batch_size=self.batch_size, shuffle=False):
                total += float(self.training_loss(batch["image"])) * len(batch["image"])
                n += len(batch["image"])
        self.train_mode()
        return total / max(n, 1)

    def held_out_split(self, data, seed: int) -> tuple[Any, Any | None]:
        """(train, validation) parts of `data` for early stopping: a seeded ``val_fraction`` held out.

        Without early stopping (``patience`` 0 or absent) or with fewer than two images, all of
        `data` trains and there is no validation part.
        """
        patience, fraction = self.hp.get("patience", 0), self.hp.get("val_fraction", 0.0)
        if not patience:
            return data, None
        if not 0 < fraction < 1:
            raise ValueError(f"{self.name}: val_fraction must be in (0, 1) for early stopping, got {fraction}")
        n = len(data)
        n_val = max(1, round(n * fraction))
        if n - n_val < 1:
            log.warning("%s: %d image(s) are too few to hold out a validation part; early stopping is off",
                        self.name, n)
            return data, None
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + _SPLIT_SALT)).tolist()
        return Subset(data, sorted(order[n_val:])), Subset(data, sorted(order[:n_val]))

    # -- the contract: fit and predict a whole image set -------------------------------------
    def fit(self, data, ctx: FitContext | None = None) -> GradientModel:
        """Continue training for ``epochs`` epochs on `data`, adding ``ctx.penalty`` to the loss.

        Batches are shuffled by a generator seeded from (ctx.seed, ctx.task_id), and the global
        random state (augmentations, flows' noise) is seeded from the same pair for the whole
        fit, ``ctx.on_trained`` callbacks included, so a task trains identically whether the
        run started at task 0 or resumed at it. With early stopping, the held-out images are
        chosen from the same seed and are not trained on; ``ctx.on_trained`` still sees all of `data`.
        """
        ctx = ctx or FitContext()
        self.setup(data.image_size)
        seed = ctx.seed * 1000 + ctx.task_id
        train, val = self.held_out_split(data, seed)
        loader = DataLoader(train, batch_size=self.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.begin_task(DataLoader(train, batch_size=self.batch_size, shuffle=False))
            self.train_mode()
            losses, val_losses, epochs_run = self._train_epochs(loader, val, ctx)
            self.fitted_ = True
            for callback in ctx.on_trained:
                callback(self)
        self.losses_[ctx.task_id] = losses
        self.val_losses_[ctx.task_id] = val_losses
        self.epochs_run_[ctx.task_id] = epochs_run
        if losses and not all(torch.isfinite(torch.tensor(losses))):
            raise FloatingPointError(f"{self.name} training diverged on task {ctx.task_id} (loss {losses[-1]}); "
                                     "lower lr or check the inputs")
        log.info("task %d: trained %s for %d epochs on %d images", ctx.task_id, self.name,
                 self.epochs_run_[ctx.task_id], len(train))
        return self

    def _train_epochs(self, loader: DataLoader, val, ctx: FitContext) -> tuple[list[float], list[float], int]:
        """Up to ``epochs`` epochs, stepping schedulers and stopping early as Lightning would.

        Returns the per-step losses, the per-epoch held-out losses and the number of epochs run.
        """
        losses: list[float] = []
        val_losses: list[float] = []
        total = self.epochs * len(loader)
        best, wait = float("inf"), 0
        for epoch in range(self.epochs):
            self.epoch_ = epoch
            for batch in loader:
                losses.append(self.train_step(batch["image"], ctx.penalty, len(losses), total))
                self.step_schedulers("step")
            self.step_schedulers("epoch")
            if val is None:
                continue
            val_losses.append(self.validation_loss(val))
            # Lightning's EarlyStopping (mode="min", min_delta=0, check_finite): `patience` epochs without a new minimum.
            best, wait = (val_losses[-1], 0) if val_losses[-1] < best else (best, wait + 1)
            if wait >= self.hp["patience"] or not torch.isfinite(torch.tensor(val_losses[-1])):
                log.info("task %d: %s stopped early after epoch %d (held-out loss %.4g, best %.4g)",
                         ctx.task_id, self.name, epoch + 1, val_losses[-1], best)
                return losses, val_losses, epoch + 1
        return losses, val_losses, self.epochs

    @torch.no_grad()
    def predict(self, data) -> Predictions:
        """Scores and maps for every image of `data`, in batches of `batch_size`."""
        scores, maps = [], []
        for batch in DataLoader(data, batch_size=self.batch_size, shuffle=False):
            s, m = self.predict_batch(batch["image"])
            scores.append(s)
            maps.append(m)
        return predictions(scores, maps)

    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image scores (B,) and anomaly maps (B, H, W), or None for models without maps."""
        self._require_fitted()
        self.module.eval()
        out = self.module(self.normalise(images))
        amap = getattr(out, "anomaly_map", None)
        maps = as_maps(amap, tuple(images.shape[-2:])) if self.task_type == "segmentation" else None
        score = out.pred_score
        if score is None:
            score = maps.amax(dim=(-2, -1))
        return score.reshape(len(images)).cpu(), None if maps is None else maps.cpu()

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The full learned state (weights and buffers), as tensors."""
        if self.module is None:
            raise RuntimeError(f"{self.name} has not been built; call setup(image_size) or train it first")
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a state from :meth:`state_dict` (builds nothing: call ``setup`` first)."""
        own = self.module.state_dict()
        missing = sorted(set(own) - set(state))
        if missing:
            raise KeyError(f"{self.name} state lacks {len(missing)} entries (first: {missing[:3]}); "
                           "was it saved from a different model or settings?")
        # Fitted statistics whose shape depends on the data (CFA's centroid bank) cannot go
        # through load_state_dict's shape check; assign those directly.
        reshaped = {k for k, v in state.items() if k in own and own[k].shape != v.shape}
        self.module.load_state_dict({k: v for k, v in state.items() if k not in reshaped}, strict=False)
        from .offline import assign_tensors

        assign_tensors(self.module, {k: state[k] for k in reshaped}, self.device)
        self.fitted_ = True

    def _require_fitted(self) -> None:
        if self.module is None or not self.fitted_:
            raise RuntimeError(f"{self.name} has not been trained; call fit() (or a strategy's fit_task) first")
