"""The mvtec_scale layout: MVTec AD's 15 categories with its exact image counts, generated at any size."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from PIL import Image

from cl_iad.scenarios.folder import build_scenario, synthetic

gen = importlib.import_module("cl_iad.scenarios.synthetic")


@pytest.fixture(scope="module")
def mvtec_scale(tmp_path_factory):
    """All 15 categories at 16 px (about 10 s on one core)."""
    return synthetic(tmp_path_factory.mktemp("mvtec_scale"), layout="mvtec_scale", image_size=16)


def test_the_count_table_sums_to_mvtec_ads_published_totals():
    train, good, bad = (sum(c[k] for c in gen.MVTEC_AD_COUNTS.values()) for k in range(3))
    assert len(gen.MVTEC_AD_COUNTS) == 15
    assert (train, good, good + bad) == (3629, 467, 1725)
    assert set(gen.MVTEC_SCALE_BASES) == set(gen.MVTEC_AD_COUNTS)
    # textures stand in for textures, objects for objects
    textures = {"carpet", "grid", "leather", "tile", "wood", "zipper"}
    assert all((base in gen.TEXTURES) == (name in textures) for name, (base, _) in gen.MVTEC_SCALE_BASES.items())


def test_every_category_has_mvtec_ads_train_good_and_defective_counts(mvtec_scale):
    assert mvtec_scale.names == sorted(gen.MVTEC_AD_COUNTS)
    for task in mvtec_scale:
        n_train, n_good, n_bad = gen.MVTEC_AD_COUNTS[task.name]
        labels = task.test.labels
        assert (len(task.train), int((labels == 0).sum()), int((labels == 1).sum())) == (n_train, n_good, n_bad), \
            task.name
    assert sum(len(t.train) for t in mvtec_scale) == 3629
    assert sum(len(t.test) for t in mvtec_scale) == 1725
    assert sum(int((t.test.labels == 0).sum()) for t in mvtec_scale) == 467
    assert mvtec_scale.info["layout"] == "mvtec_scale"


def test_categories_sharing_a_stand_in_are_different_tasks(mvtec_scale):
    # bottle, hazelnut and pill are all drawn as discs, in three colour variants
    first = {name: np.asarray(Image.open(mvtec_scale[mvtec_scale.names.index(name)].train.samples[0].image_path))
             for name in ("bottle", "hazelnut", "pill")}
    means = {name: tuple(img.reshape(-1, 3).mean(0).round(1)) for name, img in first.items()}
    assert len(set(means.values())) == 3, means


def test_defective_images_spread_over_the_stand_ins_defects():
    plan = gen.mvtec_scale_plan("capsule")  # 109 defective images over 5 defect kinds
    assert [n for _, n in plan.defects] == [22, 22, 22, 22, 21]
    assert plan.n_test == 23 + 109


def test_build_scenario_takes_a_subset_and_refuses_what_does_not_apply(tmp_path):
    s = build_scenario("synthetic", tmp_path, categories=["toothbrush", "bottle"], image_size=16,
                       layout="mvtec_scale")
    assert s.names == ["bottle", "toothbrush"] and [len(t.train) for t in s] == [209, 60]
    with pytest.raises(ValueError, match="drop n_train"):
        build_scenario("synthetic", tmp_path, image_size=16, layout="mvtec_scale", n_train=5)
    with pytest.raises(ValueError, match="unknown MVTec AD categories"):
        build_scenario("synthetic", tmp_path, categories=["disc"], image_size=16, layout="mvtec_scale")
    with pytest.raises(ValueError, match="generated data only"):
        build_scenario("mvtec", tmp_path, layout="mvtec_scale")
    with pytest.raises(ValueError, match="unknown synthetic layout"):
        build_scenario("synthetic", tmp_path, layout="visa_scale")


def test_the_layout_reaches_the_stream_from_a_config_and_the_command_line(tmp_path):
    from cl_iad.cli import build_parser, config_from_args, given_options
    from cl_iad.config import Config

    cfg = Config.from_dict({"data": {"dataset": "synthetic", "root": str(tmp_path), "categories": ["toothbrush"],
                                     "image_size": 16, "layout": "mvtec_scale"}})
    assert [len(t.train) for t in cfg.build_scenario()] == [60]  # MVTec AD's toothbrush/train/good
    argv = ["run", "--dataset", "synthetic", "--root", str(tmp_path), "--categories", "toothbrush",
            "--image-size", "16", "--layout", "mvtec_scale"]
    args = build_parser().parse_args(argv)
    args.given_ = given_options(argv)
    assert config_from_args(args).data.layout == "mvtec_scale"


def test_a_sweep_config_takes_the_layout(tmp_path):
    from cl_iad.sweep import expand

    cfg = {"name": "scale", "dataset": "synthetic", "layout": "mvtec_scale", "categories": ["toothbrush"],
           "image_size": 16, "models": ["padim"], "strategies": ["naive"], "orders": ["alphabetical"]}
    (job,) = expand(cfg, tmp_path)
    assert job.config["data"]["layout"] == "mvtec_scale"
