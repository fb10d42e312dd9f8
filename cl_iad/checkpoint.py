"""Per-task checkpoints and seeding, so a killed run resumes exactly where it stopped.

The loop writes ``run_dir/checkpoints/after_task_XXX.pt`` right after fitting task i and
before evaluating row i. Row i is only started once row i-1 is complete, so on restart the
newest checkpoint k satisfies: rows < k are complete, row k may be partial. The runner loads
that state, evaluates what is missing of row k and continues with task k+1: no earlier task is
fitted again.

A checkpoint holds :meth:`Strategy.state_dict` (the model's ``state_dict()``, each regime plugin's state,
per-task states, seen samples, trained tasks) as nested dicts, lists, strings, numbers and
tensors. Saving refuses anything else (:func:`plain_state`), and loading always uses
``torch.load(weights_only=True)``: results folders are shared, and reading one must never run
code, so a file that holds pickled objects is refused with :class:`~cl_iad.errors.CheckpointError`.
Any model whose ``state_dict``/``load_state_dict`` speak dicts of tensors is covered, gradient-trained
ones included. Files are written to a temporary name, fsynced and renamed: a kill leaves either
the old or the new checkpoint, never half of one.

A checkpoint written with other settings (model, order, seed, ...) carries another settings
digest; :meth:`Checkpointer.resume` ignores it with a warning and fits from the start.

:func:`seeded` gives every task its own random state, derived from the run seed and the task
index, so training task k draws the same random numbers whether the process started at task 0
or resumed at task k.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import re
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import CheckpointError, disk_errors
from .scenarios.base import decode_samples, encode_samples  # noqa: F401 - re-exported; they live beside Sample now

if TYPE_CHECKING:
    from .strategies.base import Strategy

log = logging.getLogger(__name__)

FORMAT = 1
_NAME = re.compile(r"after_task_(\d{3,})\.pt$")


# -- seeding ------------------------------------------------------------------------------
def derived_seed(seed: int, *salt: int) -> int:
    """A 32-bit seed from the run seed and e.g. a task index, stable across processes."""
    return zlib.crc32(json.dumps([int(seed), *map(int, salt)]).encode())


@contextmanager
def seeded(seed: int, *salt: int) -> Iterator[None]:
    """Seed torch, numpy and random for the block; the caller's random states are restored after."""
    value = derived_seed(seed, *salt)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng():
            torch.manual_seed(value)
            np.random.seed(value)
            random.seed(value)
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


