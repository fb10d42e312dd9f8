"""Readers for public industrial anomaly datasets, each in the layout its publisher ships.

The video datasets (UCSD Pedestrian, CUHK Avenue, ShanghaiTech Campus) are read by :mod:`.video`
and registered here like the others; a reader's options follow its name after a colon
(``shanghaitech:frame_stride=5``, see :func:`get_spec`).

Every reader turns one category into train and test :class:`Sample` lists; :mod:`.streams`
turns those into tasks. Files are checked when the stream is built (headers, sizes, PNG/BMP
integrity), so a broken download fails in seconds rather than hours into training.

Why not anomalib 2.7's ``make_*_dataset`` functions directly (they are used as the reference
in ``tests/test_datasets.py``, which checks that we read the same samples on valid trees):

* MVTec AD / MVTec 3D-AD: masks are paired with images by *position* after sorting, then
  checked with a substring test (``"1" in "11_mask"`` passes), so a missing mask either raises
  a bare pandas length error or silently shifts masks by one image. We pair by exact name.
* BTech: the mask name is derived with ``str.rstrip("png")``/``rstrip("bmp")``, which strips
  *characters*, so an image ``top.png`` looks for mask ``to.png``. We use the file stem.
* VisA: anomalib copies the whole dataset into ``visa_pytorch/`` (all 12 categories, needs
  write access to the root) before reading it. We read ``split_csv/1cls.csv`` in place, with
  the same split and the same binarisation (any non-zero value is anomalous).
* Kolektor: the reader itself is right, and we reproduce its train/test split exactly
  (sklearn ``train_test_split`` of the good images, ``random_state=42``, 80 % train); but a
  mask that cv2 cannot read counts as *anomalous* there, and a missing mask raises a pandas
  length error. We check every mask first.
"""

from __future__ import annotations

import csv
import logging
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from . import video
from .base import DatasetLayoutError, Sample
from .frames import is_frame_ref

log = logging.getLogger(__name__)

# what PIL raises on missing, truncated or corrupt files (verify() uses SyntaxError for bad PNG chunks)
PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset looks like on disk and where to get it."""

    name: str
    title: str
    page: str
    layout: str
    categories: tuple[str, ...]
    discover: Callable[[Path, DatasetSpec], list[str]]
    read: Callable[[Path, str, DatasetSpec, BadFiles], tuple[list[Sample], list[Sample]]]
    masks_required: bool = True
    options: tuple[str, ...] = ()  # settings a reader takes after the name: "shanghaitech:frame_stride=5"
    settings: tuple[tuple[str, int], ...] = ()  # the values given (see get_spec)

    def option(self, name: str, default: int | None = None) -> int | None:
        """The value of a reader option given after the dataset name, else `default`."""
        return dict(self.settings).get(name, default)

    def error(self, message: str) -> DatasetLayoutError:
        """A layout error that shows the expected tree and the publisher's page."""
        return DatasetLayoutError(
            f"{message}\nExpected {self.title} layout (download from the publisher's page "
            f"'{self.page}'):\n{self.layout}"
        )


@dataclass
class BadFiles:
    """Collects unreadable or inconsistent files; raises at the first one unless `skip`."""

    skip: bool = False
    files: list[tuple[str, str]] = field(default_factory=list)

    def report(self, spec: DatasetSpec, path: Path, problem: str) -> None:
        if not self.skip:
            raise spec.error(f"{problem.rstrip('.')}: replace or delete the file, or pass --skip-bad "
                             "(skip_bad=True) to skip such files with a warning.")
        log.warning("skipping %s: %s", path, problem)
        self.files.append((str(path), problem))


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _require_root(root: Path, spec: DatasetSpec) -> None:
    if not root.is_dir():
        raise spec.error(f"dataset root {root} does not exist or is not a folder; pass the folder you extracted "
                         f"the {spec.title} download into as --root.")


def _missing_category(spec: DatasetSpec, root: Path, category: str, expected: Path) -> DatasetLayoutError:
    return spec.error(f"category {category!r} not found under {root}: {expected} is missing.")


