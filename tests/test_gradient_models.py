"""Gradient-trained models: training really changes weights, regimes do what they promise,
state round-trips, and weights that only a download could provide fail with instructions."""

from __future__ import annotations

import pytest
import torch

from cl_iad.backbones import WeightsError
from cl_iad.models.registry import MODEL_INFOS, build_model
from cl_iad.strategies import Strategy
from cl_iad.strategies.ewc import EWC
from cl_iad.strategies.lwf import LwF

GRADIENT = [i.name for i in MODEL_INFOS if i.trains_by_gradient and i.name != "dsr"]


@pytest.fixture(scope="module")
def vq_weights(tmp_path_factory):
    """RANDOM VQ-VAE weights, only to exercise DSR's mechanics (see test_models_contract)."""
    from anomalib.models.image.dsr.torch_model import DiscreteLatentModel

    path = tmp_path_factory.mktemp("dsr") / "vq_random_for_tests.pckl"
    torch.save(DiscreteLatentModel(128, 2, 64, 4096, 128).state_dict(), path)
    return path


def _trainable(strategy):
    return {n: p.detach().clone() for n, p in strategy.model.module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", [*GRADIENT, pytest.param("dsr", marks=pytest.mark.slow)])
def test_second_task_changes_the_weights_and_frozen_backbone_stays(name, tiny_stream, vq_weights):
    kwargs = {"vq_weights": str(vq_weights)} if name == "dsr" else {}
    strategy = Strategy(build_model(name, preset="light", **kwargs), "naive")
    strategy.fit_task(tiny_stream[0], tiny_stream)
    after_first = _trainable(strategy)
    frozen = {n: p.detach().clone() for n, p in strategy.model.module.named_parameters() if not p.requires_grad}
    strategy.fit_task(tiny_stream[1], tiny_stream)
    after_second = _trainable(strategy)
    assert after_first, f"{name} has no trainable parameters"
    changed = [n for n in after_first if not torch.equal(after_first[n], after_second[n])]
    assert changed, f"training {name} on a second task left every weight unchanged"
    for n, p in strategy.model.module.named_parameters():
        if not p.requires_grad:
            assert torch.equal(frozen[n], p), f"{name}: frozen parameter {n} changed"


def test_state_round_trip_restores_predictions(tiny_stream):
    strategy = Strategy(build_model("stfpm", preset="light"), "naive")
    strategy.fit_task(tiny_stream[0], tiny_stream)
    state = strategy.model.state_dict()
    before = strategy.predict(tiny_stream[0].test).pred_score
    strategy.fit_task(tiny_stream[1], tiny_stream)
    assert not (strategy.predict(tiny_stream[0].test).pred_score == before).all()
    strategy.model.load_state_dict(state)
    assert (strategy.predict(tiny_stream[0].test).pred_score == before).all()


def test_per_task_restarts_from_the_same_initial_weights(tiny_stream):
    a = Strategy(build_model("ganomaly", preset="light"), "per_task")
    a.fit_task(tiny_stream[0], tiny_stream).fit_task(tiny_stream[1], tiny_stream)
    b = Strategy(build_model("ganomaly", preset="light"), "naive")
    b.fit_task(tiny_stream[1], tiny_stream)  # a fresh model trained on task 1 only
    for k, v in b.model.state_dict().items():
        assert torch.allclose(a.plugin("per_task").task_states_[1][k].float(), v.float()), k


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_away_from_it(tiny_stream):
    strategy = Strategy(build_model("stfpm", preset="light"), "ewc", ewc_lambda=10.0)
    strategy.fit_task(tiny_stream[0], tiny_stream)
    ewc: EWC = strategy.plugin("ewc").ewc_
    assert len(ewc.fishers) == 1 and any(f.sum() > 0 for f in ewc.fishers[0])
    assert ewc.penalty(strategy.model).item() == pytest.approx(0.0)
    with torch.no_grad():
        for p in strategy.model.regularised_parameters():
            p.add_(0.01)
    assert ewc.penalty(strategy.model).item() > 0
    restored = EWC(10.0)
    restored.load_state(ewc.state())
    assert restored.penalty(strategy.model).item() == pytest.approx(ewc.penalty(strategy.model).item())


def test_ewc_and_lwf_keep_the_model_closer_to_task_0_than_naive(tiny_stream):
    def drift(regime, **kw):
        s = Strategy(build_model("fastflow", preset="light", epochs=3, lr=1e-2), regime, **kw)
        s.fit_task(tiny_stream[0], tiny_stream)
        first = _trainable(s)
        s.fit_task(tiny_stream[1], tiny_stream)
        return sum((first[n] - p).pow(2).sum().item() for n, p in _trainable(s).items())

    naive = drift("naive")
    assert drift("ewc", ewc_lambda=1e6) < naive
    assert drift("lwf", lwf_alpha=100.0) < naive


def test_lwf_penalty_is_zero_when_the_model_equals_its_teacher():
    model = build_model("reverse_distillation", preset="light").setup(64)
    model.fitted_ = True
    lwf = LwF(1.0)
    images = torch.rand(2, 3, 64, 64)
    assert lwf.penalty(model, images).item() == 0.0  # no teacher yet
    lwf.end_task(model)
    model.train_mode()
    assert lwf.penalty(model, images).item() == pytest.approx(0.0, abs=1e-10)


def test_gradient_regimes_are_refused_for_frozen_feature_models():
    with pytest.raises(ValueError, match="regime ewc regularises gradient training, and padim fits from frozen"):
        Strategy(build_model("padim"), "ewc")


def test_unknown_hyper_parameter_names_the_choices():
    with pytest.raises(ValueError, match="flow_steps"):
        build_model("fastflow", flow_stepz=2)


def test_dsr_without_vq_weights_says_how_to_get_them():
    model = build_model("dsr", preset="light")
    with pytest.raises(WeightsError, match="vq_weights=.*cannot train without"):
        model.setup(64)


def test_draem_with_a_missing_dtd_folder_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="anomaly_source='perlin'"):
        build_model("draem", preset="light", dtd_dir=str(tmp_path / "nope")).setup(64)


def test_draem_reads_a_texture_folder_as_anomaly_source(tmp_path):
    from cl_iad.models.draem import render_texture_folder

    folder = render_texture_folder(tmp_path / "tex", n=4, size=32)
    model = build_model("draem", preset="light", anomaly_source="dtd", dtd_dir=str(folder)).setup(64)
    assert len(model._augmenter.anomaly_source_paths) == 4


def test_benchmark_backbones_without_a_weights_file_fail_clearly():
    with pytest.raises(WeightsError, match="--weights"):
        build_model("stfpm", preset="benchmark").setup(64)


def test_dfkde_with_too_few_images_for_its_pca_says_so():
    model = build_model("dfkde", n_pca_components=8)
    with pytest.raises(ValueError, match="more than n_pca_components=8"):
        model.fit_features(torch.rand(8, 40))
