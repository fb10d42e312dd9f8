"""Writers of tiny fake datasets in each publisher's exact folder layout (as anomalib's test helpers do).

Images are small textured squares whose base colour depends on the category, so categories
differ in feature space; anomalous images carry a bright square, and its mask marks it.
Each writer returns the root and a dict of what it wrote, for the tests to compare against.
"""

from __future__ import annotations

import csv
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 48
# image path -> the defect mask written for it, so tests can check that loaders pair masks right
WRITTEN_MASKS: dict[str, np.ndarray] = {}


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, key)).encode()))


def image(category: str, index: int, anomalous: bool, size: int = SIZE, hw: tuple[int, int] | None = None):
    """An RGB uint8 image and its boolean defect mask (all False when normal)."""
    h, w = hw or (size, size)
    base = _rng(category).uniform(0.1, 0.9, size=3)
    rng = _rng(category, index, anomalous)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    freq = 3 + zlib.crc32(category.encode()) % 5
    pattern = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx + yy))[..., None]
    img = base[None, None, :] * (0.6 + 0.4 * pattern) + rng.normal(0, 0.02, (h, w, 3))
    mask = np.zeros((h, w), dtype=bool)
    if anomalous:
        y0, x0 = rng.integers(0, h - h // 4), rng.integers(0, w - w // 4)
        mask[y0 : y0 + h // 4, x0 : x0 + w // 4] = True
        img[mask] = 1.0 - base
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), mask


def _save(arr: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _mask_png(mask: np.ndarray, path: Path, image_path: Path, value: int = 255) -> Path:
    WRITTEN_MASKS[str(image_path)] = mask
    return _save(mask.astype(np.uint8) * value, path)


def write_mvtec(root: Path, categories=("bottle", "cable", "capsule"), n_train=4, n_good=2,
                defects=("crack", "hole"), n_defect=2, with_masks=True, size=SIZE) -> Path:
    """MVTec AD: <cat>/train/good, <cat>/test/<defect>, <cat>/ground_truth/<defect>/<stem>_mask.png."""
    for c in categories:
        for i in range(n_train):
            _save(image(c, i, False, size)[0], root / c / "train" / "good" / f"{i:03d}.png")
        for i in range(n_good):
            _save(image(c, 100 + i, False, size)[0], root / c / "test" / "good" / f"{i:03d}.png")
        for d in defects:
            for i in range(n_defect):
                img, mask = image(c + d, i, True, size)
                path = _save(img, root / c / "test" / d / f"{i:03d}.png")
                if with_masks:
                    _mask_png(mask, root / c / "ground_truth" / d / f"{i:03d}_mask.png", path)
    return root


def write_visa(root: Path, categories=("candle", "pcb1"), n_train=4, n_good=2, n_anomaly=3, size=SIZE) -> Path:
    """VisA: split_csv/1cls.csv + <cat>/Data/Images/{Normal,Anomaly}/*.JPG + <cat>/Data/Masks/Anomaly/*.png.

    Masks hold region ids (1, 2, ...) rather than 255, as the real ones do.
    """
    rows = [("object", "split", "label", "image", "mask")]
    for c in categories:
        for i in range(n_train + n_good):
            rel = f"{c}/Data/Images/Normal/{i:04d}.JPG"
            _save(image(c, i, False, size)[0], root / rel)
            rows.append((c, "train" if i < n_train else "test", "normal", rel, ""))
        for i in range(n_anomaly):
            img, mask = image(c, i, True, size)
            rel, mrel = f"{c}/Data/Images/Anomaly/{i:03d}.JPG", f"{c}/Data/Masks/Anomaly/{i:03d}.png"
            _mask_png(mask, root / mrel, _save(img, root / rel), value=1 + i % 2)
            rows.append((c, "test", "anomaly", rel, mrel))
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root


def write_btech(root: Path, categories=("01", "02", "03"), n_train=4, n_good=2, n_ko=2, size=SIZE) -> Path:
    """BTech: <NN>/train/ok, <NN>/test/{ok,ko}, <NN>/ground_truth/ko/<stem>.png; 02 uses .png, others .bmp."""
    for c in categories:
        ext = ".png" if c == "02" else ".bmp"
        for i in range(n_train):
            _save(image("btech" + c, i, False, size)[0], root / c / "train" / "ok" / f"{i:04d}{ext}")
        for i in range(n_good):
            _save(image("btech" + c, 100 + i, False, size)[0], root / c / "test" / "ok" / f"{i:04d}{ext}")
        for i in range(n_ko):
            img, mask = image("btech" + c, i, True, size)
            path = _save(img, root / c / "test" / "ko" / f"{i:04d}{ext}")
            _mask_png(mask, root / c / "ground_truth" / "ko" / f"{i:04d}.png", path)
    return root


def write_mvtec3d(root: Path, categories=("bagel", "foam"), n_train=4, n_good=2, defects=("crack",), n_defect=2,
                  size=SIZE) -> Path:
    """MVTec 3D-AD: <cat>/{train,validation}/good/{rgb,xyz}, <cat>/test/<defect>/{rgb,gt,xyz}."""
    for c in categories:
        for split, n in (("train", n_train), ("validation", 1)):
            for i in range(n):
                _save(image(c, i, False, size)[0], root / c / split / "good" / "rgb" / f"{i:03d}.png")
                _xyz(root / c / split / "good" / "xyz" / f"{i:03d}.tiff")
        for d, n in (("good", n_good), *((d, n_defect) for d in defects)):
            for i in range(n):
                img, mask = image(c + d, i, d != "good", size)
                path = _save(img, root / c / "test" / d / "rgb" / f"{i:03d}.png")
                _mask_png(mask, root / c / "test" / d / "gt" / f"{i:03d}.png", path)
                _xyz(root / c / "test" / d / "xyz" / f"{i:03d}.tiff")
    return root


def _xyz(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4), dtype=np.float32)).save(path)


def write_kolektor(root: Path, n_items=5, parts=(0, 1, 2), defective=(("kos02", 1), ("kos04", 0)),
                   hw=(60, 24)) -> Path:
    """KolektorSDD: kosNN/PartK.jpg and kosNN/PartK_label.bmp (all zero when defect-free); tall images."""
    bad = set(defective)
    for n in range(1, n_items + 1):
        item = f"kos{n:02d}"
        for k in parts:
            img, mask = image("kolektor", n * 10 + k, (item, k) in bad, hw=hw)
            path = _save(img, root / item / f"Part{k}.jpg")
            _mask_png(mask, root / item / f"Part{k}_label.bmp", path)
    return root


def write_folder(root: Path, categories=("widget", "gadget"), masks_for=("widget",), size=SIZE, **sizes) -> Path:
    """A custom folder: MVTec layout per category; masks only for the categories in `masks_for`."""
    for c in categories:
        write_mvtec(root, (c,), defects=("dent",), with_masks=c in masks_for, size=size, **sizes)
    return root
