"""Every text file cl_iad reads or writes names its encoding: UTF-8 on every platform.

Without it Python uses the locale's encoding (cp1252 on many Windows machines), so a results folder
written on Linux with a "±" or a non-ASCII category name would not read back on Windows, and the
other way round.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cl_iad"
BINARY_MODULES = ("os", "gzip", "tarfile", "zipfile", "Image", "av", "io")


def _text_calls_without_encoding(tree: ast.AST):
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
        if name not in ("read_text", "write_text", "open") or any(k.arg == "encoding" for k in node.keywords):
            continue
        if any(k.arg is None for k in node.keywords):  # **kwargs: checked where they are built
            continue
        if name == "open":
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in BINARY_MODULES:
                continue
            idx = 0 if isinstance(f, ast.Attribute) else 1
            mode = next((k.value for k in node.keywords if k.arg == "mode"),
                        node.args[idx] if len(node.args) > idx else ast.Constant("r"))
            if not isinstance(mode, ast.Constant) or "b" in str(mode.value):
                continue
        yield node.lineno


def test_every_text_read_and_write_names_utf8():
    missing = [f"{path.relative_to(PACKAGE.parent)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
               for line in _text_calls_without_encoding(ast.parse(path.read_text(encoding="utf-8")))]
    assert not missing, f"text I/O without encoding='utf-8' at {missing}"


def test_the_check_finds_a_call_without_encoding():
    src = "p.read_text()\np.write_text(s, encoding='utf-8')\nopen(f, 'w')\nopen(f, 'rb')\np.open('a')\n"
    assert list(_text_calls_without_encoding(ast.parse(src))) == [1, 3, 5]
