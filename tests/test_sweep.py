"""Sweeps: grid expansion, resume, failures, local vs Ray, reports."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from cl_iad.report import category_table, find_runs, make_report
from cl_iad.sweep import SweepConfigError, expand, run_sweep


def _cfg(root, **over):
    cfg = {"name": "tiny", "dataset": "synthetic", "root": str(root), "categories": ["bracket", "grain"],
           "image_size": 48, "n_train": 6, "n_test_good": 3, "n_test_per_defect": 1, "models": ["patchcore"],
           "strategies": ["naive"], "orders": ["alphabetical", "reverse"], "metrics": ["image_auroc", "pro"],
           "wandb": "off"}
    cfg.update(over)
    return cfg


def _cells(run_dir):
    return pd.read_csv(run_dir / "cells.csv").sort_values(["trained_upto", "eval_task", "metric"]).reset_index(drop=True)


def test_grid_expands_orders_models_strategies(tmp_path):
    cfg = _cfg(tmp_path, models=["patchcore", {"name": "padim", "n_features": 50}], strategies=["naive", "replay"],
               orders=["alphabetical", {"random": [0, 1]}])
    jobs = expand(cfg, tmp_path)
    assert len(jobs) == 2 * 2 * 3
    assert {j.order for j in jobs} == {"alphabetical", "random:0", "random:1"}
    assert len({j.name for j in jobs}) == len(jobs)
    assert next(j for j in jobs if j.model == "padim").model_kwargs == {"n_features": 50}
    with pytest.raises(SweepConfigError, match="unknown keys"):
        expand({**cfg, "modles": []}, tmp_path)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, synthetic_root):
    out = tmp_path_factory.mktemp("sweep_local")
    results = run_sweep(_cfg(synthetic_root), out, executor="local", progress=False)
    return out, results


def test_sweep_writes_one_run_dir_per_combination_and_resumes(local_sweep, synthetic_root):
    out, results = local_sweep
    assert [r["status"] for r in results] == ["done", "done"]
    runs = sorted(p.parent.name for p in out.glob("*/summary.json"))
    assert runs == ["synthetic-patchcore-naive-alphabetical", "synthetic-patchcore-naive-reverse"]
    # a second invocation skips finished runs
    again = run_sweep(_cfg(synthetic_root), out, progress=False)
    assert [r["status"] for r in again] == ["skipped", "skipped"]


def test_half_finished_run_continues_from_last_cell(local_sweep, synthetic_root, tmp_path):
    out, _ = local_sweep
    copy = tmp_path / "sweep"
    shutil.copytree(out, copy)
    run_dir = copy / "synthetic-patchcore-naive-alphabetical"
    full = _cells(run_dir)
    lines = (run_dir / "cells.csv").read_text().splitlines(keepends=True)
    (run_dir / "cells.csv").write_text("".join(lines[:4]))  # header + 3 cells survive a "crash"
    (run_dir / "summary.json").unlink()
    res = run_sweep(_cfg(synthetic_root), copy, progress=False)
    assert sorted(r["status"] for r in res) == ["done", "skipped"]
    resumed = _cells(run_dir)
    pd.testing.assert_frame_equal(resumed, full)


def test_failed_run_is_recorded_and_sweep_goes_on(synthetic_root, tmp_path):
    cfg = _cfg(synthetic_root, models=["no_such_model", "patchcore"], orders=["alphabetical"])
    res = run_sweep(cfg, tmp_path, progress=False)
    status = {r["name"]: r for r in res}
    assert status["synthetic-no_such_model-naive-alphabetical"]["status"] == "failed"
    assert "unknown model" in status["synthetic-no_such_model-naive-alphabetical"]["error"]
    assert status["synthetic-patchcore-naive-alphabetical"]["status"] == "done"
    assert (tmp_path / "synthetic-no_such_model-naive-alphabetical" / "error.txt").is_file()
    table = pd.read_csv(tmp_path / "sweep_status.csv")
    assert set(table.status) == {"failed", "done"}


def test_ray_executor_places_runs_on_gpus_and_gives_identical_cells(local_sweep, synthetic_root, tmp_path):
    """Ray on this CPU machine, declared to have 2 GPUs: Ray's own placement assigns them (it sets each
    worker's CUDA_VISIBLE_DEVICES); torch finds no CUDA driver, so the runs compute on the CPU."""
    ray = pytest.importorskip("ray")
    from cl_iad.errors import UserError

    out, _ = local_sweep
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = run_sweep(_cfg(synthetic_root), tmp_path, executor="ray", resources={"num_cpus": 1, "num_gpus": 1},
                        progress=False)
        with pytest.raises(UserError, match="--num-gpus 3 per run, but no node of the Ray cluster has more than 2"):
            run_sweep(_cfg(synthetic_root, orders=["random:5"]), tmp_path / "too_many", executor="ray",
                      resources={"num_gpus": 3}, progress=False)
    finally:
        ray.shutdown()
    assert all(r["status"] == "done" for r in res), res
    assert all(r["gpus"] in ("0", "1") for r in res), res  # one whole GPU each
    assert pd.read_csv(tmp_path / "sweep_status.csv", dtype=str)["gpus"].isin(["0", "1"]).all()
    for run_dir in out.glob("*/cells.csv"):
        pd.testing.assert_frame_equal(_cells(tmp_path / run_dir.parent.name), _cells(run_dir.parent))


@pytest.mark.parametrize("per_run,gpus,ok", [(1, 1, True), (0.5, 1, True), (0.25, 0, False), (2, 1, False),
                                             (2, 4, True), (1.5, 4, False), (0, 0, True)])
def test_gpu_request_is_checked_against_the_largest_node(per_run, gpus, ok):
    from cl_iad.errors import UserError
    from cl_iad.sweep import check_gpu_request

    if ok:
        check_gpu_request(per_run, gpus)
    else:
        with pytest.raises(UserError, match="--num-gpus"):
            check_gpu_request(per_run, gpus)
    check_gpu_request(8, 1, autoscaling=True)  # a cluster given by address may grow: a warning only


def test_report_tables_are_mean_and_std_over_orders(local_sweep):
    out, _ = local_sweep
    report = make_report(out)
    for f in ["index.html", "table_image_auroc.csv", "table_image_auroc.md", "table_image_auroc.tex",
              "table_summary.csv", "plots/curves_image_auroc.png", "plots/fm_image_auroc.png"]:
        assert (report / f).is_file(), f
    runs = find_runs(out)
    values = [r.matrices["image_auroc"].iloc[-1]["bracket"] for r in runs]
    expected = f"{pd.Series(values).mean():.3f} ± {pd.Series(values).std(ddof=1):.3f}"
    assert category_table(runs, "image_auroc").loc["patchcore + naive", "bracket"] == expected
    assert "patchcore + naive" in (report / "index.html").read_text()


def test_wandb_report_offline_writes_definition(local_sweep, capsys):
    pytest.importorskip("wandb_workspaces")
    from cl_iad.wandb_report import build_report, report_definition, wandb_report

    out, _ = local_sweep
    msg = wandb_report(out, project="cl_iad", mode="offline")
    assert (out / "wandb_report.json").is_file() and "--online" in msg
    defn = report_definition(out, "cl_iad")
    assert any("image_auroc/bracket" in p["y"] for p in defn["panels"])
    report = build_report(defn)  # constructing it needs no network
    assert report.title == defn["title"] and len(report.blocks) >= 3
