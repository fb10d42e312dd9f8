"""Streams from folders in MVTec AD layout, and from the built-in synthetic generator."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from .base import Scenario, resolve_order
from .streams import DEFAULT_IMAGE_SIZE, load_stream, regroup
from .synthetic import CATEGORIES as SYNTHETIC_CATEGORIES
from .synthetic import SyntheticSpec, generate


def from_folder(
    root: Path | str,
    categories: Sequence[str] | None = None,
    order: str | Sequence[str] = "alphabetical",
    image_size: int = 256,
    dataset: str = "folder",
    check: bool = True,
) -> Scenario:
    """One task per category folder in MVTec AD layout under `root` (masks required), in the chosen order.

    The MVTec AD reader of :func:`~cl_iad.scenarios.streams.load_stream`, labelled `dataset`.
    """
    scenario = load_stream("mvtec", root, categories, order, None, image_size, check=check)
    scenario.dataset = dataset
    return scenario


DEFAULT_SYNTHETIC_ROOT = Path(tempfile.gettempdir()) / "cl_iad_synthetic"


def synthetic(
    root: Path | str | None = None,
    categories: Sequence[str] | None = None,
    n_tasks: int = 5,
    order: str | Sequence[str] = "alphabetical",
    image_size: int = 128,
    n_train: int = 20,
    n_test_good: int = 8,
    n_test_per_defect: int = 3,
    seed: int = 0,
) -> Scenario:
    """A stream over the built-in synthetic categories, generated on disk on first use.

    Without `categories`, the first `n_tasks` synthetic categories in `order` are used.
    """
    root = Path(root) if root is not None else DEFAULT_SYNTHETIC_ROOT
    spec = SyntheticSpec(image_size, n_train, n_test_good, n_test_per_defect, seed)
    if categories is None:
        categories = resolve_order(SYNTHETIC_CATEGORIES, order)[:n_tasks]
    unknown = [c for c in categories if c not in SYNTHETIC_CATEGORIES]
    if unknown:
        raise ValueError(f"unknown synthetic categories {unknown}; choose from {list(SYNTHETIC_CATEGORIES)}")
    # every size setting is in the folder name, so streams of other sizes never rewrite this one's files
    folder = root / f"seed{seed}_{image_size}px_{n_train}-{n_test_good}-{n_test_per_defect}"
    generate(folder, categories, spec)
    scenario = from_folder(folder, categories, order, image_size, dataset="synthetic")
    scenario.info["seed"] = seed
    return scenario


def build_scenario(
    dataset: str = "synthetic",
    root: str | Path | Sequence[str | Path] | None = None,
    categories: Sequence[str] | None = None,
    order: str | Sequence[str] = "alphabetical",
    group: str | None = None,
    image_size: int | None = None,
    skip_bad: bool = False,
    seed: int = 0,
    n_tasks: int = 5,
    progress: bool = False,
    **synthetic_sizes: int,
) -> Scenario:
    """One entry point for the CLI and sweeps: the synthetic stream or :func:`load_stream`.

    `synthetic_sizes` (n_train, n_test_good, n_test_per_defect) apply to the synthetic data only.
    """
    if dataset == "synthetic":
        scenario = synthetic(root, categories=categories, n_tasks=n_tasks, order=order,
                             image_size=image_size or 128, seed=seed, **synthetic_sizes)
        return regroup(scenario, group) if group else scenario
    if not root:
        raise ValueError(f"dataset {dataset!r} needs its folder: pass --root FOLDER (comma-separated, one per "
                         "dataset of a chain), or use --dataset synthetic")
    return load_stream(dataset, root, categories, order, group, image_size or DEFAULT_IMAGE_SIZE,
                       skip_bad=skip_bad, progress=progress)
