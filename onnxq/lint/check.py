"""Run a target's rule set over a model: :func:`lint_file` and :func:`lint_model` return a :class:`LintReport`.

The rule set of each target in ``onnxq/quantize/targets.py`` is a row of :data:`RULESETS`; ``cuda`` (ORT's
CUDA EP) shares TensorRT's: it takes the same int8, zero-point-0 Q/DQ, and its model runs on the GPU as
TensorRT's does (an int32 bias DequantizeLinear, which the CUDA EP has no kernel for, is flagged too).
Every graph is checked, If/Loop/Scan bodies included; the model is never modified.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx

from onnxq.errors import NotQuantizedError
from onnxq.lint.graph import iter_views
from onnxq.lint.ort_rules import ORT_RULES
from onnxq.lint.rules import ERROR, WARNING, Rule, Violation
from onnxq.lint.tensorrt_rules import QOPERATOR_OPS, TRT_RULES
from onnxq.model import load_model
from onnxq.quantize.targets import get_target

RULESETS: dict[str, tuple[Rule, ...]] = {"ort": ORT_RULES, "tensorrt": TRT_RULES, "cuda": TRT_RULES}


@dataclass(frozen=True)
class LintReport:
    """What ``onnxq lint`` found: every violation, and what was checked."""

    path: str
    target: str
    rules: tuple[Rule, ...]
    violations: tuple[Violation, ...]
    qdq_nodes: int
    graphs: int

    def count(self, severity: str) -> int:
        return sum(v.severity == severity for v in self.violations)

    @property
    def errors(self) -> int:
        return self.count(ERROR)

    @property
    def warnings(self) -> int:
        return self.count(WARNING)

    @property
    def passed(self) -> bool:
        """No error-severity violation (warnings do not fail the lint)."""
        return self.errors == 0

    def by_rule(self) -> dict[str, int]:
        """Rule id -> violations, in the rule set's order, only rules that found something."""
        found = Counter(v.rule for v in self.violations)
        return {r.id: found[r.id] for r in self.rules if found[r.id]}


def lint_file(path: str | os.PathLike, target: str) -> LintReport:
    """Load the model at ``path`` (OnnxqError if it is bad) and lint it against ``target``'s rules."""
    get_target(target)  # an unknown target is a ConfigError before the model is read
    return lint_model(load_model(path), target, path=str(Path(path)))


def lint_model(model: onnx.ModelProto, target: str, *, path: str = "") -> LintReport:
    """Check every graph of ``model`` against ``target``'s rule set. Raises NotQuantizedError when the model
    holds no QuantizeLinear/DequantizeLinear at all (there is nothing to check)."""
    rules = RULESETS[get_target(target).name]
    views = list(iter_views(model))
    qdq_nodes = sum(len(v.qdq_nodes) for v in views)
    if qdq_nodes == 0:
        raise _nothing_to_lint(views, target)
    violations = [
        Violation(view.where, f.node, rule.id, rule.severity, f.message, f.fix or rule.fix)
        for view in views
        for rule in rules
        for f in rule.check(view)
    ]
    return LintReport(path, target, rules, tuple(violations), qdq_nodes, len(views))


def _nothing_to_lint(views: list, target: str) -> NotQuantizedError:
    qoperator = sorted({n.op_type for v in views for n in v.nodes if n.op_type in QOPERATOR_OPS
                        or n.op_type.startswith("QLinear")})  # fmt: skip
    if qoperator:
        return NotQuantizedError(
            f"the model holds QOperator ops ({', '.join(qoperator)}) and no QuantizeLinear/DequantizeLinear: "
            "onnxq lint checks QDQ models",
            hint="lint the QDQ model the QOperator one was converted from",
        )
    return NotQuantizedError(
        "the model holds no QuantizeLinear/DequantizeLinear node: there is nothing to lint",
        hint=f"quantize it first: onnxq quantize MODEL -o OUT --calib DATA --target {target}",
    )
