"""Regimes really change (or keep) model state as they promise."""

from __future__ import annotations

import itertools

import torch

from cl_iad.scenarios import ImageSet
from cl_iad.strategies import ReplayBuffer, Strategy, build_model


def test_naive_replaces_the_state_on_every_task(tiny_stream, shared_cache):
    strategy = Strategy(build_model("patchcore"), "naive", cache=shared_cache)
    banks = []
    for task in tiny_stream:
        strategy.fit_task(task, tiny_stream)
        banks.append(strategy.model.state_dict()["memory_bank"])
    for a, b in itertools.pairwise(banks):
        assert a.shape != b.shape or not torch.equal(a, b), "a new task must change the model"
    # guard against anomalib's refit trap: after task 2 the bank is exactly a fresh fit on task 2
    fresh = build_model("patchcore")
    fresh.fit_features(shared_cache.embeddings(fresh, tiny_stream[2].train))
    assert torch.equal(fresh.state_dict()["memory_bank"], banks[2])


def test_padim_naive_changes_gaussian_per_task(tiny_stream):
    strategy = Strategy(build_model("padim"), "naive")
    means = []
    for task in tiny_stream[:2]:
        strategy.fit_task(task, tiny_stream)
        means.append(strategy.model.state_dict()["mean"])
    assert not torch.allclose(means[0], means[1])


def test_cumulative_fits_on_everything_seen(tiny_stream, shared_cache):
    strategy = Strategy(build_model("patchcore", ), "cumulative", cache=shared_cache)
    strategy.fit_task(tiny_stream[0], tiny_stream).fit_task(tiny_stream[1], tiny_stream)
    seen = tiny_stream[0].train + tiny_stream[1].train
    fresh = build_model("patchcore").fit_features(shared_cache.embeddings(build_model("patchcore"), seen))
    assert torch.equal(fresh.state_dict()["memory_bank"], strategy.model.state_dict()["memory_bank"])


def test_replay_buffer_is_bounded_and_keeps_past_tasks(tiny_stream):
    buf = ReplayBuffer(size=6, policy="task_balanced", seed=0)
    for task in tiny_stream:
        buf.update(task.train.samples)
        assert len(buf.samples) <= 6
    cats = {s.category for s in buf.samples}
    assert cats == set(tiny_stream.names)
    again = ReplayBuffer(size=6, policy="task_balanced", seed=0)
    for task in tiny_stream:
        again.update(task.train.samples)
    assert again.samples == buf.samples, "seeded buffers select the same images"


def test_replay_strategy_trains_on_task_plus_buffer(tiny_stream, shared_cache):
    strategy = Strategy(build_model("patchcore"), "replay", buffer_size=4, cache=shared_cache)
    strategy.fit_task(tiny_stream[0], tiny_stream)
    used = strategy.plugin("replay").training_samples(strategy, tiny_stream[1], tiny_stream, list(tiny_stream[1].train.samples))
    assert len(used) == len(tiny_stream[1].train) + 4
    assert sum(s.category == tiny_stream.names[0] for s in used) == 4


def test_feature_cache_runs_the_backbone_once_per_image(tiny_stream):
    from cl_iad.strategies import FeatureCache

    cache = FeatureCache()
    model = build_model("patchcore")
    test: ImageSet = tiny_stream[0].test
    a = cache.embeddings(model, test)
    b = cache.embeddings(model, test)
    assert cache.forward_images == len(test)
    assert torch.equal(a, b)
