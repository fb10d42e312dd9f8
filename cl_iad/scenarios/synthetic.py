"""Deterministic generator of industrial-looking categories, written in MVTec AD layout.

Each category is a texture (weave, grid, stripes, grain) or an object (disc, ring, bracket,
screw). Normal images vary by small shifts, rotations, lighting and sensor noise; defective
images carry one defect whose pixel-exact mask is written next to them. Because the output is
a real MVTec AD tree, the same loader reads synthetic and real data.

:func:`generate_mvtec_scale` writes a stream of MVTec AD's size: its 15 categories with their exact
numbers of training, good test and defective test images (3,629 / 467 / 1,258), each drawn from
one of our 8 categories (textures for textures, objects for objects; a category used twice or
three times gets another colour variant and its own images).
"""

from __future__ import annotations

import itertools
import logging
import zlib
from dataclasses import dataclass
from functools import partial
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

# MVTec AD's 15 categories: (training, good test, defective test) images. Bergmann et al., "MVTec AD:
# a comprehensive real-world dataset for unsupervised anomaly detection", CVPR 2019, Table 1.
MVTEC_AD_COUNTS: dict[str, tuple[int, int, int]] = {
    "bottle": (209, 20, 63), "cable": (224, 58, 92), "capsule": (219, 23, 109), "carpet": (280, 28, 89),
    "grid": (264, 21, 57), "hazelnut": (391, 40, 70), "leather": (245, 32, 92), "metal_nut": (220, 22, 93),
    "pill": (267, 26, 141), "screw": (320, 41, 119), "tile": (230, 33, 84), "toothbrush": (60, 12, 30),
    "transistor": (213, 60, 40), "wood": (247, 19, 60), "zipper": (240, 32, 119),
}
# The synthetic category (and colour variant) that stands in for each MVTec AD category: textures
# for the 5 textures, objects for the 10 objects, by rough look-alike. Variant k rolls the RGB
# channels by k, so a category used twice gives two tasks far apart in feature space.
MVTEC_SCALE_BASES: dict[str, tuple[str, int]] = {
    "carpet": ("weave", 0), "grid": ("grid", 0), "leather": ("grain", 0), "tile": ("grid", 1),
    "wood": ("stripes", 0), "zipper": ("weave", 1),
    "bottle": ("disc", 0), "hazelnut": ("disc", 1), "pill": ("disc", 2), "cable": ("ring", 0),
    "metal_nut": ("ring", 1), "screw": ("screw", 0), "capsule": ("screw", 1), "transistor": ("bracket", 0),
    "toothbrush": ("bracket", 1),
}
MVTEC_CATEGORIES = tuple(sorted(MVTEC_AD_COUNTS))
LAYOUTS = ("default", "mvtec_scale")


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


