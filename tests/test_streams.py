"""Category choice, orders, grouping protocols, cross-dataset chains, and one clear error per bad input."""

from __future__ import annotations

import shutil

import fake_datasets as F
import pytest
from PIL import Image

from cl_iad.scenarios import DatasetLayoutError
from cl_iad.scenarios.streams import load_stream, parse_group, regroup

S = F.SIZE
MVTEC15 = ["bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw",
           "tile", "toothbrush", "transistor", "wood", "zipper"]


@pytest.fixture(scope="session")
def mvtec15(tmp_path_factory):
    """All 15 MVTec AD category names, one train and one test image each (for grouping protocols)."""
    return F.write_mvtec(tmp_path_factory.mktemp("mvtec15"), MVTEC15, n_train=1, n_good=1, defects=("crack",),
                         n_defect=1, size=16)


@pytest.fixture(scope="session")
def chain_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("chain")
    return (F.write_mvtec(base / "mvtec", ("bottle", "cable"), n_train=2, n_good=1, n_defect=1, size=16),
            F.write_visa(base / "visa", ("candle", "pcb1"), n_train=2, n_good=1, n_anomaly=1, size=16),
            F.write_kolektor(base / "kolektor"))


@pytest.mark.parametrize("group, n, sizes", [
    ("14-1", 15, [14, 1]), ("10-5", 15, [10, 5]), ("3x5", 15, [3, 3, 3, 3, 3]), ("10-1x5", 15, [10, 1, 1, 1, 1, 1]),
    ("14-1", 17, [14, 1, 1, 1]), ("5", 15, [5, 5, 5]), (None, 3, [1, 1, 1]), ("4-2x3-1", 12, [4, 2, 2, 2, 1, 1]),
])
def test_group_protocols_give_task_sizes(group, n, sizes):
    assert parse_group(group, n) == sizes


@pytest.mark.parametrize("group", ["10-4", "3x4", "16", "ten", "3x"])
def test_group_that_does_not_cover_the_categories_is_refused(group):
    with pytest.raises(ValueError, match="group"):
        parse_group(group, 15)


def test_mvtec_14_1_alphabetical_is_the_im_iad_stream(mvtec15):
    stream = load_stream("mvtec", mvtec15, order="alphabetical", group="14-1", image_size=16)
    assert stream.names == ["+".join(MVTEC15[:14]), "zipper"]
    first = stream[0]
    assert first.categories == tuple(MVTEC15[:14])
    assert len(first.train) == 14 and len(first.test) == 28  # the union of 14 categories
    assert {s.category for s in first.test.samples} == set(MVTEC15[:14])
    assert stream.info["group"] == "14-1"


def test_grouping_follows_the_order(mvtec15):
    stream = load_stream("mvtec", mvtec15, order="reverse", group="10-1x5", image_size=16)
    rev = sorted(MVTEC15, reverse=True)
    assert stream.names == ["+".join(rev[:10]), *rev[10:]]
    three = load_stream("mvtec", mvtec15, order="random:1", group="3x5", image_size=16)
    assert len(three) == 5 and sorted(c for t in three for c in t.categories) == MVTEC15
    again = load_stream("mvtec", mvtec15, order="random:1", group="3x5", image_size=16)
    assert three.names == again.names
    assert [c for t in three for c in t.categories] != MVTEC15


def test_categories_and_explicit_order(mvtec15):
    stream = load_stream("mvtec", mvtec15, categories=["wood", "bottle", "pill"], image_size=16)
    assert stream.names == ["bottle", "pill", "wood"]
    stream = load_stream("mvtec", mvtec15, categories="wood,bottle", order="wood,bottle", image_size=16)
    assert stream.names == ["wood", "bottle"]
    assert [t.task_id for t in stream] == [0, 1]


def test_cross_dataset_chain_prefixes_names_and_keeps_dataset_order(chain_roots):
    stream = load_stream("mvtec+visa+kolektor", chain_roots, order="reverse", image_size=16)
    assert stream.names == ["mvtec/cable", "mvtec/bottle", "visa/pcb1", "visa/candle", "kolektor"]
    assert stream.dataset == "mvtec+visa+kolektor"
    assert {s.category for s in stream[2].train.samples} == {"visa/pcb1"}
    picked = load_stream("mvtec+visa", ",".join(map(str, chain_roots[:2])), categories=["candle", "mvtec/bottle"],
                         order="candle,mvtec/bottle", image_size=16)
    assert picked.names == ["visa/candle", "mvtec/bottle"]


def test_chain_needs_one_root_per_dataset(chain_roots):
    with pytest.raises(ValueError, match="needs 2 root"):
        load_stream("mvtec+visa", chain_roots[0])


