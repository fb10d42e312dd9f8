"""Mixed precision of frozen-feature models' backbone pass (``--precision``)."""

from __future__ import annotations

import json

import pytest
import torch

from cl_iad.cli import main
from cl_iad.strategies import build_model


def _images(data, n=4):
    return torch.stack([data[i]["image"] for i in range(n)])


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_features_are_float32_close_to_full_precision_and_keyed_apart(tiny_stream, precision):
    full = build_model("padim")
    mixed = build_model("padim", precision=precision)
    images = _images(tiny_stream[0].test)
    a, b = full.extract_features(images), mixed.extract_features(images)
    assert b.dtype == torch.float32 and b.shape == a.shape
    assert not torch.equal(a, b)  # the backbone really ran in half precision
    rel = (a - b).norm() / a.norm()
    assert rel < (0.1 if precision == "bf16-mixed" else 0.01), rel  # bf16 keeps 8 bits of mantissa (5% measured), fp16 11
    assert full.feature_key != mixed.feature_key and f"|{precision}" in mixed.feature_key
    assert "precision" not in full.config() and mixed.config()["precision"] == precision


def test_precision_32_is_the_default_and_unknown_values_are_refused():
    assert build_model("padim", precision=32).precision == "32"
    with pytest.raises(ValueError, match="choose from 32, 16-mixed, bf16-mixed"):
        build_model("padim", precision="8-mixed")


def test_cli_precision_reaches_the_model_and_a_gradient_model_gets_one_line(tmp_path, synthetic_root, tiny_stream,
                                                                             capsys):
    common = ["--dataset", "synthetic", "--root", str(synthetic_root), "--categories", "bracket",
              "--image-size", "64", "--wandb", "off", "--no-progress", "--out", str(tmp_path)]
    assert main(["run", *common, "--model", "padim", "--precision", "bf16-mixed", "--name", "bf16"]) == 0
    settings = json.loads((tmp_path / "bf16" / "config.json").read_text())["settings"]
    assert settings["precision"] == "bf16-mixed"
    capsys.readouterr()
    assert main(["run", *common, "--model", "stfpm", "--precision", "16-mixed", "--name", "grad"]) == 2
    err = capsys.readouterr().err
    assert "precision applies to the backbone pass of frozen-feature models" in err and "Traceback" not in err