# --------------------------------------------------------------------------- MVTec AD layout


def _discover_with(sub: tuple[str, ...]) -> Callable[[Path, DatasetSpec], list[str]]:
    """Categories are the folders of `root` that hold the subfolder path `sub`."""

    def discover(root: Path, spec: DatasetSpec) -> list[str]:
        _require_root(root, spec)
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.joinpath(*sub).is_dir())
        if not found:
            hint = ""
            if root.joinpath(*sub).is_dir():
                hint = f" {root} itself looks like one category: pass its parent {root.parent} as --root."
            raise spec.error(f"no category folder with {'/'.join(sub)}/ under {root}.{hint}")
        return found

    return discover


def _read_mvtec_like(root: Path, category: str, spec: DatasetSpec, bad: BadFiles, *, good: str, mask_dir: str,
                     mask_names: Callable[[Path], list[str]], image_sub: str = "",
                     mask_sub: Callable[[Path, str], Path] | None = None) -> tuple[list[Sample], list[Sample]]:
    """MVTec-style trees: train/<good>, test/<defect>, masks found by `mask_names` of the image."""
    base = root / category
    train_dir = base / "train" / good / image_sub
    if not train_dir.is_dir():
        raise _missing_category(spec, root, category, train_dir)
    train = [Sample(p, 0, category) for p in _images(train_dir)]
    if not train:
        raise DatasetLayoutError(
            f"no training images in {train_dir} (it holds no {'/'.join(sorted(IMAGE_SUFFIXES))} file): put the "
            f"category's defect-free images there, or leave {category!r} out with --categories")
    test_dir = base / "test"
    if not test_dir.is_dir():
        raise spec.error(f"category {category!r} has no test folder: {test_dir} is missing.")
    test: list[Sample] = []
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        defect = defect_dir.name
        for img in _images(defect_dir / image_sub):
            if defect == good:
                test.append(Sample(img, 0, category))
                continue
            folder = mask_sub(base, defect) if mask_sub else base / mask_dir / defect
            candidates = [folder / n for n in mask_names(img)]
            mask = next((c for c in candidates if c.is_file()), None)
            if mask is None and spec.masks_required:
                bad.report(spec, img, f"test image {img} has no mask: expected {candidates[0]}.")
                continue
            test.append(Sample(img, 1, category, defect, mask))
    if not test:
        raise spec.error(f"no test images under {test_dir}.")
    return train, test


def _read_mvtec(root, category, spec, bad):
    return _read_mvtec_like(root, category, spec, bad, good="good", mask_dir="ground_truth",
                            mask_names=lambda img: [f"{img.stem}_mask.png"])


def _read_folder(root, category, spec, bad):
    return _read_mvtec_like(root, category, spec, bad, good="good", mask_dir="ground_truth",
                            mask_names=lambda img: [f"{img.stem}_mask.png", f"{img.stem}.png"])


def _read_btech(root, category, spec, bad):
    return _read_mvtec_like(root, category, spec, bad, good="ok", mask_dir="ground_truth",
                            mask_names=lambda img: [f"{img.stem}.png"])


def _read_mvtec3d(root, category, spec, bad):
    return _read_mvtec_like(root, category, spec, bad, good="good", mask_dir="", image_sub="rgb",
                            mask_names=lambda img: [img.name, f"{img.stem}.png"],
                            mask_sub=lambda base, defect: base / "test" / defect / "gt")


# --------------------------------------------------------------------------- VisA


VISA_SPLIT = Path("split_csv") / "1cls.csv"


def _visa_rows(root: Path, spec: DatasetSpec) -> list[dict[str, str]]:
    _require_root(root, spec)
    path = root / VISA_SPLIT
    if not path.is_file():
        raise spec.error(f"VisA split file {path} is missing (it ships with the dataset as split_csv/1cls.csv).")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    need = {"object", "split", "label", "image", "mask"}
    if not rows or not need <= set(rows[0]):
        raise spec.error(f"{path} must have the columns {sorted(need)}; found {sorted(rows[0]) if rows else 'none'}.")
    return rows


