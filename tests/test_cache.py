"""The feature cache: reuse where features cannot change, recomputation where they can."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from cl_iad.cache import FeatureCache
from cl_iad.models.base import AnomalyModel, predictions
from cl_iad.scenarios import ImageSet
from cl_iad.strategies import Strategy, build_model


class MeanModel(AnomalyModel):
    """A stand-in whose 'backbone' is one trainable gain: features are gain * pixel means.

    It meets the model contract directly (no base class but the contract's), reading its
    features through the strategy's cache.
    """

    name = "mean"
    frozen_backbone = True

    def __init__(self) -> None:
        self.gain = 1.0
        self.fitted_ = False
        self.cache = FeatureCache()
        self.device = torch.device("cpu")

    def use_cache(self, cache: FeatureCache) -> None:
        self.cache = cache

    @property
    def feature_key(self) -> str:
        return "mean|gain-not-in-key"

    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.gain * images.mean(dim=(2, 3), keepdim=True)

    # the Strategy contract, for the end-to-end check
    def config(self) -> dict:
        return {"model": self.name}

    def fit(self, data, ctx=None) -> MeanModel:
        embeddings = self.cache.embeddings(self, data)
        self.gain *= 2.0  # training moves the backbone, so features change after every fit
        self.center_ = embeddings.mean(0)
        self.fitted_ = True
        return self

    def predict(self, data):
        d = (self.cache.embeddings(self, data) - self.center_).abs().sum(dim=(1, 2, 3))
        return predictions([d], [d[:, None, None].expand(-1, data.image_size, data.image_size).clone()])

    def state_dict(self) -> dict:
        return {"gain": torch.tensor(self.gain), "center": self.center_.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.gain, self.center_, self.fitted_ = float(state["gain"]), state["center"].clone(), True


class TrainedBackboneModel(MeanModel):
    frozen_backbone = False


def test_model_with_trained_backbone_never_gets_stale_features(tiny_stream):
    data = tiny_stream[0].test
    for cls, expect_fresh in ((TrainedBackboneModel, True), (MeanModel, False)):
        model, cache = cls(), FeatureCache()
        before = cache.embeddings(model, data)
        model.gain = 3.0
        after = cache.embeddings(model, data)
        assert torch.allclose(after, 3.0 * before) is expect_fresh, cls.__name__
    # through a strategy: the second task's predictions use features of the re-trained backbone
    strategy = Strategy(TrainedBackboneModel(), "naive")
    strategy.fit_task(tiny_stream[0], tiny_stream).fit_task(tiny_stream[1], tiny_stream)
    model = strategy.model
    expected = (model.extract_features(torch.stack([data[i]["image"] for i in range(len(data))])) - model.center_).abs()
    got = strategy.predict(data).pred_score
    assert got == pytest.approx(expected.sum(dim=(1, 2, 3)).numpy().astype(float), rel=1e-6)


def test_memory_cache_runs_the_backbone_once_per_image(tiny_stream):
    cache, model = FeatureCache(), MeanModel()
    data = tiny_stream[0].test
    first = cache.embeddings(model, data)
    for _ in range(3):
        assert torch.equal(cache.embeddings(model, data), first)
    assert cache.forward_images == len(data)
    off = FeatureCache(enabled=False)
    for _ in range(2):
        off.embeddings(model, data)
    assert off.forward_images == 2 * len(data) and len(off) == 0


def test_disk_cache_survives_the_process_and_edited_files_are_recomputed(tiny_stream, tmp_path):
    src = tiny_stream[0].test.samples[:3]
    for s in src:
        shutil.copy(s.image_path, tmp_path / s.image_path.name)
    from cl_iad.scenarios import Sample

    data = ImageSet([Sample(tmp_path / s.image_path.name, 0, "x") for s in src], 64)
    first = FeatureCache(tmp_path / "cache")
    feats = first.embeddings(MeanModel(), data)
    second = FeatureCache(tmp_path / "cache", max_memory_mb=0)  # a new process, nothing in memory
    assert torch.equal(second.embeddings(MeanModel(), data), feats)
    assert second.forward_images == 0 and second.disk_hits == 3 and second.memory_bytes == 0
    # edit one image: same path, new content and mtime
    edited = data.samples[1].image_path
    shutil.copy(tiny_stream[1].test.samples[0].image_path, edited)
    st = edited.stat()
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = FeatureCache(tmp_path / "cache")
    again = third.embeddings(MeanModel(), data)
    assert third.forward_images == 1
    assert torch.equal(again[0], feats[0]) and not torch.equal(again[1], feats[1])


def test_memory_bound_evicts_least_recently_used(tiny_stream, tmp_path):
    data = tiny_stream[0].test
    one = 3 * 4  # a (3, 1, 1) float32 feature
    cache = FeatureCache(tmp_path / "c", max_memory_mb=4 * one / 2**20)
    cache.embeddings(MeanModel(), data)
    assert len(cache) == 4 and cache.memory_bytes == 4 * one
    assert torch.equal(cache.embeddings(MeanModel(), data), FeatureCache().embeddings(MeanModel(), data))


class AcceleratorCache(FeatureCache):
    """The device tier's bookkeeping, run on the CPU: every computed tensor counts as on the accelerator.

    Only the placement policy is exercised here (what moves where, in which order, how many
    bytes each tier holds); the CUDA copy and the pinning need a GPU, which this machine lacks.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.demoted: list[torch.Tensor] = []

    def _on_device(self, tensor):
        return not any(tensor is t for t in self.demoted)  # a host copy made by _to_host is host

    def _to_host(self, tensor):
        host = tensor.clone()
        self.demoted.append(host)
        return host


def test_cache_tiers_device_then_host_then_disk_least_recently_used_first(tiny_stream, tmp_path):
    data = tiny_stream[0].test
    n, one = len(data), 3 * 4  # (3, 1, 1) float32 features
    assert n >= 6
    cache = AcceleratorCache(tmp_path / "c", max_device_mb=2 * one / 2**20, max_memory_mb=3 * one / 2**20)
    reference = FeatureCache().embeddings(MeanModel(), data)
    assert torch.equal(cache.embeddings(MeanModel(), data), reference)
    keys = [FeatureCache.key(MeanModel(), data.image_size, s.image_path) for s in data.samples]
    # the two most recent stay on the device; the three before them went to host memory; older ones
    # are only on disk
    assert list(cache._device) == keys[-2:] and list(cache._store) == keys[-5:-2]
    assert cache.moved_to_host == n - 2 and len(cache) == 5
    assert (cache.device_bytes, cache.host_bytes, cache.memory_bytes) == (2 * one, 3 * one, 5 * one)
    # the five newest are served from memory (device, then host), no disk read, no backbone pass
    newest = ImageSet(data.samples[-5:], data.image_size)
    assert torch.equal(cache.embeddings(MeanModel(), newest), reference[-5:])
    assert cache.forward_images == n and cache.disk_hits == 0
    # every entry is read back, the older ones from disk into host memory (in order, so a scan longer
    # than host memory evicts the host entries before they are read); still no backbone pass
    assert torch.equal(cache.embeddings(MeanModel(), data), reference)
    assert cache.forward_images == n and cache.disk_hits == n - 2 and list(cache._device) == keys[-2:]
    # without a bound nothing leaves the device; with 0 everything goes to host memory at once
    free = AcceleratorCache()
    free.embeddings(MeanModel(), data)
    assert free.moved_to_host == 0 and free.device_bytes == n * one and free.host_bytes == 0
    none = AcceleratorCache(max_device_mb=0)
    assert torch.equal(none.embeddings(MeanModel(), data), reference)
    assert none.device_bytes == 0 and none.host_bytes == n * one


def test_cpu_features_skip_the_device_tier(tiny_stream):
    cache = FeatureCache(max_device_mb=0)
    cache.embeddings(MeanModel(), tiny_stream[0].test)
    assert cache.device_bytes == 0 and cache.host_bytes == cache.memory_bytes > 0 and cache.moved_to_host == 0


def test_cache_key_names_backbone_weights_layers_size_and_file(tiny_stream):
    path = tiny_stream[0].test.samples[0].image_path
    base = build_model("patchcore", weights="random")
    others = [build_model("patchcore", weights="random", layers=["blocks.1", "blocks.2"]),
              build_model("patchcore", backbone="resnet18", weights="random"),
              build_model("patchcore"),  # built-in weights
              build_model("padim", weights="random", layers=["blocks.2", "blocks.4"])]
    k = FeatureCache.key(base, 64, path)
    assert all(FeatureCache.key(m, 64, path) != k for m in others)
    assert FeatureCache.key(base, 128, path) != k
    assert FeatureCache.key(base, 64, tiny_stream[0].test.samples[1].image_path) != k
    assert FeatureCache.key(build_model("patchcore", weights="random", coreset_ratio=0.5), 64, path) == k
    with pytest.raises(FileNotFoundError, match="missing"):
        FeatureCache.key(base, 64, path.with_name("nope.png"))
