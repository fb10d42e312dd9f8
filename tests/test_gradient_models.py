"""Gradient-trained models: training really changes weights, regimes do what they promise,
state round-trips, and weights that only a download could provide fail with instructions."""

from __future__ import annotations

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from cl_iad.backbones import WeightsError
from cl_iad.models.base import FitContext
from cl_iad.models.registry import MODEL_INFOS, build_model, model_info
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


class _Images(torch.utils.data.Dataset):
    """In-memory 64x64 images, distinguishable by their index (the value of every pixel)."""

    image_size = 64

    def __init__(self, n: int) -> None:
        self.images = torch.arange(n, dtype=torch.float32).div(n).view(n, 1, 1, 1).expand(n, 3, 64, 64)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]}


def test_cflow_steps_once_per_fibre_batch_with_the_penalty_in_every_step():
    model = build_model("cflow", preset="light", batch_size=2, fiber_batch_size=16).setup(64)
    fibres_per_penalty = []

    def penalty(images):  # LwF's shape: distil the outputs this step trains on
        fibres_per_penalty.append(len(model.distill_outputs(model.module, images)[0]))
        return torch.zeros(())

    steps = []
    hook = register_optimizer_step_post_hook(lambda *args: steps.append(1))
    try:
        model.fit(_Images(2), FitContext(penalty=penalty))
    finally:
        hook.remove()
    # blocks.2 (/8) gives 2*8*8 = 128 fibres: 8 steps of 16; blocks.4 (/16) gives 2*4*4 = 32: 2 steps
    assert len(steps) == 10 and fibres_per_penalty == [16] * 10
    assert len(model.distill_outputs(model.module, torch.rand(2, 3, 64, 64))) == 2  # outside a step: every fibre


def test_dsr_switches_phase_at_anomalibs_epoch_and_by_steps_only_for_a_single_epoch():
    model = build_model("dsr", epochs=10)  # second phase for int(10 * 0.7) = 7 epochs
    model.epoch_ = 6
    assert model.in_second_phase(step=0, total=10)
    model.epoch_ = 7
    assert not model.in_second_phase(step=0, total=10)
    one = build_model("dsr", epochs=1)  # anomalib would train only the upsampling module
    assert [one.in_second_phase(s, 10) for s in range(10)] == [True] * 7 + [False] * 3


def test_patience_is_on_in_the_benchmark_preset_and_off_in_the_light_one():
    published = {"cfa": 5, "csflow": 3, "reverse_distillation": 3}
    for name, patience in published.items():
        assert model_info(name).presets["benchmark"]["patience"] == patience
        assert build_model(name).hp["patience"] == patience  # constructor defaults are the benchmark's
        assert build_model(name, preset="light").hp["patience"] == 0


def test_early_stopping_holds_out_a_seeded_split_and_stops_after_patience():
    def run():
        model = build_model("csflow", preset="light", batch_size=4, patience=2, val_fraction=0.25, epochs=20)
        trained = []  # training is mocked: the weights, and so the held-out loss, never change
        model.train_step = lambda images, *a, **k: trained.extend(images[:, 0, 0, 0].tolist()) or 0.0
        model.fit(_Images(8), FitContext(task_id=1, seed=3))
        return model, sorted(set(trained))

    model, trained = run()
    # no new minimum after epoch 1, so training stops after 1 + patience epochs
    assert model.epochs_run_[1] == 3 and len(model.val_losses_[1]) == 3
    assert len(trained) == 6  # 2 of the 8 images held out, never trained on
    again, trained_again = run()
    assert trained_again == trained and again.val_losses_[1] == model.val_losses_[1]  # the split is seeded


def test_light_preset_trains_every_epoch_on_every_image():
    model = build_model("reverse_distillation", preset="light", epochs=2, batch_size=4)
    model.train_step = lambda images, *a, **k: 0.0
    model.fit(_Images(8), FitContext())
    assert model.epochs_run_[0] == 2 and model.val_losses_[0] == [] and len(model.losses_[0]) == 4