def _discover_visa(root: Path, spec: DatasetSpec) -> list[str]:
    found = sorted({r["object"] for r in _visa_rows(root, spec) if (root / r["object"]).is_dir()})
    if not found:
        raise spec.error(f"none of the categories named in {root / VISA_SPLIT} has a folder under {root}.")
    return found


def _read_visa(root, category, spec, bad):
    if not (root / category / "Data" / "Images").is_dir():
        raise _missing_category(spec, root, category, root / category / "Data" / "Images")
    train: list[Sample] = []
    test: list[Sample] = []
    for r in _visa_rows(root, spec):
        if r["object"] != category:
            continue
        img = root / r["image"]
        if not img.is_file():
            bad.report(spec, img, f"image {img} listed in {root / VISA_SPLIT} does not exist.")
            continue
        if r["label"] == "normal":
            (train if r["split"] == "train" else test).append(Sample(img, 0, category))
            continue
        mask = root / r["mask"] if r["mask"] else None
        if mask is None or not mask.is_file():
            bad.report(spec, img, f"test image {img} has no mask: expected {mask or 'a mask path in the csv'}.")
            continue
        test.append(Sample(img, 1, category, "anomaly", mask))
    if not train:
        raise spec.error(f"no training images for category {category!r} in {root / VISA_SPLIT}.")
    return train, test


# --------------------------------------------------------------------------- Kolektor


KOLEKTOR_TRAIN_RATIO = 0.8  # anomalib's make_kolektor_dataset default


def _discover_kolektor(root: Path, spec: DatasetSpec) -> list[str]:
    _require_root(root, spec)
    if not any(root.glob("*/*.jpg")):
        raise spec.error(f"no <item>/Part*.jpg images under {root}.")
    return ["kolektor"]


def _read_kolektor(root, category, spec, bad):
    from sklearn.model_selection import train_test_split

    if category != "kolektor":
        raise _missing_category(spec, root, category, root / category)
    # anomalib sorts by the path string; the split below depends on that order
    images = sorted((p for p in root.glob("*/*.jpg")), key=str)
    good: list[Sample] = []
    defective: list[Sample] = []
    for img in images:
        mask = img.with_name(f"{img.stem}_label.bmp")
        if not mask.is_file():
            bad.report(spec, img, f"image {img} has no label mask: expected {mask}.")
            continue
        try:
            with Image.open(mask) as im:
                anomalous = bool(np.asarray(im).any())
        except OSError as exc:
            bad.report(spec, mask, f"cannot read mask {mask}: {exc}.")
            continue
        if anomalous:
            defective.append(Sample(img, 1, category, "defect", mask))
        else:
            good.append(Sample(img, 0, category))
    if len(good) < 2:
        raise spec.error(f"Kolektor needs at least 2 defect-free images under {root}; found {len(good)}.")
    train, test_good = train_test_split(good, train_size=KOLEKTOR_TRAIN_RATIO, random_state=42)
    return list(train), list(test_good) + defective


# --------------------------------------------------------------------------- registry


def _tree(*lines: str) -> str:
    return "\n".join(f"  {line}" for line in lines)


MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
                    "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
VISA_CATEGORIES = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2",
                   "pcb3", "pcb4", "pipe_fryum")
MVTEC3D_CATEGORIES = ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire")

