"""Real-dataset streams through the whole loop: a cross-dataset chain, task-agnostic routing, the CLI."""

from __future__ import annotations

import json
import math

import fake_datasets as F
import numpy as np
import pandas as pd
import pytest
import torch

from cl_iad.cli import main
from cl_iad.runner import run
from cl_iad.scenarios.streams import load_stream
from cl_iad.strategies import Strategy, build_model
from cl_iad.strategies.router import FeatureStatsRouter


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    """MVTec AD (2 categories) then VisA (1) then a custom folder without masks, one corrupt file skipped."""
    base = tmp_path_factory.mktemp("e2e")
    mvtec = F.write_mvtec(base / "mvtec", ("bottle", "cable"), n_train=3, n_good=1, n_defect=1)
    visa = F.write_visa(base / "visa", ("candle",), n_train=3, n_good=1, n_anomaly=2)
    folder = F.write_folder(base / "folder", ("gadget",), masks_for=(), n_train=3, n_good=1, n_defect=2)
    (mvtec / "cable" / "test" / "crack" / "000.png").write_bytes(b"not a png")
    stream = load_stream("mvtec+visa+folder", [mvtec, visa, folder], image_size=64, skip_bad=True)
    strategy = Strategy(build_model("patchcore"), "naive")
    return run(strategy, stream, base / "out", wandb="off", progress=False), stream


def test_cross_dataset_stream_runs_end_to_end(chain_run):
    result, stream = chain_run
    assert stream.names == ["mvtec/bottle", "mvtec/cable", "visa/candle", "folder/gadget"]
    cells = pd.read_csv(result.run_dir / "cells.csv")
    assert len(cells) == 4 * 4 * 5
    cfg = json.loads((result.run_dir / "config.json").read_text())["settings"]
    assert cfg["dataset"] == "mvtec+visa+folder" and cfg["tasks"] == stream.names
    assert cfg["skipped_files"] == 1 and "cable/test/crack/000.png" in cfg["skipped"][0]
    assert cfg["eval_mode"] == "agnostic" and cfg["task_aware"] is False
    for m in ("image_auroc", "pixel_auroc", "pro"):
        assert (result.run_dir / f"matrix_{m}.csv").is_file()


def test_pixel_metrics_are_nan_without_masks_and_finite_with_them(chain_run):
    result, _ = chain_run
    for m in ("pixel_auroc", "pro", "pixel_aupr"):
        R = result.matrices[m]
        assert R["folder/gadget"].isna().all(), m
        assert np.isfinite(R.drop(columns="folder/gadget").to_numpy()).all(), m
    assert np.isfinite(result.matrices["image_auroc"].to_numpy()).all()


def test_router_sends_images_to_the_nearest_task_statistics():
    torch.manual_seed(0)
    a = torch.randn(20, 8, 2, 2)
    b = torch.randn(20, 8, 2, 2) + 3.0
    router = FeatureStatsRouter().add_task(0, a).add_task(5, b)
    test = torch.cat([torch.randn(6, 8, 2, 2), torch.randn(4, 8, 2, 2) + 3.0])
    assert router.route(test).tolist() == [0] * 6 + [5] * 4
    with pytest.raises(RuntimeError, match="knows no task"):
        FeatureStatsRouter().route(test)


@pytest.fixture(scope="module")
def agnostic_run(tiny_stream, tmp_path_factory, shared_cache):
    titles: list[str] = []
    from cl_iad import plots

    original = plots.matrix_heatmap
    mp = pytest.MonkeyPatch()
    mp.setattr(plots, "matrix_heatmap", lambda R, m, path, title="": (titles.append(title), original(R, m, path, title))[1])
    try:
        strategy = Strategy(build_model("patchcore"), "per_task", cache=shared_cache, eval_mode="agnostic")
        result = run(strategy, tiny_stream, tmp_path_factory.mktemp("agnostic"), metrics=["image_auroc"],
                     wandb="off", progress=False)
    finally:
        mp.undo()
    return result, titles


def test_task_agnostic_per_task_reports_routing_accuracy(agnostic_run, tiny_stream):
    result, titles = agnostic_run
    cells = pd.read_csv(result.run_dir / "cells.csv")
    routing = cells[cells.metric == "routing_accuracy"]
    assert len(routing) == len(tiny_stream) ** 2
    R = result.matrices["routing_accuracy"].to_numpy()
    lower = R[np.tril_indices_from(R)]
    upper = R[np.triu_indices_from(R, k=1)]
    assert np.isnan(upper).all(), "no right answer before a task is trained"
    assert lower.min() >= 0.9, R  # synthetic categories are far apart in feature space
    assert result.summary["routing_accuracy"]["acc"] == pytest.approx(np.mean(R[-1]))
    assert result.summary["image_auroc"]["task_aware"] is False
    cfg = json.loads((result.run_dir / "config.json").read_text())["settings"]
    assert cfg["eval_mode"] == "agnostic" and cfg["router"] == "feature_stats:gaussian"
    assert titles and all("task-agnostic" in t for t in titles)


