"""FP16 conversion: float32 weights and activations become float16, the model's interface stays float32.

For GPU execution providers, where half-precision kernels run at twice the float32 rate or better.
Graph inputs get a Cast to float16 after them and graph outputs a Cast back to float32 before them, so
callers feed and read float32 exactly as before. Inputs that ONNX requires to stay float32 whatever the
data type (Resize scales, for example) are kept, and so are ops listed in ``keep_ops``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.errors import PassError
from onnxq.model import infer_shapes_weightless, weightless
from onnxq.quantize.pipeline import PassResult

_F32, _F16 = TensorProto.FLOAT, TensorProto.FLOAT16
# (op, input index) whose type is fixed to float32 by the ONNX spec, not tied to the op's data type
_FLOAT32_INPUTS = {("Resize", 2), ("Upsample", 1)}
# ops whose float inputs and outputs stay float32 (their type constraints or numerics require it)
DEFAULT_KEEP_OPS = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Range")
_F16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class FP16Config:
    keep_ops: tuple[str, ...] = DEFAULT_KEEP_OPS
    keep_nodes: tuple[str, ...] = ()
    keep_io_types: bool = True  # Cast at the interface so callers keep feeding float32

def convert_to_fp16(model: onnx.ModelProto, config: FP16Config | None = None) -> PassResult:
    """A float16 copy of ``model`` (which should be prepared: weights as initializers, no Constant nodes)."""
    config = config or FP16Config()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node):
        raise PassError(
            "fp16 conversion takes a float model; this one is quantized (QDQ)",
            hint="convert the float model, not the quantized one",
        )
    types = _elem_types(model)
    kept = {n.name for n in g.node if n.op_type in config.keep_ops or n.name in config.keep_nodes}
    f32_only = _float32_only_tensors(g, kept)
    inits = {t.name: t for t in g.initializer}
    converted, clipped = 0, 0
    for name, tensor in inits.items():
        if tensor.data_type == _F32 and name not in f32_only:
            arr = numpy_helper.to_array(tensor)
            clipped += int((np.abs(arr) > _F16_MAX).sum())
            new = numpy_helper.from_array(np.clip(arr, -_F16_MAX, _F16_MAX).astype(np.float16), name)
            tensor.CopyFrom(new)
            converted += 1
    for node in g.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == _F32 and node.name not in kept:
                attr.i = _F16
            elif (
                node.op_type in ("ConstantOfShape", "Constant")
                and attr.type == onnx.AttributeProto.TENSOR
                and attr.t.data_type == _F32
                and node.name not in kept
            ):
                attr.t.CopyFrom(
                    numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name)
                )
    casts_in = _cast_graph_inputs(g, f32_only) if config.keep_io_types else 0
    casts_out = _cast_graph_outputs(g, kept) if config.keep_io_types else 0
    casts_kept = _cast_around_kept_nodes(g, kept, types)
    if not config.keep_io_types:
        for vi in list(g.input) + list(g.output):
            if vi.type.tensor_type.elem_type == _F32:
                vi.type.tensor_type.elem_type = _F16
    del g.value_info[:]
    try:
        out = infer_shapes_weightless(out, strict_mode=True)
    except Exception as exc:
        raise PassError(
            f"the float16 model fails type inference: {str(exc).splitlines()[0]}",
            hint="keep the offending op in float32 with keep_ops",
        ) from exc
    details = {
        "initializers_converted": converted,
        "values_clipped_to_fp16_range": clipped,
        "input_casts": casts_in,
        "output_casts": casts_out,
        "kept_nodes": len(kept),
        "kept_casts": casts_kept,
    }
    return PassResult(model=out, modified=converted > 0 or casts_in > 0, details=details)


def _float32_only_tensors(g: onnx.GraphProto, kept: set[str]) -> set[str]:
    names = set()
    for node in g.node:
        for idx, name in enumerate(node.input):
            if (node.op_type, idx) in _FLOAT32_INPUTS or node.name in kept:
                names.add(name)
    return names


def _cast_graph_inputs(g: onnx.GraphProto, f32_only: set[str]) -> int:
    casts = []
    for vi in g.input:
        if vi.type.tensor_type.elem_type != _F32 or vi.name in f32_only:
            continue
        half = f"{vi.name}_fp16"
        for node in g.node:
            for k, name in enumerate(node.input):
                if name == vi.name:
                    node.input[k] = half
        casts.append(helper.make_node("Cast", [vi.name], [half], name=f"{vi.name}_to_fp16", to=_F16))
    for i, c in enumerate(casts):
        g.node.insert(i, c)
    return len(casts)


def _cast_graph_outputs(g: onnx.GraphProto, kept: set[str]) -> int:
    producers = {o: n for n in g.node for o in n.output}
    n_casts = 0
    for vi in g.output:
        producer = producers.get(vi.name)
        if vi.type.tensor_type.elem_type != _F32 or producer is None or producer.name in kept:
            continue
        half = f"{vi.name}_fp16"
        producer.output[list(producer.output).index(vi.name)] = half
        for node in g.node:
            for k, name in enumerate(node.input):
                if name == vi.name:
                    node.input[k] = half
        g.node.append(helper.make_node("Cast", [half], [vi.name], name=f"{vi.name}_to_fp32", to=_F32))
        n_casts += 1
    return n_casts


def _cast_around_kept_nodes(g: onnx.GraphProto, kept: set[str], types: dict[str, int]) -> int:
    """Kept (float32) nodes read float16 producers through a Cast up; their float32 outputs that
    float16 nodes read are cast down."""
    if not kept:
        return 0
    inits = {t.name for t in g.initializer}
    graph_inputs = {i.name for i in g.input}
    graph_outputs = {o.name for o in g.output}
    half_outputs = {o for n in g.node if n.name not in kept for o in n.output if types.get(o) == _F32}
    new_nodes, n_casts = [], 0
    for node in g.node:
        if node.name not in kept:
            new_nodes.append(node)
            continue
        for k, name in enumerate(node.input):
            if name in half_outputs and name not in inits and name not in graph_inputs:
                up = f"{name}_to_fp32_for_{node.name}"
                new_nodes.append(helper.make_node("Cast", [name], [up], name=up, to=_F32))
                node.input[k] = up
                n_casts += 1
        new_nodes.append(node)
        for k, name in enumerate(node.output):
            if types.get(name) == _F32 and name not in graph_outputs:
                wide = f"{name}_fp32"
                node.output[k] = wide
                new_nodes.append(helper.make_node("Cast", [wide], [name], name=f"{name}_to_fp16", to=_F16))
                n_casts += 1
    del g.node[:]
    g.node.extend(new_nodes)
    return n_casts


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(weightless(model))
    except Exception as exc:
        raise PassError(
            f"fp16 conversion needs element types, and shape inference failed: {exc}",
            hint="run the prepare pass first",
        ) from exc
    g = inferred.graph
    return {
        vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)
    }