def test_regroup_merges_synthetic_tasks(tiny_stream):
    merged = regroup(tiny_stream, "2-1")
    assert merged.names == ["+".join(tiny_stream.names[:2]), tiny_stream.names[2]]
    assert len(merged[0].test) == len(tiny_stream[0].test) + len(tiny_stream[1].test)


# --------------------------------------------------------------------------- bad input


def _assert_explains(exc: pytest.ExceptionInfo, *needles: str) -> None:
    text = str(exc.value)
    for n in needles:
        assert n in text, f"{n!r} not in error:\n{text}"
    assert "layout" in text and "publisher's page" in text


@pytest.mark.parametrize("dataset, title, page", [
    ("mvtec", "MVTec AD", "mvtec-ad"), ("visa", "VisA", "spot-diff"), ("btech", "BTech", "btad"),
    ("mvtec3d", "MVTec 3D-AD", "mvtec-3d-ad"), ("kolektor", "KolektorSDD", "kolektorsdd"),
    ("folder", "MVTec AD layout", "your own data"),
])
def test_missing_root_shows_expected_tree_and_page(dataset, title, page, tmp_path):
    with pytest.raises(DatasetLayoutError) as exc:
        load_stream(dataset, tmp_path / "nowhere")
    _assert_explains(exc, str(tmp_path / "nowhere"), "does not exist", title, page, "<root>")


def test_missing_category_names_the_folder(chain_roots):
    with pytest.raises(DatasetLayoutError) as exc:
        load_stream("mvtec", chain_roots[0], categories=["bottle", "unicorn"])
    _assert_explains(exc, str(chain_roots[0] / "unicorn"), "'unicorn' not found", "available: bottle, cable",
                     "ground_truth/<defect>")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("dataset, writer, victim", [
    ("mvtec", F.write_mvtec, "bottle/ground_truth/crack/001_mask.png"),
    ("btech", F.write_btech, "01/ground_truth/ko/0001.png"),
    ("mvtec3d", F.write_mvtec3d, "foam/test/crack/gt/000.png"),
    ("visa", F.write_visa, "pcb1/Data/Masks/Anomaly/002.png"),
    ("kolektor", F.write_kolektor, "kos02/Part1_label.bmp"),
])
def test_missing_mask_names_image_and_expected_mask(dataset, writer, victim, tmp_path):
    root = writer(tmp_path / dataset, size=16) if dataset != "kolektor" else writer(tmp_path / dataset)
    (root / victim).unlink()
    with pytest.raises(DatasetLayoutError) as exc:
        load_stream(dataset, root)
    _assert_explains(exc, str(root / victim), "no", "mask")


def test_mask_size_differing_from_image(tmp_path):
    root = F.write_mvtec(tmp_path / "m", ("bottle",), size=16)
    mask = root / "bottle" / "ground_truth" / "hole" / "000_mask.png"
    Image.new("L", (20, 16)).save(mask)
    with pytest.raises(DatasetLayoutError) as exc:
        load_stream("mvtec", root)
    _assert_explains(exc, str(mask), "20x16", "16x16", "MVTec AD")


@pytest.mark.parametrize("damage", ["truncated", "not_an_image", "empty"])
def test_corrupt_image_is_named(damage, tmp_path):
    root = F.write_mvtec(tmp_path / "m", ("bottle",), size=16)
    img = root / "bottle" / "test" / "crack" / "001.png"
    data = img.read_bytes()
    img.write_bytes({"truncated": data[: len(data) // 2], "not_an_image": b"hello", "empty": b""}[damage])
    with pytest.raises(DatasetLayoutError) as exc:
        load_stream("mvtec", root)
    _assert_explains(exc, str(img), "cannot read image", "--skip-bad")


def test_truncated_jpeg_is_caught_before_training(tmp_path):
    root = F.write_visa(tmp_path / "v", ("candle",), size=16)
    img = root / "candle" / "Data" / "Images" / "Anomaly" / "001.JPG"
    img.write_bytes(img.read_bytes()[:-40])
    with pytest.raises(DatasetLayoutError) as exc:
        load_stream("visa", root)
    _assert_explains(exc, str(img), "end-of-image", "VisA")


def test_skip_bad_skips_and_counts(tmp_path, caplog):
    root = F.write_mvtec(tmp_path / "m", ("bottle", "cable"), size=16)
    (root / "bottle" / "test" / "crack" / "001.png").write_bytes(b"junk")
    (root / "cable" / "ground_truth" / "hole" / "000_mask.png").unlink()
    full = 2 + 2 * 2  # good + two defects of two
    stream = load_stream("mvtec", root, skip_bad=True)
    assert [len(t.test) for t in stream] == [full - 1, full - 1]
    assert stream.info["skipped_files"] == 2 and len(stream.info["skipped"]) == 2
    assert "skipping" in caplog.text
