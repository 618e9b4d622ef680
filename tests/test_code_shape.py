"""The shape the architecture promises: small functions, a short quantize driver, one place that creates sessions."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

MAX_FUNCTION_LINES = 60  # ../shared/STYLE.md: a function does one thing, usually under about 40 lines


def _functions(root: Path):
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(REPO), node.name, node.end_lineno - node.lineno + 1


def test_no_function_in_the_package_is_over_60_lines():
    long = [f"{path}:{name} ({n} lines)" for root in ("onnxq", "passes") for path, name, n in _functions(REPO / root)
            if n > MAX_FUNCTION_LINES]  # fmt: skip
    assert not long, long


def test_the_quantize_driver_is_short():
    sizes = {name: n for path, name, n in _functions(REPO / "onnxq" / "quantize") if path.name == "driver.py"}
    assert sizes["quantize"] <= 40, sizes["quantize"]


def test_sessions_are_created_in_one_module():
    calls = [
        str(path.relative_to(REPO))
        for root in ("onnxq", "passes")
        for path in (REPO / root).rglob("*.py")
        if "InferenceSession(" in path.read_text()
    ]
    assert calls == ["onnxq/runtime/session.py"], calls
