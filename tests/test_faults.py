"""Faults a long run meets (issue 18, docs/faults.md): a second launch of one run, a full or read-only
disk, preemption (SIGTERM, Ctrl-C, a sweep worker that dies), a corrupt feature cache, and random kills.

Every test ends the same way: the cells on disk are whole, hold no duplicate, and once the fault is
gone the same command gives cells identical (bit for bit, compared as text) to an uninterrupted run.

Runs that must be separate processes (SIGKILL, SIGTERM, two launches at once) are children of a fork
server that imported cl_iad, torch and anomalib once: each child runs ``cl_iad.cli.main(argv)``, the
``cl-iad`` entry point, without the ~30 s interpreter start-up a fresh ``cl-iad run`` pays on the shared
test machine. One test (SIGTERM) runs the real ``python -m cl_iad run`` to pin the exit status a shell sees.
"""

from __future__ import annotations

import builtins
import errno
import io
import itertools
import json
import logging
import multiprocessing as mp
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cl_iad.cli import main
from cl_iad.errors import Terminated
from cl_iad.recorders import Recorder
from cl_iad.results import RunLock
from cl_iad.runner import run
from cl_iad.strategies import Strategy, build_model
from cl_iad.thresholds import load_thresholds

REPO = Path(__file__).resolve().parents[1]
POSIX_SIGNALS = pytest.mark.skipif(not hasattr(signal, "SIGKILL") or sys.platform == "win32",
                                   reason="needs POSIX signals (SIGKILL, SIGTERM, SIGSTOP) and fork")
KEY = ["trained_upto", "eval_task", "metric"]
METRICS = "image_auroc,pixel_auroc"
FOUR = "bracket,disc,grain,ring"
THREE = "bracket,disc,grain"
MODELS = {
    "patchcore-replay": ["--model", "patchcore", "--strategy", "replay", "--buffer-size", "6"],
    "stfpm-ewc": ["--model", "stfpm", "--preset", "light", "--epochs", "1", "--strategy", "ewc"],
}


def _argv(root: Path, out: Path, categories: str = FOUR, model: str = "patchcore-replay", *extra: str) -> list[str]:
    return ["run", "--dataset", "synthetic", "--root", str(root), "--categories", categories, "--image-size", "64",
            "--n-train", "6", "--n-test-good", "3", "--n-test-per-defect", "1", *MODELS[model], "--metrics", METRICS,
            "--wandb", "off", "--no-progress", "--out", str(out), "--name", "r", *extra]


# -- cells ---------------------------------------------------------------------------------------------------
def _cells(run_dir: Path) -> pd.DataFrame:
    """cells.csv as text (values compared by their repr), sorted by cell."""
    return pd.read_csv(run_dir / "cells.csv", dtype=str).sort_values(KEY).reset_index(drop=True)


def _rows(path: Path) -> int:
    """Complete cell rows in cells.csv so far (0 if none)."""
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def _assert_whole_subset(run_dir: Path, reference: pd.DataFrame) -> int:
    """cells.csv holds only complete lines, no duplicate, and each row equals the reference's; return its rows."""
    path = run_dir / "cells.csv"
    if not path.exists():
        return 0
    text = path.read_text()
    assert not text or text.endswith("\n"), f"torn last line: {text[-80:]!r}"
    assert all(line.count(",") == 4 for line in text.splitlines()), text
    got = _cells(run_dir)
    assert not got.duplicated(KEY).any(), got[got.duplicated(KEY, keep=False)]
    merged = got.merge(reference, on=KEY, how="left", suffixes=("", "_ref"))
    assert (merged["value"] == merged["value_ref"]).all(), merged[merged["value"] != merged["value_ref"]]
    return len(got)


def _assert_identical(run_dir: Path, reference: pd.DataFrame) -> None:
    got = _cells(run_dir)
    assert not got.duplicated(KEY).any()
    pd.testing.assert_frame_equal(got, reference)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fault_data")


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """reference(categories, model): the cells of the uninterrupted run (computed once, in this process)."""
    done: dict[tuple[str, str], tuple[pd.DataFrame, dict]] = {}

    def get(categories: str = FOUR, model: str = "patchcore-replay") -> pd.DataFrame:
        if (categories, model) not in done:
            out = tmp_path_factory.mktemp("reference")
            assert main(_argv(data_root, out, categories, model)) == 0
            done[categories, model] = (_cells(out / "r"), load_thresholds(out / "r"))
        return done[categories, model][0]

    get.thresholds = lambda categories=FOUR, model="patchcore-replay": done[categories, model][1]
    return get


