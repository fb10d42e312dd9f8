"""The foundation's file contract and the internal consistency of a finished run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cl_iad import metrics as M
from cl_iad.results import METRICS, chance_baseline
from cl_iad.runner import run
from cl_iad.strategies import Strategy, build_model


@pytest.fixture(scope="module")
def naive_run(tiny_stream, tmp_path_factory, shared_cache):
    out = tmp_path_factory.mktemp("runs")
    strategy = Strategy(build_model("patchcore"), "naive", cache=shared_cache)
    return run(strategy, tiny_stream, out, wandb="offline", progress=False), tiny_stream


def test_run_directory_holds_the_file_contract(naive_run):
    result, stream = naive_run
    d = result.run_dir
    for f in ["config.json", "cells.csv", "summary.json", *[f"matrix_{m}.csv" for m in METRICS]]:
        assert (d / f).is_file(), f
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["settings"]["regime"] == "naive" and cfg["settings"]["tasks"] == stream.names
    assert {"torch", "anomalib", "avalanche-lib"} <= set(cfg["versions"])
    cells = pd.read_csv(d / "cells.csv")
    assert list(cells.columns) == ["trained_upto", "trained_task", "eval_task", "metric", "value"]
    t = len(stream)
    assert len(cells) == t * t * len(METRICS)
    assert not cells.duplicated(["trained_upto", "eval_task", "metric"]).any()
    for m in METRICS:
        assert (d / "plots" / f"matrix_{m}.png").stat().st_size > 1000
        assert (d / "plots" / f"forgetting_{m}.png").stat().st_size > 1000


def test_matrices_equal_the_cells(naive_run):
    result, stream = naive_run
    cells = pd.read_csv(result.run_dir / "cells.csv")
    for m in METRICS:
        R = pd.read_csv(result.run_dir / f"matrix_{m}.csv", index_col=0)
        assert list(R.index) == stream.names and list(R.columns) == stream.names
        for row in cells[cells.metric == m].itertuples():
            assert R.loc[stream.names[row.trained_upto], row.eval_task] == pytest.approx(row.value, abs=0, rel=1e-12)
            assert row.trained_task == stream.names[row.trained_upto]


def test_summary_equals_formulas_applied_to_matrix(naive_run):
    result, stream = naive_run
    summary = json.loads((result.run_dir / "summary.json").read_text())
    t = len(stream)
    for m in METRICS:
        R = pd.read_csv(result.run_dir / f"matrix_{m}.csv", index_col=0).to_numpy()
        s = summary[m]
        # hand-written formulas, independent of cl_iad.metrics
        fm = [max(R[l][j] for l in range(j, t - 1)) - R[t - 1][j] for j in range(t - 1)]
        assert s["acc"] == pytest.approx(np.mean(R[-1]))
        assert s["bwt"] == pytest.approx(np.mean([R[-1][j] - R[j][j] for j in range(t - 1)]))
        assert s["fm"] == pytest.approx(np.mean(fm))
        assert list(s["fm_per_task"].values()) == pytest.approx(fm)
        assert s["task_aware"] is False
    # FWT uses a chance baseline per task: 0.5 for AUROC
    R = pd.read_csv(result.run_dir / "matrix_image_auroc.csv", index_col=0).to_numpy()
    assert summary["image_auroc"]["fwt"] == pytest.approx(np.mean([R[j - 1][j] - 0.5 for j in range(1, t)]))


def test_naive_patchcore_forgets_earlier_synthetic_categories(naive_run):
    """The categories differ enough that a model fitted on a later one forgets an earlier one."""
    result, _ = naive_run
    summary = json.loads((result.run_dir / "summary.json").read_text())
    R = result.matrices["image_auroc"].to_numpy()
    assert np.diag(R).mean() > 0.85, "each category is learnable on its own"
    assert summary["image_auroc"]["fm"] > 0.2, summary["image_auroc"]


def test_offline_wandb_run_contains_the_logged_keys(naive_run):
    result, stream = naive_run
    assert result.wandb_dir is not None and result.wandb_dir.is_dir()
    blobs = list(result.wandb_dir.glob("*.wandb"))
    assert blobs, f"no .wandb file in {result.wandb_dir}"
    data = blobs[0].read_bytes()
    for key in [f"image_auroc/{stream.names[0]}", f"pro/{stream.names[-1]}", "matrix/pixel_auroc", "task"]:
        assert key.encode() in data, key


def test_per_task_regime_has_exactly_zero_forgetting(tiny_stream, tmp_path, shared_cache):
    strategy = Strategy(build_model("patchcore"), "per_task", cache=shared_cache)
    result = run(strategy, tiny_stream, tmp_path, wandb="off", progress=False)
    for m in METRICS:
        assert result.summary[m]["fm"] == 0.0
        assert all(v == 0.0 for v in result.summary[m]["fm_per_task"].values())
        assert result.summary[m]["task_aware"] is True


def test_joint_regime_gives_identical_rows(tiny_stream, tmp_path, shared_cache):
    strategy = Strategy(build_model("patchcore"), "joint", cache=shared_cache)
    result = run(strategy, tiny_stream, tmp_path, metrics=["image_auroc"], wandb="off", progress=False)
    R = result.matrices["image_auroc"].to_numpy()
    assert (R == R[0]).all()
    assert result.summary["image_auroc"]["fm"] == 0.0


def test_chance_baseline_for_aupr_is_prevalence():
    labels = np.array([0, 0, 1, 1, 1])
    assert chance_baseline("image_aupr", labels, np.zeros((5, 2, 2), bool)) == pytest.approx(0.6)
    assert M.forward_transfer(np.eye(2), baseline=np.array([0.2, 0.3])) == pytest.approx(0.0 - 0.3)


def test_restarted_run_reuses_finished_cells(tiny_stream, tmp_path, shared_cache):
    kwargs = {"metrics": ["image_auroc"], "wandb": "off", "progress": False}
    first = run(Strategy(build_model("patchcore"), "naive", cache=shared_cache), tiny_stream, tmp_path, **kwargs)
    before = (first.run_dir / "cells.csv").read_text()
    again = run(Strategy(build_model("patchcore"), "naive", cache=shared_cache), tiny_stream, tmp_path, **kwargs)
    assert (again.run_dir / "cells.csv").read_text() == before  # nothing appended twice
    with pytest.raises(RuntimeError, match="different settings"):
        run(Strategy(build_model("patchcore"), "cumulative", cache=shared_cache), tiny_stream, tmp_path,
            name=first.run_dir.name, **kwargs)
