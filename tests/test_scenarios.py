"""Synthetic generator, MVTec-layout reading, orders and the Avalanche protocol."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from cl_iad.scenarios import resolve_order
from cl_iad.scenarios.synthetic import SyntheticSpec, generate


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_synthetic_generator_is_deterministic_per_seed(tmp_path):
    spec = SyntheticSpec(image_size=32, n_train=3, n_test_good=2, n_test_per_defect=1, seed=7)
    a = generate(tmp_path / "a", ["disc", "weave"], spec)
    b = generate(tmp_path / "b", ["disc", "weave"], spec)
    c = generate(tmp_path / "c", ["disc", "weave"], SyntheticSpec(32, 3, 2, 1, seed=8))
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_synthetic_tree_is_in_mvtec_layout_with_pixel_exact_masks(tiny_stream):
    root = tiny_stream.root
    for cat in tiny_stream.names:
        assert (root / cat / "train" / "good").is_dir()
        assert (root / cat / "test" / "good").is_dir()
        defects = [p.name for p in (root / cat / "test").iterdir() if p.name != "good"]
        assert len(defects) >= 5
        for d in defects:
            for img in (root / cat / "test" / d).glob("*.png"):
                mask = np.asarray(Image.open(root / cat / "ground_truth" / d / f"{img.stem}_mask.png"))
                assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255} and mask.max() == 255


def test_task_has_normal_train_and_mixed_test(tiny_stream):
    task = tiny_stream[0]
    assert task.train.labels.sum() == 0
    assert 0 < task.test.labels.sum() < len(task.test)
    masks = task.test.masks()
    assert (masks[task.test.labels == 0] == 0).all()
    assert all(m.any() for m in masks[task.test.labels == 1])
    item = task.test[len(task.test) - 1]
    assert set(item) >= {"image", "gt_label", "gt_mask"} and item["image"].shape == (3, 64, 64)


@pytest.mark.parametrize(
    "order, expected",
    [("alphabetical", ["a", "b", "c"]), ("reverse", ["c", "b", "a"]), (["b", "a", "c"], ["b", "a", "c"]),
     ("c,a", ["c", "a"])],
)
def test_orders(order, expected):
    assert resolve_order(["b", "c", "a"], order) == expected


def test_random_order_is_seeded_permutation():
    names = [f"t{i}" for i in range(8)]
    a, b = resolve_order(names, "random:3"), resolve_order(names, "random:3")
    assert a == b and sorted(a) == sorted(names) and a != sorted(names)
    assert resolve_order(names, "random:4") != a


def test_bad_order_is_explained():
    with pytest.raises(ValueError, match="unknown tasks"):
        resolve_order(["a", "b"], ["a", "z"])
    with pytest.raises(ValueError, match="random:SEED"):
        resolve_order(["a"], "shuffle")


def test_avalanche_stream_protocol(tiny_stream):
    seen = [(e.current_experience, e.task_label, len(e.dataset)) for e in tiny_stream.train_stream]
    assert seen == [(i, i, len(t.train)) for i, t in enumerate(tiny_stream)]
    assert [len(e.dataset) for e in tiny_stream.test_stream] == [len(t.test) for t in tiny_stream]
    # iterating twice starts afresh (no shared iterator state)
    assert list(tiny_stream) == list(tiny_stream)
    assert tiny_stream[:2].names == tiny_stream.names[:2]
    bench = tiny_stream.to_avalanche()
    assert len(bench.train_stream) == len(tiny_stream)
    assert len(bench.test_stream[1].dataset) == len(tiny_stream[1].test)


def test_reorder_renumbers_tasks(tiny_stream):
    rev = tiny_stream.reorder("reverse")
    assert rev.names == sorted(tiny_stream.names, reverse=True)
    assert [t.task_id for t in rev] == [0, 1, 2]
