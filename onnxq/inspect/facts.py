"""``onnxq inspect``: what a model is made of, and how much of it the quantizer can reach.

:func:`inspect_file` loads and validates a model and returns an :class:`InspectReport`, a plain dataclass;
``onnxq.inspect.render`` turns it into the ``onnxq.inspect/1`` JSON document or into aligned text tables.
Only tensor headers (dims, dtype) are read, never tensor data, so a model of a few MB takes milliseconds
once loaded.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxq.model import default_opset, load_model, model_bytes
from onnxq.passes._graph import node_names
from onnxq.passes.qdq_policy import ACTIVATION_OPS, WEIGHT_OPS

_DEFAULT_DOMAINS = ("", "ai.onnx")
# The weight input of each WEIGHT_OPS op, in the order it is looked for (MatMul: either side).
_WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1,),
    "ConvTranspose": (1,),
    "Gemm": (1,),
    "MatMul": (1, 0),
}
_QUANTIZED_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "QGemm",
     # ORT's com.microsoft quantized ops: weight-only and dynamic outputs (onnxq's among them)
     "MatMulNBits", "GatherBlockQuantized", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention"}
)
# Storage width of the sub-byte types, which numpy (ml_dtypes) stores one per byte.
_SUB_BYTE_BITS = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "INT2": 2, "UINT2": 2}
# QuantizeLinear's `axis` (per-channel) arrived in opset 13; the op itself in opset 10.
PER_CHANNEL_MIN_OPSET = 13
QDQ_MIN_OPSET = 10


@dataclass(frozen=True)
class ValueSummary:
    """A graph input or output. ``shape`` is None when the rank is unknown; a dim is an int, a symbolic
    name (str), or None when unknown."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...] | None


@dataclass
class StorageStats:
    tensors: int = 0
    parameters: int = 0
    bytes: int = 0

    def add(self, parameters: int, nbytes: int) -> None:
        self.tensors += 1
        self.parameters += parameters
        self.bytes += nbytes


@dataclass(frozen=True)
class SubgraphOwner:
    """A node that holds subgraphs (If, Loop, Scan, ...), and the attributes that hold them."""

    graph: str
    name: str
    op_type: str
    attributes: tuple[str, ...]


@dataclass(frozen=True)
class QuantizableNode:
    """A WEIGHT_OPS node whose weight is a constant (an initializer or a Constant node's output)."""

    graph: str
    name: str
    op_type: str
    weight_input: int
    weight: str
    weight_shape: tuple[int, ...]
    weight_storage: str  # "initializer" or "constant_node"
    depthwise: bool


@dataclass
class InspectReport:
    """Everything ``onnxq inspect`` reports; plain data, rendered by render_text / report_to_json."""

    path: str
    file_bytes: int | None
    model_bytes: int
    ir_version: int
    opset_imports: dict[str, int]
    producer_name: str
    producer_version: str
    inputs: list[ValueSummary]
    outputs: list[ValueSummary]
    op_counts: dict[str, int]
    top_level_nodes: int
    subgraph_nodes: int
    subgraph_owners: list[SubgraphOwner]
    params_by_dtype: dict[str, StorageStats]
    initializer_storage: StorageStats
    constant_node_storage: StorageStats
    quantizable: list[QuantizableNode]
    activation_op_counts: dict[str, int]
    quantized_op_counts: dict[str, int]
    custom_op_counts: dict[tuple[str, str], int]
    warnings: list[str] = field(default_factory=list)

    @property
    def total_nodes(self) -> int:
        return self.top_level_nodes + self.subgraph_nodes

    @property
    def depthwise_count(self) -> int:
        return sum(q.depthwise for q in self.quantizable)

    @property
    def is_quantized(self) -> bool:
        return bool(self.quantized_op_counts)


# --- building the report ---------------------------------------------------------------------------


def inspect_file(path: str | os.PathLike) -> InspectReport:
    """Load and validate the model at ``path`` (raising OnnxqError if it is bad) and describe it."""
    model = load_model(path)
    return inspect_model(model, path=str(path), file_bytes=Path(path).stat().st_size)


