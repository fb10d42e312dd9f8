"""Parity of the ten gradient-trained models with anomalib 2.7's own Lightning modules.

Each model is paired with anomalib's Lightning module (``anomalib.models.<Model>``), built offline
and holding either anomalib's own torch model with our weights loaded (same architecture: STFPM,
CFLOW, FastFlow, GANomaly, Reverse Distillation and U-Flow at ResNet-18 or EfficientNet-Lite0,
DSR), or a copy of ours where anomalib can only build its torch model by downloading (CFA,
CS-Flow) or only at full width (DRAEM, kept at our light widths). Then, on 64x64 images:

* our training loss equals its ``training_step`` loss on the same weights and batch;
* our optimisers and the schedules we step equal those its ``configure_optimizers`` gives and
  Lightning steps (type, every hyper-parameter, parameter set, scheduler state and interval);
* our ``fit`` for two steps and anomalib's ``training_step`` plus its optimiser step, driven by
  hand in the order of Lightning's loop (zero_grad, training_step, backward, clipping, optimiser
  step, schedulers), end at the same weights and buffers within 1e-5.

Where the pair holds anomalib's own torch model, loading our state into it (same names, same
shapes) shows that our construction is anomalib's.

Random draws inside a training step (DRAEM's and DSR's simulated anomalies, CFLOW's fibre
shuffle) come from torch's global generator, which both sides seed identically.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from cl_iad.models.base import FitContext
from cl_iad.models.offline import assign_tensors, no_downloads
from cl_iad.models.registry import build_model

pytestmark = pytest.mark.filterwarnings("ignore")  # anomalib's deprecations; random-backbone warnings

SIZE = 64
MODELS = ["cfa", "cflow", "csflow", "draem", "dsr", "fastflow", "ganomaly", "reverse_distillation", "stfpm", "uflow"]
IMAGES = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))


class Images(Dataset):
    """An in-memory image set with the one attribute ``fit`` reads besides the images."""

    image_size = SIZE

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i]}


def _lightning(cls, **kwargs):
    """anomalib's Lightning module, with a pre-processor that only fixes its input size."""
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Resize

    return cls(**kwargs, pre_processor=PreProcessor(transform=Resize((SIZE, SIZE))), post_processor=False,
               evaluator=False, visualizer=False)


