"""Each dataset reader on a fake tree in its publisher's exact layout, checked against anomalib's readers."""

from __future__ import annotations

from pathlib import Path

import fake_datasets as F
import numpy as np
import pytest
from PIL import Image

from cl_iad.scenarios.streams import load_stream

S = F.SIZE  # read at the written size, so masks compare pixel for pixel


@pytest.fixture(scope="session")
def fake_roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("fake_datasets")
    return {
        "mvtec": F.write_mvtec(base / "mvtec_anomaly_detection"),
        "visa": F.write_visa(base / "VisA_20220922"),
        "btech": F.write_btech(base / "BTech_Dataset_transformed"),
        "mvtec3d": F.write_mvtec3d(base / "mvtec_3d_anomaly_detection"),
        "kolektor": F.write_kolektor(base / "KolektorSDD"),
        "folder": F.write_folder(base / "my_parts"),
    }


# dataset -> (categories, train per category, test per category, anomalous test per category)
EXPECTED = {
    "mvtec": (["bottle", "cable", "capsule"], 4, 6, 4),
    "visa": (["candle", "pcb1"], 4, 5, 3),
    "btech": (["01", "02", "03"], 4, 4, 2),
    "mvtec3d": (["bagel", "foam"], 4, 4, 2),
    "kolektor": (["kolektor"], 10, 5, 2),  # 13 good: 80 % (10) train, 3 + 2 defective test
    "folder": (["gadget", "widget"], 4, 4, 2),
}


def _expected_mask(image_path: Path) -> np.ndarray:
    written = F.WRITTEN_MASKS[str(image_path)]
    return np.asarray(Image.fromarray(written.astype(np.uint8) * 255).resize((S, S), Image.NEAREST)) > 0


@pytest.mark.parametrize("dataset", list(EXPECTED))
def test_reader_finds_categories_split_and_aligned_masks(dataset, fake_roots):
    cats, n_train, n_test, n_bad = EXPECTED[dataset]
    stream = load_stream(dataset, fake_roots[dataset], image_size=S)
    assert stream.names == cats
    for task in stream:
        assert (len(task.train), len(task.test), int(task.test.labels.sum())) == (n_train, n_test, n_bad)
        assert task.train.labels.sum() == 0
        assert not {s.image_path for s in task.train.samples} & {s.image_path for s in task.test.samples}
        masks = task.test.masks()
        assert not masks[task.test.labels == 0].any()
        for sample, mask in zip(task.test.samples, masks, strict=True):
            if sample.label == 1 and sample.mask_path is not None:
                assert mask.any() and np.array_equal(mask, _expected_mask(sample.image_path)), sample.image_path
        item = task.test[0]
        assert item["image"].shape == (3, S, S) and item["gt_mask"].shape == (S, S)


def test_visa_region_id_masks_are_binarised(fake_roots):
    task = load_stream("visa", fake_roots["visa"], categories=["candle"], image_size=S)[0]
    anomalous = [s for s in task.test.samples if s.label == 1]
    raw = [np.asarray(Image.open(s.mask_path)) for s in anomalous]
    assert {int(r.max()) for r in raw} == {1, 2}, "the fake masks hold region ids, not 255"
    masks = task.test.masks()[task.test.labels == 1]
    for r, m in zip(raw, masks, strict=True):
        assert m.dtype == bool and m.sum() == (r != 0).sum() > 0


def test_folder_without_masks_marks_no_pixel_ground_truth(fake_roots):
    stream = load_stream("folder", fake_roots["folder"], image_size=S)
    by_name = {t.name: t for t in stream}
    assert by_name["widget"].test.has_pixel_gt
    assert not by_name["gadget"].test.has_pixel_gt
    assert all(s.mask_path is None for s in by_name["gadget"].test.samples)


def test_mvtec3d_reads_rgb_only(fake_roots):
    stream = load_stream("mvtec3d", fake_roots["mvtec3d"], image_size=S)
    paths = [s.image_path for t in stream for s in t.train.samples + t.test.samples]
    assert all(p.parent.name == "rgb" and p.suffix == ".png" for p in paths)
    assert not any("validation" in p.parts for p in paths)


def test_btech_reads_bmp_and_png(fake_roots):
    stream = load_stream("btech", fake_roots["btech"], image_size=S)
    suffixes = {t.name: {s.image_path.suffix for s in t.train.samples} for t in stream}
    assert suffixes == {"01": {".bmp"}, "02": {".png"}, "03": {".bmp"}}


