"""Decision thresholds, overlays and the example grid written by every run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cl_iad.thresholds import f1_optimal_threshold, fit_task_thresholds, threshold_drift
from cl_iad.visualize import outline, overlay


def _brute_f1(scores, labels):
    best = (-1.0, None)
    for t in np.unique(scores):
        pred = scores >= t
        tp = (pred & labels).sum()
        f1 = 2 * tp / (2 * tp + (pred & ~labels).sum() + (~pred & labels).sum())
        if f1 > best[0]:
            best = (f1, t)
    return best


@pytest.mark.parametrize("seed", range(4))
def test_f1_optimal_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(200) < 0.3
    scores = np.round(rng.random(200) + 0.5 * labels, 2)
    th = f1_optimal_threshold(scores, labels)
    f1, t = _brute_f1(scores, labels)
    assert th.f1 == pytest.approx(f1) and th.value == pytest.approx(t)


def test_held_out_thresholds_report_f1_on_the_rest():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(20), np.ones(20)].astype(int)
    scores = labels + rng.normal(0, 0.3, 40)
    rec = fit_task_thresholds(scores, labels, held_out=0.5)
    assert 0.5 < rec["image"]["f1_eval"] <= 1.0 and rec["held_out"] == 0.5


def test_threshold_drift_reports_range():
    hist = {0: {"a": {"image": {"value": 1.0}}}, 1: {"a": {"image": {"value": 3.0}}, "b": {"image": {"value": 2.0}}}}
    drift = threshold_drift(hist)
    assert drift["a"]["values"] == [1.0, 3.0] and drift["a"]["range"] == 2.0 and drift["b"]["range"] == 0.0


def test_overlay_outlines_predicted_and_true_masks():
    img = np.zeros((8, 8, 3))
    amap = np.zeros((8, 8))
    amap[2:6, 2:6] = 1.0
    gt = np.zeros((8, 8), bool)
    gt[0:2, 0:2] = True
    rgb = overlay(img, amap, 0.0, 1.0, threshold=0.5, gt_mask=gt)
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 8, 3)
    assert (rgb[2, 2] == 255).all() and not (rgb[3, 3] == 255).all()  # outline only, interior keeps the heat
    assert tuple(rgb[0, 0]) == (0, 255, 0)
    assert outline(amap >= 0.5).sum() == 12


def test_every_run_writes_thresholds_and_an_example_grid(tiny_stream, tmp_path, shared_cache):
    from cl_iad.cli import main
    from cl_iad.runner import run
    from cl_iad.strategies import Strategy, build_model

    result = run(Strategy(build_model("patchcore"), "naive", cache=shared_cache), tiny_stream, tmp_path,
                 metrics=["image_auroc"], wandb="off", progress=False)
    records = [json.loads(line) for line in (result.run_dir / "thresholds.jsonl").read_text().splitlines()]
    per_task = [r for r in records if r["eval_task"] != "*"]
    t = len(tiny_stream)
    assert len(per_task) == t * (t + 1) // 2  # seen tasks only
    assert [r["trained_upto"] for r in records if r["eval_task"] == "*"] == [t - 1]  # all tasks pooled, last step
    assert all("pixel" in r for r in records)
    drift = json.loads((result.run_dir / "thresholds_drift.json").read_text())
    assert set(drift["image"]) == set(tiny_stream.names)
    assert (result.run_dir / "plots" / "examples_grid.png").stat().st_size > 5000
    out = tmp_path / "grid.png"
    assert main(["show", str(result.run_dir), "--out", str(out)]) == 0 and out.stat().st_size > 5000
    # the examples are written whole (no temporary file left); a damaged one leaves its tile blank
    examples = sorted((result.run_dir / "examples").iterdir())
    assert examples and all(f.suffix == ".npz" for f in examples)
    examples[0].write_bytes(examples[0].read_bytes()[:100])
    assert main(["show", str(result.run_dir), "--out", str(tmp_path / "grid2.png")]) == 0
    assert (tmp_path / "grid2.png").stat().st_size > 5000


def test_a_torn_last_line_of_thresholds_jsonl_is_ignored(tmp_path):
    import json

    from cl_iad.thresholds import load_thresholds

    good = {"trained_upto": 0, "trained_task": "a", "eval_task": "a", "image": {"threshold": 0.5}}
    (tmp_path / "thresholds.jsonl").write_text(json.dumps(good) + "\n" + '{"trained_upto": 0, "eval_ta')
    assert load_thresholds(tmp_path) == {0: {"a": good}}