# -- files --------------------------------------------------------------------------------
def settings_digest(settings: dict) -> str:
    """A short fingerprint of a run's settings, stored in each checkpoint."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_SCALARS = (str, int, float, bool, type(None))


def plain_state(obj: Any, where: str = "state") -> Any:
    """`obj` as data ``torch.load(weights_only=True)`` reads back: tensors, str, numbers, bool, None
    in dicts, lists and tuples. numpy scalars become Python numbers (they compare equal, so a
    loaded ``model_config`` still matches the model's).

    Anything else raises ``TypeError`` naming where it sits, so a model that stores an arbitrary
    object fails when it saves, not later in a resumed run or in someone else's ``predict``.
    """
    if type(obj) in _SCALARS or isinstance(obj, (torch.Tensor, torch.dtype, torch.Size)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {_plain_key(k, where): plain_state(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if type(obj) in (list, tuple):
        items = [plain_state(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if type(obj) is list else tuple(items)
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; checkpoints hold only "
                    "tensors, str, numbers, bool and None in dicts, lists and tuples (loading never unpickles "
                    "objects). Store it as tensors or plain data in the model's or plugin's state_dict()")


def _plain_key(key: Any, where: str) -> Any:
    if isinstance(key, np.generic):
        return key.item()
    if type(key) not in _SCALARS:
        raise TypeError(f"{where} has a key of type {type(key).__name__}; use str or int keys in checkpoints")
    return key


def safe_torch_load(path: Path, what: str, fix: str) -> Any:
    """``torch.load(weights_only=True)`` of `path`; any failure is a :class:`CheckpointError` that
    names the file, says whether it is corrupt or holds objects, and gives `fix`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(path, f"{what} is missing", fix) from None
    except pickle.UnpicklingError as exc:  # torch's safe unpickler refused a global, or the bytes are garbage
        refused = _REFUSED_GLOBAL.search(str(exc))
        if refused:
            problem = (f"{what} holds pickled objects, not only tensors and plain data (it asks for "
                       f"{refused.group(1)}); it was not loaded, since unpickling it could run code")
        else:
            problem = f"{what} is corrupt or not a torch file ({_unpickling_detail(exc)})"
        raise CheckpointError(path, problem, fix) from exc
    except Exception as exc:  # truncated zip, garbage bytes, empty file: all are unreadable files
        raise CheckpointError(path, f"{what} cannot be read: corrupt or truncated ({_first_line(exc)})",
                              fix) from exc


_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")


def _unpickling_detail(exc: BaseException) -> str:
    """The line of torch's weights-only error that says what went wrong (it wraps it in advice)."""
    lines = [line.strip().removeprefix("WeightsUnpickler error:").strip() for line in str(exc).splitlines()]
    useful = [line for line in lines if line and not line.startswith(_BOILERPLATE)]
    return _first_line(type(exc)(useful[0] if useful else ""))


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def atomic_torch_save(obj: object, path: Path, what: str = "") -> None:
    """``torch.save`` of :func:`plain_state` (`obj`) to a temporary file, fsync, then rename over `path`.

    A full or read-only disk raises :class:`~cl_iad.errors.WriteError` naming `path` and `what` (torch
    reports it as "unexpected pos"); the temporary file is removed and the old `path` left as it was.
    """
    obj = plain_state(obj, path.name)
    tmp = path.with_name(path.name + ".tmp")
    with disk_errors(what, file=path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as fh:
                torch.save(obj, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    _fsync_dir(path.parent)


class Checkpointer:
    """Writes and finds the per-task checkpoints of one run directory.

    `keep` is how many of the newest checkpoints stay on disk (resuming needs only the newest).
    """

    def __init__(self, run_dir: Path | str, task_names: Sequence[str], settings: dict, keep: int = 1) -> None:
        self.directory = Path(run_dir) / "checkpoints"
        self.task_names = list(task_names)
        self.digest = settings_digest(settings)
        self.settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
        self.keep = max(1, keep)

    def path(self, task_index: int) -> Path:
        return self.directory / f"after_task_{task_index:03d}.pt"

    def existing(self) -> list[tuple[int, Path]]:
        """(task index, path) of every checkpoint on disk, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.search(p.name))]
        return sorted(found)

    def save(self, strategy: Strategy, task_index: int) -> Path:
        """Checkpoint `strategy` right after it was fitted on task `task_index`."""
        payload = {"format": FORMAT, "settings_digest": self.digest, "task_index": task_index,
                   "task_names": self.task_names, "settings": json.dumps(self.settings, sort_keys=True),
                   "strategy": strategy.state_dict()}
        path = self.path(task_index)
        atomic_torch_save(payload, path, f"the checkpoint after task {self.task_names[task_index]}")
        # checkpoints of later tasks are left over from another run in this folder: this run has
        # replaced that future, and keeping them would make the cleanup below delete the new one
        older = [p for i, p in self.existing() if i <= task_index]
        stale = [p for i, p in self.existing() if i > task_index]
        for old in older[:-self.keep] + stale:
            old.unlink(missing_ok=True)
        log.debug("checkpoint %s written", path)
        return path

    def load(self, path: Path) -> dict:
        """Read a checkpoint with ``weights_only=True``; an unreadable one raises :class:`CheckpointError`."""
        return safe_torch_load(path, "checkpoint",
                               f"delete it (or the folder {self.directory}) to fit the tasks it covered again")

    def resume(self, strategy: Strategy, complete_rows: set[int]) -> int:
        """Load the newest usable checkpoint into `strategy`; return its task index, or -1 if none.

        Usable means: same settings, same tasks, and every row before it complete (so nothing
        earlier has to be evaluated with a state we no longer have).
        """
        for index, path in reversed(self.existing()):
            if any(r not in complete_rows for r in range(index)):
                log.warning("checkpoint %s skipped: rows before task %d are incomplete", path.name, index)
                continue
            payload = self.load(path)
            differs = self._differences(payload)
            if differs:
                log.warning("checkpoint %s was written with other settings (%s); ignoring it: the tasks it "
                            "covers are fitted again", path, differs)
                continue
            strategy.load_state_dict(payload["strategy"])
            log.info("resumed from %s: tasks 0..%d are not fitted again", path, index)
            return index
        return -1

    def _differences(self, payload: object) -> str:
        """What differs between `payload`'s settings and this run's ('' when it is usable)."""
        if not isinstance(payload, dict) or payload.get("format") != FORMAT or "strategy" not in payload:
            return "not a cl_iad checkpoint of this format"
        if payload.get("task_names") != self.task_names:
            return f"tasks {payload.get('task_names')} instead of {self.task_names}"
        if payload.get("settings_digest") == self.digest:
            return ""
        digests = f"settings digest {payload.get('settings_digest')} instead of {self.digest}"
        try:
            theirs = json.loads(payload.get("settings", ""))
        except (TypeError, ValueError):
            return digests
        if not isinstance(theirs, dict):
            return digests
        keys = sorted(k for k in set(theirs) | set(self.settings) if theirs.get(k) != self.settings.get(k))
        return ", ".join(f"{k}: {theirs.get(k)!r} instead of {self.settings.get(k)!r}" for k in keys[:6]) or digests