DATASETS: dict[str, DatasetSpec] = {
    "mvtec": DatasetSpec(
        "mvtec", "MVTec AD", "MVTec AD (mvtec.com/company/research/datasets/mvtec-ad)",
        _tree("<root>/<category>/train/good/*.png",
              "<root>/<category>/test/good/*.png",
              "<root>/<category>/test/<defect>/*.png",
              "<root>/<category>/ground_truth/<defect>/<image stem>_mask.png",
              f"categories: {', '.join(MVTEC_CATEGORIES)}"),
        MVTEC_CATEGORIES, _discover_with(("train", "good")), _read_mvtec),
    "visa": DatasetSpec(
        "visa", "VisA", "VisA, Visual Anomaly dataset (github.com/amazon-science/spot-diff)",
        _tree("<root>/split_csv/1cls.csv            (object,split,label,image,mask)",
              "<root>/<category>/Data/Images/Normal/*.JPG",
              "<root>/<category>/Data/Images/Anomaly/*.JPG",
              "<root>/<category>/Data/Masks/Anomaly/*.png   (non-zero = anomalous)",
              f"categories: {', '.join(VISA_CATEGORIES)}"),
        VISA_CATEGORIES, _discover_visa, _read_visa),
    "btech": DatasetSpec(
        "btech", "BTech (BTAD)", "BTAD, beanTech Anomaly Detection dataset (avires.dimi.uniud.it/papers/btad)",
        _tree("<root>/<01|02|03>/train/ok/*.bmp|*.png",
              "<root>/<01|02|03>/test/ok/*.bmp|*.png",
              "<root>/<01|02|03>/test/ko/*.bmp|*.png",
              "<root>/<01|02|03>/ground_truth/ko/<image stem>.png"),
        ("01", "02", "03"), _discover_with(("train", "ok")), _read_btech),
    "mvtec3d": DatasetSpec(
        "mvtec3d", "MVTec 3D-AD", "MVTec 3D-AD (mvtec.com/company/research/datasets/mvtec-3d-ad)",
        _tree("<root>/<category>/train/good/rgb/*.png        (xyz/*.tiff is ignored: RGB only)",
              "<root>/<category>/test/good/rgb/*.png",
              "<root>/<category>/test/<defect>/rgb/*.png",
              "<root>/<category>/test/<defect>/gt/<image name>.png",
              f"categories: {', '.join(MVTEC3D_CATEGORIES)}"),
        MVTEC3D_CATEGORIES, _discover_with(("train", "good", "rgb")), _read_mvtec3d),
    "kolektor": DatasetSpec(
        "kolektor", "KolektorSDD", "Kolektor Surface-Defect Dataset, KolektorSDD (vicos.si/resources/kolektorsdd)",
        _tree("<root>/kos01/Part0.jpg",
              "<root>/kos01/Part0_label.bmp   (all zero = defect-free)",
              "...",
              "<root>/kos50/Part7.jpg, Part7_label.bmp",
              "one category ('kolektor'); 80 % of the defect-free images train, as in anomalib"),
        ("kolektor",), _discover_kolektor, _read_kolektor),
    "folder": DatasetSpec(
        "folder", "custom folder (MVTec AD layout)", "your own data, arranged like MVTec AD",
        _tree("<root>/<category>/train/good/*",
              "<root>/<category>/test/good/*",
              "<root>/<category>/test/<defect>/*",
              "<root>/<category>/ground_truth/<defect>/<image stem>_mask.png   (optional: without masks "
              "pixel metrics are NaN)"),
        (), _discover_with(("train", "good")), _read_folder, masks_required=False),
    # video datasets (cl_iad/scenarios/video.py): every frame is an image; frames of videos are decoded lazily
    "ucsdped": DatasetSpec(
        "ucsdped", "UCSD Pedestrian (UCSDped1, UCSDped2)",
        "UCSD Anomaly Detection Dataset (svcl.ucsd.edu/projects/anomaly/dataset.htm)", video.UCSD_LAYOUT,
        video.UCSD_CATEGORIES, video.discover_ucsd, video.read_ucsd, options=video.VIDEO_OPTIONS),
    "avenue": DatasetSpec(
        "avenue", "CUHK Avenue", "CUHK Avenue (cse.cuhk.edu.hk/leojia/projects/detectabnormal/dataset.html)",
        video.AVENUE_LAYOUT, ("avenue",), video.discover_avenue, video.read_avenue,
        options=(*video.VIDEO_OPTIONS, "tasks")),
    "shanghaitech": DatasetSpec(
        "shanghaitech", "ShanghaiTech Campus", "ShanghaiTech Campus (svip-lab.github.io/dataset/campus_dataset.html)",
        video.SHANGHAITECH_LAYOUT, video.SHANGHAITECH_SCENES, video.discover_shanghaitech, video.read_shanghaitech,
        options=video.VIDEO_OPTIONS),
}


