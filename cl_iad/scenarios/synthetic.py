"""Deterministic generator of industrial-looking categories, written in MVTec AD layout.

Each category is a texture (weave, grid, stripes, grain) or an object (disc, ring, bracket,
screw). Normal images vary by small shifts, rotations, lighting and sensor noise; defective
images carry one defect whose pixel-exact mask is written next to them. Because the output is
a real MVTec AD tree, the same loader reads synthetic and real data.
"""

from __future__ import annotations

import itertools
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

TEXTURES = ("weave", "grid", "stripes", "grain")
OBJECTS = ("disc", "ring", "bracket", "screw")
CATEGORIES = tuple(sorted(TEXTURES + OBJECTS))
DEFECTS = ("scratch", "hole", "stain", "crack", "missing_part", "contamination")

# Base colours per category (RGB, 0..1). Different hues and structures make the categories
# far apart in backbone feature space, so a model fitted on one forgets another.
_PALETTE = {
    "weave": ((0.55, 0.42, 0.30), (0.80, 0.68, 0.50)),
    "grid": ((0.15, 0.20, 0.25), (0.70, 0.75, 0.80)),
    "stripes": ((0.20, 0.35, 0.60), (0.85, 0.85, 0.90)),
    "grain": ((0.45, 0.45, 0.40), (0.60, 0.58, 0.52)),
    "disc": ((0.10, 0.10, 0.12), (0.75, 0.72, 0.65)),
    "ring": ((0.25, 0.30, 0.20), (0.85, 0.70, 0.30)),
    "bracket": ((0.85, 0.85, 0.88), (0.35, 0.38, 0.42)),
    "screw": ((0.92, 0.92, 0.92), (0.50, 0.50, 0.55)),
}
_DEFECTS_FOR = {
    **{t: ("scratch", "hole", "stain", "crack", "contamination") for t in TEXTURES},
    **{o: ("scratch", "hole", "stain", "missing_part", "contamination") for o in OBJECTS},
}


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes of one generated category."""

    image_size: int = 128
    n_train: int = 20
    n_test_good: int = 8
    n_test_per_defect: int = 3
    seed: int = 0


def _grid(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in [0, 1), jittered by a small random rotation and shift."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    angle = rng.normal(0.0, 0.04)
    dx, dy = rng.normal(0.0, 0.02, size=2)
    c, s = np.cos(angle), np.sin(angle)
    x = c * (xx - 0.5) - s * (yy - 0.5) + 0.5 + dx
    y = s * (xx - 0.5) + c * (yy - 0.5) + 0.5 + dy
    return x, y


def _smooth_noise(size: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Bilinear value noise in [0, 1] with `cells` lattice cells per side."""
    lattice = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, size, endpoint=False)
    i = t.astype(int)
    f = t - i
    f = f * f * (3 - 2 * f)
    a = lattice[np.ix_(i, i)]
    b = lattice[np.ix_(i, i + 1)]
    c = lattice[np.ix_(i + 1, i)]
    d = lattice[np.ix_(i + 1, i + 1)]
    fy, fx = f[:, None], f[None, :]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _pattern(category: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Intensity pattern in [0, 1] and the object's foreground mask (all ones for textures)."""
    x, y = _grid(size, rng)
    fg = np.ones((size, size), dtype=bool)
    if category == "weave":
        p = 0.5 + 0.25 * np.sin(2 * np.pi * 10 * x) * np.sign(np.sin(2 * np.pi * 10 * y))
        p += 0.25 * np.sin(2 * np.pi * 10 * y) * np.sign(np.sin(2 * np.pi * 10 * x + np.pi / 2))
    elif category == "grid":
        p = ((np.abs(np.sin(np.pi * 8 * x)) < 0.18) | (np.abs(np.sin(np.pi * 8 * y)) < 0.18)) * 1.0
    elif category == "stripes":
        p = 0.5 + 0.5 * np.sin(2 * np.pi * 6 * (x + 0.6 * y))
    elif category == "grain":
        p = 0.6 * _smooth_noise(size, rng, 16) + 0.4 * _smooth_noise(size, rng, 48)
    else:
        r = np.hypot(x - 0.5, y - 0.5)
        theta = np.arctan2(y - 0.5, x - 0.5)
        if category == "disc":
            fg = r < 0.34
            p = np.where(fg, 0.8 + 0.2 * np.cos(6 * theta) * (r > 0.25), 0.0)
        elif category == "ring":
            fg = (r < 0.38) & (r > 0.22)
            p = np.where(fg, 0.7 + 0.3 * np.sin(2 * np.pi * r * 12), 0.0)
        elif category == "bracket":
            fg = ((np.abs(x - 0.5) < 0.32) & (np.abs(y - 0.30) < 0.08)) | (
                (np.abs(x - 0.26) < 0.08) & (y > 0.22) & (y < 0.78)
            )
            fg |= (np.abs(x - 0.5) < 0.32) & (np.abs(y - 0.70) < 0.08)
            p = np.where(fg, 0.9, 0.0)
        elif category == "screw":
            fg = (np.abs(x - 0.5) < 0.08) & (y > 0.25) & (y < 0.85)
            fg |= (np.hypot(x - 0.5, y - 0.22) < 0.14)
            thread = 0.75 + 0.25 * np.sign(np.sin(2 * np.pi * 28 * (y + 0.3 * x)))
            p = np.where(fg, np.where(y > 0.3, thread, 0.95), 0.0)
        else:
            raise ValueError(f"unknown synthetic category {category!r}; choose from {CATEGORIES}")
    return np.clip(p, 0.0, 1.0), fg


def render_normal(category: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A normal RGB image in [0, 1] of shape (H, W, 3) and its foreground mask."""
    p, fg = _pattern(category, size, rng)
    dark, light = (np.asarray(c) for c in _PALETTE[category])
    img = dark[None, None, :] * (1 - p[..., None]) + light[None, None, :] * p[..., None]
    if category in OBJECTS:
        bg = np.asarray(_PALETTE[category][0]) * 0.6
        img = np.where(fg[..., None], img, bg[None, None, :])
    img = img * rng.uniform(0.93, 1.07) + rng.normal(0, 0.015, size=img.shape)
    return np.clip(img, 0.0, 1.0), fg


def _line_mask(size: int, pts: np.ndarray, width: float) -> np.ndarray:
    """Boolean mask of a polyline through `pts` (in pixels) with the given half-width."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    mask = np.zeros((size, size), dtype=bool)
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
        mask |= np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy)) <= width
    return mask


