"""Optional dependencies: import them where they are needed, or say in one line which extra installs them.

The extras are declared in ``pyproject.toml`` (``[project.optional-dependencies]``); keep the names
here in step with it. This module imports nothing heavy.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import UserError


class MissingExtraError(UserError):
    """An optional dependency is not installed; the message names the ``pip install`` that adds it."""


def require(module: str, extra: str, purpose: str = "") -> ModuleType:
    """Import `module`, or raise :class:`MissingExtraError` naming ``pip install 'cl_iad[extra]'``.

    `purpose` says what needed it (e.g. ``"--executor ray"``); the one-line message starts with it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        missing = getattr(exc, "name", None) or top
        what = purpose or "this feature"
        raise MissingExtraError(
            f"{what} needs the optional package {missing!r}, which is not installed; "
            f"fix: pip install 'cl_iad[{extra}]'") from exc
