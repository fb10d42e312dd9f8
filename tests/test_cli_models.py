"""`cl-iad models` lists the registry; `cl-iad run --config` reads the reproduction configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cl_iad.cli import main
from cl_iad.models.registry import MODEL_INFOS, REGISTRY

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "seed_mvtec"


def test_models_command_shows_all_fifteen(capsys):
    assert main(["models", "--presets"]) == 0
    out = capsys.readouterr().out
    for info in MODEL_INFOS:
        assert info.title in out and info.family in out
    assert "ewc" in out and "lwf" in out


# the seed's single-task table; the adapter and MH-PatchCore came later and have no seed_mvtec config
SEED_MODELS = [i for i in MODEL_INFOS if i.name not in ("anomalib_adapter", "mhpatchcore")]


@pytest.mark.parametrize("info", SEED_MODELS, ids=lambda i: i.name)
def test_seed_config_carries_the_benchmark_settings(info):
    cfg = yaml.safe_load((CONFIGS / f"{info.name}.yaml").read_text())
    assert cfg["model"]["name"] == info.name and cfg["model"]["preset"] == "benchmark"
    params = {k: v for k, v in cfg["model"]["params"].items() if k != "weights"}
    assert params == info.presets["benchmark"]
    assert cfg["strategy"] == "naive" and cfg["dataset"] == "folder"


def test_issue_benchmark_settings_are_the_registry_presets():
    b = {name: REGISTRY[name].presets["benchmark"] for name in REGISTRY}
    assert b["cfa"] == {**b["cfa"], "backbone": "wide_resnet50_2", "gamma_c": 1, "gamma_d": 1,
                             "num_nearest_neighbors": 3, "num_hard_negative_features": 3, "radius": 1e-5,
                             "epochs": 30}
    assert b["padim"] == {"backbone": "resnet18", "layers": ["layer1", "layer2", "layer3"]}
    assert (b["csflow"]["cross_conv_hidden_channels"], b["csflow"]["n_coupling_blocks"], b["csflow"]["clamp"],
            b["csflow"]["epochs"]) == (1024, 4, 3, 240)
    assert b["patchcore"] == {"backbone": "wide_resnet50_2", "layers": ["layer2", "layer3"], "coreset_ratio": 0.1,
                              "num_neighbors": 9}
    assert (b["reverse_distillation"]["backbone"], b["reverse_distillation"]["layers"],
            b["reverse_distillation"]["epochs"]) == ("wide_resnet50_2", ["layer1", "layer2", "layer3"], 200)


def test_run_reads_a_config_and_the_command_line_overrides_it(tmp_path, synthetic_root, tiny_stream):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name": "ganomaly", "preset": "light", "params": {"latent_vec_size": 8}},
        "dataset": "synthetic", "root": str(synthetic_root), "categories": ["bracket"], "image_size": 64,
        "strategy": "naive", "out": str(tmp_path / "out"), "wandb": "off"}))
    assert main(["run", "--config", str(cfg), "--name", "cfgrun", "--no-progress", "--param", "n_features=8"]) == 0
    settings = yaml.safe_load((tmp_path / "out" / "cfgrun" / "config.json").read_text())["settings"]
    assert settings["model"] == "ganomaly" and settings["latent_vec_size"] == 8 and settings["n_features"] == 8
    assert settings["tasks"] == ["bracket"] and settings["epochs"] == 1


def test_config_with_an_unknown_key_is_refused(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: {name: padim}\nepochz: 3\n")
    assert main(["run", "--config", str(cfg)]) == 2  # one error line, as every user error
    assert "epochz" in capsys.readouterr().err


# (option, value in the YAML, value typed on the command line). The typed values are the parser's
# defaults wherever one exists: a typed default must still beat the file.
_PRECEDENCE = [
    ("dataset", "mvtec", "synthetic"), ("root", "/yaml/root", "/cli/root"), ("categories", ["a", "b"], "c"),
    ("n_tasks", 9, "5"), ("order", "reverse", "alphabetical"), ("strategy", "replay", "naive"),
    ("image_size", 256, "64"), ("buffer_size", 7, "20"), ("buffer_policy", "task_balanced", "reservoir"),
    ("metrics", ["pro"], "image_auroc"), ("seed", 3, "0"), ("out", "/yaml/out", "results"),
    ("name", "yaml-name", "cli-name"), ("wandb", "online", "offline"), ("device", "cuda", "cpu"),
    ("layout", "mvtec_scale", "default"),
]


@pytest.mark.parametrize("key,in_yaml,typed", _PRECEDENCE, ids=[p[0] for p in _PRECEDENCE])
def test_an_option_typed_on_the_command_line_beats_the_config_file(tmp_path, key, in_yaml, typed):
    from cl_iad.cli import _apply_config, build_parser, given_options

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({key: in_yaml, "model": {"name": "stfpm"}}))
    argv = ["run", "--config", str(cfg), f"--{key.replace('_', '-')}", typed]
    args = build_parser().parse_args(argv)
    args.given_ = given_options(argv)
    _apply_config(args)
    expected = build_parser().parse_args(["run", f"--{key.replace('_', '-')}", typed])
    assert getattr(args, key) == getattr(expected, key)
    # and the file's value is used when the option is not typed
    argv = ["run", "--config", str(cfg)]
    args = build_parser().parse_args(argv)
    args.given_ = given_options(argv)
    _apply_config(args)
    value = ",".join(map(str, in_yaml)) if isinstance(in_yaml, list) else in_yaml
    assert str(getattr(args, key)) == str(value)


def test_precision_typed_beats_the_files_model_params(tmp_path):
    from cl_iad.cli import _apply_config, build_parser, given_options

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": "padim", "params": {"precision": "16-mixed"}}}))
    for extra, expected in (([], "16-mixed"), (["--precision", "32"], "32"), (["--precision", "bf16-mixed"],
                                                                              "bf16-mixed")):
        argv = ["run", "--config", str(cfg), *extra]
        args = build_parser().parse_args(argv)
        args.given_ = given_options(argv)
        assert _apply_config(args)["precision"] == expected


@pytest.mark.parametrize("option,typed,attr", [("--model", "patchcore", "model"), ("--preset", "benchmark", "preset")])
def test_model_and_preset_typed_beat_the_config_model_section(tmp_path, option, typed, attr):
    from cl_iad.cli import _apply_config, build_parser, given_options

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": "padim", "preset": "light", "params": {"n_features": 4}}}))
    argv = ["run", "--config", str(cfg), option, typed]
    args = build_parser().parse_args(argv)
    args.given_ = given_options(argv)
    params = _apply_config(args)
    assert getattr(args, attr) == typed
    assert params["n_features"] == 4  # the rest of the file still applies


def test_seed_typed_as_its_default_reaches_the_model(tmp_path):
    from cl_iad.cli import _apply_config, build_parser, given_options

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("seed: 5\nmodel: {name: padim}\n")
    argv = ["run", "--config", str(cfg), "--seed", "0"]
    args = build_parser().parse_args(argv)
    args.given_ = given_options(argv)
    assert _apply_config(args)["seed"] == 0 and args.seed == 0
