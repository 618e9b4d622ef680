"""Weight-only quantization of the weights inside If/Loop/Scan bodies.

Calibration cannot see a subgraph's activations: onnxruntime exposes only main-graph tensors as outputs. The
weights inside a body are constants, though, and can be stored as integers with a DequantizeLinear inside the
body, as in the main graph (same types, per-channel axes and rounding as :func:`onnxq.passes.qdq.weight_qparams`).
The model gets smaller; the body's ops still run in float. The details say, per subgraph, how many weights were
quantized, or why none was.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.passes._graph import all_tensor_names, unique_name
from onnxq.passes.placement import rule_for
from onnxq.quantize.qtypes import make_initializer, qtype, quantize

_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def quantize_subgraph_weights(model: onnx.ModelProto, cfg: Any) -> dict[str, str]:
    """Quantize, in place, the weights of every subgraph of ``model`` (a copy the caller owns); return
    {subgraph: what was done or why not}. ``cfg`` is the QDQ pass's config."""
    taken = all_tensor_names(model.graph)
    report: dict[str, str] = {}
    for where, sub in _subgraphs(model.graph, "main"):
        done = _quantize_body(sub, cfg, taken)
        report[where] = (
            f"{done} weight(s) quantized weight-only ({cfg.weight_type}); its activations stay float, since "
            "onnxruntime cannot expose a subgraph's tensors for calibration"
            if done
            else "no weight of a quantizable op is a constant of this subgraph: left float"
        )
    return report


def _subgraphs(graph: onnx.GraphProto, where: str):
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                subs = [(f"{where}/{node.name or node.op_type}.{attr.name}", attr.g)]
            elif attr.type == onnx.AttributeProto.GRAPHS:
                subs = [(f"{where}/{node.name or node.op_type}.{attr.name}[{i}]", g) for i, g in enumerate(attr.graphs)]
            else:
                continue
            for label, sub in subs:
                yield label, sub
                yield from _subgraphs(sub, label)


def _constants(sub: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """The subgraph's own float constants: initializers and Constant nodes holding a tensor."""
    found = {t.name: t for t in sub.initializer if t.data_type in _FLOAT_TYPES}
    for node in sub.node:
        if (
            node.op_type == "Constant"
            and node.output
            and len(node.attribute) == 1
            and node.attribute[0].name == "value"
        ):
            t = node.attribute[0].t
            if t.data_type in _FLOAT_TYPES:
                found[node.output[0]] = t
    return found


def _quantize_body(sub: onnx.GraphProto, cfg: Any, taken: set[str]) -> int:
    from onnxq.passes.qdq import weight_qparams

    consts = _constants(sub)
    done: dict[str, str] = {}
    head: list[onnx.NodeProto] = []
    for node in sub.node:
        rule = rule_for(node.op_type, cfg.target)
        idx = rule.weight_input if rule is not None else None
        if idx is None or len(node.input) <= idx or node.input[idx] not in consts:
            continue
        if cfg.left_out(node):
            continue
        name = node.input[idx]
        if name not in done:
            w = numpy_helper.to_array(consts[name]).astype(np.float32)
            if w.ndim < 2 or not np.isfinite(w).all():
                continue
            qp = weight_qparams(w, node, idx, cfg)
            done[name] = _write_dq(sub, head, name, quantize(w, qp), qp, cfg, taken)
        node.input[idx] = done[name]
    if head:
        nodes = head + list(sub.node)
        del sub.node[:]
        sub.node.extend(nodes)
        _drop_replaced(sub, set(done))
    return len(done)


def _write_dq(sub: onnx.GraphProto, head: list, name: str, q: np.ndarray, qp: Any, cfg: Any, taken: set[str]) -> str:
    wq = qtype(cfg.weight_type)
    base = unique_name(f"{name}_subgraph_q", taken)
    for suffix in ("_quantized", "_scale", "_zero_point", "_dq"):
        taken.add(base + suffix)
    sub.initializer.extend([
        make_initializer(f"{base}_quantized", q, wq),
        numpy_helper.from_array(np.asarray(qp.scale, np.float32), f"{base}_scale"),
        make_initializer(f"{base}_zero_point", np.asarray(qp.zero_point), wq),
    ])  # fmt: skip
    attrs = {} if qp.axis is None else {"axis": qp.axis}
    inputs = [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"]
    head.append(helper.make_node("DequantizeLinear", inputs, [f"{base}_dq"], name=f"{base}_DequantizeLinear", **attrs))
    return f"{base}_dq"


def _drop_replaced(sub: onnx.GraphProto, replaced: set[str]) -> None:
    """Remove the float constants that no node of the subgraph (or its own subgraphs) reads any more."""
    used = {i for n in sub.node for i in n.input} | {o.name for o in sub.output}
    for _, inner in _subgraphs(sub, ""):
        used |= {i for n in inner.node for i in n.input}
    keep_inits = [t for t in sub.initializer if t.name not in replaced or t.name in used]
    del sub.initializer[:]
    sub.initializer.extend(keep_inits)
    keep_nodes = [n for n in sub.node if not (n.op_type == "Constant" and n.output and n.output[0] in replaced
                                               and n.output[0] not in used)]  # fmt: skip
    del sub.node[:]
    sub.node.extend(keep_nodes)
