"""Crash safety and determinism: kill -9 mid-stream, restart, and get the same cells bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from cl_iad.checkpoint import Checkpointer
from cl_iad.results import ResultStore
from cl_iad.runner import run
from cl_iad.strategies import FeatureCache, Strategy, build_model

REPO = Path(__file__).resolve().parents[1]
METRICS = "image_auroc,pixel_auroc,pro"


def _cli(tiny_stream, out: Path) -> list[str]:
    return [sys.executable, "-m", "cl_iad", "-v", "run", "--dataset", "folder", "--root", str(tiny_stream.root),
            "--image-size", "64", "--model", "patchcore", "--strategy", "replay", "--buffer-size", "6",
            "--buffer-policy", "task_balanced", "--metrics", METRICS, "--wandb", "off", "--no-progress", "--out", str(out),
            "--name", "r"]


def _env() -> dict:
    # the same torch thread count as this process (conftest), so float sums run in the same order
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore",
            "OMP_NUM_THREADS": str(torch.get_num_threads())}


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX; Windows has no kill -9 to simulate")
def test_killed_run_resumes_without_refitting_and_matches_an_unbroken_run(tiny_stream, tmp_path, shared_cache):
    # the reference: the same settings, uninterrupted, in this process
    unbroken = Strategy(build_model("patchcore"), "replay", buffer_size=6, buffer_policy="task_balanced",
                        cache=shared_cache)
    full = run(unbroken, tiny_stream, tmp_path / "full", name="r", metrics=METRICS.split(","), wandb="off",
               progress=False).run_dir

    cells = tmp_path / "broken" / "r" / "cells.csv"
    proc = subprocess.Popen(_cli(tiny_stream, tmp_path / "broken"), env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if cells.exists() and any(line.startswith("1,") for line in cells.read_text().splitlines()):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run finished before it could be killed"
    n_total = len(tiny_stream) ** 2 * 3
    assert len(ResultStore(cells.parent).cells()) < n_total

    again = subprocess.run(_cli(tiny_stream, tmp_path / "broken"), env=_env(), cwd=REPO, capture_output=True,
                           text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stderr
    assert f"task 0 ({tiny_stream.names[0]}): fitted" not in again.stderr, "task 0 was fitted again"

    a = pd.read_csv(full / "cells.csv", dtype=str)
    b = pd.read_csv(cells, dtype=str)
    key = ["trained_upto", "eval_task", "metric"]
    assert len(b) == n_total and not b.duplicated(key).any()
    pd.testing.assert_frame_equal(a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True))
    for m in ("image_auroc", "pro"):
        assert (full / f"matrix_{m}.csv").read_text() == (cells.parent / f"matrix_{m}.csv").read_text()


def test_replay_state_roundtrip_continues_exactly_like_an_unbroken_strategy(tiny_stream, tmp_path, shared_cache):
    def make() -> Strategy:
        return Strategy(build_model("patchcore"), "replay", buffer_size=5, buffer_policy="task_balanced",
                        cache=shared_cache)

    unbroken = make()
    for task in tiny_stream:
        unbroken.fit_task(task, tiny_stream)
    first = make().fit_task(tiny_stream[0], tiny_stream).fit_task(tiny_stream[1], tiny_stream)
    torch.save(first.state_dict(), tmp_path / "s.pt")
    resumed = make().load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    resumed.fit_task(tiny_stream[2], tiny_stream)
    assert torch.equal(resumed.model.state_dict()["memory_bank"], unbroken.model.state_dict()["memory_bank"])
    assert resumed.plugin("replay").buffer_.samples == unbroken.plugin("replay").buffer_.samples
    assert resumed.trained_tasks_ == unbroken.trained_tasks_


def test_same_seed_gives_identical_cells_and_config_records_seed_and_versions(tiny_stream, tmp_path):
    stream, metrics = tiny_stream[:2], ["image_auroc", "pixel_auroc"]
    outs = []
    for k in range(2):
        strategy = Strategy(build_model("patchcore", seed=3), "cumulative", cache=FeatureCache(), seed=3)
        outs.append(run(strategy, stream, tmp_path / str(k), metrics=metrics, wandb="off", progress=False))
    a, b = ((o.run_dir / "cells.csv").read_text() for o in outs)
    assert a == b and len(a.splitlines()) == 1 + len(stream) ** 2 * 2
    cfg = json.loads((outs[0].run_dir / "config.json").read_text())
    assert cfg["settings"]["seed"] == 3 and cfg["settings"]["strategy_seed"] == 3
    assert {"torch", "anomalib", "numpy", "python"} <= set(cfg["versions"])
    # a finished run restarted with the same arguments fits nothing and appends nothing
    strategy = Strategy(build_model("patchcore", seed=3), "cumulative", cache=FeatureCache(), seed=3)
    ckpt = Checkpointer(outs[0].run_dir, stream.names, cfg["settings"])
    assert [i for i, _ in ckpt.existing()] == [len(stream) - 1]
    run(strategy, stream, tmp_path / "0", metrics=metrics, wandb="off", progress=False)
    assert strategy.cache.forward_images == 0, "a finished run must not fit or evaluate again"
    assert (outs[0].run_dir / "cells.csv").read_text() == a


def test_a_cell_cut_off_by_a_crash_is_dropped_and_the_next_append_starts_clean(tmp_path):
    store = ResultStore(tmp_path)
    store.append([(0, "a", "a", "image_auroc", 0.75), (0, "a", "b", "image_auroc", 0.5)])
    with store.path.open("a") as fh:
        fh.write("0,a,c,image_au")  # a kill in the middle of a write
    assert len(store.cells()) == 2
    store.append([(0, "a", "c", "image_auroc", 0.25)])
    cells = store.cells()
    assert list(cells.eval_task) == ["a", "b", "c"] and list(cells.value) == [0.75, 0.5, 0.25]
    assert store.path.read_text().count("\n") == 4  # header + three complete rows


class _Crash(Exception):
    """Stands for a kill: raised inside the run, after the task-1 checkpoint is on disk."""


def _crash_in_row_1(strategy: Strategy, n_tasks: int) -> None:
    """Make `strategy` crash on its second prediction of row 1: task 1 is fitted and checkpointed,
    row 0 complete, row 1 holds one task's cells."""
    calls = []
    original = strategy.predict

    def predict(*args, **kwargs):
        calls.append(1)
        if len(calls) == n_tasks + 2:
            raise _Crash
        return original(*args, **kwargs)

    strategy.predict = predict


