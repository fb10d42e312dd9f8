"""Mixed-task evaluation: every seen task's test images scored together, next to the per-task mean."""

from __future__ import annotations

import numpy as np
import pytest

from cl_iad.mixed import FILENAME, MixedTaskEvaluation, TaskSample, pooled_scores, read_mixed, sample_pixels
from cl_iad.runner import run
from cl_iad.strategies import Strategy, build_model


def _part(task_id, normal, anomalous, routed=None):
    scores = np.array(normal + anomalous, dtype=float)
    labels = np.array([0] * len(normal) + [1] * len(anomalous))
    return TaskSample(task_id, scores, labels, None, None, None if routed is None else np.array(routed))


def test_pooling_puts_tasks_on_one_scale():
    """Each task alone ranks perfectly, but task 1's normal images outscore task 0's anomaly.

    Pooled: anomaly 2 beats 2 of the 4 normals, anomaly 12 beats all 4, so AUROC = 6 / 8."""
    parts = [_part(0, [0, 1], [2], routed=[0, 0, 1]), _part(1, [10, 11], [12], routed=[1, 1, 1])]
    out = pooled_scores(parts)
    assert out["mixed_image_auroc"] == pytest.approx(0.75)
    assert out["n_images"] == 6
    assert np.isnan(out["mixed_pixel_auroc"])  # no maps
    assert out["routing_accuracy"] == pytest.approx(5 / 6)


def test_pixel_sample_is_fixed_by_its_seed_and_keeps_small_images_whole():
    maps = np.random.default_rng(1).random((3, 8, 8)).astype(np.float32)
    masks = maps > 0.9
    a, ga = sample_pixels(maps, masks, per_image=10, seed=7)
    b, gb = sample_pixels(maps, masks, per_image=10, seed=7)
    assert len(a) == 30 and np.array_equal(a, b) and np.array_equal(ga, gb)
    whole, gt = sample_pixels(maps, masks, per_image=64, seed=7)
    assert np.array_equal(whole, maps.ravel()) and np.array_equal(gt, masks.ravel())


@pytest.fixture(scope="module")
def patchcore_run(tiny_stream, shared_cache, tmp_path_factory):
    strategy = Strategy(build_model("patchcore", "light"), "naive", cache=shared_cache)
    out = tmp_path_factory.mktemp("mixed")
    result = run(strategy, tiny_stream[:2], out, name="naive", wandb="off", progress=False,
                 recorders=[MixedTaskEvaluation()])
    return strategy, result


def test_mixed_csv_has_one_row_per_step_beside_the_per_task_mean(patchcore_run):
    _, result = patchcore_run
    rows = read_mixed(result.run_dir / FILENAME)
    assert sorted(rows) == [0, 1]
    image, pixel = result.matrices["image_auroc"].to_numpy(), result.matrices["pixel_auroc"].to_numpy()
    # one seen task: the pooled set is that task's test set; 64x64 images are kept whole (4096 pixels)
    assert rows[0]["mixed_image_auroc"] == pytest.approx(image[0, 0])
    assert rows[0]["mixed_pixel_auroc"] == pytest.approx(pixel[0, 0])
    assert rows[1]["mean_image_auroc"] == pytest.approx(image[1].mean())
    assert rows[1]["mean_pixel_auroc"] == pytest.approx(pixel[1].mean())
    assert rows[1]["tasks_seen"] == 2 and rows[1]["pixels"] == rows[1]["n_images"] * 64 * 64
    assert 0 <= rows[1]["mixed_image_auroc"] <= 1 and np.isnan(rows[1]["routing_accuracy"])


def test_a_rerun_of_a_finished_run_keeps_mixed_csv(patchcore_run, tiny_stream, shared_cache):
    _, result = patchcore_run
    before = (result.run_dir / FILENAME).read_text()
    again = Strategy(build_model("patchcore", "light"), "naive", cache=shared_cache)
    run(again, tiny_stream[:2], result.run_dir.parent, name="naive", wandb="off", progress=False,
        recorders=[MixedTaskEvaluation()])
    assert (result.run_dir / FILENAME).read_text() == before


def test_image_level_routing_method_gets_mixed_routing_accuracy_and_no_pixel_value(tiny_stream, shared_cache,
                                                                                  tmp_path):
    strategy = Strategy(build_model("patchcore", "light"), "dne", cache=shared_cache)
    result = run(strategy, tiny_stream[:2], tmp_path, name="dne", wandb="off", progress=False, checkpoint=False,
                 save_model=False, recorders=[MixedTaskEvaluation()])
    rows = read_mixed(result.run_dir / FILENAME)
    routing = result.matrices["routing_accuracy"].to_numpy()
    sizes = np.array([len(t.test) for t in tiny_stream[:2]])
    assert rows[1]["routing_accuracy"] == pytest.approx((routing[1] * sizes).sum() / sizes.sum())
    assert np.isnan(rows[1]["mixed_pixel_auroc"]) and np.isnan(rows[1]["mean_pixel_auroc"])
