"""Streams from folders in MVTec AD layout, and from the built-in synthetic generator."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from .base import Scenario, resolve_order
from .streams import DEFAULT_IMAGE_SIZE, load_stream, regroup
from .synthetic import CATEGORIES as SYNTHETIC_CATEGORIES
from .synthetic import LAYOUTS, MVTEC_CATEGORIES, SyntheticSpec, generate, generate_mvtec_scale


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
    n_train: int | None = None,
    n_test_good: int | None = None,
    n_test_per_defect: int | None = None,
    seed: int = 0,
    layout: str = "default",
    progress: bool = False,
) -> Scenario:
    """A stream over generated categories, written on disk on first use.

    ``layout="default"``: the built-in synthetic categories with `n_train`, `n_test_good` and
    `n_test_per_defect` images each (20, 8, 3 unless given); without `categories`, the first
    `n_tasks` in `order`.

    ``layout="mvtec_scale"``: MVTec AD's 15 categories (or the named `categories` of them) with
    MVTec AD's exact image counts, 3,629 training and 1,725 test images in all, each drawn from
    a synthetic stand-in (:data:`~cl_iad.scenarios.synthetic.MVTEC_SCALE_BASES`). The counts are
    fixed, so the size options are refused, and `n_tasks` does not apply.
    """
    root = Path(root) if root is not None else DEFAULT_SYNTHETIC_ROOT
    if layout == "mvtec_scale":
        folder, categories = _mvtec_scale(root, categories, image_size, seed, progress,
                                          n_train=n_train, n_test_good=n_test_good,
                                          n_test_per_defect=n_test_per_defect)
    elif layout == "default":
        spec = SyntheticSpec(image_size, 20 if n_train is None else n_train, 8 if n_test_good is None else n_test_good,
                             3 if n_test_per_defect is None else n_test_per_defect, seed)
        if categories is None:
            categories = resolve_order(SYNTHETIC_CATEGORIES, order)[:n_tasks]
        unknown = [c for c in categories if c not in SYNTHETIC_CATEGORIES]
        if unknown:
            raise ValueError(f"unknown synthetic categories {unknown}; choose from {list(SYNTHETIC_CATEGORIES)}")
        # every size setting is in the folder name, so streams of other sizes never rewrite this one's files
        folder = root / f"seed{seed}_{image_size}px_{spec.n_train}-{spec.n_test_good}-{spec.n_test_per_defect}"
        generate(folder, categories, spec, progress=progress)
    else:
        raise ValueError(f"unknown synthetic layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    scenario = from_folder(folder, categories, order, image_size, dataset="synthetic")
    scenario.info["seed"] = seed
    if layout != "default":
        scenario.info["layout"] = layout
    return scenario


def _mvtec_scale(root: Path, categories: Sequence[str] | None, image_size: int, seed: int, progress: bool,
                 **sizes: int | None) -> tuple[Path, list[str]]:
    """Generate the MVTec-scale categories; their folder and names."""
    given = sorted(k for k, v in sizes.items() if v is not None)
    if given:
        raise ValueError(f"the mvtec_scale layout has MVTec AD's fixed image counts; drop {', '.join(given)} "
                         "(or use the default layout to choose sizes)")
    categories = list(categories) if categories else list(MVTEC_CATEGORIES)
    unknown = [c for c in categories if c not in MVTEC_CATEGORIES]
    if unknown:
        raise ValueError(f"unknown MVTec AD categories {unknown} for the mvtec_scale layout; choose from "
                         f"{list(MVTEC_CATEGORIES)}")
    folder = root / f"seed{seed}_{image_size}px_mvtec_scale"
    generate_mvtec_scale(folder, categories, image_size, seed, progress=progress)
    return folder, categories


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
    layout: str = "default",
    **synthetic_sizes: int,
) -> Scenario:
    """One entry point for the CLI and sweeps: the synthetic stream or :func:`load_stream`.

    `layout` ("default" or "mvtec_scale") and `synthetic_sizes` (n_train, n_test_good,
    n_test_per_defect) apply to the synthetic data only.
    """
    if dataset == "synthetic":
        scenario = synthetic(root, categories=categories, n_tasks=n_tasks, order=order,
                             image_size=image_size or (256 if layout == "mvtec_scale" else 128), seed=seed,
                             layout=layout, progress=progress, **synthetic_sizes)
        return regroup(scenario, group) if group else scenario
    if layout != "default":
        raise ValueError(f"layout {layout!r} applies to generated data only: use it with --dataset synthetic")
    if not root:
        raise ValueError(f"dataset {dataset!r} needs its folder: pass --root FOLDER (comma-separated, one per "
                         "dataset of a chain), or use --dataset synthetic")
    return load_stream(dataset, root, categories, order, group, image_size or DEFAULT_IMAGE_SIZE,
                       skip_bad=skip_bad, progress=progress)
