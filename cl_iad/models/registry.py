"""The model registry: what each model declares about itself, found where it is defined.

Each model lives in ``cl_iad/models/<name>.py`` and declares its name, title, family, task
type, presets and notes once, as class attributes of an
:class:`~cl_iad.models.base.AnomalyModel` subclass. The registry reads them: ``model_info(name)``
imports only that model's file, and ``MODEL_INFOS`` (every model, for ``cl-iad models``)
imports every file in this package that defines a model. Adding a model is therefore one new
file (and its test); nothing here changes.

Presets are named sets of constructor arguments:

* ``benchmark``: the settings of our single-task MVTec AD table (backbone included);
* ``light``: small networks, one or two epochs on the default backbone, for CPU runs and tests.
"""

from __future__ import annotations

import pkgutil
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from .base import FAMILIES, TASK_TYPES, AnomalyModel

__all__ = ["FAMILIES", "MODEL_INFOS", "REGISTRY", "TASK_TYPES", "ModelInfo", "build_model", "model_info",  # noqa: F822
           "preset_kwargs"]

# Modules of this package that hold no model of their own.
_NOT_MODELS = frozenset({"base", "frozen", "trainable", "offline", "registry", "ops"})


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model (read from its class)."""

    name: str
    title: str
    target: str  # "module:Class"
    family: str
    task_type: str
    trains_by_gradient: bool
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: str = ""

    def load(self) -> type:
        module, cls = self.target.split(":")
        return getattr(import_module(module), cls)

    @classmethod
    def of(cls, model_cls: type) -> ModelInfo:
        return cls(model_cls.name, model_cls.title or model_cls.name, f"{model_cls.__module__}:{model_cls.__name__}",
                   model_cls.family, model_cls.task_type, model_cls.trains_by_gradient, dict(model_cls.presets),
                   model_cls.notes)


def _models_in(module_name: str) -> list[type]:
    """The model classes defined (not imported) in one module of this package."""
    module = import_module(f"{__package__}.{module_name}")
    return [obj for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, AnomalyModel) and obj.__module__ == module.__name__
            and "name" in vars(obj)]


def _all_infos() -> tuple[ModelInfo, ...]:
    names = sorted(m.name for m in pkgutil.iter_modules(import_module(__package__).__path__)
                   if m.name not in _NOT_MODELS and not m.name.startswith("_"))
    return tuple(ModelInfo.of(cls) for n in names for cls in _models_in(n))


def __getattr__(attr: str):
    # MODEL_INFOS and REGISTRY import every model file, so they are built on first use only.
    if attr == "MODEL_INFOS":
        return _all_infos()
    if attr == "REGISTRY":
        return {info.name: info for info in _all_infos()}
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


ALIASES = {"rd": "reverse_distillation", "reverse-distillation": "reverse_distillation", "cs-flow": "csflow",
           "u-flow": "uflow", "cs_flow": "csflow", "u_flow": "uflow"}


def model_info(name: str) -> ModelInfo:
    """The registry entry for `name` (case-insensitive; a few aliases such as 'rd')."""
    key = ALIASES.get(name.lower(), name.lower())
    if key.isidentifier() and key not in _NOT_MODELS:
        try:
            found = [cls for cls in _models_in(key) if cls.name == key]
        except ModuleNotFoundError:
            found = []
        if found:
            return ModelInfo.of(found[0])
    names = ", ".join(info.name for info in _all_infos())
    raise ValueError(f"unknown model {name!r}; choose from {names} (see 'cl-iad models')")


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