def _save(img: np.ndarray, path: Path, variant: int = 0, compress_level: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if variant:
        img = np.roll(img, variant, axis=-1)  # another colour scheme for a category used more than once
    options = {} if compress_level is None else {"compress_level": compress_level}
    Image.fromarray((img * 255).round().astype(np.uint8)).save(path, **options)


@dataclass(frozen=True)
class CategoryPlan:
    """What one generated category folder holds: `name` drawn as `base` (colour `variant`), and its counts."""

    name: str
    base: str
    variant: int
    n_train: int
    n_test_good: int
    defects: tuple[tuple[str, int], ...]  # (defect, images)

    @property
    def n_test(self) -> int:
        return self.n_test_good + sum(n for _, n in self.defects)


def default_plan(category: str, spec: SyntheticSpec) -> CategoryPlan:
    """A built-in category as itself: `spec`'s counts, `n_test_per_defect` images of each of its defects."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown synthetic category {category!r}; choose from {', '.join(CATEGORIES)}")
    return CategoryPlan(category, category, 0, spec.n_train, spec.n_test_good,
                        tuple((d, spec.n_test_per_defect) for d in _DEFECTS_FOR[category]))


def mvtec_scale_plan(category: str) -> CategoryPlan:
    """MVTec AD `category`'s exact counts, drawn from its stand-in; defective images spread evenly over 5 defects."""
    if category not in MVTEC_AD_COUNTS:
        raise ValueError(f"unknown MVTec AD category {category!r} for the mvtec_scale layout; choose from "
                         f"{', '.join(MVTEC_CATEGORIES)}")
    base, variant = MVTEC_SCALE_BASES[category]
    n_train, n_good, n_bad = MVTEC_AD_COUNTS[category]
    kinds = _DEFECTS_FOR[base]
    q, r = divmod(n_bad, len(kinds))
    return CategoryPlan(category, base, variant, n_train, n_good,
                        tuple((d, q + (k < r)) for k, d in enumerate(kinds)))


def write_category(plan: CategoryPlan, root: Path | str, image_size: int, seed: int = 0,
                   compress_level: int | None = None) -> Path:
    """Write one category in MVTec AD layout under `root/plan.name` and return that path.

    Each image's random state depends only on the folder name, split, index and seed, so the
    same image comes out whatever else is generated. `compress_level` (PNG, 0-9; None: PIL's
    default) trades file size for speed: encoding is most of the time at 256 px.
    """
    out = Path(root) / plan.name
    name, base, size, variant = plan.name, plan.base, image_size, plan.variant
    save = partial(_save, variant=variant, compress_level=compress_level)
    for i in range(plan.n_train):
        img, _ = render_normal(base, size, np.random.default_rng(_seed_for(name, seed, "train", i)))
        save(img, out / "train" / "good" / f"{i:03d}.png")
    for i in range(plan.n_test_good):
        img, _ = render_normal(base, size, np.random.default_rng(_seed_for(name, seed, "good", i)))
        save(img, out / "test" / "good" / f"{i:03d}.png")
    for defect, count in plan.defects:
        for i in range(count):
            rng = np.random.default_rng(_seed_for(name, seed, defect, i))
            img, fg = render_normal(base, size, rng)
            mask = _defect_mask(defect, size, fg, rng)
            img = _apply_defect(img, mask, defect, base, rng)
            save(img, out / "test" / defect / f"{i:03d}.png")
            mask_img = Image.fromarray(mask.astype(np.uint8) * 255)
            (out / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            mask_img.save(out / "ground_truth" / defect / f"{i:03d}_mask.png")
    return out


def generate_category(category: str, root: Path | str, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write one built-in category in MVTec AD layout under `root/category` and return that path."""
    return write_category(default_plan(category, spec), root, spec.image_size, spec.seed)


def _write_plans(root: Path, plans: list[CategoryPlan], image_size: int, seed: int, progress: bool = False,
                 compress_level: int | None = None) -> Path:
    """Write each plan's folder under `root`, skipping folders already complete for the same plan.

    A marker file records the plan, size and seed, so a folder generated with other settings is
    rebuilt rather than silently reused.
    """
    import shutil

    from tqdm.auto import tqdm

    root.mkdir(parents=True, exist_ok=True)
    for plan in tqdm(plans, desc="generating", unit="category", disable=not progress, leave=False):
        marker = root / plan.name / ".cl_iad_synthetic"
        stamp = repr((plan, image_size, seed))
        if marker.exists() and marker.read_text(encoding="utf-8") == stamp:
            continue
        if (root / plan.name).exists():
            shutil.rmtree(root / plan.name)
        write_category(plan, root, image_size, seed, compress_level)
        marker.write_text(stamp, encoding="utf-8")
        log.info("generated synthetic category %s under %s", plan.name, root)
    return root


def generate(
    root: Path | str,
    categories: tuple[str, ...] | list[str] = CATEGORIES,
    spec: SyntheticSpec = SyntheticSpec(),
    progress: bool = False,
) -> Path:
    """Write the chosen built-in categories under `root` (skipping ones already complete) and return root."""
    plans = [default_plan(c, spec) for c in categories]
    return _write_plans(Path(root), plans, spec.image_size, spec.seed, progress)


def generate_mvtec_scale(
    root: Path | str,
    categories: tuple[str, ...] | list[str] = MVTEC_CATEGORIES,
    image_size: int = 256,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Write MVTec AD's categories with its exact image counts (:data:`MVTEC_AD_COUNTS`) under `root`.

    All 15 give 3,629 training and 1,725 test images (467 good, 1,258 defective). PNGs are written
    with fast compression (level 1): 4x faster to encode at 256 px, about 20% larger.
    """
    plans = [mvtec_scale_plan(c) for c in categories]
    return _write_plans(Path(root), plans, image_size, seed, progress, compress_level=1)
