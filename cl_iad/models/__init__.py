"""The benchmarked anomaly models, one file each, and their registry (see ``registry.py``)."""

from .registry import MODEL_INFOS, REGISTRY, ModelInfo, build_model, model_info, preset_kwargs

__all__ = ["MODEL_INFOS", "REGISTRY", "ModelInfo", "build_model", "model_info", "preset_kwargs"]
