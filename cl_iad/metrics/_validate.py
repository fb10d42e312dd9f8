"""Input checks shared by every metric: conversion from torch, 0/1 labels, finite scores, shapes."""

from __future__ import annotations

import warnings

import numpy as np


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined on this input (e.g. one class only) and NaN is returned."""


def to_numpy(x) -> np.ndarray:
    """A numpy view of an array-like or a torch tensor (any device; bfloat16 is widened)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        try:
            return x.numpy()
        except TypeError:  # bfloat16 and friends have no numpy dtype
            return x.float().numpy()
    return np.asarray(x)


def as_scores(x: np.ndarray) -> np.ndarray:
    """Scores as float32 or float64 without losing information: float32 stays float32 (ties and
    comparisons are then exactly those of the input), narrower floats are widened exactly."""
    if x.dtype in (np.float32, np.float64):
        return x
    if x.dtype == np.float16:
        return x.astype(np.float32)
    return x.astype(np.float64)


def check_finite(x: np.ndarray, what: str) -> None:
    """Raise naming how many NaN and inf values `x` holds."""
    if np.isfinite(x).all():
        return
    n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    raise ValueError(
        f"{what} contain {n_nan} NaN and {n_inf} inf value(s) out of {x.size}; metrics need finite scores. "
        "Fix the model output (often a division by zero in normalisation) or replace them, e.g. with "
        "np.nan_to_num, before evaluating")


def check_binary(g: np.ndarray, what: str) -> np.ndarray:
    """`g` as a bool array, raising if it holds anything but 0 and 1."""
    if g.dtype == bool:
        return g
    bad = (g != 0) & (g != 1)
    if bad.any():
        vals = np.unique(g[bad])[:5].tolist()
        hint = " They look like 0/255 masks: divide by 255." if 255 in vals else ""
        raise ValueError(
            f"{what} must be 0/1 with 1 = anomalous; {int(bad.sum())} value(s) are neither, e.g. {vals}.{hint} "
            f"Binarise them first, e.g. `{what.split()[-1]} > 0.5`")
    return g != 0


def prepare_scores(scores, labels, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Image-level scores (N,) and 0/1 labels (N,), checked, as (float scores, bool labels)."""
    s, y = to_numpy(scores), to_numpy(labels)
    if s.shape != y.shape:
        raise ValueError(f"{what}: scores have shape {s.shape} but labels have shape {y.shape}; "
                         "pass one score and one label per image, e.g. scores.reshape(-1)")
    s = as_scores(s).ravel()
    check_finite(s, f"{what} scores")
    return s, check_binary(y.ravel(), f"{what} labels")


def prepare_maps(maps, masks, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps and ground-truth masks as (N, H, W) float and bool arrays, checked.

    (H, W) is read as one image and (N, 1, H, W) as N single-channel images.
    """
    m, g = to_numpy(maps), to_numpy(masks)
    if m.shape != g.shape:
        raise ValueError(f"{what}: maps have shape {m.shape} but masks have shape {g.shape}; they must match "
                         "pixel for pixel (resize the maps to the mask size, or squeeze a channel axis)")
    if m.ndim == 2:
        m, g = m[None], g[None]
    elif m.ndim == 4 and m.shape[1] == 1:
        m, g = m[:, 0], g[:, 0]
    if m.ndim != 3:
        raise ValueError(f"{what}: expected maps of shape (N, H, W), got {m.shape}")
    m = as_scores(m)
    check_finite(m, f"{what} maps")
    return m, check_binary(g, f"{what} masks")


def undefined(what: str, reason: str) -> float:
    """Warn that `what` is undefined for `reason` and return NaN."""
    warnings.warn(f"{what} is undefined: {reason}; returning NaN", UndefinedMetricWarning, stacklevel=3)
    return float("nan")
