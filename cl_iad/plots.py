"""Plots of accuracy matrices and forgetting curves (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def matrix_heatmap(R: pd.DataFrame, metric: str, path: Path, title: str = "") -> Path:
    """Heatmap of a T x T matrix with the value written in each cell."""
    plt = _plt()
    t = len(R)
    fig, ax = plt.subplots(figsize=(1.1 * t + 2.5, 0.9 * t + 1.8))
    values = R.to_numpy(dtype=float)
    im = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(t), R.columns, rotation=45, ha="right")
    ax.set_yticks(range(t), R.index)
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after training")
    for i in range(t):
        for j in range(t):
            v = values[i, j]
            ax.text(j, i, "nan" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                    color="white" if not np.isnan(v) and v < 0.6 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title or metric)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def forgetting_curves(R: pd.DataFrame, metric: str, path: Path, title: str = "") -> Path:
    """Score of each task over training steps, from the step it was trained on."""
    plt = _plt()
    t = len(R)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    values = R.to_numpy(dtype=float)
    for j, name in enumerate(R.columns):
        steps = np.arange(j, t)
        ax.plot(steps, values[j:, j], marker="o", label=name)
    ax.set_xticks(range(t), [f"{i}:{n}" for i, n in enumerate(R.index)], rotation=30, ha="right")
    ax.set_xlabel("after training task")
    ax.set_ylabel(metric)
    ax.set_ylim(0.0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title or f"forgetting curves: {metric}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