def _error_line(capsys, argv: list[str]) -> str:
    status = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- 1. one process owns a run directory --------------------------------------------------------------------
def test_second_launch_of_a_held_run_dir_is_one_line_naming_the_holder_and_wait_waits(capsys, caplog, data_root,
                                                                                     reference, tmp_path):
    cats = "bracket,disc"
    holder = RunLock(tmp_path / "r").acquire()  # this process stands for the first launch
    try:
        line = _error_line(capsys, _argv(data_root, tmp_path, cats))
    except BaseException:
        holder.release()
        raise
    assert line.startswith(f"error: {tmp_path / 'r'} is in use by another cl-iad run (pid {os.getpid()} on host "
                           f"{socket.gethostname()}, started "), line
    assert line.endswith("wait for it to finish, or pass --wait to start as soon as it does"), line
    assert not (tmp_path / "r" / "cells.csv").exists() and not (tmp_path / "r" / "config.json").exists()

    threading.Timer(1.0, holder.release).start()  # --wait: the second launch starts once the first lets go
    with caplog.at_level(logging.WARNING, logger="cl_iad.results"):
        assert main(_argv(data_root, tmp_path, cats, "patchcore-replay", "--wait")) == 0
    assert f"(pid {os.getpid()} on host {socket.gethostname()}, started " in caplog.text
    assert "waiting for it to finish (--wait)" in caplog.text
    _assert_identical(tmp_path / "r", reference(cats))
    assert not (tmp_path / "r" / ".lock.owner").exists(), "a finished run leaves no owner behind"


# -- 2. a full or read-only disk --------------------------------------------------------------------------
class _FailingFile:
    """A file open for writing whose writes raise `err` once the shared byte budget is spent; the bytes
    that still fit are written first, as a real disk does, so a torn write is left behind."""

    def __init__(self, fh, budget: list[int], path: str, err: int) -> None:
        self._fh, self._budget, self._path, self._err = fh, budget, path, err

    def write(self, data):
        n = len(data.encode() if isinstance(data, str) else bytes(data))
        if n > self._budget[0]:
            if self._budget[0] > 0:
                self._fh.write(data[: self._budget[0]])
            self._budget[0] = 0
            raise OSError(self._err, os.strerror(self._err), self._path)
        self._budget[0] -= n
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()

    def __iter__(self):
        return iter(self._fh)


def _disk_fills_up(monkeypatch, match: str, budget: int, err: int = errno.ENOSPC) -> None:
    """From now on, writes to files whose path contains `match` fail with `err` after `budget` bytes in all."""
    real_open, left = builtins.open, [budget]

    def fake_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax+") and match in str(file):
            return _FailingFile(fh, left, str(file), err)
        return fh

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)  # pathlib, zipfile


DISK_CASES = {  # what fails: (path part, bytes that still fit, errno, the path the message names)
    "cells.csv": ("cells.csv", 300, errno.ENOSPC, "cells.csv"),
    "checkpoint": ("after_task_001", 2000, errno.ENOSPC, "checkpoints/after_task_001.pt"),
    "thresholds-read-only": ("thresholds.jsonl", 700, errno.EROFS, "thresholds.jsonl"),
    "examples": ("examples", 30_000, errno.ENOSPC, "examples/"),
    "saved-model": ("state.pt", 1000, errno.ENOSPC, "model/state.pt"),
}


