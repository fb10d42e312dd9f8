"""Shared tiny fixtures: a 3-task synthetic stream at 64x64, generated once per session."""

from __future__ import annotations

import os
import warnings

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
