"""Dynamic quantization: int8 weights, activations quantized at run time; no calibration data.

Each MatMul (and Gemm) whose second input is a constant 2-D float weight becomes the standard-op pattern
ONNX Runtime fuses into its integer kernels (``MatMulIntegerToFloat``)::

    x -> DynamicQuantizeLinear -> (x_q uint8, x_scale, x_zp)         (shared by every MatMul reading x)
    MatMulInteger(x_q, W_q int8, x_zp, W_zp) -> Cast(float) -> Mul(x_scale * W_scale) [-> Add(bias)]

Weights are symmetric int8 (zero point 0), or with ``weight_type="uint8"`` the same grid shifted by 128
(zero point 128; the default where this machine's kernels saturate uint8 x int8 products,
:mod:`onnxq.runtime.cpu_int8`), per output column with ``per_channel`` (the scale is a [N] vector
broadcast over the last axis), else per tensor. Embedding tables (a Gather of a large constant table by
integer ids) become ORT's GatherBlockQuantized over 8-bit rows with one scale per block of the row
(:mod:`onnxq.passes._embeddings`; rows no power of two from 16 divides keep Gather -> Cast -> Mul). Everything else
(attention's activation-by-activation MatMuls, LayerNormalization, Softmax, GELU) stays float: ORT has no
dynamic integer kernel for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.errors import ConfigError
from onnxq.passes._embeddings import quantize_embedding_tables
from onnxq.passes._graph import all_tensor_names, prune_unused_initializers, unique_name
from onnxq.quantize.pipeline import PassResult, PassSpec, Phase, QuantizeContext

_FLOAT = onnx.TensorProto.FLOAT


@dataclass(frozen=True)
class DynamicConfig:
    per_channel: bool = True  # one weight scale per output column
    op_types: tuple[str, ...] = ("MatMul", "Gemm")
    embeddings: bool = True  # int8 rows for Gather tables of at least embedding_min_elements
    embedding_min_elements: int = 1 << 16
    weight_type: str = "int8"  # or uint8: zero point 128, for kernels that saturate uint8 x int8
    reduce_range: bool = False  # weights on 7 bits ([-64, 64]), as ORT's reduce_range: no saturation either

    def __post_init__(self) -> None:
        if self.weight_type not in ("int8", "uint8"):
            raise ConfigError(f"dynamic: weight type {self.weight_type!r} has no dynamic integer kernel",
                              hint="use int8 or uint8")  # fmt: skip
        unknown = [op for op in self.op_types if op not in ("MatMul", "Gemm")]
        if unknown:
            raise ConfigError(f"dynamic: op types {unknown} have no dynamic integer kernel here",
                              hint="use MatMul and/or Gemm")  # fmt: skip


def quantize_dynamic(
    model: onnx.ModelProto, cfg: DynamicConfig, left_out: Callable[[onnx.NodeProto], Any] = lambda node: None
) -> PassResult:
    """Dynamic quantization of ``model``'s MatMul/Gemm weights (and embedding tables), except the nodes
    ``left_out`` gives a reason for (the node lists of the QDQ config)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    writer = _Writer(g)
    nodes, counts = [], {"MatMul": 0, "Gemm": 0}
    skipped: dict[str, str] = {}
    for node in g.node:
        weight = linear_weight(node, inits) if node.op_type in cfg.op_types else None
        if isinstance(weight, str):
            skipped[node.name] = weight
        if not isinstance(weight, np.ndarray) or left_out(node):
            nodes.append(node)
            continue
        nodes.extend(writer.rewrite(node, weight, cfg, inits))
        counts[node.op_type] += 1
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(writer.new_inits)
    prune_unused_initializers(g)
    details: dict[str, Any] = {"matmuls_quantized": counts["MatMul"], "gemms_quantized": counts["Gemm"],
                               "skip_reasons": skipped}  # fmt: skip
    if cfg.embeddings:
        details["embedding_tables"] = quantize_embedding_tables(out, cfg.embedding_min_elements, left_out, fused=True)
    return PassResult(out, modified=bool(sum(counts.values()) or details.get("embedding_tables")), details=details)


