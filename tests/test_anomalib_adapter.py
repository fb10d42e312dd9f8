"""The generic adapter: any anomalib image model through its own training_step and validation_step, offline."""

from __future__ import annotations

import math
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from cl_iad.models import anomalib_adapter as A
from cl_iad.models.base import FitContext
from cl_iad.runner import run
from cl_iad.strategies import Strategy, build_model


def adapter(name: str, **kw):
    return build_model("anomalib_adapter", "light", anomalib_model=name, **kw)


@pytest.mark.parametrize("regime", ["naive", "ewc"])
def test_a_gradient_model_runs_through_its_own_training_step_under_regimes(regime, tiny_stream, tmp_path):
    strategy = Strategy(adapter("Fastflow"), regime)
    result = run(strategy, tiny_stream[:2], tmp_path, name=regime, wandb="off", progress=False, checkpoint=False,
                 save_model=False)
    for metric in ("image_auroc", "pixel_auroc", "pro"):
        assert np.isfinite(result.matrices[metric].to_numpy()).all(), metric
    if regime == "ewc":
        assert len(strategy.plugin("ewc").ewc_.anchors) == 2  # a Fisher from the module's own loss per task


def test_the_penalty_is_added_to_the_loss_training_step_returns(tiny_stream):
    model = adapter("Fastflow")
    model.fit(tiny_stream[0].train)
    images = torch.rand(2, 3, 64, 64)
    torch.manual_seed(0)
    plain = model.training_loss(images).item()
    model.penalty_ = lambda imgs: torch.tensor(1000.0)
    model._wrap_training_step()
    torch.manual_seed(0)
    out = model.module.training_step(model._batch(model._pre(images)), 0)
    del model.module.training_step
    assert out["loss"].item() == pytest.approx(plain + 1000.0, rel=1e-5)


def test_a_one_pass_model_is_refitted_from_scratch_each_task(tiny_stream, shared_cache):
    """PaDiM fits statistics at epoch end, once: the adapter rebuilds it, so task 1's fit replaces task 0's."""
    model = adapter("Padim")
    model.fit(tiny_stream[0].train, FitContext(task_id=0))
    model.fit(tiny_stream[1].train, FitContext(task_id=1))
    fresh = adapter("Padim")
    fresh.fit(tiny_stream[1].train, FitContext(task_id=1))
    test = tiny_stream[1].test
    assert np.allclose(model.predict(test).pred_score, fresh.predict(test).pred_score)


def test_a_penalty_is_refused_for_a_model_without_a_loss(tiny_stream):
    strategy = Strategy(adapter("Padim"), "ewc")
    with pytest.raises(ValueError, match="no loss"):  # task 0 has no penalty yet, but EWC's Fisher needs a loss
        strategy.fit_task(tiny_stream[0], tiny_stream)


def test_offline_construction_turns_a_download_into_needs_weights(monkeypatch):
    class Downloads(torch.nn.Module):
        def __init__(self, **kwargs):
            super().__init__()
            urllib.request.urlopen("https://example.org/weights.pth", timeout=5)

        @staticmethod
        def configure_pre_processor(image_size=None):
            from anomalib.pre_processing import PreProcessor

            return PreProcessor()

    monkeypatch.setattr(A, "anomalib_model_class", lambda name: Downloads)
    with pytest.raises(A.NeedsWeights, match="not cached here"):
        A.build_anomalib_module("Downloads", 64, "offline")


def test_the_network_is_closed_only_inside_the_block():
    import socket

    with A.closed_network(), pytest.raises(OSError, match="download blocked"):
        socket.getaddrinfo("example.org", 443)
    assert socket.getaddrinfo.__module__ == "socket"


def test_only_a_network_error_counts_as_a_refused_download():
    refused = urllib.error.URLError(A._Blocked("download blocked while building offline (connection to x.org)"))
    assert A._blocked(refused)
    try:  # a library that caught a failed download, then failed for another reason
        try:
            raise refused
        except OSError:
            raise AssertionError("Input height (64) should be divisible by patch size (14)") from None
    except AssertionError as exc:
        unrelated = exc
    unrelated.__context__ = refused  # what `raise ... from None` leaves for a bare `raise` in an except block
    assert not A._blocked(unrelated)


def test_random_weights_build_a_model_whose_backbone_would_be_downloaded():
    module = A.build_anomalib_module("Stfpm", 64, "random")  # its teacher is always pre_trained=True
    assert module.__class__.__name__ == "Stfpm"


def test_the_survey_reports_each_model_with_a_status(tiny_stream):
    rows = A.survey_anomalib_models(["Padim"], image_size=64)
    assert [(r.model, r.status) for r in rows] == [("Padim", "runs")]
    assert "with maps" in rows[0].reason and math.isfinite(rows[0].seconds)
    assert "Padim" in A.survey_table(rows)


@pytest.mark.slow
def test_the_unified_dinomaly_trains_over_a_continual_stream_with_random_weights(tiny_stream, tmp_path):
    """Random weights only prove the loop: Dinomaly's DINOv2 encoder cannot be downloaded here."""
    strategy = Strategy(build_model("anomalib_adapter", "dinomaly_random", batch_size=10), "naive")
    result = run(strategy, tiny_stream[:2], tmp_path, name="dinomaly", wandb="off", progress=False,
                 checkpoint=False, save_model=False)
    assert np.isfinite(result.matrices["image_auroc"].to_numpy()).all()
    initial = build_model("anomalib_adapter", "dinomaly_random").setup(64).state_dict()
    trained = strategy.model.state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in trained.items() if v.is_floating_point())
