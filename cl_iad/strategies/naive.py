"""Naive fine-tuning: each task's data only (the lower bound of every benchmark)."""

from __future__ import annotations

from .plugin import RegimePlugin


class Naive(RegimePlugin):
    """Fit on task t's data only: a frozen-feature model replaces its state, a gradient-trained
    one continues training from its current weights."""

    name = "naive"
    summary = "fine-tune on each task's data only"
