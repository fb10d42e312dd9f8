"""Errors a user can cause and fix, as opposed to bugs.

The command line prints a :class:`UserError` as one ``error: ...`` line and exits with status 2;
any other exception is reported as an internal error (traceback with ``-v``). Raise a
:class:`UserError` (or a subclass) whenever the cause is an input, a file or a setting the user
controls, and name the cause and the fix in its message.

Faults of long runs live here too: :class:`RunLocked` (another process holds the run directory),
:class:`WriteError` (a full, read-only or forbidden disk, from :func:`disk_errors`) and
:class:`Terminated` (SIGTERM, raised by the handlers of :func:`signals_as_exceptions`, deferred
across the atomic blocks of :func:`signals_deferred`). docs/faults.md lists what a user sees.

This module imports nothing heavy, so any module can raise these errors.
"""

from __future__ import annotations

import errno
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """A failure caused by the user's input, files or environment; the message names the fix."""


class CheckpointError(UserError):
    """A checkpoint or saved-model file cannot be read safely."""

    def __init__(self, path: Path | str, problem: str, fix: str) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {problem}; {fix}")


class WandbLoginError(UserError):
    """``--wandb online`` was asked for, but no W&B API key can be found."""


# -- the run directory is held by another process -----------------------------------------------------------
class RunLocked(UserError):
    """Another process holds the run directory's lock (see :class:`cl_iad.results.RunLock`)."""

    def __init__(self, run_dir: Path | str, holder: str) -> None:
        self.run_dir = Path(run_dir)
        self.holder = holder
        super().__init__(f"{run_dir} is in use by another cl-iad run ({holder}); wait for it to finish, "
                         "or pass --wait to start as soon as it does")


# -- a full, read-only or forbidden disk ---------------------------------------------------------------------
# errno values a user fixes by freeing space or choosing another folder (EDQUOT is not defined on Windows)
DISK_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EACCES,
                                    errno.EPERM, errno.EFBIG) if e is not None)
_REASONS = {errno.ENOSPC: "no space left on the device", getattr(errno, "EDQUOT", -1): "disk quota exceeded",
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied", errno.EFBIG: "the file is too large for the file system"}


class WriteError(UserError):
    """A result, checkpoint or cache file cannot be written: the disk is full, read-only or forbidden."""

    def __init__(self, path: Path | str, what: str, cause: OSError) -> None:
        self.path, self.what, self.cause = Path(path), what, cause
        reason = _REASONS.get(cause.errno, cause.strerror or type(cause).__name__)
        what = f" ({what})" if what else ""
        fix = ("free some space on that disk" if cause.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1),
                                                                  errno.EFBIG) else "make that folder writable")
        super().__init__(f"cannot write {path}{what}: {reason}; {fix}, then run the same command again: it "
                         "resumes where it stopped and keeps every cell already in cells.csv")


def disk_error(exc: BaseException) -> OSError | None:
    """The OSError of a full, read-only or forbidden disk behind `exc` (its cause or context), or None.

    ``torch.save`` reports a failed write as a RuntimeError ("unexpected pos ...") whose context is the
    OSError, hence the walk along the chain.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


@contextmanager
def disk_errors(what: str, path: Path | str | None = None, file: Path | str | None = None) -> Iterator[None]:
    """Turn a full, read-only or forbidden disk met in the block into a :class:`WriteError` naming the path
    and `what` was being written; other errors pass unchanged.

    The path is `file` (an atomic write's target, not its temporary file), else the failing file's
    name, else `path`. Nested blocks: the innermost names the file; the innermost non-empty `what`
    names the content.
    """
    try:
        yield
    except WriteError as exc:
        if exc.what or not what:
            raise
        raise WriteError(exc.path, what, exc.cause) from exc.cause
    except Exception as exc:
        cause = disk_error(exc)
        if cause is None:
            raise
        raise WriteError(file or cause.filename or path or "?", what, cause) from exc


# -- preemption: SIGTERM and Ctrl-C --------------------------------------------------------------------------
class Terminated(BaseException):
    """The process received SIGTERM (a scheduler preempting it); like KeyboardInterrupt, not an Exception,
    so no ``except Exception`` swallows it. `run_dir` is set by the loop when it knows it."""

    exit_status = 143  # 128 + SIGTERM, what a shell reports for a process killed by SIGTERM

    def __init__(self, signum: int = 15) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum
        self.run_dir: Path | None = None


_deferred_depth = 0
_pending: list[int] = []


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _on_signal(signum: int, frame: object) -> None:
    if _deferred_depth and signum not in _pending:
        _pending.append(signum)  # raised when the atomic block ends
        return
    _raise_for(signum)  # outside an atomic block, or the same signal twice: stop now


@contextmanager
def signals_deferred() -> Iterator[None]:
    """An atomic block: SIGTERM or Ctrl-C arriving inside it is raised when it ends, so a cell (its extras
    and its cells.csv rows) or a checkpoint is written whole or not at all. The same signal twice stops at once."""
    global _deferred_depth
    _deferred_depth += 1
    try:
        yield
    finally:
        _deferred_depth -= 1
        if not _deferred_depth and _pending:
            signum = _pending[0]
            _pending.clear()
            _raise_for(signum)


@contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` and Ctrl-C KeyboardInterrupt, both deferred by
    :func:`signals_deferred`. Only handlers left at Python's defaults are replaced (and restored after),
    and only in the main thread: a host application's own handlers are kept."""
    import threading

    wanted = [s for s in (getattr(signal, "SIGTERM", None), signal.SIGINT) if s is not None]
    installed = {}
    if threading.current_thread() is threading.main_thread():
        for signum in wanted:
            current = signal.getsignal(signum)
            if current in (signal.SIG_DFL, signal.default_int_handler):
                installed[signum] = current
                signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        for signum, previous in installed.items():
            signal.signal(signum, previous)
