"""MH-PatchCore wrapped from anomalib 2.7: same scores as anomalib's forward, a bank of bounded size, and
one shared space under the bounded_bank regime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cl_iad.recorders import Recorder
from cl_iad.runner import run
from cl_iad.strategies import Strategy, build_model


@pytest.fixture(scope="module")
def fitted(tiny_stream):
    model = build_model("mhpatchcore", "light", memory_bank_size=40, local_coreset_size=32)
    return model.fit(tiny_stream[0].train)


def test_scores_and_maps_equal_anomalib_forward(fitted, tiny_stream):
    test = tiny_stream[0].test
    ours = fitted.predict(test)
    images = next(iter(DataLoader(test, batch_size=len(test))))["image"]
    fitted.module.eval()
    with torch.no_grad():
        ref = fitted.module(fitted.normalise(images))
    assert ours.pred_score == pytest.approx(ref.pred_score.numpy(), rel=1e-4)
    assert ours.anomaly_map == pytest.approx(ref.anomaly_map[:, 0].numpy(), rel=1e-4, abs=1e-3)


def test_the_bank_is_bounded_and_the_state_round_trips(fitted, tiny_stream):
    state = fitted.state_dict()
    assert len(state["memory_bank"]) <= 40
    again = build_model("mhpatchcore", "light", memory_bank_size=40, local_coreset_size=32)
    again.load_state_dict(state)
    a, b = fitted.predict(tiny_stream[1].test), again.predict(tiny_stream[1].test)
    assert np.array_equal(a.pred_score, b.pred_score)


def test_bounded_bank_keeps_the_first_task_space_and_one_bank(tiny_stream, shared_cache, tmp_path):
    spaces = []

    class Space(Recorder):
        def on_task_fitted(self, ctx, i, task):
            spaces.append(ctx.strategy.model.state_dict()["pca.components"].clone())

    strategy = Strategy(build_model("mhpatchcore", "light"), "bounded_bank", cache=shared_cache, bank_size=50)
    result = run(strategy, tiny_stream[:2], tmp_path, name="mh", wandb="off", progress=False, checkpoint=False,
                 save_model=False, recorders=[Space()])
    state = strategy.model.state_dict()
    assert torch.equal(spaces[0], spaces[1]) and bool(state["space_frozen"])
    assert len(state["memory_bank"]) <= 50
    assert set(strategy.plugin("bounded_bank").rows_per_task()) == {0, 1}
    assert np.isfinite(result.matrices["image_auroc"].to_numpy()).all()


def test_naive_refits_the_space_for_every_task(tiny_stream, shared_cache):
    model = build_model("mhpatchcore", "light").use_cache(shared_cache)
    first = model.fit(tiny_stream[0].train).state_dict()["pca.mean"].clone()
    second = model.fit(tiny_stream[1].train).state_dict()["pca.mean"]
    assert not torch.equal(first, second)
