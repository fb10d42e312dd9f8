"""The model in docs/contributing.md works as written: one file, found by the registry, runs in the loop."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "contributing.md"


@pytest.fixture
def meanshift_module():
    code = re.search(r"```python\n# cl_iad/models/meanshift.py\n(.*?)```", DOC.read_text(), re.DOTALL).group(1)
    module = types.ModuleType("cl_iad.models.meanshift")
    module.__package__ = "cl_iad.models"
    sys.modules[module.__name__] = module  # as if the file were in cl_iad/models/
    try:
        exec(compile(code, str(DOC), "exec"), module.__dict__)  # noqa: S102 (the docs example, run as written)
        yield module
    finally:
        del sys.modules[module.__name__]


def test_the_documented_model_is_registered_and_runs_under_two_regimes(meanshift_module, tiny_stream, tmp_path):
    from cl_iad.models.registry import build_model, model_info
    from cl_iad.runner import run
    from cl_iad.strategies import Strategy, regimes_for

    info = model_info("meanshift")
    assert (info.title, info.task_type, info.trains_by_gradient) == ("Mean shift", "segmentation", False)
    assert "per_task" in regimes_for(info) and "ewc" not in regimes_for(info)
    for regime in ("naive", "replay"):
        res = run(Strategy(build_model("meanshift", "light"), regime), tiny_stream[:2], tmp_path, name=regime,
                  wandb="off", progress=False, save_model=False, checkpoint=False)
        assert res.matrices["image_auroc"].notna().all().all()