def inspect_model(model: onnx.ModelProto, *, path: str = "", file_bytes: int | None = None) -> InspectReport:
    """Describe an already loaded model; the model is not modified."""
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    report = InspectReport(
        path=path,
        file_bytes=file_bytes,
        model_bytes=model_bytes(model),
        ir_version=model.ir_version,
        opset_imports={(imp.domain or "ai.onnx"): imp.version for imp in model.opset_import},
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        inputs=[_value_summary(v) for v in graph.input if v.name not in init_names],
        outputs=[_value_summary(v) for v in graph.output],
        op_counts={},
        top_level_nodes=len(graph.node),
        subgraph_nodes=0,
        subgraph_owners=[],
        params_by_dtype={},
        initializer_storage=StorageStats(),
        constant_node_storage=StorageStats(),
        quantizable=[],
        activation_op_counts={},
        quantized_op_counts={},
        custom_op_counts={},
    )
    ops: Counter[str] = Counter()
    custom: Counter[tuple[str, str]] = Counter()
    _walk_graph(graph, "main", {}, report, ops, custom)
    report.subgraph_nodes = sum(ops.values()) - report.top_level_nodes
    report.op_counts = dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))
    report.custom_op_counts = dict(sorted(custom.items()))
    report.quantized_op_counts = {op: n for op, n in report.op_counts.items() if is_quantized_op(op)}
    report.activation_op_counts = {op: n for op, n in report.op_counts.items() if op in ACTIVATION_OPS}
    report.params_by_dtype = dict(sorted(report.params_by_dtype.items()))
    report.warnings = _warnings(model, report)
    return report


def _walk_graph(
    graph: onnx.GraphProto,
    where: str,
    outer_consts: dict[str, tuple[tuple[int, ...], str]],
    report: InspectReport,
    ops: Counter[str],
    custom: Counter[tuple[str, str]],
) -> None:
    """Count this graph's nodes and stored tensors, then recurse into its subgraphs (constants in scope)."""
    consts = dict(outer_consts)  # name -> (shape, storage); subgraphs may read outer-scope constants
    for tensor in graph.initializer:
        consts[tensor.name] = (tuple(tensor.dims), "initializer")
        _count_tensor(report, report.initializer_storage, tensor.data_type, _elements(tensor.dims), _nbytes(tensor))
    for sparse in graph.sparse_initializer:
        consts[sparse.values.name] = (tuple(sparse.dims), "initializer")
        _count_sparse(report, report.initializer_storage, sparse)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            shape = _count_constant_node(report, node)
            if shape is not None and node.output:
                consts[node.output[0]] = (shape, "constant_node")
    for node, name in zip(graph.node, node_names(graph), strict=True):
        ops[_qualified_op(node)] += 1
        if node.domain not in _DEFAULT_DOMAINS:
            custom[(node.domain, node.op_type)] += 1
        # an unnamed node shows the name quantize gives it, so that --exclude-node takes what inspect shows
        quantizable = _quantizable(node, name, where, consts)
        if quantizable is not None:
            report.quantizable.append(quantizable)
        sub_attrs = [a for a in node.attribute if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)]
        if sub_attrs:
            report.subgraph_owners.append(
                SubgraphOwner(where, name, _qualified_op(node), tuple(a.name for a in sub_attrs))
            )
        for attr in sub_attrs:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for i, sub in enumerate(subs):
                suffix = "" if attr.type == onnx.AttributeProto.GRAPH else f"[{i}]"
                _walk_graph(sub, f"{where}/{name}.{attr.name}{suffix}", consts, report, ops, custom)


def _quantizable(
    node: onnx.NodeProto, name: str, where: str, consts: dict[str, tuple[tuple[int, ...], str]]
) -> QuantizableNode | None:
    if node.domain not in _DEFAULT_DOMAINS or node.op_type not in WEIGHT_OPS:
        return None
    for index in _WEIGHT_INPUTS.get(node.op_type, ()):
        if index < len(node.input) and node.input[index] in consts:
            shape, storage = consts[node.input[index]]
            return QuantizableNode(
                where,
                name,
                node.op_type,
                index,
                node.input[index],
                shape,
                storage,
                _is_depthwise(node, shape),
            )
    return None