@pytest.mark.parametrize("case", DISK_CASES)
def test_full_or_read_only_disk_is_one_line_keeps_every_cell_and_the_same_command_resumes(
        case, capsys, monkeypatch, data_root, reference, tmp_path):
    match, budget, err, named = DISK_CASES[case]
    ref = reference(THREE)
    argv = _argv(data_root, tmp_path, THREE)
    capsys.readouterr()
    _disk_fills_up(monkeypatch, match, budget, err)
    line = _error_line(capsys, argv)
    reason = "no space left on the device; free some space on that disk" if err == errno.ENOSPC else \
        "the file system is read-only; make that folder writable"
    assert line.startswith(f"error: cannot write {tmp_path / 'r' / named}"), line
    assert f"): {reason}, then run the same command again: it resumes where it stopped" in line, line
    kept = _assert_whole_subset(tmp_path / "r", ref)
    load_thresholds(tmp_path / "r")  # no torn line there either
    assert not list((tmp_path / "r").rglob("*.tmp")), "a failed atomic write leaves its temporary file"

    monkeypatch.undo()  # space is free again
    assert main(argv) == 0
    _assert_identical(tmp_path / "r", ref)
    assert kept < len(ref) or case == "saved-model"
    assert (tmp_path / "r" / "model" / "state.pt").is_file()


# -- 3. preemption ----------------------------------------------------------------------------------------
class _SignalAt(Recorder):
    """Sends this process a signal from inside the writes of the `at`-th cell (an atomic block)."""

    def __init__(self, at: int, signum: int) -> None:
        self.at, self.signum, self.seen = at, signum, 0

    def on_cell(self, ctx, cell) -> None:
        self.seen += 1
        if self.seen == self.at:
            os.kill(os.getpid(), self.signum)


class _CtrlCInCheckpoint(Recorder):
    """Presses Ctrl-C while the checkpoint after the first task is being written (after Checkpoints' hook)."""

    def on_task_fitted(self, ctx, i, task) -> None:
        os.kill(os.getpid(), signal.SIGINT)


@POSIX_SIGNALS
def test_sigterm_or_ctrl_c_inside_a_cell_or_checkpoint_write_lets_it_finish_whole_then_stops(tiny_stream,
                                                                                        shared_cache, tmp_path):
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("this process has its own SIGTERM/SIGINT handlers, which run() leaves alone")
    stream = tiny_stream[:2]
    args = {"name": "r", "metrics": ["image_auroc", "pixel_auroc"], "wandb": "off", "progress": False}

    def strategy() -> Strategy:
        return Strategy(build_model("patchcore"), "replay", buffer_size=6, cache=shared_cache)

    full = _cells(run(strategy(), stream, tmp_path / "full", **args).run_dir)
    with pytest.raises(Terminated) as stopped:
        run(strategy(), stream, tmp_path / "term", recorders=[_SignalAt(3, signal.SIGTERM)], **args)
    assert stopped.value.run_dir == tmp_path / "term" / "r"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "run() restores the handler it replaced"
    assert _assert_whole_subset(tmp_path / "term" / "r", full) == 3 * 2, "the 3rd cell is written whole"

    with pytest.raises(KeyboardInterrupt):
        run(strategy(), stream, tmp_path / "ctrl_c", recorders=[_CtrlCInCheckpoint()], **args)
    assert not (tmp_path / "ctrl_c" / "r" / "cells.csv").exists()
    assert (tmp_path / "ctrl_c" / "r" / "checkpoints" / "after_task_000.pt").is_file(), "the checkpoint is whole"
    for cut in ("term", "ctrl_c"):  # the same call resumes
        run(strategy(), stream, tmp_path / cut, **args)
        _assert_identical(tmp_path / cut / "r", full)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore",
            "OMP_NUM_THREADS": str(torch.get_num_threads())}


@pytest.mark.slow  # one real `python -m cl_iad run`: ~30 s of imports on the shared machine
@POSIX_SIGNALS
def test_sigterm_exits_143_saying_how_to_resume_and_the_same_command_resumes(data_root, reference, tmp_path):
    ref = reference()
    argv = _argv(data_root, tmp_path)
    with (tmp_path / "stderr.txt").open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "cl_iad", *argv], env=_env(), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=stderr)
        cells = tmp_path / "r" / "cells.csv"
        deadline = time.monotonic() + 400
        while proc.poll() is None and _rows(cells) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 143, err[-2000:]
    assert err.rstrip().splitlines()[-1] == (f"stopped by SIGTERM: every cell finished is kept in {cells}; run the "
                                             "same command again to resume where it stopped")
    assert 1 <= _assert_whole_subset(tmp_path / "r", ref) < len(ref)
    assert main(argv) == 0  # the same command
    _assert_identical(tmp_path / "r", ref)