def _load(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load every tensor of `state` into `module`, which must have exactly those names."""
    own = module.state_dict()
    assert set(own) == set(state), f"state names differ: {sorted(set(own) ^ set(state))[:5]}"
    reshaped = {k for k, v in state.items() if own[k].shape != v.shape}  # CFA's centroid bank
    module.load_state_dict({k: v for k, v in state.items() if k not in reshaped}, strict=False)
    assign_tensors(module, {k: state[k] for k in reshaped})


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) if a[k].numel() else 0.0 for k in a)


# -- building the pairs ---------------------------------------------------------------------------
def _patched(target: str, ours):
    """Make anomalib's Lightning module build (a copy of) our torch model instead of downloading."""
    return mock.patch(target, lambda *args, **kwargs: copy.deepcopy(ours.module))


def _build(name: str, tmp, share_solarize) -> tuple:
    import anomalib.models as am

    light = {"preset": "light", "batch_size": 2}
    if name == "stfpm":
        ours = build_model("stfpm", **light).setup(SIZE)
        with no_downloads():
            return ours, _lightning(am.Stfpm, backbone="tf_efficientnet_lite0", layers=ours.layers)
    if name == "cflow":
        ours = build_model("cflow", **light, fiber_batch_size=16).setup(SIZE)
        return ours, _lightning(am.Cflow, backbone="tf_efficientnet_lite0", layers=ours.layers, pre_trained=False,
                                fiber_batch_size=16, condition_vector=32, coupling_blocks=2)
    if name == "fastflow":
        ours = build_model("fastflow", **light, backbone="resnet18", weights="random").setup(SIZE)
        return ours, _lightning(am.Fastflow, backbone="resnet18", pre_trained=False, flow_steps=2, hidden_ratio=0.5)
    if name == "ganomaly":
        ours = build_model("ganomaly", **light).setup(SIZE)
        return ours, _lightning(am.Ganomaly, batch_size=2, n_features=16, latent_vec_size=32)
    if name == "reverse_distillation":
        ours = build_model("reverse_distillation", **light, backbone="resnet18", weights="random").setup(SIZE)
        return ours, _lightning(am.ReverseDistillation, backbone="resnet18", layers=ours.layers, pre_trained=False)
    if name == "uflow":
        ours = build_model("uflow", **light, backbone="resnet18", weights="random").setup(SIZE)
        with no_downloads():
            return ours, _lightning(am.Uflow, backbone="resnet18", flow_steps=1)
    if name == "dsr":
        theirs = _lightning(am.Dsr)
        vq = tmp / "vq_random_for_tests.pckl"
        torch.save(theirs.model.discrete_latent_model.state_dict(), vq)
        # one image per batch: DSR's 40M-parameter networks take seconds per step even at 64x64
        ours = build_model("dsr", **{**light, "batch_size": 1}, vq_weights=str(vq), epochs=2).setup(SIZE)
        share_solarize(ours._perlin, theirs.perlin_generator)
        return ours, theirs
    if name == "cfa":
        ours = build_model("cfa", **light).setup(SIZE)
        with _patched("anomalib.models.image.cfa.lightning_model.CfaModel", ours):
            return ours, _lightning(am.Cfa)
    if name == "csflow":
        ours = build_model("csflow", **light).setup(SIZE)
        with _patched("anomalib.models.image.csflow.lightning_model.CsFlowModel", ours):
            return ours, _lightning(am.Csflow, cross_conv_hidden_channels=32, n_coupling_blocks=2)
    if name == "draem":
        from cl_iad.models.draem import render_texture_folder

        folder = render_texture_folder(tmp / "dtd", n=4, size=32)
        ours = build_model("draem", **light, anomaly_source="dtd", dtd_dir=str(folder)).setup(SIZE)
        with _patched("anomalib.models.image.draem.lightning_model.DraemModel", ours):
            theirs = _lightning(am.Draem, dtd_dir=folder)
        share_solarize(ours._augmenter, theirs.augmenter)
        return ours, theirs
    raise KeyError(name)


@dataclass
class Pair:
    ours: object
    theirs: object
    initial: dict[str, torch.Tensor]

    def reset(self) -> Pair:
        """Both at our initial weights, in training mode."""
        self.ours.load_state_dict(self.initial)
        _load(self.theirs.model, self.initial)
        self.ours.train_mode()
        self.theirs.train()
        return self


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, fidelity) -> Callable[[str], Pair]:
    cache: dict[str, Pair] = {}

    def get(name: str) -> Pair:
        if name not in cache:
            torch.manual_seed(0)
            ours, theirs = _build(name, tmp_path_factory.mktemp(name), fidelity.share_solarize)
            cache[name] = Pair(ours, theirs, ours.state_dict())
        return cache[name].reset()

    return get


