"""The registry of the 15 benchmarked models: family, task type, regimes, presets.

Each model lives in its own file (``cl_iad/models/<name>.py``; PatchCore and PaDiM in
``cl_iad/strategies/models.py``) and is imported only when built. Constructor defaults are the
benchmark hyper-parameters, except the backbone, which defaults to the EfficientNet-Lite0
weights that ship with the package (the benchmark backbones need a weights file offline).

Presets are named sets of constructor arguments:

* ``benchmark``: the settings of our single-task MVTec AD table (backbone included; needs
  ``--weights`` for ResNet backbones, and a GPU for reasonable run times);
* ``light``: small networks, one or two epochs on the default backbone, for CPU runs and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from ..strategies.base import GRADIENT_REGIMES, REGIMES

FAMILIES = ("memory bank", "density/statistical", "normalizing flow", "reconstruction", "teacher-student")
TASK_TYPES = ("segmentation", "detection", "classification")


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model."""

    name: str
    title: str
    target: str  # "module:Class", imported lazily
    family: str
    task_type: str
    regimes: tuple[str, ...]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: str = ""

    def load(self) -> type:
        module, cls = self.target.split(":")
        return getattr(import_module(module), cls)

    @property
    def trains_by_gradient(self) -> bool:
        return "ewc" in self.regimes


def _frozen(name, title, target, family, task_type, benchmark, light=None, notes=""):
    return ModelInfo(name, title, target, family, task_type, REGIMES,
                     {"benchmark": benchmark, "light": light or {}}, notes)


def _gradient(name, title, target, family, task_type, benchmark, light, notes=""):
    return ModelInfo(name, title, target, family, task_type, GRADIENT_REGIMES,
                     {"benchmark": benchmark, "light": {"epochs": 1, "batch_size": 8, **light}}, notes)


