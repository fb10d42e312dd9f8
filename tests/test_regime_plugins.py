"""Regimes as plugins: combinations, refusals with reasons, per-plugin parameters, devices."""

from __future__ import annotations

import pandas as pd
import pytest

from cl_iad.cli import main
from cl_iad.models.registry import build_model
from cl_iad.runner import run
from cl_iad.strategies import Strategy, parse_regime, regime_names


def test_every_documented_regime_is_found_in_its_own_file():
    assert set(regime_names()) >= {"naive", "replay", "cumulative", "joint", "per_task", "ewc", "lwf", "mas"}
    assert [p.name for p in parse_regime("replay+ewc", {})] == ["replay", "ewc"]


@pytest.mark.parametrize("text, reason", [
    ("per_task+ewc", "per_task cannot be combined"),
    ("joint+replay", "joint cannot be combined"),
    ("replay+cumulative", "replay and cumulative both decide what is trained on"),
    ("naive+ewc", "drop it \\(ewc\\)"),
    ("ewc+ewc", "names a regime twice"),
    ("replay+magic", "unknown regime"),
])
def test_a_combination_that_makes_no_sense_is_refused_with_its_reason(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_regime(text, {})


def test_a_parameter_no_regime_takes_is_refused_and_others_regimes_params_are_ignored():
    with pytest.raises(ValueError, match="buffer_sise"):
        parse_regime("replay", {"buffer_sise": 3})
    (replay,) = parse_regime("replay", {"buffer_size": 3, "ewc_lambda": 5.0})  # a sweep's shared settings
    assert replay.buffer_size == 3


def test_replay_plus_ewc_trains_on_the_buffer_with_the_penalty_and_resumes(tiny_stream, tmp_path):
    stream = tiny_stream[:2]

    def strategy():
        return Strategy(build_model("stfpm", "light"), "replay+ewc", buffer_size=3, ewc_lambda=50.0)

    s = strategy()
    res = run(s, stream, tmp_path, name="both", wandb="off", progress=False, save_model=False,
              metrics=["image_auroc"])
    assert s.config()["regime"] == "replay+ewc" and s.config()["buffer_size"] == 3 and s.config()["ewc_lambda"] == 50
    assert len(s.plugin("replay").buffer_.samples) == 3 and len(s.plugin("ewc").ewc_.anchors) == 2
    assert res.matrices["image_auroc"].notna().all().all()
    # the combination's state (buffer and EWC anchors) round-trips through a checkpoint
    restored = strategy().load_state_dict(s.state_dict())
    assert restored.plugin("replay").buffer_.samples == s.plugin("replay").buffer_.samples
    assert len(restored.plugin("ewc").ewc_.anchors) == 2
    # and it is neither plain replay nor plain ewc
    cells = {}
    for regime, kw in (("replay", {"buffer_size": 3}), ("ewc", {"ewc_lambda": 50.0})):
        r = run(Strategy(build_model("stfpm", "light"), regime, **kw), stream, tmp_path, name=regime, wandb="off",
                progress=False, save_model=False, metrics=["image_auroc"])
        cells[regime] = r.matrices["image_auroc"]
    assert not res.matrices["image_auroc"].equals(cells["replay"])
    assert not res.matrices["image_auroc"].equals(cells["ewc"])


def test_regime_parameters_are_set_from_the_command_line(tiny_stream, tmp_path, synthetic_root):
    code = main(["run", "--dataset", "synthetic", "--root", str(synthetic_root), "--categories", "bracket,grain",
                 "--image-size", "64", "--model", "stfpm", "--preset", "light", "--strategy", "replay+mas",
                 "--strategy-param", "mas_lambda=3", "--buffer-size", "2", "--metrics", "image_auroc",
                 "--wandb", "off", "--no-progress", "--out", str(tmp_path), "--name", "cli"])
    assert code == 0
    import json

    settings = json.loads((tmp_path / "cli" / "config.json").read_text())["settings"]
    assert (settings["regime"], settings["mas_lambda"], settings["buffer_size"]) == ("replay+mas", 3, 2)


def test_patchcore_on_cpu_and_on_auto_gives_identical_cells_here(tiny_stream, tmp_path, synthetic_root):
    """On a machine without CUDA, --device auto is the CPU: the same cells, bit for bit.
    (On a GPU machine the same command runs every stage on the GPU.)"""
    cells = {}
    for device in ("cpu", "auto"):
        assert main(["run", "--dataset", "synthetic", "--root", str(synthetic_root), "--categories", "bracket,grain",
                     "--image-size", "64", "--model", "patchcore", "--strategy", "replay", "--device", device,
                     "--wandb", "off", "--no-progress", "--out", str(tmp_path), "--name", device]) == 0
        cells[device] = pd.read_csv(tmp_path / device / "cells.csv")
    pd.testing.assert_frame_equal(cells["cpu"], cells["auto"])
