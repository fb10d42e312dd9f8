"""Per-task checkpoints and seeding, so a killed run resumes exactly where it stopped.

The loop writes ``run_dir/checkpoints/after_task_XXX.pt`` right after fitting task i and
before evaluating row i. Row i is only started once row i-1 is complete, so on restart the
newest checkpoint k satisfies: rows < k are complete, row k may be partial. The runner loads
that state, evaluates what is missing of row k and continues with task k+1: no earlier task is
fitted again.

A checkpoint holds :meth:`Strategy.state_dict` (the model's ``get_state()``, replay buffer,
per-task states, seen samples, trained tasks) as nested dicts, lists, strings, numbers and
tensors, which ``torch.load(weights_only=True)`` reads without unpickling code. Any model
whose ``get_state``/``set_state`` speak dicts of tensors is covered, gradient-trained ones
included. Files are written to a temporary name, fsynced and renamed: a kill leaves either
the old or the new checkpoint, never half of one.

:func:`seeded` gives every task its own random state, derived from the run seed and the task
index, so training task k draws the same random numbers whether the process started at task 0
or resumed at task k.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .scenarios.base import Sample

if TYPE_CHECKING:
    from .strategies.base import Strategy

log = logging.getLogger(__name__)

FORMAT = 1
_NAME = re.compile(r"after_task_(\d{3,})\.pt$")


# -- samples as plain data ----------------------------------------------------------------
def encode_samples(samples: Sequence[Sample]) -> list[list]:
    """Samples as lists of strings and ints (no pickled classes in checkpoints)."""
    return [[str(s.image_path), int(s.label), s.category, s.defect, "" if s.mask_path is None else str(s.mask_path)]
            for s in samples]


def decode_samples(rows: Sequence[Sequence]) -> list[Sample]:
    """Inverse of :func:`encode_samples`."""
    return [Sample(Path(p), int(label), cat, defect, Path(mask) if mask else None) for p, label, cat, defect, mask in rows]


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


def atomic_torch_save(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file, fsync, then rename over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Checkpointer:
    """Writes and finds the per-task checkpoints of one run directory.

    `keep` is how many of the newest checkpoints stay on disk (resuming needs only the newest).
    """

    def __init__(self, run_dir: Path | str, task_names: Sequence[str], settings: dict, keep: int = 1) -> None:
        self.directory = Path(run_dir) / "checkpoints"
        self.task_names = list(task_names)
        self.digest = settings_digest(settings)
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
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT, "settings_digest": self.digest, "task_index": task_index,
                   "task_names": self.task_names, "strategy": strategy.state_dict()}
        path = self.path(task_index)
        atomic_torch_save(payload, path)
        for _, old in self.existing()[:-self.keep]:
            old.unlink(missing_ok=True)
        log.debug("checkpoint %s written", path)
        return path

    def load(self, path: Path) -> dict:
        """Read a checkpoint; tensors and plain data only unless the model stored other objects."""
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any unreadable file gets the same advice
            if "weights_only" not in str(exc):
                raise RuntimeError(f"checkpoint {path} cannot be read ({exc}); delete it (or the folder "
                                   f"{self.directory}) to re-fit the tasks it covered") from exc
            log.warning("checkpoint %s holds non-tensor objects; loading it with full unpickling", path)
            return torch.load(path, map_location="cpu", weights_only=False)

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
            if payload.get("settings_digest") != self.digest or payload.get("task_names") != self.task_names:
                log.warning("checkpoint %s is from other settings or tasks; ignoring it", path)
                continue
            strategy.load_state_dict(payload["strategy"])
            log.info("resumed from %s: tasks 0..%d are not fitted again", path, index)
            return index
        return -1