# --------------------------------------------------------------------------- same samples as anomalib


def _ours(dataset, root, category):
    task = load_stream(dataset, root, categories=[category], image_size=S, check=False)[0]
    train = {str(s.image_path) for s in task.train.samples}
    test = {(str(s.image_path), s.label, str(s.mask_path) if s.label else None) for s in task.test.samples}
    return train, test


def _theirs(df):
    train = set(df[df.split == "train"].image_path)
    test = df[df.split == "test"]
    rows = {(p, int(y), m if y else None) for p, y, m in zip(test.image_path, test.label_index, test.mask_path,
                                                              strict=True)}
    return train, rows


def test_mvtec_samples_equal_anomalib_make_mvtec_ad_dataset(fake_roots):
    from anomalib.data.datasets.image.mvtecad import make_mvtec_ad_dataset

    root = fake_roots["mvtec"]
    assert _ours("mvtec", root, "cable") == _theirs(make_mvtec_ad_dataset(root / "cable"))


def test_btech_samples_equal_anomalib_make_btech_dataset(fake_roots):
    from anomalib.data.datasets.image.btech import make_btech_dataset

    root = fake_roots["btech"]
    for cat in ("01", "02"):
        assert _ours("btech", root, cat) == _theirs(make_btech_dataset(root / cat))


def test_mvtec3d_samples_equal_anomalib_make_mvtec_3d_dataset(fake_roots):
    from anomalib.data.datasets.depth.mvtec_3d import make_mvtec_3d_dataset

    root = fake_roots["mvtec3d"]
    assert _ours("mvtec3d", root, "foam") == _theirs(make_mvtec_3d_dataset(root / "foam"))


def test_kolektor_split_equals_anomalib_make_kolektor_dataset(fake_roots):
    from anomalib.data.datasets.image.kolektor import make_kolektor_dataset

    root = fake_roots["kolektor"]
    assert _ours("kolektor", root, "kolektor") == _theirs(make_kolektor_dataset(root))


def test_anomalib_btech_mask_name_bug_is_avoided(tmp_path):
    """anomalib derives the mask name with str.rstrip('bmp'), so 'top.png' looks for 'to.png'."""
    from anomalib.data.datasets.image.btech import make_btech_dataset

    root = F.write_btech(tmp_path, categories=("02",), n_ko=1)
    ko = root / "02" / "test" / "ko"
    (ko / "0000.png").rename(ko / "top.png")
    gt = root / "02" / "ground_truth" / "ko"
    (gt / "0000.png").rename(gt / "top.png")
    theirs = make_btech_dataset(root / "02", split="test")
    assert theirs[theirs.label_index == 1].mask_path.iloc[0].endswith("/to.png")
    task = load_stream("btech", root, image_size=S)[0]
    assert [s.mask_path.name for s in task.test.samples if s.label] == ["top.png"]


def test_default_image_size_is_anomalib_256(fake_roots):
    stream = load_stream("btech", fake_roots["btech"], categories=["02"])
    assert stream.info["image_size"] == 256
    test = stream[0].test
    item = test[int(np.flatnonzero(test.labels)[0])]
    assert item["image"].shape == (3, 256, 256) and item["gt_mask"].shape == (256, 256) and item["gt_mask"].any()


def test_anomalib_converted_visa_tree_reads_as_folder(tmp_path):
    """anomalib's visa_pytorch/: MVTec layout with .JPG images and <stem>.png masks."""
    root = tmp_path / "visa_pytorch"
    for split, label, n in (("train", "good", 2), ("test", "good", 1), ("test", "bad", 2)):
        for i in range(n):
            img, mask = F.image("candle", i, label == "bad")
            Image.fromarray(img).save(_mkdir(root / "candle" / split / label) / f"{i:04d}.JPG", format="JPEG")
            if label == "bad":
                Image.fromarray(mask.astype(np.uint8) * 255).save(_mkdir(root / "candle" / "ground_truth" / "bad")
                                                                  / f"{i:04d}.png")
    task = load_stream("folder", root, image_size=S)[0]
    assert (len(task.train), len(task.test), int(task.test.labels.sum())) == (2, 3, 2)
    assert task.test.has_pixel_gt and all(m.any() for m in task.test.masks()[task.test.labels == 1])


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
