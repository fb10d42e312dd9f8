"""Any anomalib 2.7 image model under our regimes, through its own Lightning code.

The fifteen seed models have dedicated files (their own losses, optimisers and offline weights).
This adapter runs *any* ``AnomalibModule`` of ``anomalib.models.image`` instead, as anomalib itself
would: each task is one Lightning ``Trainer.fit`` of the module (its own ``training_step``,
``configure_optimizers``, schedulers, manual optimisation, the epoch-end hooks that memory-bank
models fit in), and predictions come from its ``validation_step`` (anomalib's
``InferenceBatch``: ``pred_score`` and ``anomaly_map``). The regimes work on top: replay,
cumulative and joint choose the images; EWC, LwF and MAS add their penalty to the loss that
``training_step`` returns (models with automatic optimisation; a model that optimises manually,
such as CFLOW or GANomaly, cannot take a penalty and is refused with the reason); per_task keeps
one state per task. Memory-bank models (no optimiser: PatchCore, PaDiM, MH-PatchCore, ...) are
rebuilt before every fit, so a fit replaces their state as our contract says; gradient-trained
ones continue from their weights.

Construction never downloads unless asked (``weights``):

* ``offline`` (default): ``pre_trained=False`` where the constructor takes it, and the network
  is closed while the model is built; a model that still needs files (a backbone without a
  ``pre_trained`` switch, CLIP, DINOv2, a dataset) raises :class:`NeedsWeights` naming what it
  tried to fetch, unless the file is already in its cache;
* ``random``: as offline, but backbones that would be downloaded start from random weights
  (timm ``pretrained=False``, torchvision ``weights=None``). This only proves the loop runs (the
  unified models Dinomaly and UniNet in a continual run on a machine without their weights);
  scores mean nothing;
* ``pretrained``: anomalib's own defaults, downloads included.

The input goes through the model's own pre-processor (``configure_pre_processor``), resized to
``input_size`` when given (else anomalib's default size) and without its centre crop, so the
anomaly map covers the whole image; maps are resized back to the run's image size.
Scores are raw (no post-processor): thresholds and normalisation are ours.

:func:`survey_anomalib_models` (``cl-iad models --all``) tries every image model of anomalib
and says which run here, which need weights to be downloaded, and which fail, with the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from .base import FitContext
from .trainable import GradientModel, as_maps

log = logging.getLogger(__name__)

WEIGHT_MODES = ("offline", "random", "pretrained")
# anomalib's unified multi-class models: one network for many categories, the natural subject of continual training
UNIFIED = ("Dinomaly", "UniNet", "InpFormer")


class NeedsWeights(RuntimeError):
    """Building the model needs files that are neither cached nor downloadable here."""


class _Blocked(OSError):
    """A connection attempted while the network is closed for offline construction."""


def _local(host: object) -> bool:
    return host in (None, "localhost", "127.0.0.1", "::1", b"localhost") or (isinstance(host, str) and
                                                                        host.startswith("/"))


@contextlib.contextmanager
def closed_network(attempts: list[str] | None = None) -> Iterator[None]:
    """Within the block nothing leaves the machine: name look-ups and connections fail at once with ``_Blocked``,
    and the Hugging Face hub works from its cache only. What was fetched is appended to `attempts`."""
    import huggingface_hub.constants as hub
    import timm
    import torch.hub
    import torchvision

    attempts = [] if attempts is None else attempts
    real = (socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo, hub.HF_HUB_OFFLINE,
            timm.create_model, torch.hub.load_state_dict_from_url, torchvision.models.get_model_weights)

    def refuse(host: object) -> None:
        raise _Blocked(f"download blocked while building offline (connection to {host})")

    def connect(sock, address, *args):
        if isinstance(address, tuple) and not _local(address[0]):
            refuse(address[0])
        return real[0](sock, address, *args)

    def connect_ex(sock, address, *args):
        if isinstance(address, tuple) and not _local(address[0]):
            refuse(address[0])
        return real[1](sock, address, *args)

    def getaddrinfo(host, *args, **kwargs):
        if not _local(host):
            refuse(host)
        return real[2](host, *args, **kwargs)

    def create_model(*args, **kwargs):
        if kwargs.get("pretrained"):
            attempts.append(f"timm {args[0] if args else kwargs.get('model_name')!r} pretrained weights")
        return real[4](*args, **kwargs)

    def load_state_dict_from_url(url, *args, **kwargs):
        attempts.append(f"weights from {url}")
        return real[5](url, *args, **kwargs)

    def get_model_weights(name):
        attempts.append(f"torchvision {getattr(name, '__name__', name)!r} weights")
        return real[6](name)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    hub.HF_HUB_OFFLINE = True
    timm.create_model, torch.hub.load_state_dict_from_url = create_model, load_state_dict_from_url
    torchvision.models.get_model_weights = get_model_weights
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo, hub.HF_HUB_OFFLINE = real[:4]
        timm.create_model, torch.hub.load_state_dict_from_url, torchvision.models.get_model_weights = real[4:]


@contextlib.contextmanager
def random_backbones() -> Iterator[None]:
    """Within the block, timm and torchvision build backbones with random weights instead of downloading them."""
    import timm
    import torchvision

    create, get_weights = timm.create_model, torchvision.models.get_model_weights

    def create_model(*args, **kwargs):
        kwargs["pretrained"] = False
        return create(*args, **kwargs)

    class _NoWeights:
        DEFAULT = None

        def __getattr__(self, name: str) -> None:
            return None

    timm.create_model = create_model
    torchvision.models.get_model_weights = lambda name: _NoWeights()
    try:
        yield
    finally:
        timm.create_model, torchvision.models.get_model_weights = create, get_weights


_NETWORK_ERRORS = ("download blocked while building offline", "outgoing traffic has been disabled", "HF_HUB_OFFLINE",
                   "Network is unreachable", "Name or service not known", "urlopen error", "Temporary failure in name")


def _blocked(exc: BaseException) -> bool:
    """Whether `exc` is a download refused by :func:`closed_network`: a network error (an ``OSError``: URLError,
    a hub's LocalEntryNotFoundError) or an error raised *from* one. An unrelated error raised while some library
    was handling an earlier, caught download failure is not one."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _Blocked) or (isinstance(exc, OSError) and any(s in str(exc) for s in _NETWORK_ERRORS)):
            return True
        exc = exc.__cause__ or (exc.__context__ if isinstance(exc, OSError) else None)
    return False


def anomalib_model_class(name: str) -> type:
    """The ``AnomalibModule`` class of ``anomalib.models.image`` named `name` (case-insensitive)."""
    from anomalib.models import image

    names = {n.lower(): n for n in image.__all__}
    key = names.get(str(name).lower().replace("_", ""), names.get(str(name).lower()))
    if key is None:
        raise ValueError(f"anomalib has no image model {name!r}; choose from {', '.join(image.__all__)}")
    return getattr(image, key)


def input_pre_processor(cls: type, input_size: int | None = None):
    """The model's own pre-processor (``configure_pre_processor()``) without its centre crop, so maps cover
    the whole image, and with every resize set to `input_size` when given."""
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms import v2

    pre = cls.configure_pre_processor()
    transform = getattr(pre, "transform", None)
    parts = list(getattr(transform, "transforms", [transform] if transform is not None else []))
    kept = []
    for t in parts:
        if isinstance(t, v2.CenterCrop):
            continue
        if input_size and isinstance(t, v2.Resize):
            t = v2.Resize((input_size, input_size), interpolation=t.interpolation, antialias=t.antialias)
        kept.append(t)
    return PreProcessor(transform=v2.Compose(kept)) if kept else pre


def build_anomalib_module(name: str, input_size: int | None = None, weights: str = "offline",
                          model_args: dict | None = None):
    """An ``AnomalibModule`` built as `weights` says (module docstring), without post-processing or evaluation."""
    if weights not in WEIGHT_MODES:
        raise ValueError(f"unknown weights mode {weights!r}; choose from {', '.join(WEIGHT_MODES)}")
    cls = anomalib_model_class(name)
    params = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = dict(model_args or {})
    if weights != "pretrained" and "pre_trained" in params:
        kwargs.setdefault("pre_trained", False)
    components = {"pre_processor": input_pre_processor(cls, input_size), "post_processor": False, "evaluator": False,
                  "visualizer": False}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs.update({k: v for k, v in components.items() if takes_any or k in params})
    with guarded(weights, cls.__name__):
        return cls(**kwargs)


@contextlib.contextmanager
def guarded(weights: str, what: str) -> Iterator[None]:
    """Building or fitting under a weights mode: the network closed unless ``pretrained``, random backbones
    for ``random``, and a refused download raised as :class:`NeedsWeights` naming what was fetched."""
    guards = contextlib.ExitStack()
    attempts: list[str] = []
    if weights != "pretrained":
        guards.enter_context(closed_network(attempts))
    if weights == "random":
        guards.enter_context(random_backbones())
    with guards, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        except Exception as exc:
            if weights != "pretrained" and _blocked(exc):
                fetched = "; ".join(dict.fromkeys(attempts)) or _download_of(exc)
                raise NeedsWeights(f"anomalib {what} needs files that are not cached here ({fetched}); fetch them "
                                   "once with weights='pretrained' on a machine with internet, or use "
                                   "weights='random' to test the loop only") from exc
            raise


def _download_of(exc: BaseException) -> str:
    """What a refused download was, from its error: the host, or the Hugging Face hub."""
    import re

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        host = re.search(r"connection to ([\w.-]+)", str(exc))
        if host:
            return f"a download from {host.group(1)}"
        if "LocalEntryNotFound" in type(exc).__name__ or "outgoing traffic has been disabled" in str(exc):
            return "a file from the Hugging Face hub"
        exc = exc.__cause__ or exc.__context__
    return "a download"


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in a (nested) model output: tensors, sequences, mappings, dataclasses, named tuples."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in _tensors(getattr(obj, f.name))]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


class AnomalibAdapter(GradientModel):
    """Any anomalib image model (``anomalib_model``) run through its own ``training_step`` and ``validation_step``."""

    name = "anomalib_adapter"
    title = "anomalib adapter"
    family = "teacher-student"  # of the default, STFPM; the wrapped model decides
    task_type = "segmentation"
    uses_backbone = False  # the model's own pre-processor normalises
    presets: ClassVar[dict] = {
        "benchmark": {"anomalib_model": "Stfpm", "weights": "pretrained", "epochs": 100, "batch_size": 32,
                      "input_size": 256},
        "light": {"anomalib_model": "Fastflow", "epochs": 1, "batch_size": 8, "input_size": 64},
        # the unified models with RANDOM backbones (their weights need a download): they prove the loop only
        # (Dinomaly's learning rate warms up from 0 per epoch: one epoch would not move its weights)
        "dinomaly_random": {"anomalib_model": "Dinomaly", "weights": "random", "input_size": 56, "epochs": 3,
                            "batch_size": 8},
        "uninet_random": {"anomalib_model": "UniNet", "weights": "random", "input_size": 64, "epochs": 1,
                          "batch_size": 8},
    }
    notes: ClassVar[str] = ("any anomalib.models.image model: --param anomalib_model=Dinomaly; weights=offline|random|"
                            "pretrained (random proves the loop only); see `cl-iad models --all`")

    def __init__(self, anomalib_model: str = "Stfpm", model_args: dict | None = None, weights: str = "offline",
                 input_size: int | None = None, epochs: int | None = None, batch_size: int = 8, seed: int = 0,
                 device: str | torch.device | None = "auto") -> None:
        if weights not in WEIGHT_MODES:
            raise ValueError(f"unknown weights mode {weights!r}; choose from {', '.join(WEIGHT_MODES)}")
        self.anomalib_model = anomalib_model_class(anomalib_model).__name__
        self.model_args = dict(model_args or {})
        self.input_size = input_size
        super().__init__(weights=weights, epochs=epochs if epochs is not None else 0, batch_size=batch_size,
                         seed=seed, device=device)
        self.epochs = epochs  # None: the model's own trainer_arguments (or one epoch)
        self.penalty_: Any = None
        self._prepared = False  # inside training_step: the images are already pre-processed

    # -- construction -------------------------------------------------------------------
    def _build(self, image_size: int) -> nn.Module:
        return build_anomalib_module(self.anomalib_model, self.input_size, self.weights, self.model_args)

    @property
    def one_pass(self) -> bool:
        """Whether the wrapped model fits statistics without an optimiser (memory banks, Gaussians, zero-shot)."""
        from anomalib.models.components import MemoryBankMixin

        if self.module is None:
            return False
        if isinstance(self.module, MemoryBankMixin):
            return True
        try:
            return self.module.configure_optimizers() is None
        except Exception:  # noqa: BLE001 - an optimiser sized from the trainer (steps): it has one
            return False

    @property
    def manual_optimisation(self) -> bool:
        return self.module is not None and not self.module.automatic_optimization

    def config(self) -> dict:
        return {"model": self.name, "anomalib_model": self.anomalib_model, "model_args": dict(self.model_args),
                "weights": self.weights, "input_size": self.input_size, "epochs": self.epochs,
                "batch_size": self.batch_size, "seed": self.seed, "device": str(self.device)}

    def _rebuild(self) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            self.module = self._build(self.image_size_).to(self.device)

    # -- batches --------------------------------------------------------------------------
    def _pre(self, images: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        """Images in [0, 1] through the module's pre-processor (as its Lightning callback would)."""
        pre = getattr(module or self.module, "pre_processor", None)
        images = images.to(self.device)
        if self._prepared or pre is None or pre.transform is None:
            return images
        return pre.transform(images)

    @staticmethod
    def _batch(images: torch.Tensor, labels: torch.Tensor | None = None):
        from anomalib.data import ImageBatch

        labels = torch.zeros(len(images), dtype=torch.bool) if labels is None else labels.bool()
        return ImageBatch(image=images, gt_label=labels.to(images.device))

    def _collate(self, items: list[dict]):
        images = torch.stack([it["image"] for it in items])
        return self._batch(images, torch.tensor([it["gt_label"] for it in items]))

    # -- training -------------------------------------------------------------------------
    def _max_epochs(self) -> int:
        own = self.module.trainer_arguments.get("max_epochs")
        if self.one_pass or self.epochs is None:  # a one-pass fit has the number of passes it needs (MH-PatchCore: 3)
            return int(own or 1)
        return int(self.epochs)

    def _trainer(self):
        from lightning.pytorch import Trainer

        args = {k: v for k, v in self.module.trainer_arguments.items()
                if k in ("gradient_clip_val", "gradient_clip_algorithm", "accumulate_grad_batches")}
        accel = "gpu" if self.device.type == "cuda" else "cpu"
        devices = [self.device.index or 0] if accel == "gpu" else 1
        return Trainer(max_epochs=self._max_epochs(), accelerator=accel, devices=devices, logger=False,
                       enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                       num_sanity_val_steps=0, limit_val_batches=0, deterministic=False, **args)

    def _wrap_training_step(self) -> None:
        """Add the regimes' penalty to the loss the module's training_step returns."""
        module, original = self.module, type(self.module).training_step

        def training_step(batch, *args, **kwargs):
            out = original(module, batch, *args, **kwargs)
            if self.penalty_ is None:
                return out
            self._prepared = True  # the callback has pre-processed batch.image already
            try:
                extra = self.penalty_(batch.image)
            finally:
                self._prepared = False
            if isinstance(out, dict):
                return {**out, "loss": out["loss"] + extra}
            return out + extra

        module.training_step = training_step

    def fit(self, data, ctx: FitContext | None = None) -> AnomalibAdapter:
        """One Lightning ``fit`` of the module on `data` (a fresh module first for one-pass models)."""
        ctx = ctx or FitContext()
        self.setup(data.image_size)
        if self.one_pass and self.fitted_:
            self._rebuild()
        if ctx.penalty is not None and (self.one_pass or self.manual_optimisation):
            raise ValueError(f"anomalib {self.anomalib_model} optimises {'nothing' if self.one_pass else 'manually'}, "
                             "so a regime's penalty (ewc, lwf, mas) cannot be added to its loss; use naive, replay, "
                             "cumulative, joint or per_task")
        seed = ctx.seed * 1000 + ctx.task_id
        loader = DataLoader(data, batch_size=self.batch_size, shuffle=True, collate_fn=self._collate,
                            generator=torch.Generator().manual_seed(seed))
        start = time.perf_counter()
        with torch.random.fork_rng(), _quiet_lightning():
            torch.manual_seed(seed)
            self.penalty_ = ctx.penalty
            self._wrap_training_step()
            self.module.train()  # predictions left it in eval mode; Lightning keeps the mode it finds
            try:
                with guarded(self.weights, self.anomalib_model):  # some fetch files when training starts (DSR)
                    self._trainer().fit(self.module, datamodule=_Data(loader))
            finally:
                self.penalty_ = None
                del self.module.training_step  # back to the class's method (deepcopy-able, picklable)
                self.module.trainer = None  # `self.log` outside a loop then only warns
            self.module.to(self.device)
            self.fitted_ = True
            for callback in ctx.on_trained:
                callback(self)
        log.info("task %d: fitted anomalib %s on %d images in %.1fs", ctx.task_id, self.anomalib_model, len(data),
                 time.perf_counter() - start)
        return self

    def training_loss(self, images: torch.Tensor) -> torch.Tensor:
        """The loss the module's own training_step returns (EWC's Fisher), outside the Lightning loop."""
        if self.one_pass or self.manual_optimisation:
            raise ValueError(f"anomalib {self.anomalib_model} has no loss to differentiate (it optimises "
                             f"{'nothing' if self.one_pass else 'manually'}); ewc and mas need one")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = type(self.module).training_step(self.module, self._batch(self._pre(images)), 0)
        return out["loss"] if isinstance(out, dict) else out

    def distill_outputs(self, module: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
        """The torch model's training-mode outputs (LwF, MAS): every floating tensor it returns."""
        out = module.model(self._pre(images, module))
        return [t for t in _tensors(out) if t.is_floating_point()]

    def regularised_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.model.parameters() if p.requires_grad]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.regularised_parameters()

    # -- prediction (GradientModel.predict batches the set through predict_batch) ------------
    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores (B,) and maps (B, H, W) from the module's validation_step (its InferenceBatch)."""
        self._require_fitted()
        self.module.eval()
        batch = self._batch(self._pre(images))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.module.validation_step(batch, 0)
        if out is None or getattr(out, "pred_score", None) is None and getattr(out, "anomaly_map", None) is None:
            out = self.module.model(batch.image)
        amap = getattr(out, "anomaly_map", None)
        maps = as_maps(amap.float(), tuple(images.shape[-2:])) if amap is not None else None
        score = getattr(out, "pred_score", None)
        if score is None:
            score = maps.amax(dim=(-2, -1))
        return score.float().reshape(len(images)).cpu(), None if maps is None else maps.cpu()


def _Data(loader: DataLoader):
    """A LightningDataModule serving `loader` (some models read ``trainer.datamodule``, e.g. to size a schedule)."""
    from lightning.pytorch import LightningDataModule

    class TaskData(LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return loader

    data = TaskData()
    data.train_batch_size = data.eval_batch_size = loader.batch_size
    return data


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's start-up banners (GPU available, ...) and its per-fit warnings, silenced for one fit."""
    loggers = [logging.getLogger(n) for n in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# -- `cl-iad models --all` ---------------------------------------------------------------------------
@dataclass
class SurveyRow:
    """What happened to one anomalib image model here: ``runs``, ``runs (random weights)``, ``needs weights``, ``fails``."""

    model: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    unified: bool = False


def survey_anomalib_models(names: list[str] | None = None, smoke: bool = True, image_size: int = 64,
                           try_random: bool = True, device: str = "cpu") -> list[SurveyRow]:
    """Try every image model of anomalib 2.7 (or `names`): build it offline and, with `smoke`, fit and predict.

    A model that builds with the network closed (``pre_trained=False`` where it has the switch; files
    already cached count) is then fitted for one epoch on 20 random images at `image_size` (112 px, then
    anomalib's own input size, when it fails at that one; batches of 4, or 1 for a model that demands it)
    and asked for two predictions; it ``runs`` if the scores are finite. A model whose build or training
    tries a download ``needs weights`` (with what it tried); with `try_random`, the unified models are then
    tried with random backbones, which shows the loop runs but not what the model scores. A missing
    optional package ``needs package``. Anything else ``fails``, with the first line of the error. Each row
    takes seconds to a minute on a CPU; the ViT-based models the longest.
    """
    from anomalib.models import image

    rows = []
    for name in names or list(image.__all__):
        start = time.perf_counter()
        with _scratch_cwd():  # anomalib defaults such as Draem's ./datasets/dtd are relative: keep them out
            status, reason = _survey_status(name, smoke, image_size, try_random, device)
        rows.append(SurveyRow(name, status, reason, time.perf_counter() - start, name in UNIFIED))
        log.info("%s: %s %s", name, status, reason)
    return rows


def _survey_status(name: str, smoke: bool, image_size: int, try_random: bool, device: str) -> tuple[str, str]:
    """(status, reason) of one model; never raises."""
    try:
        return _survey_one(name, smoke, image_size, "offline", device)
    except NeedsWeights as exc:
        reason = str(exc).split("(", 1)[-1].split("); fetch")[0]
        if not (try_random and name in UNIFIED):
            return "needs weights", reason
        try:
            note = _survey_one(name, smoke, image_size, "random", device)[1]
        except Exception as exc2:  # noqa: BLE001 - the survey reports, never stops
            return "needs weights", f"{reason}; with random weights: {_first_line(exc2)}"
        return "runs (random weights)", f"{note}; offline it needs {reason}"
    except ImportError as exc:
        return "needs package", _first_line(exc)
    except Exception as exc:  # noqa: BLE001 - the survey reports, never stops
        return "fails", _first_line(exc)


def _survey_one(name: str, smoke: bool, image_size: int, weights: str, device: str) -> tuple[str, str]:
    """Build one model (and, with `smoke`, fit and predict) at `image_size`, else at 112 px (a multiple of the
    ViTs' 14 and 16 px patches), else at anomalib's own size; returns (status, note) or raises the first error."""
    first: Exception | None = None
    for size in dict.fromkeys((image_size, 112, None)):
        try:
            maps = _try_size(name, smoke, image_size, size, weights, device)
        except NeedsWeights:
            raise
        except Exception as exc:  # noqa: BLE001 - another input size may work; the first error is the one reported
            first = first or exc
            continue
        notes = [maps] if maps else []
        if size != image_size:
            notes.append(f"input {size or 'anomalib default'} px ({_first_line(first, 90)} at {image_size} px)")
        if weights == "random":
            notes.append("random backbone weights: the loop runs, scores mean nothing")
        return ("runs" if smoke else "builds"), ", ".join(notes)
    raise first


def _try_size(name: str, smoke: bool, image_size: int, size: int | None, weights: str, device: str,
              batch_size: int = 4) -> str:
    from ..scenarios.base import ImageSet

    model = AnomalibAdapter(name, weights=weights, input_size=size, epochs=1, batch_size=batch_size, device=device)
    model.setup(image_size)
    if not smoke:
        return ""
    with _random_images(image_size) as data:
        try:
            model.fit(data, FitContext())
        except ValueError as exc:  # EfficientAd trains on batches of one image only
            if batch_size != 1 and "batch_size" in str(exc) and "1" in str(exc):
                return _try_size(name, smoke, image_size, size, weights, device, batch_size=1)
            raise
        pred = model.predict(ImageSet(data.samples[:2], image_size))
    if not torch.isfinite(torch.as_tensor(pred.pred_score)).all():
        raise FloatingPointError("non-finite scores after one epoch")
    return "with maps" if pred.anomaly_map is not None else "image scores only"


@contextlib.contextmanager
def _scratch_cwd() -> Iterator[None]:
    """Run the block in a temporary working directory, removed afterwards."""
    import os
    import tempfile

    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="cl_iad_survey_cwd_") as tmp:
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(here)


@contextlib.contextmanager
def _random_images(size: int, n: int = 20):
    """`n` random RGB images on disk, as an ImageSet (the survey's training set: DFKDE's 16 PCA components need 17)."""
    import tempfile
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from ..scenarios.base import ImageSet, Sample

    with tempfile.TemporaryDirectory(prefix="cl_iad_survey_") as tmp:
        rng = np.random.default_rng(0)
        samples = []
        for i in range(n):
            path = Path(tmp) / f"{i}.png"
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
            samples.append(Sample(path, 0, "survey"))
        yield ImageSet(samples, size)


def survey_table(rows: list[SurveyRow]) -> str:
    """The survey as aligned text, one model a line (what ``cl-iad models --all`` prints)."""
    lines = [f"{'anomalib model':20s} {'status':22s} {'s':>5s}  reason"]
    for r in rows:
        name = r.model + (" *" if r.unified else "")
        lines.append(f"{name:20s} {r.status:22s} {r.seconds:5.1f}  {r.reason}")
    lines.append("* unified multi-class model")
    return "\n".join(lines)