def linear_weight(node: onnx.NodeProto, inits: dict, read=numpy_helper.to_array) -> np.ndarray | str | None:
    """The [K, N] float weight of a MatMul/Gemm node as the MatMul sees it (Gemm's transB applied), a reason
    why it cannot be quantized, or None (not a linear layer with a constant weight). ``read`` gives a tensor's
    values (the streaming path reads them from external data)."""
    if len(node.input) < 2 or node.input[1] not in inits or node.input[0] in inits:
        return None
    t = inits[node.input[1]]
    if t.data_type != _FLOAT or len(t.dims) != 2:
        return "the weight is not a 2-D float32 constant"
    w = read(t)
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return "Gemm with transA, alpha or beta other than the defaults"
        if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
            return "the Gemm's bias is not a constant"
        w = w.T if attrs.get("transB", 0) else w
    if not np.isfinite(w).all():
        return "the weight holds NaN or Inf"
    return np.ascontiguousarray(w)


class _Writer:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.taken = all_tensor_names(graph) | {n.name for n in graph.node}
        self.new_inits: list[onnx.TensorProto] = []
        self.quantized_inputs: dict[str, tuple[str, str, str]] = {}

    def _name(self, base: str) -> str:
        return unique_name(base, self.taken)

    def _activation(self, x: str, out: list[onnx.NodeProto]) -> tuple[str, str, str]:
        if x not in self.quantized_inputs:
            q, s, z = self._name(f"{x}_quantized"), self._name(f"{x}_scale"), self._name(f"{x}_zero_point")
            out.append(
                helper.make_node("DynamicQuantizeLinear", [x], [q, s, z], name=self._name(f"{x}_DynamicQuantizeLinear"))
            )
            self.quantized_inputs[x] = (q, s, z)
        return self.quantized_inputs[x]

    def rewrite(self, node: onnx.NodeProto, w: np.ndarray, cfg: DynamicConfig, inits: dict) -> list[onnx.NodeProto]:
        out: list[onnx.NodeProto] = []
        q, s, z = self._activation(node.input[0], out)
        amax = np.abs(w).max(axis=0) if cfg.per_channel else np.array(np.abs(w).max())
        top = 64 if cfg.reduce_range else 127
        scale = np.where(amax > 0, amax / top, 1.0).astype(np.float32)
        shift, dtype = (128, np.uint8) if cfg.weight_type == "uint8" else (0, np.int8)
        w_q = (np.clip(np.rint(w / scale), -top, top) + shift).astype(dtype)
        base = node.name or node.output[0]
        wq, ws, wz = (
            self._name(f"{base}_W_quantized"),
            self._name(f"{base}_W_scale"),
            self._name(f"{base}_W_zero_point"),
        )
        self.new_inits += [numpy_helper.from_array(w_q, wq), numpy_helper.from_array(scale, ws),
                           numpy_helper.from_array(np.full(scale.shape, shift, dtype), wz)]  # fmt: skip
        acc, acc_f, both = self._name(f"{base}_int32"), self._name(f"{base}_float"), self._name(f"{base}_scale")
        has_bias = node.op_type == "Gemm" and len(node.input) > 2 and bool(node.input[2])
        y = self._name(f"{base}_unbiased") if has_bias else node.output[0]
        out += [
            helper.make_node("MatMulInteger", [q, wq, z, wz], [acc], name=self._name(f"{base}_MatMulInteger")),
            helper.make_node("Cast", [acc], [acc_f], to=_FLOAT, name=self._name(f"{base}_Cast")),
            helper.make_node("Mul", [s, ws], [both], name=self._name(f"{base}_scale_Mul")),
            helper.make_node("Mul", [acc_f, both], [y], name=self._name(f"{base}_Mul")),
        ]
        if has_bias:
            out.append(
                helper.make_node("Add", [y, node.input[2]], [node.output[0]], name=self._name(f"{base}_bias_Add"))
            )
        return out


def _run(model: onnx.ModelProto, ctx: QuantizeContext, cfg: DynamicConfig) -> PassResult:
    return quantize_dynamic(model, cfg, ctx.qdq.left_out)


SPEC = PassSpec(
    name="dynamic",
    phase=Phase.FORMAT,
    config=DynamicConfig,
    run=_run,
    summary="dynamic quantization (--dynamic): int8 MatMul/Gemm weights, activations quantized at run time",
    needs=("qdq",),
    optional=False,
)