def _is_depthwise(node: onnx.NodeProto, shape: tuple[int, ...]) -> bool:
    """group == in channels == out channels, read from the weight's layout (Conv: [out, in/group, ...];
    ConvTranspose: [in, out/group, ...])."""
    if node.op_type not in ("Conv", "ConvTranspose") or len(shape) < 3:
        return False
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if group <= 1:
        return False
    # Either way round the weight is [group, 1, ...] exactly when both channel counts equal group.
    return shape[0] == group and shape[1] == 1


# --- stored tensors ---------------------------------------------------------------------------------


def _count_constant_node(report: InspectReport, node: onnx.NodeProto) -> tuple[int, ...] | None:
    """Add a Constant node's value to the parameter counts; return the shape of its output."""
    store = report.constant_node_storage
    for attr in node.attribute:
        if attr.name == "value":
            _count_tensor(report, store, attr.t.data_type, _elements(attr.t.dims), _nbytes(attr.t))
            return tuple(attr.t.dims)
        if attr.name == "sparse_value":
            _count_sparse(report, store, attr.sparse_tensor)
            return tuple(attr.sparse_tensor.dims)
        scalar_or_list = {
            "value_float": (onnx.TensorProto.FLOAT, None),
            "value_floats": (onnx.TensorProto.FLOAT, attr.floats),
            "value_int": (onnx.TensorProto.INT64, None),
            "value_ints": (onnx.TensorProto.INT64, attr.ints),
            "value_string": (onnx.TensorProto.STRING, None),
            "value_strings": (onnx.TensorProto.STRING, attr.strings),
        }
        if attr.name in scalar_or_list:
            dtype, values = scalar_or_list[attr.name]
            n = 1 if values is None else len(values)
            if dtype == onnx.TensorProto.STRING:
                nbytes = len(attr.s) if values is None else sum(len(s) for s in values)
            else:
                nbytes = n * _bits(dtype) // 8
            _count_tensor(report, store, dtype, n, nbytes)
            return () if values is None else (n,)
    return None


def _count_tensor(report: InspectReport, store: StorageStats, data_type: int, n: int, nbytes: int) -> None:
    store.add(n, nbytes)
    report.params_by_dtype.setdefault(dtype_name(data_type), StorageStats()).add(n, nbytes)


def _count_sparse(report: InspectReport, store: StorageStats, sparse: onnx.SparseTensorProto) -> None:
    """A sparse tensor holds its non-zero values and their indices; the values are its parameters."""
    values, indices = sparse.values, sparse.indices
    _count_tensor(report, store, values.data_type, _elements(values.dims), _nbytes(values) + _nbytes(indices))


def _elements(dims: Iterable[int]) -> int:
    return math.prod(dims)


def _nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes the tensor's values take, from dims and dtype (strings: their lengths), without decoding."""
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    return math.ceil(_elements(tensor.dims) * _bits(tensor.data_type) / 8)


def _bits(data_type: int) -> int:
    """Storage bits of one element; 0 for an element type ONNX does not define (its size is unknown)."""
    if data_type not in onnx.TensorProto.DataType.values():
        return 0
    name = onnx.TensorProto.DataType.Name(data_type)
    if name in _SUB_BYTE_BITS:
        return _SUB_BYTE_BITS[name]
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize * 8
    except (KeyError, ValueError):  # UNDEFINED, or a type this onnx cannot map to numpy
        return 0


def dtype_name(data_type: int) -> str:
    """numpy-style name of an ONNX element type ("float32", "int8", "bfloat16", "string"); "unknown dtype
    N" for a number ONNX does not define (a damaged or newer file)."""
    if data_type == onnx.TensorProto.STRING:
        return "string"
    if data_type not in onnx.TensorProto.DataType.values():
        return f"unknown dtype {data_type}"
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).name
    except (KeyError, ValueError):
        return onnx.TensorProto.DataType.Name(data_type).lower() if data_type else "undefined"


# --- inputs and outputs, op names ---------------------------------------------------------------------


