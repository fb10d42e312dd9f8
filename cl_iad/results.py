"""Result storage: one row per cell, appended durably, the tables derived from the cells, and the
lock that gives one process at a time a run directory.

``cells.csv`` is the single source of truth; matrices and the summary are pure functions of
it, so they can always be rebuilt from a (possibly interrupted) run directory.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics as M
from .errors import RunLocked, disk_errors

log = logging.getLogger(__name__)
CELL_COLUMNS = ("trained_upto", "trained_task", "eval_task", "metric", "value")
METRICS = ("image_auroc", "pixel_auroc", "pro", "image_aupr", "pixel_aupr")


class ResultStore:
    """Appends cells to ``run_dir/cells.csv``; each row is flushed and fsynced before returning.

    A row is written with one ``write`` call of a complete line, so a crash leaves at most a
    truncated last line, which :meth:`cells` drops.
    """

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "cells.csv"

    def cells(self) -> pd.DataFrame:
        """All complete cells written so far (an empty frame if none)."""
        if not self.path.exists():
            return pd.DataFrame(columns=list(CELL_COLUMNS))
        rows = []
        with self.path.open(newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                if row == list(CELL_COLUMNS) or len(row) != len(CELL_COLUMNS):
                    continue
                try:
                    rows.append((int(row[0]), row[1], row[2], row[3], float(row[4])))
                except ValueError:
                    continue  # a truncated last line from a crash
        return pd.DataFrame(rows, columns=list(CELL_COLUMNS))

    def append(self, rows: Iterable[tuple[int, str, str, str, float]]) -> None:
        """Durably append cells (trained_upto, trained_task, eval_task, metric, value).

        A full or read-only disk raises :class:`~cl_iad.errors.WriteError`; the rows written before
        stay intact and a part written of these rows is cut off, so the cells are all in or all out.
        """
        rows = list(rows)
        what = f"the cell after training {rows[0][1]}, evaluated on {rows[0][2]}" if rows else "its header"
        with disk_errors(what, file=self.path):
            new = not self.path.exists()
            if not new:
                self._repair_tail()
            buf = []
            if new:
                buf.append(",".join(CELL_COLUMNS) + "\n")
            for r in rows:
                buf.append(f"{int(r[0])},{_csv(r[1])},{_csv(r[2])},{r[3]},{float(r[4])!r}\n")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with appending(self.path, newline="") as fh:
                fh.write("".join(buf))

    def _repair_tail(self) -> None:
        """Cut a partial last line left by a crash, so appends start on a fresh line."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)


@contextmanager
def appending(path: Path, **open_kwargs) -> Iterator:
    """Open `path` to append, flush and fsync at the end; see :func:`whole_appends`."""
    with whole_appends(path), Path(path).open("a", **{"encoding": "utf-8", **open_kwargs}) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


