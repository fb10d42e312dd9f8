"""One contract over the whole registry: every model x every regime it supports runs the real loop.

Each case trains a light preset on a 2-task stream at 64x64 on CPU, with the network blocked,
and must give complete T x T matrices: finite wherever the metric applies, NaN exactly for the
pixel metrics of models without anomaly maps (detection, classification).

`make test-fast` runs one regime per model (``naive``, plus ``ewc``/``lwf`` for one model of
each training style); ``make test`` runs every pair.
"""

from __future__ import annotations

import math

import pytest
import torch

from cl_iad.models.registry import MODEL_INFOS, REGISTRY, build_model
from cl_iad.results import METRICS
from cl_iad.runner import run
from cl_iad.strategies import Strategy, regimes_for

PIXEL_METRICS = ("pixel_auroc", "pro", "pixel_aupr")
FAST = {("stfpm", "ewc"), ("stfpm", "lwf"), ("ganomaly", "ewc"), ("draem", "lwf"), ("patchcore", "replay"),
        ("fastflow", "per_task")}
CASES = [
    pytest.param(info.name, regime, id=f"{info.name}-{regime}",
                 marks=() if regime == "naive" or (info.name, regime) in FAST else pytest.mark.slow)
    for info in MODEL_INFOS for regime in regimes_for(info)
]


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    """A smaller stream than `tiny_stream` (8 train, 7 test images per task): 96 runs must fit in minutes."""
    from cl_iad.scenarios import synthetic

    return synthetic(tmp_path_factory.mktemp("contract"), categories=["bracket", "grain"], image_size=64,
                     n_train=8, n_test_good=2, n_test_per_defect=1)


@pytest.fixture(scope="session")
def vq_weights(tmp_path_factory):
    """A VQ-VAE weights file for DSR's mechanics only: RANDOM weights, never a library default.

    DSR cannot be built without a weights file (its real VQ-VAE needs a download); the contract
    tests that, given a file, every regime runs. Detection quality with these weights is meaningless.
    """
    from anomalib.models.image.dsr.torch_model import DiscreteLatentModel

    path = tmp_path_factory.mktemp("dsr") / "vq_random_for_tests.pckl"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = DiscreteLatentModel(num_hiddens=128, num_residual_layers=2, num_residual_hiddens=64,
                                  num_embeddings=4096, embedding_dim=128)
    torch.save(net.state_dict(), path)
    return path


def light_model(name: str, vq_weights):
    extra = {"vq_weights": str(vq_weights)} if name == "dsr" else {}
    return build_model(name, preset="light", **extra)


def test_registry_lists_all_fifteen_benchmarked_models():
    titles = {info.title for info in MODEL_INFOS}
    assert titles == {"CFA", "CFLOW", "CS-Flow", "DFKDE", "DFM", "DRAEM", "DSR", "FastFlow", "GANomaly", "PaDiM",
                      "PatchCore", "Reverse Distillation", "RKDE", "STFPM", "U-Flow"}
    assert REGISTRY["rkde"].task_type == "detection"
    assert REGISTRY["dfkde"].task_type == "classification"
    for info in MODEL_INFOS:
        assert {"light", "benchmark"} <= set(info.presets), info.name
        cls = info.load()
        assert cls.name == info.name and cls.task_type == info.task_type and cls.family == info.family


@pytest.mark.parametrize(("name", "regime"), CASES)
def test_every_model_and_regime_gives_complete_matrices(name, regime, two_tasks, vq_weights, tmp_path):
    info = REGISTRY[name]
    strategy = Strategy(light_model(name, vq_weights), regime, buffer_size=4)
    result = run(strategy, two_tasks, tmp_path, wandb="off", progress=False)
    for metric in METRICS:
        values = result.matrices[metric].to_numpy()
        assert values.shape == (2, 2), (metric, values)
        if metric in PIXEL_METRICS and info.task_type != "segmentation":
            assert all(math.isnan(v) for v in values.ravel()), f"{name} has no maps, {metric} must be NaN"
        else:
            assert all(math.isfinite(v) for v in values.ravel()), f"{name}/{regime}: {metric} = {values}"