def _value_summary(value: onnx.ValueInfoProto) -> ValueSummary:
    kind = value.type.WhichOneof("value")
    if kind not in ("tensor_type", "sparse_tensor_type"):
        return ValueSummary(value.name, kind.replace("_type", "") if kind else "undefined", None)
    ttype = getattr(value.type, kind)
    dtype = dtype_name(ttype.elem_type)
    if not ttype.HasField("shape"):
        return ValueSummary(value.name, dtype, None)
    return ValueSummary(value.name, dtype, tuple(_dim(d) for d in ttype.shape.dim))


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str | None:
    # Some exporters write dim_value -1 (or 0) for a dynamic axis; that is an unknown dim, not a size.
    if dim.HasField("dim_value") and dim.dim_value > 0:
        return int(dim.dim_value)
    if dim.HasField("dim_param") and dim.dim_param:
        return dim.dim_param
    return None


def _negative_dims(values: Iterable[onnx.ValueInfoProto]) -> Iterator[str]:
    for value in values:
        if value.type.WhichOneof("value") == "tensor_type":
            if any(d.HasField("dim_value") and d.dim_value < 0 for d in value.type.tensor_type.shape.dim):
                yield value.name


def _qualified_op(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}:{node.op_type}"


def is_quantized_op(qualified: str) -> bool:
    op = qualified.rsplit(":", 1)[-1]
    return op in _QUANTIZED_OPS or op.startswith("QLinear")


# --- warnings ----------------------------------------------------------------------------------------


def _warnings(model: onnx.ModelProto, report: InspectReport) -> list[str]:
    """Facts about the model that change what quantizing it takes."""
    out: list[str] = []
    opset = default_opset(model) or 0
    if opset < QDQ_MIN_OPSET:
        out.append(
            f"opset {opset} < {QDQ_MIN_OPSET}: QuantizeLinear/DequantizeLinear do not exist yet; quantizing "
            f"needs an opset upgrade (to >= {PER_CHANNEL_MIN_OPSET} for per-channel quantization)"
        )
    elif opset < PER_CHANNEL_MIN_OPSET:
        out.append(f"opset {opset} < {PER_CHANNEL_MIN_OPSET}: per-channel quantization will need an opset upgrade")
    # Constant nodes that only hold shapes or Clip bounds are normal; weights in them are what matters.
    from_const = sum(q.weight_storage == "constant_node" for q in report.quantizable)
    if from_const:
        out.append(
            f"model has Constant-node weights: {from_const} of {len(report.quantizable)} quantizable nodes "
            f"read their weight from a Constant node ({report.constant_node_storage.parameters:,} parameters "
            "are stored in Constant nodes)"
        )
    if report.is_quantized:
        listed = ", ".join(f"{op} {n}" for op, n in report.quantized_op_counts.items())
        out.append(f"model is already quantized ({listed})")
    if report.custom_op_counts:
        domains = sorted({domain for domain, _ in report.custom_op_counts})
        out.append(f"model uses custom-domain ops ({', '.join(domains)}); the runtime needs kernels for them")
    if not report.quantizable:
        out.append(f"no quantizable node: no {'/'.join(WEIGHT_OPS)} node has a constant weight")
    batch_norms = report.op_counts.get("BatchNormalization", 0)
    if batch_norms:
        out.append(f"{batch_norms} BatchNormalization nodes: fold them into the preceding Conv before quantizing")
    if report.subgraph_nodes:
        out.append(f"{report.subgraph_nodes} nodes are inside subgraphs (If/Loop/Scan bodies)")
    unknown = sorted({v.dtype for v in [*report.inputs, *report.outputs]} | set(report.params_by_dtype))
    unknown = [name for name in unknown if name.startswith("unknown dtype")]
    if unknown:
        out.append(
            f"element types that ONNX does not define ({', '.join(unknown)}): the file is damaged or from a newer "
            "ONNX; tensors of those types count 0 bytes, and no runtime can run the model"
        )
    for name in _negative_dims([*model.graph.input, *model.graph.output]):
        out.append(f"{name!r} declares a negative dim_value (treated as an unknown dim)")
    return out
