"""Continual strategies: the template (``base.py``) and one file per regime plugin."""

from ..models.registry import build_model
from .base import EVAL_MODES, FeatureCache, Predictions, Strategy
from .buffers import ReplayBuffer
from .plugin import RegimePlugin
from .registry import parse_regime, regime_names, regime_plugins, regimes_for

__all__ = ["EVAL_MODES", "FeatureCache", "Predictions", "RegimePlugin", "ReplayBuffer", "Strategy", "build_model",
           "parse_regime", "regime_names", "regime_plugins", "regimes_for"]