# -- child processes of a fork server ------------------------------------------------------------------------
def _child(argv: list[str], log: str) -> None:
    """A `cl-iad` process: its output goes to `log`, its exit status is main()'s."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    torch.set_num_threads(1)  # as this test process (conftest), so float sums run in the same order
    # Ctrl-C as a shell's foreground command gets it: a suite started in the background (`make test &`)
    # hands every descendant SIGINT ignored, and the Ctrl-C test's child would then run to the end
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main(argv))


class _Cli:
    """Starts `cl-iad` commands as children of a fork server that imported the heavy packages once."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(["cl_iad.cli", "cl_iad.runner", "cl_iad.strategies", "anomalib.models",
                                         "matplotlib.pyplot", "test_faults"])
        self.n = 0

    def start(self, argv: list[str], log_dir: Path):
        self.n += 1
        log = log_dir / f"child{self.n}.log"
        proc = self.ctx.Process(target=_child, args=(argv, str(log)), daemon=True)
        proc.start()
        proc.log = log
        return proc


@pytest.fixture(scope="module")
def cli():
    if not hasattr(os, "fork") or sys.platform == "win32":
        pytest.skip("child processes here come from a fork server (POSIX)")
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # the fork server starts with it
    yield _Cli()
    if before is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = before


def _owner(run_dir: Path) -> dict:
    """What RUN_DIR/.lock.owner says now ({} if nothing)."""
    try:
        return json.loads((run_dir / ".lock.owner").read_text())
    except (OSError, ValueError):
        return {}


def _log(proc) -> str:
    return proc.log.read_text() if proc.log.exists() else ""


