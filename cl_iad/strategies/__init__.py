"""Continual strategies: anomaly models under continual regimes."""

from .base import REGIMES, FeatureCache, Predictions, Strategy
from .buffers import ReplayBuffer
from .models import MODELS, build_model

__all__ = ["REGIMES", "MODELS", "FeatureCache", "Predictions", "ReplayBuffer", "Strategy", "build_model"]
