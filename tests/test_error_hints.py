"""Every user-facing error carries a hint: each OnnxqError raised in the package says how to fix what it reports."""

from __future__ import annotations

import ast

from conftest import REPO
from onnxq import errors


def _error_classes() -> set[str]:
    return {name for name, obj in vars(errors).items() if isinstance(obj, type) and issubclass(obj, errors.OnnxqError)}


def _constructions_without_hint(root):
    names = _error_classes() | {"NonFiniteOutputError"}  # evaluate.py's own subclass
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        for node in ast.walk(ast.parse(source, filename=str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name in names and not any(k.arg in ("hint", None) for k in node.keywords):
                yield f"{path.relative_to(REPO)}:{node.lineno} {name}"


def test_every_onnxq_error_is_raised_with_a_hint():
    missing = [hit for root in ("onnxq", "passes") for hit in _constructions_without_hint(REPO / root)]
    assert not missing, missing