def _count_fits(strategy: Strategy) -> list[int]:
    """The task ids `strategy` is fitted on from now on."""
    fitted: list[int] = []
    original = strategy.fit_task

    def fit_task(task, scenario):
        fitted.append(task.task_id)
        return original(task, scenario)

    strategy.fit_task = fit_task
    return fitted


RESUME_CASES = {
    "stfpm-ewc": lambda cache: Strategy(build_model("stfpm", "light", epochs=1), "ewc"),
    "fastflow-lwf": lambda cache: Strategy(build_model("fastflow", "light", epochs=1), "lwf"),
    "patchcore-per_task-routed": lambda cache: Strategy(build_model("patchcore", "light"), "per_task",
                                                         eval_mode="agnostic", cache=cache),
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow if c != "patchcore-per_task-routed" else ())
                                  for c in RESUME_CASES])  # the gradient cases take 10-15 s each on 2 cores
def test_run_crashed_after_task_1_resumes_from_its_checkpoint_and_matches_an_unbroken_run(case, tiny_stream,
                                                                                          shared_cache, tmp_path):
    make, n = RESUME_CASES[case], len(tiny_stream)
    args = {"name": "r", "metrics": ["image_auroc", "pro"], "wandb": "off", "progress": False, "save_model": False}
    full = run(make(shared_cache), tiny_stream, tmp_path / "full", **args).run_dir

    broken = make(FeatureCache())
    _crash_in_row_1(broken, n)
    with pytest.raises(_Crash):
        run(broken, tiny_stream, tmp_path / "broken", **args)
    run_dir = tmp_path / "broken" / "r"
    assert list((run_dir / "checkpoints").glob("after_task_001*")), "the crash came before the task-1 checkpoint"
    per_cell = len(args["metrics"]) + ("routed" in case)  # + routing_accuracy
    per_row = ResultStore(run_dir).cells().groupby("trained_upto").size().to_dict()
    assert per_row == {0: n * per_cell, 1: per_cell}, f"row 0 complete, row 1 one task; got {per_row}"

    resumed = make(FeatureCache())  # a fresh process: new model, new strategy, empty feature cache
    fitted = _count_fits(resumed)
    run(resumed, tiny_stream, tmp_path / "broken", **args)
    assert fitted == [n - 1], f"only the task after the checkpoint is fitted again, got {fitted}"

    key = ["trained_upto", "eval_task", "metric"]
    a = pd.read_csv(full / "cells.csv", dtype=str).sort_values(key).reset_index(drop=True)
    b = pd.read_csv(run_dir / "cells.csv", dtype=str).sort_values(key).reset_index(drop=True)
    assert not b.duplicated(key).any()
    pd.testing.assert_frame_equal(a, b)  # every cell, bit for bit (values compared as their repr)