@contextmanager
def whole_appends(path: Path | str) -> Iterator[None]:
    """If the block fails (a full disk), cut `path` back to its size before the block, so what it appended
    is all in or all out and no torn line is left for the next reader. Cutting a file needs no space."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    try:
        yield
    except BaseException:
        if path.exists() and path.stat().st_size > size:
            with path.open("r+b") as fh:
                fh.truncate(size)
        raise


def _csv(text: str) -> str:
    if any(c in text for c in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def matrix(cells: pd.DataFrame, metric: str, task_names: Sequence[str]) -> pd.DataFrame:
    """The T x T matrix of `metric`: rows 'after training <task>', columns evaluated task."""
    m = pd.DataFrame(np.nan, index=list(task_names), columns=list(task_names))
    sub = cells[cells["metric"] == metric]
    for row in sub.itertuples(index=False):
        m.loc[task_names[row.trained_upto], row.eval_task] = row.value
    m.index.name = "trained_upto"
    return m


def chance_baseline(metric: str, labels: np.ndarray, masks: np.ndarray) -> float:
    """Expected score of a detector that ranks at random: the FWT baseline b_j of a task.

    AUROC is 0.5; PRO is 0.15 (a random ranking gives PRO = FPR, whose normalised area up to
    0.3 is 0.15); AUPR is the prevalence of the positive class.
    """
    if metric in ("image_auroc", "pixel_auroc"):
        return 0.5
    if metric == "pro":
        return 0.15
    if metric == "image_aupr":
        return float(np.mean(labels)) if len(labels) else float("nan")
    if metric == "pixel_aupr":
        return float(np.mean(masks)) if masks.size else float("nan")
    raise ValueError(f"no chance baseline for metric {metric!r}")


def summarise(R: pd.DataFrame, task_aware: bool, definition: str = "chaudhry",
              baseline: float | Sequence[float] = 0.5) -> dict:
    """ACC, BWT, FWT and forgetting of one matrix, as the summary.json entry for one metric.

    ``skipped_tasks`` names the tasks whose every cell is NaN (the metric is undefined on them,
    e.g. a test set without anomalous images); the measures are means over the other tasks.
    """
    fm = M.forgetting(R, definition)
    names = list(R.columns)
    return {
        "skipped_tasks": skipped_tasks(R),
        "acc": _num(M.average_accuracy(R)),
        "bwt": _num(M.backward_transfer(R)),
        "fwt": _num(M.forward_transfer(R, baseline=np.asarray(baseline, dtype=float))),
        "fm": _num(M.average_forgetting(R, definition)),
        "fm_per_task": {names[j]: _num(v) for j, v in enumerate(fm)},
        "forgetting_definition": definition,
        "task_aware": task_aware,
        "forgetting": forgetting_side_by_side(R),
    }


# The forgetting averages summary.json gives side by side (each labelled with its source), besides `fm`.
SIDE_BY_SIDE = ("chaudhry", "im-iad")


def forgetting_side_by_side(R: pd.DataFrame, R_joint: pd.DataFrame | None = None) -> dict:
    """Chaudhry's and IM-IAD's average forgetting of `R` and the "joint minus continual" gap, each with its definition.

    The gap needs the matrix of a joint run of the same settings (`R_joint`); without one it is null, and
    ``cl-iad report`` fills it in when such a run sits beside this one.
    """
    from .metrics.continual import FORGETTING_LABELS, joint_gap

    continual = logging.getLogger(M.continual.__name__)
    level = continual.level
    out = {}
    for n, definition in enumerate(SIDE_BY_SIDE):
        if n:  # the same NaN cells as the first definition: warned about once
            continual.setLevel(logging.ERROR)
        try:
            out[definition] = {"fm": _num(M.average_forgetting(R, definition)),
                               "definition": FORGETTING_LABELS[definition]}
        finally:
            continual.setLevel(level)
    gap = None if R_joint is None else _num(joint_gap(R, R_joint))
    note = "" if R_joint is not None else "; null here: `cl-iad report` computes it when a joint run of the same " \
                                           "settings is found beside this run"
    out["joint-gap"] = {"fm": gap, "definition": FORGETTING_LABELS["joint-gap"] + note}
    return out


def skipped_tasks(R: pd.DataFrame) -> list[str]:
    """Tasks (columns of `R`) with no finite cell: every measure of the matrix leaves them out."""
    return [str(name) for name in R.columns if not np.isfinite(R[name].to_numpy(dtype=float)).any()]


def _num(x: float) -> float | None:
    """JSON has no NaN: missing values are written as null."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def write_tables(run_dir: Path, cells: pd.DataFrame, task_names: Sequence[str], metrics: Sequence[str],
                 task_aware: bool, baselines: dict[str, Sequence[float]] | None = None) -> dict:
    """Write matrix_<metric>.csv and summary.json from the cells; return the summary.

    `baselines` gives, per metric, the chance score of each task for FWT (default 0.5). Tasks a
    metric is undefined on are listed in ``skipped_tasks`` and named in one warning.
    """
    summary = {}
    skipped: dict[str, list[str]] = {}
    for metric in metrics:
        R = matrix(cells, metric, task_names)
        R.to_csv(run_dir / f"matrix_{metric}.csv")
        with _quiet_if_only_skipped(R):
            summary[metric] = summarise(R, task_aware, baseline=(baselines or {}).get(metric, 0.5))
        if 0 < len(summary[metric]["skipped_tasks"]) < len(R.columns):
            skipped[metric] = summary[metric]["skipped_tasks"]
    for tasks in sorted({tuple(t) for t in skipped.values()}):
        log.warning("summaries of %s leave out task(s) %s: the metric is undefined (NaN) in every cell of them; "
                    "see 'skipped_tasks' in summary.json", ", ".join(m for m, t in skipped.items() if tuple(t) == tasks),
                    ", ".join(tasks))
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