def _defect_mask(defect: str, size: int, fg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Where the defect lies, placed on the object's foreground."""
    ys, xs = np.nonzero(fg)
    k = rng.integers(len(ys))
    cy, cx = float(ys[k]), float(xs[k])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    s = size / 128.0
    if defect == "scratch":
        angle = rng.uniform(0, np.pi)
        half = rng.uniform(14, 26) * s
        d = np.array([np.cos(angle), np.sin(angle)]) * half
        mask = _line_mask(size, np.array([[cx - d[0], cy - d[1]], [cx + d[0], cy + d[1]]]), 1.2 * s)
    elif defect == "hole":
        mask = np.hypot(xx - cx, yy - cy) <= rng.uniform(4, 8) * s
    elif defect == "stain":
        blob = _smooth_noise(size, rng, 8)
        mask = (np.hypot((xx - cx) / 1.4, yy - cy) <= rng.uniform(9, 14) * s) & (blob > 0.35)
    elif defect == "crack":
        steps = rng.normal(0, 1, size=(6, 2)) * 6 * s
        pts = np.vstack([[cx, cy], np.array([cx, cy]) + np.cumsum(steps, axis=0)])
        mask = _line_mask(size, pts, 1.0 * s)
    elif defect == "missing_part":
        angle = rng.uniform(-np.pi, np.pi)
        theta = np.arctan2(yy - size / 2, xx - size / 2)
        wedge = np.abs(np.angle(np.exp(1j * (theta - angle)))) < 0.35
        mask = wedge & fg
        if mask.sum() < 10:  # thin objects: cut a block out instead
            mask = (np.abs(xx - cx) < 8 * s) & (np.abs(yy - cy) < 8 * s) & fg
    elif defect == "contamination":
        mask = np.zeros((size, size), dtype=bool)
        for _ in range(int(rng.integers(3, 7))):
            px, py = cx + rng.normal(0, 6 * s), cy + rng.normal(0, 6 * s)
            mask |= np.hypot(xx - px, yy - py) <= rng.uniform(1.5, 3) * s
    else:
        raise ValueError(f"unknown defect {defect!r}; choose from {DEFECTS}")
    return mask


def _apply_defect(
    img: np.ndarray, mask: np.ndarray, defect: str, category: str, rng: np.random.Generator
) -> np.ndarray:
    """Paint the defect's appearance into `img` where `mask` is set."""
    out = img.copy()
    m = mask[..., None]
    if defect in ("scratch", "crack"):
        colour = np.full(3, 0.95 if img.mean() < 0.5 else 0.05)
    elif defect == "hole":
        colour = np.full(3, 0.02)
    elif defect == "stain":
        colour = np.array([0.45, 0.25, 0.05]) * 0.6 + img.mean(axis=(0, 1)) * 0.2
    elif defect == "missing_part":
        colour = np.asarray(_PALETTE[category][0]) * 0.6
    else:  # contamination
        colour = rng.choice([np.array([0.9, 0.1, 0.1]), np.array([0.1, 0.8, 0.2])])
    out = np.where(m, colour[None, None, :] + rng.normal(0, 0.01, size=img.shape), out)
    return np.clip(out, 0.0, 1.0)


def _seed_for(category: str, seed: int, split: str, index: int) -> int:
    """A stable per-image seed, independent of generation order and Python's hash salt."""
    return zlib.crc32(f"{category}/{split}/{index}/{seed}".encode())


def _save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 255).round().astype(np.uint8)).save(path)


