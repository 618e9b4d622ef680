"""Lint rules as data: a :class:`Rule` is an id, a severity, a one-line statement, a default fix and a check.

A check reads a :class:`~onnxq.lint.graph.GraphView` and yields a :class:`Finding` per offending node (its
name and what is wrong there); it never raises on a strange graph, it reports or skips. This module holds
the rules every target shares (scales, Q/DQ pairs, per-tensor activations); ``tensorrt_rules`` and
``ort_rules`` hold each target's own.

Severities: an **error** is a model the target refuses or fails on, or whose quantization parameters
contradict each other (a kernel would compute something other than the graph says); a **warning** is a
model that runs correctly but less quantized than it looks: a node left in float, or Q/DQ work that buys
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from onnxq.lint.graph import DEQUANTIZE, GraphView, QDQNode

ERROR = "error"
WARNING = "warning"
SEVERITIES = (ERROR, WARNING)


@dataclass(frozen=True)
class Finding:
    """What a check yields: the offending node, what is wrong there, and a fix when it differs from the rule's."""

    node: str
    message: str
    fix: str | None = None


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str  # ERROR or WARNING
    statement: str  # one line: what the target needs
    fix: str  # what to do about a violation, unless the finding says more precisely
    check: Callable[[GraphView], Iterable[Finding]]


@dataclass(frozen=True)
class Violation:
    """One finding of one rule, where it was found (``graph`` is "main" or a subgraph's path)."""

    graph: str
    node: str
    rule: str
    severity: str
    message: str
    fix: str


def describe(values: np.ndarray | None) -> str:
    """A short text for a scale or zero point: ``0.0123``, or ``[0.01, 0.02, ...] (64 values)``."""
    if values is None:
        return "(not a constant)"
    flat = np.asarray(values).ravel()
    if flat.size == 1:
        return f"{flat[0]:.6g}"
    head = ", ".join(f"{v:.4g}" for v in flat[:3])
    return f"[{head}{', ...' if flat.size > 3 else ''}] ({flat.size} values)"


# --- rules every target shares --------------------------------------------------------------------------


def _check_scales(view: GraphView) -> Iterator[Finding]:
    for q in view.qdq_nodes:
        if q.scale is None:
            continue
        bad = ~np.isfinite(q.scale) | (q.scale <= 0)
        if bad.any():
            yield Finding(q.name, f"scale {describe(q.scale)}: {int(bad.sum())} of {q.scale.size} not finite and > 0")


def _check_constant_params(view: GraphView) -> Iterator[Finding]:
    for q in view.qdq_nodes:
        missing = [what for what, ok in (("scale", q.scale is not None), ("zero point", q.zero_point_is_constant))
                   if not ok]  # fmt: skip
        if missing:
            yield Finding(q.name, f"{' and '.join(missing)} computed at run time, not a constant")


def _check_pairs(view: GraphView) -> Iterator[Finding]:
    for q in view.qdq_nodes:
        if not q.is_quantize:
            continue
        for reader in view.consumers(q.node.output[0]):
            if reader.op_type != DEQUANTIZE:
                continue
            dq = view.qdq(reader)
            differs = _pair_difference(q, dq)
            if differs:
                yield Finding(dq.name, f"dequantizes {q.name}'s output with {differs}")


def _pair_difference(q: QDQNode, dq: QDQNode) -> str:
    if q.scale is None or dq.scale is None:
        return ""  # computed parameters: _check_constant_params reports them
    if q.scale.shape != dq.scale.shape or not np.array_equal(q.scale, dq.scale):
        return f"scale {describe(dq.scale)} where it was quantized with {describe(q.scale)}"
    qz = np.zeros(1) if q.zero_point is None else q.zero_point.astype(np.int64)
    dqz = np.zeros(1) if dq.zero_point is None else dq.zero_point.astype(np.int64)
    if not np.array_equal(np.broadcast_to(qz, q.scale.shape), np.broadcast_to(dqz, dq.scale.shape)):
        return f"zero point {describe(dqz)} where it was quantized with {describe(qz)}"
    if not q.per_tensor and q.axis != dq.axis:
        return f"axis {dq.axis} where it was quantized on axis {q.axis}"
    return ""


def _check_per_tensor_activations(view: GraphView) -> Iterator[Finding]:
    for q in view.tensor_qdqs():
        if q.reads_constant or q.scale is None or q.per_tensor:
            continue
        kind = f"block size {q.block_size}" if q.block_size else f"axis {q.axis}"
        yield Finding(q.name, f"activation quantized per channel ({kind}, {q.scale.size} scales)")


SHARED_RULES: tuple[Rule, ...] = (
    Rule(
        "qdq-scale",
        ERROR,
        "every Q/DQ scale is finite and > 0",
        "recalibrate the tensor: a zero or negative scale comes from an empty or broken range",
        _check_scales,
    ),
    Rule(
        "qdq-pair",
        ERROR,
        "a DequantizeLinear after a QuantizeLinear uses the same scale, zero point and axis",
        "give the DequantizeLinear the QuantizeLinear's scale and zero point",
        _check_pairs,
    ),
    Rule(
        "qdq-per-tensor-activation",
        ERROR,
        "activations are quantized per tensor (one scale); per-channel scales are for weights",
        "quantize the activation per tensor",
        _check_per_tensor_activations,
    ),
    Rule(
        "qdq-constant-params",
        WARNING,
        "Q/DQ scales and zero points are constants (initializers or Constant nodes)",
        "store the scale and zero point as initializers; a computed one rules out every static fusion",
        _check_constant_params,
    ),
)
