"""The package's import graph has no cycle, deferred imports included, and imports no private
name of another package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cl_iad"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) of every import in a file, at any depth (deferred ones too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out.append((base, [a.name for a in node.names], node.lineno))
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the cl_iad modules it imports (``from . import x`` counts as importing ``x``)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for target, names, _ in _imports(path):
            if not target.startswith("cl_iad"):
                continue
            for name in names:
                if f"{target}.{name}" in modules:
                    graph[mod].add(f"{target}.{name}")
                    break
            else:
                if target in modules:
                    graph[mod].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_private_name_of_another_package_is_imported():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        for target, names, line in _imports(path):
            if target.startswith("cl_iad"):
                private = [n for n in names if n.startswith("_") and n != "__version__"]
                home = ".".join(_module_name(path).split(".")[:2])  # e.g. cl_iad.metrics
                if private and not target.startswith(home):
                    bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {private} from {target}")
            elif any(part.startswith("_") and part != "__future__" for part in target.split(".")) or any(
                    n.startswith("_") for n in names):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} {names}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("lower, higher", [
    ("cl_iad.scenarios", "cl_iad.models"), ("cl_iad.scenarios", "cl_iad.strategies"),
    ("cl_iad.metrics", "cl_iad.models"), ("cl_iad.metrics", "cl_iad.strategies"),
    ("cl_iad.models", "cl_iad.strategies"), ("cl_iad.models", "cl_iad.runner"),
    ("cl_iad.strategies", "cl_iad.runner"),
])
def test_lower_floors_import_nothing_from_higher_ones(lower, higher):
    graph = import_graph()
    offending = sorted(f"{m} -> {t}" for m, targets in graph.items() if m.startswith(lower)
                       for t in targets if t.startswith(higher))
    assert not offending, offending