def generate_category(category: str, root: Path | str, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write one category in MVTec AD layout under `root/category` and return that path."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown synthetic category {category!r}; choose from {', '.join(CATEGORIES)}")
    out = Path(root) / category
    size = spec.image_size
    for i in range(spec.n_train):
        img, _ = render_normal(category, size, np.random.default_rng(_seed_for(category, spec.seed, "train", i)))
        _save(img, out / "train" / "good" / f"{i:03d}.png")
    for i in range(spec.n_test_good):
        img, _ = render_normal(category, size, np.random.default_rng(_seed_for(category, spec.seed, "good", i)))
        _save(img, out / "test" / "good" / f"{i:03d}.png")
    for defect in _DEFECTS_FOR[category]:
        for i in range(spec.n_test_per_defect):
            rng = np.random.default_rng(_seed_for(category, spec.seed, defect, i))
            img, fg = render_normal(category, size, rng)
            mask = _defect_mask(defect, size, fg, rng)
            img = _apply_defect(img, mask, defect, category, rng)
            _save(img, out / "test" / defect / f"{i:03d}.png")
            mask_img = Image.fromarray(mask.astype(np.uint8) * 255)
            (out / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            mask_img.save(out / "ground_truth" / defect / f"{i:03d}_mask.png")
    return out


def generate(
    root: Path | str,
    categories: tuple[str, ...] | list[str] = CATEGORIES,
    spec: SyntheticSpec = SyntheticSpec(),
) -> Path:
    """Write the chosen categories under `root` (skipping ones already complete) and return root.

    A marker file records the spec, so a root generated with other settings is rebuilt rather
    than silently reused.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for category in categories:
        marker = root / category / ".cl_iad_synthetic"
        stamp = repr(spec)
        if marker.exists() and marker.read_text() == stamp:
            continue
        if (root / category).exists():
            import shutil

            shutil.rmtree(root / category)
        generate_category(category, root, spec)
        marker.write_text(stamp)
        log.info("generated synthetic category %s under %s", category, root)
    return root