_S = "cl_iad.strategies.models"
_M = "cl_iad.models"
MODEL_INFOS: tuple[ModelInfo, ...] = (
    _gradient("cfa", "CFA", f"{_M}.cfa:CFA", "memory bank", "segmentation",
              {"backbone": "wide_resnet50_2", "gamma_c": 1, "gamma_d": 1, "num_nearest_neighbors": 3,
               "num_hard_negative_features": 3, "radius": 1e-5, "epochs": 30, "batch_size": 32},
              {}, "centroids re-initialised from each task's images; descriptor trained by gradient"),
    _gradient("cflow", "CFLOW", f"{_M}.cflow:CFLOW", "normalizing flow", "segmentation",
              {"backbone": "wide_resnet50_2", "layers": ["layer2", "layer3"], "epochs": 50, "batch_size": 32},
              {"coupling_blocks": 2, "condition_vector": 32}),
    _gradient("csflow", "CS-Flow", f"{_M}.csflow:CSFlow", "normalizing flow", "segmentation",
              {"backbone": "wide_resnet50_2", "layers": ["layer3"], "cross_conv_hidden_channels": 1024,
               "n_coupling_blocks": 4, "clamp": 3, "epochs": 240, "batch_size": 16},
              {"cross_conv_hidden_channels": 32, "n_coupling_blocks": 2},
              "anomalib's EfficientNet-B5 extractor needs a download; one stage of our backbone instead"),
    _frozen("dfkde", "DFKDE", f"{_M}.dfkde:DFKDE", "density/statistical", "classification",
            {"backbone": "resnet18", "layers": ["layer3"], "n_pca_components": 16},
            {"n_pca_components": 4}, "image scores only; pixel metrics NaN"),
    _frozen("dfm", "DFM", f"{_M}.dfm:DFM", "density/statistical", "segmentation",
            {"backbone": "resnet50", "layers": ["layer3"], "pooling_kernel_size": 4, "n_comps": 0.97,
             "score_type": "fre"}, {"pooling_kernel_size": 2}),
    _gradient("draem", "DRAEM", f"{_M}.draem:DRAEM", "reconstruction", "segmentation",
              {"epochs": 700, "batch_size": 8, "anomaly_source": "dtd", "dtd_dir": "datasets/dtd/images"},
              {"recon_width": 16, "disc_width": 16},
              "anomaly source: DTD folder if given, else Perlin noise (or our synthetic textures)"),
    _gradient("dsr", "DSR", f"{_M}.dsr:DSR", "reconstruction", "segmentation",
              {"epochs": 700, "batch_size": 8, "vq_weights": "weights/vq_model_pretrained_128_4096.pckl"},
              {},
              "cannot train without its pretrained VQ-VAE weights file (vq_weights=...); no offline fallback"),
    _gradient("fastflow", "FastFlow", f"{_M}.fastflow:FastFlow", "normalizing flow", "segmentation",
              {"backbone": "resnet18", "flow_steps": 8, "hidden_ratio": 1.0, "conv3x3_only": False, "epochs": 500,
               "batch_size": 32}, {"flow_steps": 2, "hidden_ratio": 0.5}),
    _gradient("ganomaly", "GANomaly", f"{_M}.ganomaly:GANomaly", "reconstruction", "classification",
              {"n_features": 64, "latent_vec_size": 100, "epochs": 100, "batch_size": 32},
              {"n_features": 16, "latent_vec_size": 32},
              "the benchmark table lists it under segmentation, but it gives no anomaly map: pixel metrics NaN"),
    _frozen("padim", "PaDiM", f"{_S}:Padim", "density/statistical", "segmentation",
            {"backbone": "resnet18", "layers": ["layer1", "layer2", "layer3"]}),
    _frozen("patchcore", "PatchCore", f"{_S}:PatchCore", "memory bank", "segmentation",
            {"backbone": "wide_resnet50_2", "layers": ["layer2", "layer3"], "coreset_ratio": 0.1,
             "num_neighbors": 9}),
    _gradient("reverse_distillation", "Reverse Distillation", f"{_M}.reverse_distillation:ReverseDistillation",
              "teacher-student", "segmentation",
              {"backbone": "wide_resnet50_2", "layers": ["layer1", "layer2", "layer3"], "epochs": 200,
               "batch_size": 32}, {},
              "non-ResNet backbones are lifted to ResNet widths by fixed orthonormal projections"),
    _frozen("rkde", "RKDE", f"{_M}.rkde:RKDE", "density/statistical", "detection",
            {"backbone": "resnet18", "layers": ["layer2", "layer3"], "proposer": "faster_rcnn",
             "proposer_weights": "weights/fasterrcnn_resnet50_fpn.pth", "n_pca_components": 16},
            {"n_pca_components": 8},
            "region scores only (boxes, no pixel map): pixel metrics NaN; offline grid proposer by default"),
    _gradient("stfpm", "STFPM", f"{_M}.stfpm:STFPM", "teacher-student", "segmentation",
              {"backbone": "resnet18", "layers": ["layer1", "layer2", "layer3"], "epochs": 100, "batch_size": 32},
              {}),
    _gradient("uflow", "U-Flow", f"{_M}.uflow:UFlow", "normalizing flow", "segmentation",
              {"backbone": "wide_resnet50_2", "flow_steps": 4, "epochs": 200, "batch_size": 32},
              {"flow_steps": 1},
              "anomalib's default extractor (two CaiT nets) needs downloads; ResNet-style extractor instead"),
)
REGISTRY: dict[str, ModelInfo] = {info.name: info for info in MODEL_INFOS}
ALIASES = {"rd": "reverse_distillation", "reverse-distillation": "reverse_distillation", "cs-flow": "csflow",
           "u-flow": "uflow", "cs_flow": "csflow", "u_flow": "uflow"}


def model_info(name: str) -> ModelInfo:
    """The registry entry for `name` (case-insensitive; a few aliases such as 'rd')."""
    key = ALIASES.get(name.lower(), name.lower())
    try:
        return REGISTRY[key]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(REGISTRY)} (see 'cl-iad models')") from None


def preset_kwargs(name: str, preset: str | None) -> dict[str, Any]:
    """The constructor arguments of a named preset (empty for None)."""
    if preset is None:
        return {}
    info = model_info(name)
    try:
        return dict(info.presets[preset])
    except KeyError:
        raise ValueError(f"model {info.name} has no preset {preset!r}; choose from {', '.join(info.presets)}") from None


def build_model(name: str, preset: str | None = None, **kwargs: Any):
    """Construct a registered model: class defaults, then the preset, then explicit `kwargs`.

    Explicit arguments whose value is None are ignored, so CLI options left unset do not
    override a preset.
    """
    info = model_info(name)
    args = {**preset_kwargs(info.name, preset), **{k: v for k, v in kwargs.items() if v is not None}}
    cls = info.load()
    try:
        model = cls(**args)
    except TypeError as exc:  # an argument this model does not take, e.g. epochs for PatchCore
        raise ValueError(f"{info.name} does not accept these settings {sorted(args)}: {exc}. "
                         "See 'cl-iad models --presets' for its settings.") from exc
    model.build_args_ = {"name": info.name, **args}  # how to rebuild it (saved models, cl_iad.deploy)
    model.preset_ = preset  # recorded in config.json so reports never average two presets together
    return model