def test_agnostic_predict_never_sees_the_task_id(tiny_stream, shared_cache):
    strategy = Strategy(build_model("patchcore"), "per_task", cache=shared_cache, eval_mode="agnostic")
    for task in tiny_stream:
        strategy.fit_task(task, tiny_stream)
    pred = strategy.predict(tiny_stream[1].test)  # no task id: the router decides
    assert pred.routed_task is not None and len(pred.routed_task) == len(tiny_stream[1].test)
    aware = Strategy(build_model("patchcore"), "per_task", cache=shared_cache)
    for task in tiny_stream:
        aware.fit_task(task, tiny_stream)
    with pytest.raises(ValueError, match="eval_mode='agnostic'"):
        aware.predict(tiny_stream[1].test)
    # synthetic images all route to their own task, so routed scores equal the task-aware ones
    assert (pred.routed_task == 1).all()
    assert np.allclose(pred.pred_score, aware.predict(tiny_stream[1].test, task_id=1).pred_score)


def test_cli_runs_a_dataset_and_writes_the_result_folder(tmp_path):
    root = F.write_mvtec(tmp_path / "mvtec", ("bottle", "cable"), n_train=3, n_good=1, n_defect=1)
    out = tmp_path / "out"
    code = main(["run", "--dataset", "mvtec", "--root", str(root), "--order", "alphabetical", "--model", "patchcore",
                 "--strategy", "replay", "--image-size", "64", "--wandb", "off", "--out", str(out), "--no-progress",
                 "--buffer-size", "2"])
    assert code == 0
    (run_dir,) = out.iterdir()
    for f in ["config.json", "cells.csv", "summary.json", "matrix_image_auroc.csv", "plots/matrix_pro.png"]:
        assert (run_dir / f).is_file(), f
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary) == {"image_auroc", "pixel_auroc", "pro", "image_aupr", "pixel_aupr"}
    assert not math.isnan(summary["image_auroc"]["acc"])


def test_cli_task_agnostic_chain_with_groups(tmp_path):
    mvtec = F.write_mvtec(tmp_path / "mvtec", ("bottle", "cable"), n_train=3, n_good=1, n_defect=1)
    visa = F.write_visa(tmp_path / "visa", ("candle",), n_train=3, n_good=1, n_anomaly=1)
    out = tmp_path / "out"
    code = main(["run", "--dataset", "mvtec+visa", "--root", f"{mvtec},{visa}", "--group", "2-1",
                 "--strategy", "per_task", "--task-agnostic", "--image-size", "64", "--metrics", "image_auroc",
                 "--wandb", "off", "--out", str(out), "--no-progress"])
    assert code == 0
    (run_dir,) = out.iterdir()
    R = pd.read_csv(run_dir / "matrix_routing_accuracy.csv", index_col=0)
    assert list(R.columns) == ["mvtec/bottle+mvtec/cable", "visa/candle"]
    assert json.loads((run_dir / "config.json").read_text())["settings"]["eval_mode"] == "agnostic"


def test_cli_bad_root_is_one_clear_error(tmp_path, capsys):
    code = main(["run", "--dataset", "visa", "--root", str(tmp_path / "missing"), "--wandb", "off"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "missing") in err and "split_csv/1cls.csv" in err and "spot-diff" in err
    assert "Traceback" not in err


def test_normalization_option_sets_the_model_input_statistics():
    x = torch.rand(1, 3, 8, 8)
    none = build_model("patchcore", normalization="none")
    assert torch.equal(none.normalise(x), x)
    imagenet = build_model("patchcore", normalization="imagenet")
    expected = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1)
    assert torch.allclose(imagenet.normalise(x), expected)
    default = build_model("patchcore")
    assert torch.allclose(default.normalise(x), (x - 0.5) / 0.5)  # efficientnet-lite's own [-1, 1] scaling
    assert len({none.feature_key, imagenet.feature_key, default.feature_key}) == 3, "no cache reuse across them"
    with pytest.raises(ValueError, match="unknown normalization"):
        build_model("patchcore", normalization="zscore")
