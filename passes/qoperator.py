"""QOperator conversion: DQ -> op -> Q groups of a QDQ model rewritten as the integer ops ONNX Runtime runs.

``onnxq quantize --format qoperator`` runs it after QDQ insertion; ``onnxq convert`` runs it on a QDQ model
made by any tool (onnxq, ORT's ``quantize_static``, ModelOpt). Every float op whose inputs are dequantized
(and, for most ops, whose only reader is a QuantizeLinear) becomes one QOperator node that reads and writes
the integer tensors directly (:mod:`onnxq.passes._qoperator_ops` has one builder per op); the
DequantizeLinear nodes nothing reads any more are dropped. A group that has no QOperator form (16-bit
types, per-channel activations, an op with no integer kernel) stays QDQ, and the pass reports each such
node with its reason. The QuantizeLinear at the model's inputs and the DequantizeLinear at its outputs stay:
the converted model has the QDQ model's float interface.

ORT's CPU EP makes the same rewrites itself when it loads a QDQ model (its QDQ transformers, at the default
optimisation level), so the converted model computes the same integers: :func:`compare_formats` checks it.
ORT's CUDA and TensorRT EPs do not run these ops, so only the ``ort`` target takes this format.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxq.errors import ConfigError, ModelValidationError, PassError
from onnxq.model import default_opset
from onnxq.passes._graph import prune_stale_value_info, prune_unused_initializers, readers
from onnxq.passes._qoperator_match import GraphIndex
from onnxq.passes._qoperator_ops import BUILDERS, MS, Writer
from onnxq.quantize.pipeline import PassResult, PassSpec, Phase, QuantizeContext

FORMATS = ("qdq", "qoperator")
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class QOperatorConfig:
    """``keep_op_types``: float ops to leave in QDQ form although they have a QOperator form."""

    keep_op_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.keep_op_types) - set(BUILDERS))
        if unknown:
            raise ConfigError(
                f"qoperator: keep_op_types {unknown} have no QOperator form here",
                hint=f"the ops it converts: {', '.join(sorted(BUILDERS))}",
            )


def convert_to_qoperator(model: onnx.ModelProto, cfg: QOperatorConfig | None = None) -> PassResult:
    """The QOperator form of the QDQ ``model`` (a new model); details count what was converted and kept."""
    cfg = cfg or QOperatorConfig()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    index = GraphIndex(graph)
    writer = Writer(graph, default_opset(out) or 1)
    nodes, converted, kept, replaced_q = [], Counter(), {}, set()
    for position, node in enumerate(graph.node):
        new, reason, q = _convert_node(node, index, writer, cfg)
        nodes.append(new if new is not None else node)
        if reason:
            kept[node.name or f"{node.op_type}#{position}"] = reason
        if new is not None:
            converted[f"{node.op_type} -> {new.op_type}"] += 1
            if q is not None:
                replaced_q.add(id(q))
    final = [n for n in nodes if id(n) not in replaced_q]
    del graph.node[:]
    graph.node.extend(final)
    dropped = _drop_unread_dequantize(graph)
    _finish(out, writer)
    details = {"converted": dict(sorted(converted.items())), "nodes_converted": sum(converted.values()),
               "kept_qdq": kept, "dequantize_dropped": dropped}  # fmt: skip
    return PassResult(out, bool(converted), details)


def _convert_node(
    node: onnx.NodeProto, index: GraphIndex, writer: Writer, cfg: QOperatorConfig
) -> tuple[onnx.NodeProto | None, str | None, onnx.NodeProto | None]:
    """(the QOperator node, None, the QuantizeLinear it replaces), or (None, why it stays QDQ, None), or
    (None, None, None) for an op no Q/DQ touches."""
    if node.op_type in _QDQ_OPS or node.domain not in ("", "ai.onnx"):
        return None, None, None
    group = index.group(node)
    if not any(group.inputs):
        return None, None, None  # a float op (a Q on its output only starts a quantized region)
    build = BUILDERS.get(node.op_type)
    reason = None
    if build is None:
        reason = f"{node.op_type} has no QOperator form in ONNX Runtime"
    elif node.op_type in cfg.keep_op_types:
        reason = "kept by keep_op_types"
    elif group.output is None and node.op_type not in ("MatMul", "Gemm"):
        reason = "its output is not quantized (it is read in float)"
    result = reason or build(group, writer, index.consts)
    if isinstance(result, str):
        return None, result, None
    return result, None, group.output.node if group.output is not None else None


def _drop_unread_dequantize(graph: onnx.GraphProto) -> int:
    """Remove the DequantizeLinear nodes whose output nothing reads any more (graph outputs count)."""
    used = readers(graph)
    outputs = {o.name for o in graph.output}
    keep = [n for n in graph.node if not (n.op_type == "DequantizeLinear" and n.output[0] not in used
                                           and n.output[0] not in outputs)]  # fmt: skip
    dropped = len(graph.node) - len(keep)
    del graph.node[:]
    graph.node.extend(keep)
    return dropped


def _finish(model: onnx.ModelProto, writer: Writer) -> None:
    prune_unused_initializers(model.graph)
    prune_stale_value_info(model.graph)
    if writer.used_ms and not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS, 1))


def compare_formats(qdq: onnx.ModelProto, converted: onnx.ModelProto, feeds: Iterable[dict[str, Any]]) -> dict:
    """Run both models in ORT (default optimisation, as users run them) on ``feeds``; per output: elements
    compared, elements that differ, the largest absolute difference and the SQNR of the converted against
    the QDQ outputs over their finite values (None when they are identical), and ``not_finite``: how many
    NaN/Inf values each model gave."""
    from onnxq.runtime.session import internal_session

    a, b = internal_session(qdq), internal_session(converted)
    names = [o.name for o in a.get_outputs()]
    stats = {n: {"elements": 0, "different": 0, "max_abs_diff": 0.0, "signal": 0.0, "noise": 0.0,
                 "not_finite": [0, 0]} for n in names}  # fmt: skip
    for feed in feeds:
        for name, x, y in zip(names, _outputs(a, feed, "QDQ"), _outputs(b, feed, "converted"), strict=True):
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            s = stats[name]
            s["elements"] += x.size
            s["different"] += int(np.count_nonzero((x != y) & ~(np.isnan(x) & np.isnan(y))))
            s["not_finite"][0] += int(np.count_nonzero(~np.isfinite(x)))
            s["not_finite"][1] += int(np.count_nonzero(~np.isfinite(y)))
            x, y = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
            s["max_abs_diff"] = max(s["max_abs_diff"], float(np.max(np.abs(x - y), initial=0.0)))
            s["signal"] += float(np.sum(x * x))
            s["noise"] += float(np.sum((x - y) ** 2))
    for s in stats.values():
        noise, signal = s.pop("noise"), s.pop("signal")
        s["sqnr_db"] = None if noise == 0 else (float(10 * np.log10(signal / noise)) if signal > 0 else float("-inf"))
    return stats


def _outputs(session: Any, feed: dict[str, Any], which: str) -> list[Any]:
    try:
        return session.run(None, feed)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        if which == "QDQ":
            raise ModelValidationError(
                f"ONNX Runtime fails running the QDQ model: {first}",
                hint="the model itself does not run on these inputs: check its Q/DQ nodes with onnxq inspect",
            ) from exc
        raise PassError(
            f"ONNX Runtime fails running the converted model, where the QDQ model runs: {first}",
            hint="this is an onnxq bug: report it; keep the QDQ model, or use --keep-op-type OP",
        ) from exc


def _run(model: onnx.ModelProto, ctx: QuantizeContext, cfg: QOperatorConfig) -> PassResult:
    result = convert_to_qoperator(model, cfg)
    if ctx.verify and ctx.calib is not None:
        stats = compare_formats(model, result.model, [next(ctx.calib.batches(ctx.batch_size))])
        result.details["verify"] = stats
        worst = min((s["sqnr_db"] for s in stats.values() if s["sqnr_db"] is not None), default=None)
        if worst is not None and worst < 40.0:
            raise PassError(
                f"qoperator: the converted model departs from the QDQ model (SQNR {worst:.1f} dB < 40 dB)",
                hint="this is an onnxq bug: report it; keep the QDQ format meanwhile (--format qdq)",
            )
    return result


SPEC = PassSpec(
    name="qoperator",
    phase=Phase.FORMAT,
    config=QOperatorConfig,
    run=_run,
    summary="DQ -> op -> Q groups as ORT's QOperator ops (QLinearConv, QLinearMatMul, QGemm, QLinearAdd...)",
    after=("qdq",),
)