# -- driving anomalib's Lightning module by hand ----------------------------------------------------
class Lightning:
    """What Lightning's fit loop does around ``training_step``, without a Trainer.

    A stand-in trainer answers the few attributes the modules read (epochs, the train loader's
    length, the current epoch); logging is a no-op; manual-optimisation modules get the
    optimisers and ``manual_backward`` Lightning would give them.
    """

    def __init__(self, lm, epochs: int, n_batches: int) -> None:
        from lightning.pytorch.core.optimizer import (
            _configure_optimizers,
            _configure_schedulers_automatic_opt,
            _configure_schedulers_manual_opt,
        )

        self.lm = lm
        lm._trainer = SimpleNamespace(max_steps=-1, max_epochs=epochs, current_epoch=0,
                                      datamodule=SimpleNamespace(train_dataloader=lambda: range(n_batches)))
        lm.log = lm.log_dict = lambda *args, **kwargs: None
        self.optimizers, schedulers, monitor = _configure_optimizers(lm.configure_optimizers())
        self.schedulers = (_configure_schedulers_automatic_opt(schedulers, monitor) if lm.automatic_optimization
                           else _configure_schedulers_manual_opt(schedulers))
        if not lm.automatic_optimization:
            lm.optimizers = lambda *args, **kwargs: self.optimizers[0] if len(self.optimizers) == 1 else self.optimizers
            lm.manual_backward = lambda loss, *args, **kwargs: loss.backward(*args, **kwargs)

    @property
    def stepped_schedulers(self) -> list:
        """Lightning steps schedulers under automatic optimisation only (loops/training_epoch_loop.py)."""
        return self.schedulers if self.lm.automatic_optimization else []

    def step(self, images: torch.Tensor, batch_idx: int = 0) -> float:
        lm, batch = self.lm, SimpleNamespace(image=images)
        args = (batch,) if len(inspect.signature(lm.training_step).parameters) == 1 else (batch, batch_idx)
        if not lm.automatic_optimization:
            out = lm.training_step(*args)
        else:
            opt = self.optimizers[0]
            opt.zero_grad()
            out = lm.training_step(*args)
            lm.backward(out["loss"])
            clip = lm.trainer_arguments.get("gradient_clip_val")
            if clip:
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
            opt.step()
            for config in self.stepped_schedulers:
                if config.interval == "step":
                    config.scheduler.step()
        return float(out["loss"] if "loss" in out else out["generator_loss"])

    def end_epoch(self) -> None:
        for config in self.stepped_schedulers:
            if config.interval == "epoch":
                config.scheduler.step()
        self.lm._trainer.current_epoch += 1


def _spy_batches(model) -> list[tuple[int, torch.Tensor]]:
    """Record (epoch, images) of every training step `model` takes."""
    seen, original = [], model.train_step

    def train_step(images, *args, **kwargs):
        seen.append((model.epoch_, images.clone()))
        return original(images, *args, **kwargs)

    model.train_step = train_step
    return seen


# -- the parity tests -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_training_loss_equals_anomalibs_training_step_loss(name, pairs):
    pair = pairs(name)
    ours, theirs, images = pair.ours, pair.theirs, IMAGES[:pair.ours.batch_size]
    ours.begin_task(DataLoader(Images(images), batch_size=len(images)))  # CFA's centroids; fresh optimisers
    _load(theirs.model, ours.state_dict())
    lightning = Lightning(theirs, epochs=ours.epochs, n_batches=1)
    torch.manual_seed(1)
    # CFLOW has no single loss per batch: both report the sum over fibres of the per-fibre-batch steps.
    mine = ours.train_step(images) if name == "cflow" else float(ours.training_loss(images))
    torch.manual_seed(1)
    assert mine == pytest.approx(lightning.step(ours.normalise(images)), rel=1e-6, abs=1e-6)


def _names(module: torch.nn.Module, prefix: str = "") -> dict[int, str]:
    return {id(p): n.removeprefix(prefix) for n, p in module.named_parameters()}


def _trainable(opt: torch.optim.Optimizer, names: dict[int, str]) -> frozenset[str]:
    return frozenset(names[id(p)] for g in opt.param_groups for p in g["params"] if p.requires_grad)


def _group_settings(opt: torch.optim.Optimizer) -> list[dict]:
    # initial_lr is what a scheduler starts from; the scheduler state below compares it where one is stepped
    return [{k: v for k, v in g.items() if k not in ("params", "initial_lr")} for g in opt.param_groups]


@pytest.mark.parametrize("name", MODELS)
def test_optimisers_and_schedules_equal_anomalibs_configure_optimizers(name, pairs):
    pair = pairs(name)
    ours, theirs = pair.ours, pair.theirs
    ours.begin_task(DataLoader(Images(IMAGES[:2]), batch_size=2))
    lightning = Lightning(theirs, epochs=ours.epochs, n_batches=1)
    ours_names, their_names = _names(ours.module), _names(theirs, "model.")
    by_params = {_trainable(o, ours_names): o for o in ours.optimizers_}
    assert len(by_params) == len(ours.optimizers_) == len(lightning.optimizers)
    for theirs_opt in lightning.optimizers:  # matched by the parameters they train (GANomaly lists them d, g)
        mine = by_params[_trainable(theirs_opt, their_names)]
        assert type(mine) is type(theirs_opt)
        assert mine.defaults == theirs_opt.defaults
        assert _group_settings(mine) == _group_settings(theirs_opt)
    stepped = lightning.stepped_schedulers
    assert len(ours.schedulers_) == len(stepped)
    for mine, config in zip(ours.schedulers_, stepped, strict=True):
        assert type(mine.scheduler) is type(config.scheduler)
        assert (mine.interval, config.frequency) == (config.interval, 1)
        assert mine.scheduler.state_dict() == config.scheduler.state_dict()
    if name == "dsr":  # configured, but DSR optimises manually and never steps it: the rate stays constant
        assert [type(c.scheduler).__name__ for c in lightning.schedulers] == ["StepLR"]
        assert not theirs.automatic_optimization
        assert "lr_schedulers" not in inspect.getsource(type(theirs).training_step)
    assert ours.grad_clip_norm == (theirs.trainer_arguments.get("gradient_clip_val") or None)


