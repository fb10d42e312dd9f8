"""Continual strategies: anomaly models under continual regimes."""

from .base import GRADIENT_REGIMES, REGIMES, FeatureCache, Predictions, Strategy
from .buffers import ReplayBuffer
from .models import build_model

__all__ = ["GRADIENT_REGIMES", "REGIMES", "FeatureCache", "Predictions", "ReplayBuffer", "Strategy", "build_model"]
