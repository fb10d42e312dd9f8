"""Streams from folders in MVTec AD layout, and from the built-in synthetic generator."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from .base import DatasetLayoutError, ImageSet, Sample, Scenario, Task, resolve_order
from .datasets import IMAGE_SUFFIXES
from .synthetic import CATEGORIES as SYNTHETIC_CATEGORIES
from .synthetic import SyntheticSpec, generate

MVTEC_LAYOUT = """\
  <root>/<category>/train/good/*.png
  <root>/<category>/test/good/*.png
  <root>/<category>/test/<defect>/*.png
  <root>/<category>/ground_truth/<defect>/<stem>_mask.png"""


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _layout_error(msg: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{msg}\nExpected MVTec AD layout (MVTec AD, mvtec.com 'MVTec AD' download page):\n{MVTEC_LAYOUT}")


def discover_categories(root: Path) -> list[str]:
    """Category folders under `root`: those with a ``train/good`` subfolder."""
    if not root.is_dir():
        raise _layout_error(f"dataset root {root} does not exist or is not a folder.")
    found = sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())
    if not found:
        raise _layout_error(f"no category folder with train/good/ under {root}.")
    return found


def read_mvtec_category(root: Path, category: str, require_masks: bool = True) -> tuple[list[Sample], list[Sample]]:
    """Train and test samples of one MVTec-layout category, with every mask checked to exist."""
    base = root / category
    if not (base / "train" / "good").is_dir():
        raise _layout_error(f"category {category!r} not found: {base / 'train' / 'good'} is missing.")
    train = [Sample(p, 0, category) for p in _images(base / "train" / "good")]
    if not train:
        raise _layout_error(f"no training images in {base / 'train' / 'good'}.")
    test: list[Sample] = []
    test_dir = base / "test"
    if not test_dir.is_dir():
        raise _layout_error(f"category {category!r} has no test folder {test_dir}.")
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        defect = defect_dir.name
        for img in _images(defect_dir):
            if defect == "good":
                test.append(Sample(img, 0, category))
                continue
            mask = base / "ground_truth" / defect / f"{img.stem}_mask.png"
            if not mask.is_file():
                if require_masks:
                    raise _layout_error(f"test image {img} has no mask: expected {mask}.")
                mask = None
            test.append(Sample(img, 1, category, defect, mask))
    return train, test


def from_folder(
    root: Path | str,
    categories: Sequence[str] | None = None,
    order: str | Sequence[str] = "alphabetical",
    image_size: int = 256,
    dataset: str = "folder",
) -> Scenario:
    """One task per category folder in MVTec AD layout under `root`, in the chosen order."""
    root = Path(root)
    available = discover_categories(root)
    chosen = list(categories) if categories else available
    missing = [c for c in chosen if c not in available]
    if missing:
        raise _layout_error(f"categories {missing} not found under {root}; available: {available}.")
    names = resolve_order(chosen, order)
    tasks = []
    for i, name in enumerate(names):
        train, test = read_mvtec_category(root, name)
        tasks.append(Task(i, name, (name,), ImageSet(train, image_size), ImageSet(test, image_size)))
    from .base import order_label

    return Scenario(tasks, dataset, root, {"order": order_label(order), "image_size": image_size})


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
    generate(root / f"seed{seed}_{image_size}px", categories, spec)
    scenario = from_folder(root / f"seed{seed}_{image_size}px", categories, order, image_size, dataset="synthetic")
    scenario.info["seed"] = seed
    return scenario