@pytest.mark.parametrize("name", MODELS)
def test_two_training_steps_end_at_anomalibs_weights(name, pairs):
    pair = pairs(name)
    ours, theirs = pair.ours, pair.theirs
    # two steps: one epoch of two batches, or (DSR) one batch in each of its two phases' epochs
    data = Images(IMAGES[:1] if name == "dsr" else IMAGES[:2 * ours.batch_size])
    seen = _spy_batches(ours)
    try:
        ours.fit(data, FitContext(task_id=0, seed=0))
    finally:
        del ours.train_step
    assert len(seen) == 2
    lightning = Lightning(theirs, epochs=ours.epochs, n_batches=len(data) // ours.batch_size)
    torch.manual_seed(0)  # what fit seeds for seed 0, task 0
    if name == "cfa":  # anomalib's on_train_start: centroids from the (unshuffled) training images
        batches = [SimpleNamespace(image=ours.normalise(b["image"])) for b in DataLoader(data, batch_size=ours.batch_size)]
        # get_scale probes anomalib's own layer names; it only sizes k-means (gamma_c > 1), which we refuse
        with mock.patch.object(theirs.model, "get_scale", lambda size: None):
            theirs.model.initialize_centroid(batches)
        assert torch.allclose(theirs.model.memory_bank, ours.module.memory_bank, atol=1e-6)
    losses = []
    for epoch in range(ours.epochs):
        losses += [lightning.step(ours.normalise(images), i)
                   for i, images in enumerate(im for e, im in seen if e == epoch)]
        lightning.end_epoch()
    assert ours.losses_[0] == pytest.approx(losses, rel=1e-5, abs=1e-5)
    assert _max_diff(ours.state_dict(), theirs.model.state_dict()) < 1e-5
    trained = {n: p.detach() for n, p in ours.module.named_parameters() if p.requires_grad}
    assert _max_diff(trained, {n: pair.initial[n] for n in trained}) > 1e-4  # the steps did train


@pytest.mark.parametrize(("name", "epochs"), [("draem", 700), ("uflow", 40), ("dsr", 10)])
def test_learning_rate_follows_anomalibs_schedule_per_epoch_and_restarts_each_task(name, epochs, pairs):
    pair = pairs(name)
    ours = copy.copy(pair.ours)  # same module, own epochs
    ours.epochs = epochs
    lrs: list[list[float]] = []
    ours.train_step = lambda images, *args, **kwargs: lrs.append(
        [g["lr"] for o in ours.optimizers_ for g in o.param_groups]) or 0.0
    for task in (0, 1):
        ours.fit(Images(IMAGES[:1]), FitContext(task_id=task))
    lightning = Lightning(pair.theirs, epochs=epochs, n_batches=1)
    expected = []
    for _ in range(epochs):
        expected.append([g["lr"] for o in lightning.optimizers for g in o.param_groups])
        lightning.end_epoch()
    # the schedule starts afresh with each task
    assert torch.tensor(lrs, dtype=torch.float64).allclose(torch.tensor(expected * 2, dtype=torch.float64), rtol=1e-12)
    if name == "draem":
        assert [lrs[e][0] for e in (0, 399, 400, 599, 600)] == pytest.approx([1e-4, 1e-4, 1e-5, 1e-5, 1e-6])
