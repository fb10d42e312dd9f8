"""Finds the regime plugins: every :class:`RegimePlugin` subclass with a name, in any module of
this package. A new regime is one new file; nothing here changes."""

from __future__ import annotations

import pkgutil
from functools import cache
from importlib import import_module
from typing import Any

from .plugin import RegimePlugin

# Modules of this package that hold no regime.
_NOT_REGIMES = frozenset({"base", "plugin", "registry", "buffers", "router"})
SEPARATOR = "+"


@cache
def regime_plugins() -> dict[str, type[RegimePlugin]]:
    """Regime name -> plugin class, for every regime in the package."""
    package = import_module(__package__)
    found: dict[str, type[RegimePlugin]] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name in _NOT_REGIMES or info.name.startswith("_"):
            continue
        module = import_module(f"{__package__}.{info.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, RegimePlugin) and obj.__module__ == module.__name__
                    and obj.name):
                found[obj.name] = obj
    return found


def regime_names() -> tuple[str, ...]:
    """Every regime name, the generic ones first (the order of ``cl-iad models``)."""
    first = ("naive", "replay", "cumulative", "joint", "per_task")
    names = regime_plugins()
    return tuple([n for n in first if n in names] + sorted(set(names) - set(first)))


def regimes_for(model: Any) -> tuple[str, ...]:
    """The single regimes a model (class, instance or ModelInfo) can run under."""
    plugins = regime_plugins()
    return tuple(n for n in regime_names() if plugins[n].supports(model))


def parse_regime(text: str, params: dict[str, Any]) -> list[RegimePlugin]:
    """Plugins for a regime string such as ``replay+ewc``, each given the `params` it takes.

    Refuses, with the reason, a combination that does not make sense. `params` may hold
    parameters of regimes not in `text` (a sweep's shared settings); those are ignored, but a
    name that no regime takes is an error.
    """
    plugins = regime_plugins()
    names = [n.strip() for n in str(text).split(SEPARATOR) if n.strip()]
    unknown = [n for n in names if n not in plugins]
    if not names or unknown:
        raise ValueError(f"unknown regime {text!r}; choose from {', '.join(regime_names())}, or combine "
                         f"them with '{SEPARATOR}' (e.g. replay+ewc)")
    known = {k for cls in plugins.values() for k in cls.params}
    stray = sorted(set(params) - known)
    if stray:
        raise ValueError(f"no regime takes the parameter(s) {stray}; regime parameters are "
                         f"{', '.join(sorted(known))}")
    _check_combination([plugins[n] for n in names], text)
    return [plugins[n](**{k: v for k, v in params.items() if k in plugins[n].params}) for n in names]


def _check_combination(classes: list[type[RegimePlugin]], text: str) -> None:
    if len(classes) == 1:
        return
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"regime {text!r} names a regime twice")
    if "naive" in names:
        raise ValueError(f"regime {text!r}: naive is plain fine-tuning, what every regime starts from; "
                         f"drop it ({SEPARATOR.join(n for n in names if n != 'naive')})")
    for c in classes:
        if c.exclusive:
            raise ValueError(f"regime {c.name} cannot be combined with another ({text!r}): "
                             f"{c.summary or 'it defines the whole training regime'}")
    choosers = [c.name for c in classes if c.chooses_data]
    if len(choosers) > 1:
        raise ValueError(f"regime {text!r}: {' and '.join(choosers)} both decide what is trained on; keep one")
