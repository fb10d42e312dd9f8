"""Tasks, scenarios and streams.

A :class:`Scenario` is an ordered list of :class:`Task` objects. Each task holds a train set
(normal images only) and a test set (normal and anomalous images with masks). The scenario
also exposes Avalanche's stream protocol (``scenario.train_stream`` yields experiences with
``current_experience``, ``task_label`` and ``dataset``), so Avalanche users can iterate it the
way they are used to, and :meth:`Scenario.to_avalanche` builds a genuine Avalanche benchmark.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import UserError
from .frames import is_frame_ref, open_image

log = logging.getLogger(__name__)


class DatasetLayoutError(UserError, ValueError):
    """A dataset on disk does not have the layout its loader expects (a ValueError, as before)."""


@dataclass(frozen=True)
class Sample:
    """One image on disk. `label` is 1 for anomalous.

    `image_path` (and `mask_path`) may name a frame inside a video or mask volume,
    ``.../clip.avi/000012.frame`` (see :mod:`.frames`): video datasets are read lazily, frame by frame.

    `mask_path` is None for normal images (an all-normal mask) and for anomalous images whose
    dataset has no ground truth; :attr:`ImageSet.has_pixel_gt` then turns pixel metrics to NaN.
    """

    image_path: Path
    label: int
    category: str
    defect: str = "good"
    mask_path: Path | None = None


def encode_samples(samples: Sequence[Sample]) -> list[list]:
    """Samples as lists of strings and ints, for checkpoints and saved models (no pickled classes)."""
    return [[str(s.image_path), int(s.label), s.category, s.defect, "" if s.mask_path is None else str(s.mask_path)]
            for s in samples]


def decode_samples(rows: Sequence[Sequence]) -> list[Sample]:
    """Inverse of :func:`encode_samples`."""
    return [Sample(Path(p), int(label), cat, defect, Path(mask) if mask else None) for p, label, cat, defect, mask in rows]


def _load_image(path: Path, size: int) -> torch.Tensor:
    try:
        with open_image(path) as im:  # a file, or a frame of a video (scenarios/frames.py)
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, ValueError) as exc:
        raise DatasetLayoutError(
            f"cannot read image {path}: {exc}. Replace or delete the file, or pass --skip-bad to skip it."
        ) from exc
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _load_mask(path: Path, size: int, image_path: Path) -> torch.Tensor:
    try:
        with open_image(path) as im:
            if not is_frame_ref(path):  # a frame's mask was checked against its video when the stream was built
                with Image.open(image_path) as ref:
                    if im.size != ref.size:
                        raise DatasetLayoutError(
                            f"mask {path} is {im.size[0]}x{im.size[1]} but its image {image_path} is "
                            f"{ref.size[0]}x{ref.size[1]}; a mask must match its image pixel for pixel."
                        )
            binary = _binarise(im)
            im = Image.fromarray(binary.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
            arr = np.asarray(im) > 0
    except OSError as exc:
        raise DatasetLayoutError(f"cannot read mask {path}: {exc}") from exc
    return torch.from_numpy(arr)


def _binarise(im: Image.Image) -> np.ndarray:
    """Anomalous where any channel of the raw mask is non-zero (VisA stores region ids, not 255).

    Converting to "L" first would round a dark colour such as (1, 0, 0) to 0 and lose the pixel.
    """
    if im.mode == "P":
        im = im.convert("RGB")
    arr = np.asarray(im)
    return arr.reshape(arr.shape[0], arr.shape[1], -1)[..., :3].any(axis=-1)


class ImageSet(Dataset):
    """A list of samples read at a fixed square size; images in [0, 1], masks as bool.

    Items are dicts with anomalib's field names: ``image``, ``gt_label``, ``gt_mask``, plus
    ``image_path``. Normalisation is left to the model, since it depends on the backbone.
    """

    def __init__(self, samples: Sequence[Sample], image_size: int = 256) -> None:
        self.samples = list(samples)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        image = _load_image(s.image_path, self.image_size)
        if s.mask_path is not None:
            mask = _load_mask(s.mask_path, self.image_size, s.image_path)
        else:
            mask = torch.zeros(self.image_size, self.image_size, dtype=torch.bool)
        return {"image": image, "gt_label": s.label, "gt_mask": mask, "image_path": str(s.image_path)}

    def masks(self) -> np.ndarray:
        """All ground-truth masks (N, H, W) as bool, without decoding the images."""
        out = np.zeros((len(self.samples), self.image_size, self.image_size), dtype=bool)
        for i, s in enumerate(self.samples):
            if s.mask_path is not None:
                out[i] = _load_mask(s.mask_path, self.image_size, s.image_path).numpy()
        return out

    @property
    def has_pixel_gt(self) -> bool:
        """Whether every anomalous image has a mask; without one, pixel metrics are undefined (NaN)."""
        return all(s.label == 0 or s.mask_path is not None for s in self.samples)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def __add__(self, other: ImageSet) -> ImageSet:
        return ImageSet(self.samples + list(other.samples), self.image_size)


@dataclass
class Task:
    """One step of the stream: one category or a group of categories."""

    task_id: int
    name: str
    categories: tuple[str, ...]
    train: ImageSet
    test: ImageSet


@dataclass
class Experience:
    """Avalanche-style view of one task in one stream."""

    current_experience: int
    task: Task
    origin_stream: Stream

    @property
    def task_label(self) -> int:
        return self.task.task_id

    @property
    def task_labels(self) -> list[int]:
        return [self.task.task_id]

    @property
    def dataset(self) -> ImageSet:
        return self.task.train if self.origin_stream.name == "train" else self.task.test


@dataclass
class Stream:
    """Avalanche-style stream (``train_stream`` / ``test_stream``); iterating starts afresh."""

    name: str
    scenario: Scenario

    def __len__(self) -> int:
        return len(self.scenario.tasks)

    def __getitem__(self, index: int) -> Experience:
        return Experience(index, self.scenario.tasks[index], self)

    def __iter__(self) -> Iterator[Experience]:
        return (self[i] for i in range(len(self)))


@dataclass
class Scenario:
    """An ordered task-incremental stream. Slicing gives the tasks seen so far."""

    tasks: list[Task]
    dataset: str = "custom"
    root: Path | None = None
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(list(self.tasks))  # a fresh iterator each time; no shared state

    def __getitem__(self, index: int | slice) -> Task | Scenario:
        if isinstance(index, slice):
            return Scenario(self.tasks[index], self.dataset, self.root, dict(self.info))
        return self.tasks[index]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def train_stream(self) -> Stream:
        return Stream("train", self)

    @property
    def test_stream(self) -> Stream:
        return Stream("test", self)

    def reorder(self, order: str | Sequence[str]) -> Scenario:
        """A new scenario with the same tasks in another order; task ids follow the new order."""
        names = resolve_order(self.names, order)
        by_name = {t.name: t for t in self.tasks}
        tasks = [Task(i, n, by_name[n].categories, by_name[n].train, by_name[n].test) for i, n in enumerate(names)]
        return Scenario(tasks, self.dataset, self.root, {**self.info, "order": order_label(order)})

    def to_avalanche(self):
        """A genuine Avalanche benchmark (``CLScenario``) with the same train and test streams."""
        from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
        from avalanche.benchmarks.utils import AvalancheDataset

        return benchmark_from_datasets(
            train=[AvalancheDataset([t.train]) for t in self.tasks],
            test=[AvalancheDataset([t.test]) for t in self.tasks],
        )


def order_label(order: str | Sequence[str]) -> str:
    """A printable name for an order argument."""
    return order if isinstance(order, str) else ",".join(order)


def resolve_order(names: Sequence[str], order: str | Sequence[str]) -> list[str]:
    """Apply `order` to task names.

    `order` is ``alphabetical``, ``reverse`` (reverse alphabetical), ``random:SEED``, an explicit
    list, or a comma-separated string of names. An explicit list may name a subset.
    """
    names = list(names)
    if isinstance(order, str):
        if order == "alphabetical":
            return sorted(names)
        if order == "reverse":
            return sorted(names, reverse=True)
        if order.startswith("random:"):
            try:
                seed = int(order.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"order {order!r}: expected random:SEED with an integer seed") from None
            shuffled = sorted(names)
            random.Random(seed).shuffle(shuffled)
            return shuffled
        if "," in order or order in names:
            order = [o.strip() for o in order.split(",") if o.strip()]
        else:
            raise ValueError(
                f"unknown order {order!r}: use alphabetical, reverse, random:SEED or a comma-separated "
                f"list of task names from {names}"
            )
    explicit = list(order)
    unknown = [o for o in explicit if o not in names]
    if unknown:
        raise ValueError(f"order names unknown tasks {unknown}: use alphabetical, reverse, random:SEED or a "
                         f"comma-separated list of task names from {names}")
    if len(set(explicit)) != len(explicit):
        raise ValueError(f"order repeats a task: {explicit}")
    return explicit
