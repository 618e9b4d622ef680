"""Block-wise weight-only quantization (``--weight-only int4``): MatMul/Gemm weights as 4- or 8-bit integers with a
scale (and zero point) per block of ``block_size`` values along the input dimension; activations stay float.

Two output forms:
* ``matmulnbits`` (default): ORT's ``com.microsoft.MatMulNBits``, whose CPU and CUDA kernels read the packed
  weights directly; ``accuracy_level`` (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8) is the compute type its CPU
  kernel may use for the activations, recorded in the summary;
* ``qdq``: portable ONNX, ``DequantizeLinear(axis=0, block_size)`` (opset 21) of an INT4/UINT4/INT8/UINT8
  weight feeding the MatMul.

The integers come from the weight passes that ran before (GPTQ, AWQ: ``ctx.block_weights``, per node), else
from round-to-nearest here. Embedding tables (Gather of a large constant table) become 8-bit rows, as with
``--dynamic``, when the Gather's indices are a graph input (token ids; a RoPE cos/sin table gathered by positions
stays float). Everything else stays float.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx
from onnx import helper, numpy_helper

from onnxq.errors import ConfigError, NothingToQuantizeError
from onnxq.passes._blockwise import BlockFormat, BlockQuant, dq_tensors, matmulnbits_tensors, rtn
from onnxq.passes._embeddings import MS, quantize_embedding_tables
from onnxq.passes._graph import all_tensor_names, prune_unused_initializers, unique_name
from onnxq.passes.dynamic import linear_weight
from onnxq.quantize.pipeline import PassResult, PassSpec, Phase, QuantizeContext

WEIGHT_TYPES = ("int4", "uint4", "int8", "uint8")  # u*: asymmetric (a zero point per block); int*: symmetric
FORMATS = ("matmulnbits", "qdq")
BLOCK_SIZES = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class WeightOnlyConfig:
    weight_type: str = "int4"
    block_size: int = 128
    format: str = "matmulnbits"
    accuracy_level: int = 0  # MatMulNBits: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute on the CPU EP
    embeddings: bool = True  # 8-bit rows for Gather tables of at least embedding_min_elements values
    embedding_min_elements: int = 1 << 16

    def __post_init__(self) -> None:
        for what, value, choices in (("weight_type", self.weight_type, WEIGHT_TYPES),
                                     ("format", self.format, FORMATS), ("block_size", self.block_size, BLOCK_SIZES),
                                     ("accuracy_level", self.accuracy_level, (0, 1, 2, 3, 4))):  # fmt: skip
            if value not in choices:
                raise ConfigError(f"weight-only: {what} {value!r} is not one of {', '.join(map(str, choices))}",
                                  hint=f"choose {what} among {', '.join(map(str, choices))}")  # fmt: skip
        if self.format == "qdq" and self.accuracy_level:
            raise ConfigError("weight-only: accuracy_level is a MatMulNBits attribute; the qdq form has none",
                              hint="drop --accuracy-level, or use --weight-format matmulnbits")  # fmt: skip

    @property
    def block_format(self) -> BlockFormat:
        return BlockFormat(bits=int(self.weight_type[-1]), block=self.block_size,
                           symmetric=not self.weight_type.startswith("u"))  # fmt: skip


def quantize_weight_only(model: onnx.ModelProto, cfg: WeightOnlyConfig, ctx: QuantizeContext) -> PassResult:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    given: dict[str, BlockQuant] = ctx.block_weights or {}
    writer = _Writer(g, cfg)
    nodes, skipped, counts = [], {}, {"MatMul": 0, "Gemm": 0}
    for node in g.node:
        key = node.name or node.output[0]
        weight = linear_weight(node, inits) if node.op_type in ("MatMul", "Gemm") else None
        reason = weight if isinstance(weight, str) else ctx.qdq.left_out(node) if ctx.qdq else None
        if reason or weight is None:
            if reason:
                skipped[key] = reason
            nodes.append(node)
            continue
        bq = given.get(key)
        if bq is None or bq.fmt != cfg.block_format or bq.scale.shape[0] != weight.shape[1] or bq.k != weight.shape[0]:
            bq = rtn(weight.T, cfg.block_format)
        nodes.extend(writer.rewrite(node, bq))
        counts[node.op_type] += 1
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(writer.new_inits)
    prune_unused_initializers(g)
    if cfg.format == "matmulnbits" and writer.new_inits and not any(o.domain == MS for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS, 1))
    details: dict[str, Any] = {
        "weight_type": cfg.weight_type, "block_size": cfg.block_size, "format": cfg.format,
        "accuracy_level": cfg.accuracy_level if cfg.format == "matmulnbits" else None,
        "algorithm": ctx.block_algorithm or "rtn", "from_algorithm": sum(k in given for k in writer.done),
        "matmuls_quantized": counts["MatMul"], "gemms_quantized": counts["Gemm"], "skip_reasons": skipped,
    }  # fmt: skip
    if cfg.embeddings:
        inputs = {i.name for i in g.input}

        def not_token_table(node: onnx.NodeProto) -> str | None:  # RoPE's cos/sin tables stay float
            if node.input[1] not in inputs:
                return "the Gather's indices are not a graph input (token ids)"
            return ctx.qdq.left_out(node) if ctx.qdq else None

        details["embedding_tables"] = quantize_embedding_tables(out, cfg.embedding_min_elements, not_token_table,
                                                                fused=cfg.format == "matmulnbits")  # fmt: skip
    if not (sum(counts.values()) or details.get("embedding_tables")):
        why = f" ({len(skipped)} left out: {next(iter(skipped.values()))})" if skipped else ""
        raise NothingToQuantizeError(f"the model has no MatMul/Gemm with a constant float weight to quantize{why}",
                                     hint="weight-only quantization is for linear layers (LLMs, transformers); "
                                     "for convolutions use the default static quantization with --calib")  # fmt: skip
    return PassResult(out, modified=True, details=details)


class _Writer:
    def __init__(self, graph: onnx.GraphProto, cfg: WeightOnlyConfig) -> None:
        self.taken = all_tensor_names(graph) | {n.name for n in graph.node}
        self.cfg = cfg
        self.new_inits: list[onnx.TensorProto] = []
        self.done: list[str] = []

    def _name(self, base: str) -> str:
        return unique_name(base, self.taken)

    def rewrite(self, node: onnx.NodeProto, bq: BlockQuant) -> list[onnx.NodeProto]:
        base = node.name or node.output[0]
        self.done.append(base)
        has_bias = node.op_type == "Gemm" and len(node.input) > 2 and bool(node.input[2])
        y = self._name(f"{base}_unbiased") if has_bias else node.output[0]
        out = self._matmulnbits(node, bq, base, y) if self.cfg.format == "matmulnbits" else self._qdq(node, bq, base, y)
        if has_bias:
            out.append(helper.make_node("Add", [y, node.input[2]], [node.output[0]], name=self._name(f"{base}_bias")))
        return out

    def _matmulnbits(self, node: onnx.NodeProto, bq: BlockQuant, base: str, y: str) -> list[onnx.NodeProto]:
        tensors = matmulnbits_tensors(bq)
        names = []
        for key in ("B", "scales", "zero_points"):
            if key in tensors:
                names.append(self._name(f"{base}_{key}"))
                self.new_inits.append(numpy_helper.from_array(tensors[key], names[-1]))
        n, k = bq.scale.shape[0], bq.k
        return [helper.make_node("MatMulNBits", [node.input[0], *names], [y], name=node.name or self._name(base),
                                 domain=MS, K=k, N=n, bits=bq.fmt.bits, block_size=bq.fmt.block,
                                 accuracy_level=self.cfg.accuracy_level)]  # fmt: skip

    def _qdq(self, node: onnx.NodeProto, bq: BlockQuant, base: str, y: str) -> list[onnx.NodeProto]:
        weight, scale, zero = dq_tensors(bq, base)
        for t in (weight, scale, zero):
            if t is not None:
                t.name = self._name(t.name)
                self.new_inits.append(t)
        w = self._name(f"{base}_weight_dequantized")
        inputs = [weight.name, scale.name] + ([zero.name] if zero is not None else [])
        return [
            helper.make_node("DequantizeLinear", inputs, [w], name=self._name(f"{base}_DequantizeLinear"), axis=0,
                             block_size=bq.fmt.block),  # fmt: skip
            helper.make_node("MatMul", [node.input[0], w], [y], name=node.name or self._name(base)),
        ]


def _run(model: onnx.ModelProto, ctx: QuantizeContext, cfg: WeightOnlyConfig) -> PassResult:
    return quantize_weight_only(model, cfg, ctx)


SPEC = PassSpec(
    name="weight-only",
    phase=Phase.FORMAT,
    config=WeightOnlyConfig,
    run=_run,
    summary="block-wise weight-only quantization (--weight-only int4): MatMulNBits or DequantizeLinear(block_size)",
    needs=("qdq",),
    optional=False,
)