def get_spec(name: str) -> DatasetSpec:
    """The spec of a registered dataset name, with reader options after a colon.

    ``"shanghaitech:frame_stride=5,frames_per_clip=40"`` is the ShanghaiTech reader with those
    options (positive integers); a name without a colon takes the reader's defaults.
    """
    base, sep, text = name.partition(":")
    try:
        spec = DATASETS[base.strip()]
    except KeyError:
        raise ValueError(f"unknown dataset {base.strip()!r}; choose from {', '.join(DATASETS)} or synthetic") from None
    return _with_options(spec, text) if sep else spec


def _with_options(spec: DatasetSpec, text: str) -> DatasetSpec:
    if not spec.options:
        raise ValueError(f"dataset {spec.name!r} takes no options; drop ':{text}'")
    settings = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        key, eq, value = (part.strip() for part in item.partition("="))
        if key not in spec.options or not eq:
            raise ValueError(f"dataset option {item!r}: {spec.name} takes {', '.join(f'{o}=N' for o in spec.options)} "
                             f"(e.g. {spec.name}:{spec.options[0]}=5)")
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"dataset option {key}={value!r} of {spec.name} must be a positive integer")
        settings[key] = int(value)
    return replace(spec, settings=tuple(sorted(settings.items())))


# --------------------------------------------------------------------------- file checks


def _jpeg_truncated(path: Path) -> bool:
    """A JPEG must end with the EOI marker; PIL's verify() does not check JPEG data, so a download
    cut short would otherwise only fail when training reaches it."""
    with path.open("rb") as fh:
        fh.seek(0, 2)
        fh.seek(max(fh.tell() - 64, 0))
        return b"\xff\xd9" not in fh.read()


def _decode(path: Path) -> None:
    try:
        with Image.open(path) as im:
            im.load()
    except PIL_ERRORS as exc:
        raise OSError(f"JPEG data ends before its end-of-image marker ({exc!s})") from exc


def _check_one(sample: Sample) -> str | None:
    """Why `sample` cannot be used, or None. Reads headers and verifies PNG/BMP integrity and JPEG ends."""
    if is_frame_ref(sample.image_path):
        return None  # a video frame: the video was opened and decoded when its reader listed it
    try:
        with Image.open(sample.image_path) as im:
            size = im.size
            fmt = im.format
            im.verify()
        if fmt == "JPEG" and _jpeg_truncated(sample.image_path):
            _decode(sample.image_path)  # trailing bytes after the marker are legal: decide by decoding
    except PIL_ERRORS as exc:
        return f"cannot read image {sample.image_path}: {exc!s} (the file is missing, truncated or not an image)."
    if sample.mask_path is None or is_frame_ref(sample.mask_path):
        return None  # a frame of a mask volume: its length and frame size were checked by the reader
    try:
        with Image.open(sample.mask_path) as m:
            msize = m.size
            m.verify()
    except PIL_ERRORS as exc:
        return f"cannot read mask {sample.mask_path}: {exc!s}."
    if msize != size:
        return (f"mask {sample.mask_path} is {msize[0]}x{msize[1]} but its image {sample.image_path} is "
                f"{size[0]}x{size[1]}; a mask must match its image pixel for pixel.")
    return None


def check_files(samples: list[Sample], spec: DatasetSpec, bad: BadFiles, progress: bool = False) -> list[Sample]:
    """The samples whose image (and mask) open, verify and agree in size; others go to `bad`."""
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=4) as pool:
        problems = list(tqdm(pool.map(_check_one, samples), total=len(samples), disable=not progress,
                             desc=f"checking {spec.name} files", leave=False, unit="file"))
    kept = []
    for sample, problem in zip(samples, problems, strict=True):
        if problem is None:
            kept.append(sample)
        else:
            bad.report(spec, sample.image_path, problem)
    return kept
