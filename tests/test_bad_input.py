"""Bad input handled end to end: empty or fully skipped training folders, a task without anomalous test
images, checkpoints written with other settings, and state files that hold objects."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import fake_datasets as F
import numpy as np
import pandas as pd
import pytest
import torch

from cl_iad.checkpoint import Checkpointer, plain_state
from cl_iad.cli import main
from cl_iad.results import METRICS
from cl_iad.runner import RunConfigMismatch, _prepare_run_dir
from cl_iad.scenarios.streams import load_stream
from cl_iad.strategies import Strategy, build_model
from cl_iad.thresholds import fit_task_thresholds, threshold_drift


def _run_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--dataset", "mvtec", "--root", str(root), "--image-size", "64", "--wandb", "off",
            "--no-progress", "--out", str(out), *extra]


def _error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, captured.err
    return lines[0]


def _strict_json(text: str):
    """json.loads that refuses NaN and Infinity, which are not JSON."""
    def refuse(token: str):
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


# -- training folders ----------------------------------------------------------------------------------------
def test_empty_train_good_names_the_folder(capsys, tmp_path):
    root = F.write_mvtec(tmp_path / "mv", categories=("bottle", "cable"), n_train=2, size=64)
    train_dir = root / "cable" / "train" / "good"
    for png in train_dir.iterdir():
        png.unlink()
    (train_dir / "notes.txt").write_text("not an image")
    line = _error_line(capsys, _run_args(root, tmp_path / "out"))
    assert f"no training images in {train_dir}" in line and "--categories" in line


def test_every_training_image_skipped_names_the_folder(capsys, caplog, tmp_path):
    root = F.write_mvtec(tmp_path / "mv", categories=("bottle", "cable"), n_train=2, size=64)
    train_dir = root / "cable" / "train" / "good"
    for png in train_dir.iterdir():
        png.write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING):
        line = _error_line(capsys, _run_args(root, tmp_path / "out", "--skip-bad"))
    assert f"every train image of category 'cable' in {train_dir} was skipped" in line
    assert "--categories" in line
    assert sum("skipping" in r.getMessage() for r in caplog.records) == 2, "each bad file is named in a warning"
    # without --skip-bad the first bad file stops the run, named
    line = _error_line(capsys, _run_args(root, tmp_path / "out"))
    assert str(train_dir / "000.png") in line and "--skip-bad" in line


# -- a task whose test set has no anomalous image ------------------------------------------------------------
@pytest.fixture(scope="module")
def no_anomaly_run(tmp_path_factory):
    """A two-task run in which 'cable' has only good test images; returns (run_dir, log records)."""
    tmp = tmp_path_factory.mktemp("no_anomaly")
    root = F.write_mvtec(tmp / "mv", categories=("bottle", "cable"), n_train=6, n_good=3, defects=("crack",),
                         n_defect=2, size=64)
    shutil.rmtree(root / "cable" / "test" / "crack")
    shutil.rmtree(root / "cable" / "ground_truth")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("cl_iad").addHandler(handler)
    try:
        assert main(_run_args(root, tmp / "out", "--name", "r")) == 0
    finally:
        logging.getLogger("cl_iad").removeHandler(handler)
    return tmp / "out" / "r", records, root


def test_task_without_anomalies_warns_naming_the_task(no_anomaly_run):
    _, records, _ = no_anomaly_run
    messages = [r.getMessage() for r in records]
    about_cable = [m for m in messages if "cable" in m]
    assert len(about_cable) == 2, "one warning before training, one for the summaries; not one per cell"
    assert about_cable[0].startswith("task cable: its test set has no anomalous image")
    assert "summaries skip it" in about_cable[0]
    assert not any("bottle" in m for m in messages)


def test_task_without_anomalies_has_nan_cells_and_is_skipped_by_summaries(no_anomaly_run):
    run_dir, records, _ = no_anomaly_run
    cells = pd.read_csv(run_dir / "cells.csv")
    assert cells[cells.eval_task == "cable"].value.isna().all()
    assert cells[cells.eval_task == "bottle"].value.notna().all()
    summary = _strict_json((run_dir / "summary.json").read_text())
    for m in METRICS:
        assert summary[m]["skipped_tasks"] == ["cable"], m
        R = pd.read_csv(run_dir / f"matrix_{m}.csv", index_col=0)
        assert summary[m]["acc"] == pytest.approx(R.loc["cable", "bottle"], abs=1e-12)  # bottle alone
        assert summary[m]["fm_per_task"]["bottle"] is not None
    assert any(r.getMessage().startswith(f"summaries of {', '.join(METRICS)} leave out task(s) cable")
               for r in records)


def test_task_without_anomalies_keeps_thresholds_valid(no_anomaly_run, tmp_path, capsys):
    run_dir, _, root = no_anomaly_run
    lines = [_strict_json(line) for line in (run_dir / "thresholds.jsonl").read_text().splitlines()]
    cable = [rec for rec in lines if rec["eval_task"] == "cable"]
    assert cable and all("image" not in rec and "pixel" not in rec for rec in cable)
    assert all("no anomalous image" in rec["undefined"]["image"] for rec in cable)
    for rec in lines:
        if rec["eval_task"] != "cable":
            assert math.isfinite(rec["image"]["value"]) and 0 < rec["image"]["f1"] <= 1
    drift = _strict_json((run_dir / "thresholds_drift.json").read_text())
    assert "cable" not in drift["image"] and "bottle" in drift["image"]
    saved = _strict_json((run_dir / "model" / "strategy.json").read_text())["thresholds"]
    assert "image" not in saved["cable"] and math.isfinite(saved["*"]["image"]["value"])
    # deployment falls back to the threshold fitted on all tasks pooled
    out = tmp_path / "pred"
    assert main(["predict", "--model-dir", str(run_dir / "model"), "--input", str(root / "cable" / "test" / "good"),
                 "--task", "cable", "--out", str(out)]) == 0
    table = pd.read_csv(out / "predictions.csv")
    assert (table.threshold == saved["*"]["image"]["value"]).all()
    assert set(table.decision) <= {"normal", "anomalous"}


def test_thresholds_without_positives_are_left_out_not_nan():
    rec = fit_task_thresholds(np.array([0.1, 0.5, 0.3]), np.zeros(3), np.random.rand(3, 4, 4), np.zeros((3, 4, 4)))
    assert set(rec) == {"held_out", "undefined"} and set(rec["undefined"]) == {"image", "pixel"}
    history = {0: {"a": {"image": {"value": 0.0, "f1": 1.0}}}, 1: {"a": rec}}
    drift = threshold_drift(history)
    assert drift["a"]["values"] == [0.0] and drift["a"]["relative_range"] is None
    _strict_json(json.dumps(drift))


# -- checkpoints of other settings ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    root = F.write_mvtec(tmp_path_factory.mktemp("ckpt_mv"), categories=("bottle", "cable"), n_train=4,
                         defects=("crack",), size=64)
    return load_stream("mvtec", root, image_size=64)


def _settings(stream, **change) -> dict:
    base = {"dataset": "mvtec", "tasks": stream.names, "order": "alphabetical", "model": "patchcore",
            "seed": 0, "strategy_seed": 0, "regime": "naive"}
    return {**base, **change}


@pytest.fixture(scope="module")
def written_checkpoint(stream, tmp_path_factory, shared_cache) -> Path:
    """A run directory whose checkpoint after task 0 was written with _settings(stream)."""
    run_dir = tmp_path_factory.mktemp("ckpt_run")
    strategy = Strategy(build_model("patchcore"), "naive", cache=shared_cache)
    strategy.fit_task(stream[0], stream)
    Checkpointer(run_dir, stream.names, _settings(stream)).save(strategy, 0)
    return run_dir


@pytest.mark.parametrize("change", [{"seed": 1, "strategy_seed": 1}, {"order": "reverse"}, {"model": "padim"}],
                         ids=["seed", "order", "model"])
def test_checkpoint_of_other_settings_is_ignored_with_a_warning(written_checkpoint, stream, change, caplog,
                                                                shared_cache):
    fresh = Strategy(build_model("patchcore"), "naive", cache=shared_cache)
    ckpt = Checkpointer(written_checkpoint, stream.names, _settings(stream, **change))
    with caplog.at_level(logging.WARNING, logger="cl_iad.checkpoint"):
        assert ckpt.resume(fresh, complete_rows={0, 1}) == -1
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "after_task_000.pt was written with other settings" in warning
    key, value = next(iter(change.items()))
    assert f"{key}: " in warning and repr(value) in warning, "the warning names what differs"
    assert not fresh.model.fitted_ and fresh.trained_tasks_ == [], "the state was loaded anyway"


def test_checkpoint_of_the_same_settings_is_resumed(written_checkpoint, stream, shared_cache):
    """The control for the test above: the same settings do load the state."""
    fresh = Strategy(build_model("patchcore"), "naive", cache=shared_cache)
    assert Checkpointer(written_checkpoint, stream.names, _settings(stream)).resume(fresh, {0}) == 0
    assert fresh.model.fitted_ and fresh.trained_tasks_ == [0]


def test_checkpoint_of_other_tasks_is_ignored(written_checkpoint, stream, caplog, shared_cache):
    fresh = Strategy(build_model("patchcore"), "naive", cache=shared_cache)
    names = list(reversed(stream.names))
    with caplog.at_level(logging.WARNING, logger="cl_iad.checkpoint"):
        assert Checkpointer(written_checkpoint, names, _settings(stream, tasks=names)).resume(fresh, {0}) == -1
    assert "tasks ['bottle', 'cable'] instead of ['cable', 'bottle']" in caplog.text
    assert not fresh.model.fitted_


def test_a_new_checkpoint_replaces_stale_later_ones(stream, tmp_path, shared_cache):
    """A stale after_task_001 from another run must not make the cleanup delete the new after_task_000."""
    strategy = Strategy(build_model("patchcore"), "naive", cache=shared_cache)
    strategy.fit_task(stream[0], stream)
    Checkpointer(tmp_path, stream.names, _settings(stream, seed=9)).save(strategy, 1)
    ckpt = Checkpointer(tmp_path, stream.names, _settings(stream))
    ckpt.save(strategy, 0)
    assert [i for i, _ in ckpt.existing()] == [0]


def test_saving_refuses_objects_and_names_where_they_are():
    with pytest.raises(TypeError, match=r"state\['model'\]\['router'\] is a builtins.object"):
        plain_state({"model": {"router": object()}}, "state")
    with pytest.raises(TypeError, match=r"state\['buf'\]\[1\] is a builtins.set"):
        plain_state({"buf": [1, {2}]}, "state")
    with pytest.raises(TypeError, match=r"state\['weights'\] is a pathlib"):
        plain_state({"weights": Path("/x")}, "state")
    plain = plain_state({"a": np.float32(0.5), 3: (np.int64(2), torch.ones(2))})
    assert type(plain["a"]) is float and type(plain[3][0]) is int and isinstance(plain[3], tuple)


def test_results_without_config_are_not_reused(tmp_path):
    (tmp_path / "cells.csv").write_text("trained_upto,trained_task,eval_task,metric,value\n0,a,a,image_auroc,0.9\n")
    with pytest.raises(RunConfigMismatch, match="no config.json"):
        _prepare_run_dir(tmp_path, {"settings": {}}, overwrite=False)
    _prepare_run_dir(tmp_path, {"settings": {}}, overwrite=True)
    assert not (tmp_path / "cells.csv").exists()
