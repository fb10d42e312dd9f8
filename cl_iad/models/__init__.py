"""Anomaly models: one contract (``base.py``), two base classes (``frozen.py``, ``trainable.py``),
one file per model, and the registry that reads what each model declares (``registry.py``)."""

from .base import AnomalyModel, FitContext, Predictions, resolve_device
from .registry import ModelInfo, build_model, model_info, preset_kwargs

__all__ = ["MODEL_INFOS", "REGISTRY", "AnomalyModel", "FitContext", "ModelInfo", "Predictions", "build_model",
           "model_info", "preset_kwargs", "resolve_device"]


def __getattr__(attr: str):
    # every model file is imported only when the full list is asked for
    if attr in ("MODEL_INFOS", "REGISTRY"):
        from . import registry

        return getattr(registry, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
