"""Errors a user can cause and fix, as opposed to bugs.

The command line prints a :class:`UserError` as one ``error: ...`` line and exits with status 2;
any other exception is reported as an internal error (traceback with ``-v``). Raise a
:class:`UserError` (or a subclass) whenever the cause is an input, a file or a setting the user
controls, and name the cause and the fix in its message.

This module imports nothing heavy, so any module can raise these errors.
"""

from __future__ import annotations

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