@contextmanager
def _quiet_if_only_skipped(R: pd.DataFrame) -> Iterator[None]:
    """Hush the per-measure "skipping NaN cells" warnings when every NaN cell of `R` lies in a skipped
    task: the one warning of :func:`write_tables` says it, instead of one line per measure."""
    values = R.drop(columns=skipped_tasks(R)).to_numpy(dtype=float)
    if not skipped_tasks(R) or not np.isfinite(values).all():
        yield
        return
    continual = logging.getLogger(M.continual.__name__)
    def hush(record: logging.LogRecord) -> bool:
        return False

    continual.addFilter(hush)
    try:
        yield
    finally:
        continual.removeFilter(hush)


def atomic_write_text(path: Path, text: str, what: str = "") -> None:
    """Write via a temporary file and rename, so readers never see half a file.

    A full or read-only disk raises :class:`~cl_iad.errors.WriteError` naming `path` and `what`;
    the old file, if any, is left as it was.
    """
    tmp = path.with_suffix(path.suffix + ".tmp")
    with disk_errors(what, file=path):
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


# -- one process per run directory ---------------------------------------------------------------------------
class RunLock:
    """An OS lock on ``RUN_DIR/.lock``, so one process at a time writes a run directory.

    The lock belongs to the open file, so it dies with its process: a run killed with ``kill -9``
    never leaves a lock that blocks the next one. Who holds it (pid, host, start time, command)
    is written beside it, in ``RUN_DIR/.lock.owner``, for the message of a second launch.
    `wait` makes :meth:`acquire` wait for the holder to finish instead of raising
    :class:`~cl_iad.errors.RunLocked`.
    """

    def __init__(self, run_dir: Path | str, wait: bool = False, poll_s: float = 0.5) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"
        self.owner_path = self.run_dir / ".lock.owner"
        self.wait, self.poll_s = wait, poll_s
        self._fd: int | None = None

    def __enter__(self) -> RunLock:  # noqa: PYI034 - acquire() returns self
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> RunLock:
        """Take the lock (waiting for it with `wait`), then write who holds it; return self."""
        with disk_errors("the run directory's lock", file=self.path):
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        told = False
        while not _try_lock(fd, self.path):
            if not self.wait:
                os.close(fd)
                raise RunLocked(self.run_dir, self.holder())
            if not told:
                log.warning("%s is in use by another cl-iad run (%s); waiting for it to finish (--wait)",
                            self.run_dir, self.holder())
                told = True
            time.sleep(self.poll_s)
        self._fd = fd
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": datetime.now().astimezone().isoformat(timespec="seconds"),
                 "command": " ".join(sys.argv)}
        try:
            atomic_write_text(self.owner_path, json.dumps(owner), "the run directory's lock owner")
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Let the next process in (the lock file stays: deleting it would race with a waiting process)."""
        if self._fd is None:
            return
        self.owner_path.unlink(missing_ok=True)
        try:
            _unlock(self._fd)
        except OSError:
            pass  # closing the file releases the lock anyway
        os.close(self._fd)
        self._fd = None

    def holder(self) -> str:
        """Who holds the lock, from ``.lock.owner``, e.g. "pid 4242 on host node7, started 2025-01-31T09:12:03"."""
        for _ in range(20):  # the holder writes the file right after it locks: give it a moment
            try:
                owner = json.loads(self.owner_path.read_text(encoding="utf-8"))
                return f"pid {owner['pid']} on host {owner['host']}, started {owner['started']}"
            except (OSError, ValueError, KeyError, TypeError):
                time.sleep(0.05)
        return f"a process that has not written {self.owner_path.name} yet"


def _try_lock(fd: int, path: Path) -> bool:
    """Take the OS lock on `fd` without waiting; False if another open file holds it. A file system without
    locks (some network mounts) gets a warning and no lock: the run goes on, unguarded."""
    if sys.platform == "win32":
        import msvcrt

        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:  # ENOLCK, EOPNOTSUPP: this file system cannot lock
        log.warning("cannot lock %s (%s): a second launch of this run will not be detected; keep to one", path, exc)
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)
