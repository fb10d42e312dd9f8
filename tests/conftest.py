"""Shared tiny fixtures: a 3-task synthetic stream at 64x64, generated once per session."""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import warnings

import numpy as np
import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning)
# One intra-op thread: on the shared 2-core machine, two threads contend with other processes and
# run the small 64x64 models several times slower. Override with CL_IAD_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("CL_IAD_TEST_THREADS", "1")))

TINY = {"image_size": 64, "n_train": 10, "n_test_good": 4, "n_test_per_defect": 2}


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="session")
def tiny_stream(synthetic_root):
    from cl_iad.scenarios import synthetic

    return synthetic(synthetic_root, categories=["bracket", "grain", "ring"], **TINY)


@pytest.fixture(scope="session")
def shared_cache():
    """One feature cache for tests that use the default PatchCore, so the backbone runs once."""
    from cl_iad.strategies import FeatureCache

    return FeatureCache()


def _is_loopback(address: object) -> bool:
    """True for AF_UNIX paths and 127.0.0.0/8 or ::1 (Ray and W&B talk to local services)."""
    if not isinstance(address, tuple):
        return True  # a Unix socket path
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: resolving it would already be a network access


@pytest.fixture(scope="session")
def empty_caches(tmp_path_factory):
    return tmp_path_factory.mktemp("caches")


@pytest.fixture(autouse=True)
def offline_caches(empty_caches, monkeypatch):
    """Pretrained files come only from empty per-session caches, and nothing is downloaded: a test sees
    the same "not cached" answer on every machine (tests/test_weights_cache.py seeds its own)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(empty_caches / "huggingface"))
    monkeypatch.setenv("TORCH_HOME", str(empty_caches / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(empty_caches / "xdg"))  # anomalib's cache (DSR, DTD)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Refuse every connection that leaves the machine: weights and data must come from disk."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(real):
        def connect(sock, address, *args):
            if not _is_loopback(address):
                raise AssertionError(f"network access attempted: {address!r}; tests must run offline")
            return real(sock, address, *args)
        return connect

    monkeypatch.setattr(socket.socket, "connect", guard(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard(real_connect_ex))


@pytest.fixture(autouse=True)
def fixed_random_state():
    """Every test starts from the same seed, and whatever it draws does not leak into the next test."""
    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.random.set_rng_state(states[2])


@pytest.fixture(scope="session")
def fidelity():
    """``benchmarks/bench_fidelity.py`` as a module (the fidelity harness the parity tests drive)."""
    import sys
    from pathlib import Path

    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, folder)
    try:
        import bench_fidelity
    finally:
        sys.path.remove(folder)
    return bench_fidelity