def _until(condition, proc, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.is_alive(), f"the child ended early:\n{_log(proc)[-2000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.slow  # the fork server's imports (~30 s), then three runs
@POSIX_SIGNALS
def test_two_processes_on_one_run_dir_the_second_stops_or_waits_and_no_cell_is_written_twice(cli, data_root,
                                                                                             reference, tmp_path):
    ref = reference()
    run_dir, argv = tmp_path / "r", _argv(data_root, tmp_path)
    first = cli.start(argv, tmp_path)
    _until(lambda: _owner(run_dir).get("pid") == first.pid, first)
    os.kill(first.pid, signal.SIGSTOP)  # pin the overlap: the first holds the lock while the others start
    started = _owner(run_dir)["started"]
    try:
        second = cli.start(argv, tmp_path)
        third = cli.start([*argv, "--wait"], tmp_path)
        second.join(400)
        _until(lambda: "waiting for it to finish" in _log(third), third)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.exitcode == 2, _log(second)
    errors = [line for line in _log(second).splitlines() if line.startswith("error:")]
    expected = (f"error: {run_dir} is in use by another cl-iad run (pid {first.pid} on host {socket.gethostname()}, "
                f"started {started}); wait for it to finish, or pass --wait to start as soon as it does")
    assert errors == [expected], _log(second)
    first.join(400)
    third.join(400)
    assert (first.exitcode, third.exitcode) == (0, 0), _log(first)[-2000:] + _log(third)[-2000:]
    _assert_identical(run_dir, ref)  # exactly one set: no duplicate, none missing


@pytest.mark.slow
@POSIX_SIGNALS
@pytest.mark.parametrize("signum, status, said", [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                                  (signal.SIGINT, 130, "interrupted (Ctrl-C)")],
                         ids=["SIGTERM", "Ctrl-C"])
def test_preempted_child_exits_with_its_status_and_resumes_identically(signum, status, said, cli, data_root,
                                                                      reference, tmp_path):
    ref, argv = reference(), _argv(data_root, tmp_path)
    child = cli.start(argv, tmp_path)
    _until(lambda: _rows(tmp_path / "r" / "cells.csv") >= 3, child)
    os.kill(child.pid, signum)
    child.join(400)
    assert child.exitcode == status, _log(child)[-2000:]
    assert f"{said}: every cell finished is kept in {tmp_path / 'r' / 'cells.csv'}; run the same command again" \
        in _log(child)
    assert 3 <= _assert_whole_subset(tmp_path / "r", ref) < len(ref)
    again = cli.start(argv, tmp_path)
    again.join(400)
    assert again.exitcode == 0, _log(again)[-2000:]
    _assert_identical(tmp_path / "r", ref)


# -- 5. random kills --------------------------------------------------------------------------------------
KILL_POINTS = 4  # per model


def _kill_points(rng: random.Random, rows: int) -> list[tuple[int, float]]:
    """One kill point in each of KILL_POINTS equal stretches of the run: (cells.csv rows to wait for, then a
    delay of up to 0.2 s, which lands the kill inside the next cell, a fit or a checkpoint write)."""
    edges = [1 + k * (rows - 1) // KILL_POINTS for k in range(KILL_POINTS + 1)]
    return [(rng.randrange(lo, hi), rng.uniform(0.0, 0.2)) for lo, hi in itertools.pairwise(edges)]


@pytest.mark.slow  # ~1 min per model on the shared 2-core machine
@POSIX_SIGNALS
@pytest.mark.parametrize("model", MODELS)
def test_random_sigkills_of_a_4_task_run_lose_and_duplicate_nothing(model, cli, data_root, reference, tmp_path):
    ref = reference(FOUR, model)
    argv, cells = _argv(data_root, tmp_path, FOUR, model), tmp_path / "r" / "cells.csv"
    landed = []
    for target, delay in _kill_points(random.Random(f"issue-18-{model}"), len(ref)):
        child = cli.start(argv, tmp_path)
        deadline = time.monotonic() + 400
        while child.is_alive() and _rows(cells) < target and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        rows_at_kill = _rows(cells)
        child.kill()
        child.join(60)
        assert child.exitcode in (-signal.SIGKILL, 0), _log(child)[-2000:]  # never 2: no lock outlives a kill
        if child.exitcode == -signal.SIGKILL:
            landed.append((target, round(delay, 3), rows_at_kill))
        _assert_whole_subset(tmp_path / "r", ref)
    final = cli.start(argv, tmp_path)
    final.join(400)
    assert final.exitcode == 0, _log(final)[-2000:]
    _assert_identical(tmp_path / "r", ref)
    assert load_thresholds(tmp_path / "r")[3]["*"] == reference.thresholds(FOUR, model)[3]["*"]
    assert len(landed) == KILL_POINTS, f"kills that landed mid-run: {landed}"
    logging.getLogger(__name__).info("%s: %d SIGKILL points passed: %s", model, len(landed), landed)


# -- 4. a corrupt feature cache ------------------------------------------------------------------------------
def test_corrupt_feature_cache_files_are_recomputed_with_a_warning_and_change_no_number(caplog, data_root,
                                                                                       reference, tmp_path):
    cats, cache = "bracket,disc", tmp_path / "cache"
    first = _argv(data_root, tmp_path / "one", cats, "patchcore-replay", "--cache-dir", str(cache))
    assert main(first) == 0
    files = sorted(cache.rglob("*.npy"))
    assert len(files) > 3
    truncated, reshaped, retyped = files[0], files[len(files) // 2], files[-1]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    np.save(reshaped, np.zeros((3, 5), dtype=np.float32))  # another shape (np.save keeps the name)
    np.save(retyped, np.zeros(7, dtype=np.int64))  # another dtype
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cl_iad.cache"):
        assert main(_argv(data_root, tmp_path / "two", cats, "patchcore-replay", "--cache-dir", str(cache))) == 0
    warned = [r.getMessage() for r in caplog.records if "is corrupt" in r.getMessage()]
    assert sorted(w.split()[3] for w in warned) == sorted(map(str, (truncated, reshaped, retyped))), warned
    assert all("its features are recomputed and the file rewritten" in w for w in warned)
    _assert_identical(tmp_path / "two" / "r", _cells(tmp_path / "one" / "r"))
    _assert_identical(tmp_path / "one" / "r", reference(cats))  # the cache changes no number either
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cl_iad.cache"):  # rewritten: a third run reads them cleanly
        assert main(_argv(data_root, tmp_path / "three", cats, "patchcore-replay", "--cache-dir", str(cache))) == 0
    assert not [r for r in caplog.records if "is corrupt" in r.getMessage()]


def test_feature_cache_on_a_full_disk_warns_once_and_keeps_features_in_memory(caplog, monkeypatch, data_root,
                                                                              reference, tmp_path):
    cats = "bracket,disc"
    _disk_fills_up(monkeypatch, str(tmp_path / "cache"), 0)
    with caplog.at_level(logging.WARNING, logger="cl_iad.cache"):
        assert main(_argv(data_root, tmp_path, cats, "patchcore-replay", "--cache-dir", str(tmp_path / "cache"))) == 0
    warned = [r.getMessage() for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(warned) == 1 and "features of this run stay in memory only" in warned[0], warned
    _assert_identical(tmp_path / "r", reference(cats))


# -- sweeps: a worker that dies is retried, a held run is not launched twice ----------------------------------
def _sweep_cfg(root: Path) -> dict:
    return {"name": "faults", "dataset": "synthetic", "root": str(root), "categories": ["bracket", "grain"],
            "image_size": 48, "n_train": 6, "n_test_good": 3, "n_test_per_defect": 1, "models": ["patchcore"],
            "strategies": ["naive"], "orders": ["alphabetical"], "metrics": ["image_auroc"], "wandb": "off"}


def _kill_the_runs_process_once(run_dir: Path, stop: threading.Event, killed: list[int]) -> None:
    """Watch for the process that takes `run_dir`'s lock (a sweep worker) and SIGKILL it, once."""
    while not stop.is_set() and not killed:
        pid = _owner(run_dir).get("pid")
        if pid is None or pid == os.getpid():
            time.sleep(0.01)
            continue
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)


@pytest.mark.slow  # worker processes import torch and anomalib (~30 s each); Ray starts a cluster
@POSIX_SIGNALS
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_sweep_retries_a_run_whose_worker_died_and_records_its_attempts(executor, data_root, tmp_path):
    from cl_iad.sweep import expand, run_sweep

    if executor == "ray":
        pytest.importorskip("ray")
    cfg = _sweep_cfg(data_root)
    (job,) = expand(cfg, tmp_path / "ref")
    run_sweep(cfg, tmp_path / "ref", progress=False)  # the uninterrupted reference, in this process
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_the_runs_process_once, args=(tmp_path / "sweep" / job.name, stop, killed))
    watcher.start()
    try:
        kw = {"workers": 2} if executor == "local" else {"resources": {"num_cpus": 1, "num_cpus_total": 2}}
        (rec,) = run_sweep(cfg, tmp_path / "sweep", executor=executor, progress=False, **kw)
    finally:
        stop.set()
        watcher.join()
    assert killed, "the worker was not killed"
    assert (rec["status"], rec["attempts"]) == ("done", 2), rec
    assert rec["notes"].startswith("attempt 1: its ") and "died" in rec["notes"], rec
    table = pd.read_csv(tmp_path / "sweep" / "sweep_status.csv")
    assert list(table.columns) == ["name", "status", "attempts", "seconds", "error", "notes", "gpus"]
    assert table[["status", "attempts"]].values.tolist() == [["done", 2]]
    _assert_identical(tmp_path / "sweep" / job.name, _cells(tmp_path / "ref" / job.name))


def test_sweep_does_not_launch_a_run_another_process_holds(data_root, tmp_path):
    from cl_iad.sweep import expand, run_sweep

    cfg = _sweep_cfg(data_root)
    (job,) = expand(cfg, tmp_path)
    with RunLock(tmp_path / job.name):
        (rec,) = run_sweep(cfg, tmp_path, progress=False)
    assert rec["status"] == "busy" and rec["error"].startswith(f"held by pid {os.getpid()} on host "), rec
    assert not (tmp_path / job.name / "cells.csv").exists() and not (tmp_path / job.name / "error.txt").exists()
    (rec,) = run_sweep(cfg, tmp_path, progress=False)  # free again: it runs
    assert rec["status"] == "done"


def test_status_table_of_an_older_sweep_gains_the_attempts_column(tmp_path):
    from cl_iad.sweep import _append_status

    path = tmp_path / "sweep_status.csv"
    path.write_text("name,status,seconds,error\nold,done,1.00,\n")
    _append_status(path, {"name": "new", "status": "failed", "seconds": 2.0, "error": "x", "attempts": 2,
                          "notes": "attempt 1: its Ray worker died"})
    table = pd.read_csv(path, keep_default_na=False)
    assert table.to_dict("records") == [
        {"name": "old", "status": "done", "attempts": 1, "seconds": 1.0, "error": "", "notes": "", "gpus": ""},
        {"name": "new", "status": "failed", "attempts": 2, "seconds": 2.0, "error": "x",
         "notes": "attempt 1: its Ray worker died", "gpus": ""}]
