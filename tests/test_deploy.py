"""Saved strategies: save -> load gives identical predictions; cl-iad predict writes readable outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cl_iad.cli import main
from cl_iad.deploy import load_strategy, save_strategy
from cl_iad.runner import run
from cl_iad.strategies import Strategy, build_model


@pytest.mark.parametrize(
    "model, preset, regime, kwargs",
    [("patchcore", None, "replay", {"buffer_size": 4}),
     ("padim", None, "per_task", {"eval_mode": "agnostic"}),
     ("fastflow", "light", "ewc", {})],
)
def test_save_then_load_gives_identical_predictions(tiny_stream, tmp_path, model, preset, regime, kwargs):
    stream = tiny_stream[:2]
    strategy = Strategy(build_model(model, preset), regime, **kwargs)
    for task in stream:
        strategy.fit_task(task, stream)
    before = strategy.predict(stream[0].test)
    save_strategy(strategy, tmp_path / "m", stream.names, {"*": {"image": {"value": 1.0, "f1": 1.0}}},
                  image_size=64)
    loaded = load_strategy(tmp_path / "m")
    after = loaded.strategy.predict(stream[0].test)
    np.testing.assert_array_equal(before.pred_score, after.pred_score)
    np.testing.assert_array_equal(before.anomaly_map, after.anomaly_map)
    if regime == "per_task":
        np.testing.assert_array_equal(before.routed_task, after.routed_task)
    assert loaded.task_names == stream.names and loaded.image_size == 64


@pytest.fixture(scope="module")
def finished_run(tiny_stream, tmp_path_factory, shared_cache):
    out = tmp_path_factory.mktemp("deploy")
    strategy = Strategy(build_model("patchcore"), "per_task", cache=shared_cache)
    return run(strategy, tiny_stream, out, metrics=["image_auroc"], wandb="off", progress=False)


def test_predict_writes_scores_decisions_maps_and_overlays(finished_run, tiny_stream, tmp_path, capsys):
    task = tiny_stream[1]
    folder = task.test.samples[-1].image_path.parent  # a defect folder
    out = tmp_path / "pred"
    assert main(["predict", "--model-dir", str(finished_run.run_dir / "model"), "--input", str(folder),
                 "--task", task.name, "--out", str(out)]) == 0
    table = pd.read_csv(out / "predictions.csv")
    n = len(list(folder.glob("*.png")))
    assert len(table) == n and set(table.task) == {task.name}
    assert set(table.decision) <= {"anomalous", "normal"}
    th = table.threshold.iloc[0]
    assert ((table.score >= th) == (table.decision == "anomalous")).all()
    amap = np.load(table.anomaly_map.iloc[0])
    assert amap.shape == (64, 64)
    overlay = np.asarray(Image.open(table.overlay.iloc[0]))
    assert overlay.shape[0] >= 256 and overlay.shape[1] >= 512  # image and overlay side by side, enlarged


def test_task_aware_model_without_task_is_refused_with_advice(finished_run, tiny_stream, tmp_path, capsys):
    image = tiny_stream[0].test.samples[0].image_path
    rc = main(["predict", "--model-dir", str(finished_run.run_dir / "model"), "--input", str(image),
               "--out", str(tmp_path / "p")])
    assert rc == 2 and "--task" in capsys.readouterr().err


def test_bad_model_dir_and_input_are_explained(tmp_path, capsys):
    assert main(["predict", "--model-dir", str(tmp_path), "--input", "x.png", "--out", str(tmp_path / "o")]) == 2
    assert "not a saved model" in capsys.readouterr().err
