"""One config schema: read, written and checked; every run writes it, and running it again repeats the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from cl_iad.cli import build_parser, config_from_args, given_options, main
from cl_iad.config import Config, ConfigError, DataConfig, ModelConfig, RunConfig, StrategyConfig

SEED_CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "seed_mvtec"
METRICS = "image_auroc,pixel_auroc"


def _data_args(root: Path) -> list[str]:
    """A two-task synthetic stream at 64 px (the conftest's sizes, so its images are reused)."""
    return ["--dataset", "synthetic", "--root", str(root), "--categories", "bracket,grain", "--image-size", "64",
            "--n-train", "10", "--n-test-good", "4", "--n-test-per-defect", "2", "--metrics", METRICS,
            "--wandb", "off", "--no-progress"]


def _args(argv: list[str]):
    args = build_parser().parse_args(argv)
    args.given_ = given_options(argv)
    return args


@pytest.fixture(scope="session")
def first_runs(tmp_path_factory, synthetic_root, tiny_stream) -> Path:
    """Runs written by `cl-iad run`: PatchCore under two regimes in one command, and a gradient model."""
    out = tmp_path_factory.mktemp("runs_a")
    data = _data_args(synthetic_root)
    assert main(["run", *data, "--model", "patchcore", "--strategy", "naive,replay", "--buffer-size", "4",
                 "--name", "pc", "--out", str(out)]) == 0
    assert main(["run", *data, "--model", "stfpm", "--preset", "light", "--strategy", "ewc",
                 "--strategy-param", "ewc_lambda=50", "--order", "reverse", "--out", str(out)]) == 0
    return out


def test_config_round_trips_through_yaml(tmp_path):
    config = Config(DataConfig(dataset="mvtec", root="/data/mvtec", categories=["bottle", "cable"], group="3x5",
                               order="random:3", image_size=64, skip_bad=True),
                    ModelConfig(name="stfpm", preset="light", params={"layers": ["layer1"], "epochs": 2},
                                device="cpu"),
                    StrategyConfig(name="replay", eval_mode="agnostic", params={"buffer_size": 8}),
                    RunConfig(out="somewhere", name="x", metrics=["pro"], seed=3, wandb="off", checkpoint=False,
                              cache_memory_mb=12.5, overwrite=True, progress=False))
    path = tmp_path / "config.yaml"
    config.to_yaml(path)
    assert Config.from_yaml(path) == config
    assert Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert Config.from_dict({}) == Config()  # every key has a default


@pytest.mark.parametrize("text, named, allowed", [
    ("data: {datset: mvtec}\n", "data.datset", "allowed in data: dataset, root"),
    ("model: {name: padim, prams: {}}\n", "model.prams", "allowed in model: name, preset, params, device"),
    ("data: {}\nruns: {seed: 1}\n", "'runs'", "allowed: data, model, strategy, run"),
], ids=["data-key", "model-key", "section"])
def test_unknown_key_is_refused_naming_the_key_the_allowed_ones_and_the_file(tmp_path, capsys, text, named, allowed):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        Config.from_yaml(path)
    assert named in str(err.value) and allowed in str(err.value) and str(path) in str(err.value)
    assert main(["run", "--config", str(path)]) == 2
    assert named in capsys.readouterr().err


def test_value_of_the_wrong_type_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("run: {seed: three}\n")
    with pytest.raises(ConfigError, match=r"run\.seed must be int, got 'three'"):
        Config.from_yaml(path)


def test_every_run_writes_its_config_with_one_regime(first_runs):
    for regime in ("naive", "replay"):
        config = Config.from_yaml(first_runs / f"pc-{regime}" / "config.yaml")
        assert config.strategy.name == regime and config.run.name == f"pc-{regime}"
        assert config.strategy.params == {"buffer_size": 4} and config.data.categories == ["bracket", "grain"]
    config = Config.from_yaml(first_runs / "synthetic-stfpm-ewc-reverse" / "config.yaml")
    assert (config.model.name, config.model.preset, config.strategy.params) == ("stfpm", "light", {"ewc_lambda": 50})


@pytest.mark.parametrize("run_name", ["pc-replay", "synthetic-stfpm-ewc-reverse"])
def test_running_a_runs_config_yaml_again_gives_identical_cells(first_runs, tmp_path, run_name):
    assert main(["run", "--config", str(first_runs / run_name / "config.yaml"), "--out", str(tmp_path)]) == 0
    again = tmp_path / run_name
    assert (again / "cells.csv").read_bytes() == (first_runs / run_name / "cells.csv").read_bytes()
    written = Config.from_yaml(again / "config.yaml")
    assert written.run.out == str(tmp_path)  # the typed --out beat the file's; nothing else changed
    assert Config.from_yaml(first_runs / run_name / "config.yaml") == Config.from_dict(
        {**written.to_dict(), "run": {**written.to_dict()["run"], "out": str(first_runs)}})


def test_a_sweep_job_and_the_cli_build_the_same_config(synthetic_root, tmp_path):
    from cl_iad.sweep import expand

    sweep = {"name": "same", "dataset": "synthetic", "root": str(synthetic_root), "categories": ["bracket", "grain"],
             "image_size": 64, "n_train": 10, "n_test_good": 4, "n_test_per_defect": 2,
             "models": [{"name": "stfpm", "preset": "light", "epochs": 2}], "strategies": ["replay"],
             "orders": ["reverse"], "metrics": METRICS.split(","), "strategy_kwargs": {"buffer_size": 4}, "seed": 1,
             "wandb": "off"}
    (job,) = expand(sweep, tmp_path)
    argv = ["run", *_data_args(synthetic_root), "--model", "stfpm", "--preset", "light", "--epochs", "2",
            "--strategy", "replay", "--buffer-size", "4", "--order", "reverse", "--seed", "1",
            "--out", str(tmp_path), "--name", job.name]
    assert config_from_args(_args(argv)).to_dict() == job.config


def test_a_typed_option_beats_a_nested_config_file(tmp_path):
    path = tmp_path / "config.yaml"
    Config(DataConfig(order="reverse"), ModelConfig(name="stfpm", params={"epochs": 3}),
           StrategyConfig(name="ewc", params={"buffer_size": 7, "ewc_lambda": 5}),
           RunConfig(seed=3, checkpoint=False)).to_yaml(path)
    config = config_from_args(_args(["run", "--config", str(path), "--seed", "0", "--buffer-size", "20",
                                     "--epochs", "1"]))
    assert (config.run.seed, config.strategy.params, config.model.params) == (
        0, {"buffer_size": 20, "ewc_lambda": 5}, {"epochs": 1})
    assert (config.data.order, config.strategy.name, config.run.checkpoint) == ("reverse", "ewc", False)


@pytest.mark.parametrize("path", sorted(SEED_CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_flat_seed_configs_still_load(path):
    flat = yaml.safe_load(path.read_text())
    config = config_from_args(_args(["run", "--config", str(path)]))
    assert (config.model.name, config.model.preset, config.model.params) == (
        flat["model"]["name"], "benchmark", flat["model"]["params"])
    assert (config.data.dataset, config.data.root, config.strategy.name, config.run.out) == (
        "folder", "datasets/MVTecAD", "naive", "results/seed_mvtec")


def test_several_regimes_become_one_config_each():
    configs = Config(strategy=StrategyConfig(name="naive, replay+ewc"), run=RunConfig(name="x")).for_each_regime()
    assert [(c.strategy.name, c.run.name) for c in configs] == [("naive", "x-naive"), ("replay+ewc", "x-replay+ewc")]
    assert [c.run.name for c in Config(strategy=StrategyConfig(name="naive,replay")).for_each_regime()] == [None, None]
    with pytest.raises(ConfigError, match="for_each_regime"):
        Config(strategy=StrategyConfig(name="naive,replay")).build_strategy()


def test_a_saved_model_loads_through_its_config(first_runs, tiny_stream, tmp_path, monkeypatch):
    from cl_iad.deploy import load_strategy

    model_dir = first_runs / "pc-replay" / "model"
    meta = json.loads((model_dir / "strategy.json").read_text())
    assert meta["spec"] == Config.from_yaml(first_runs / "pc-replay" / "config.yaml").to_dict()
    built = []
    real = Config.build_strategy
    monkeypatch.setattr(Config, "build_strategy", lambda self, cache=None: built.append(self) or real(self, cache))
    loaded = load_strategy(model_dir)
    assert built == [Config.from_dict(meta["spec"])]
    assert loaded.strategy.regime == "replay" and loaded.strategy.build_args()["buffer_size"] == 4
    # a model saved before configs were recorded (no "spec") loads through a config made from its arguments
    old = tmp_path / "old_model"
    shutil.copytree(model_dir, old)
    (old / "strategy.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "spec"}))
    legacy = load_strategy(old)
    assert len(built) == 2 and built[1].model.name == "patchcore" and built[1].strategy.params["buffer_size"] == 4
    test = tiny_stream[0].test
    a, b = loaded.strategy.predict(test), legacy.strategy.predict(test)
    np.testing.assert_array_equal(a.pred_score, b.pred_score)
    np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
