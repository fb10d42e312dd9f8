"""Continual strategies: anomaly models under continual regimes."""

from .base import GRADIENT_REGIMES, REGIMES, FeatureCache, Predictions, Strategy
from .buffers import ReplayBuffer
from .models import MODELS, build_model

__all__ = ["GRADIENT_REGIMES", "MODELS", "REGIMES", "FeatureCache", "Predictions", "ReplayBuffer", "Strategy", "build_model"]
