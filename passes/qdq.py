"""QDQ insertion: QuantizeLinear/DequantizeLinear pairs placed by the policy in passes/placement.py.

Two steps, because calibration sits between them:

1. :func:`plan_qdq` decides, from the graph and the config alone, which nodes are quantized, which
   activation tensors need a range (the calibration list), which share one scale (Concat, data
   movement, MaxPool), and which Relu/Clip are folded into their producer.
2. :func:`apply_qdq` takes the ranges and writes the QDQ model: activations get a Q -> DQ pair, weights
   are stored as integer initializers feeding a DequantizeLinear (per channel on the op's output-channel
   axis, or per tensor), and biases as int32 with scale s_x * s_w.

The result is a standard ONNX model with no custom op, which ORT's CPU EP fuses into integer kernels.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.errors import PassError, QuantizationError
from onnxq.model import default_opset
from onnxq.passes._bias_add import biases_as_add
from onnxq.passes.placement import OpRule, kernel_refusal, rule_for, weight_axis
from onnxq.quantize.pipeline import PassResult, PassSpec, Phase, QuantizeContext
from onnxq.quantize.qtypes import QParams, compute_qparams, make_initializer, min_opset, qtype, quantize
from onnxq.quantize.targets import check_choices, get_target

_FLOAT = onnx.TensorProto.FLOAT
EMBEDDING_MIN_ELEMENTS = 1 << 16  # smaller Gather tables (position embeddings, lookup constants) stay float


@dataclass(frozen=True)
class QDQConfig:
    """What to quantize and how. ``symmetric_activations`` None means the target's default."""

    target: str = "ort"
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    symmetric_activations: bool | None = None
    symmetric_weights: bool = True
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    include_nodes: tuple[str, ...] = ()  # non-empty (or include_op_types): only these are quantized
    include_op_types: tuple[str, ...] = ()
    reduce_range: bool = False  # 8-bit weights on 7 bits ([-64, 64]), as ORT's reduce_range
    quantize_bias: bool = True
    quantize_embeddings: bool = True  # Gather tables of 64K+ values as int8 rows (weight-only)
    wide_tensors: tuple[str, ...] = ()  # activations quantized to 16 bits (mixed precision)

    def __post_init__(self) -> None:
        check_choices(
            get_target(self.target),
            activation_type=self.activation_type,
            weight_type=self.weight_type,
            symmetric_activations=self.act_symmetric,
            symmetric_weights=self.symmetric_weights,
        )

    def left_out(self, node: onnx.NodeProto) -> str | None:
        """Why the node lists keep ``node`` float, or None. An include list (``include_nodes``, and/or
        ``include_op_types``: a node in either is included) leaves out every node it does not name;
        exclusion wins over inclusion."""
        if node.name in self.exclude_nodes:
            return "excluded by name"
        if node.op_type in self.exclude_op_types:
            return "excluded by op type"
        if (self.include_nodes or self.include_op_types) and not (
            node.name in self.include_nodes or node.op_type in self.include_op_types
        ):
            return "not in the include lists (--include-node/--include-op-type)"
        return None

    @property
    def int32_bias(self) -> bool:
        """Biases become int32 (scale s_x * s_w): asked for, and taken by the target (not cuda's)."""
        return self.quantize_bias and get_target(self.target).int32_bias

    @property
    def act_symmetric(self) -> bool:
        if self.symmetric_activations is None:
            return get_target(self.target).symmetric_activations
        return self.symmetric_activations

    def required_opset(self) -> int:
        per_channel = self.per_channel
        acts = [self.activation_type, *([self.wide_type] if self.wide_tensors else [])]
        return max(*(min_opset(qtype(a), False) for a in acts), min_opset(qtype(self.weight_type), per_channel))

    @property
    def wide_type(self) -> str:
        """The 16-bit type of the activation type's signedness, for ``wide_tensors``."""
        return WIDE_TYPES.get(self.activation_type, self.activation_type)


WIDE_TYPES = {"uint8": "uint16", "int8": "int16"}
# A MatMul/Gemm reading a 16-bit activation (mixed precision) keeps a float weight: ORT's CPU EP (1.32) rewrites
# DequantizeLinear(int8 weight) -> MatMul with a float input into MatMulNBits at accuracy_level 4, which
# requantizes that input to int8 per block at run time (measured: 19 dB where the QDQ graph computes 44 dB).
_WIDE_FLOAT_WEIGHTS = ("MatMul", "Gemm")


@dataclass
class QDQPlan:
    """The decisions of :func:`plan_qdq`; ``tensors`` is what calibration must observe."""

    nodes: list[str] = field(default_factory=list)
    op_counts: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # node name -> reason
    tensors: list[str] = field(default_factory=list)  # activation tensors to quantize
    groups: dict[str, str] = field(default_factory=dict)  # tensor -> representative of its shared-scale group
    folded: dict[str, str] = field(default_factory=dict)  # folded activation node -> its input tensor
    renames: dict[str, str] = field(default_factory=dict)  # producer output -> folded activation's output
    weights: list[tuple[str, int]] = field(default_factory=list)  # (node name, input index)
    biases: list[tuple[str, int]] = field(default_factory=list)
    graph_nodes: dict[str, str] = field(default_factory=dict)  # every node planned over: name -> op type


# --- graph helpers -------------------------------------------------------------------------------


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose nodes all have unique names (exclusions and reports refer to nodes by name)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    seen: set[str] = set()
    for i, node in enumerate(out.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return out


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    types: dict[str, int] = {}
    graph = model.graph
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    return types


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in g.node:
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.outputs = {o.name for o in g.output}
        types = _elem_types(model)
        if any(o not in types for n in g.node for o in n.output if o):
            inferred = onnx.shape_inference.infer_shapes(model)
            types.update(_elem_types(inferred))
        self.types = types

    def is_float(self, name: str) -> bool:
        return self.types.get(name) == _FLOAT

    def is_const(self, name: str) -> bool:
        return name in self.inits


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


# --- planning ------------------------------------------------------------------------------------


def plan_qdq(model: onnx.ModelProto, cfg: QDQConfig) -> QDQPlan:
    """Decide what to quantize; ``model`` should be prepared (BatchNorm folded, shapes inferred)."""
    g = _Graph(model)
    plan = QDQPlan(graph_nodes={n.name: n.op_type for n in model.graph.node})
    quantized: set[str] = set()
    shared = _UnionFind()
    for node in model.graph.node:
        rule = rule_for(node.op_type, cfg.target)
        if rule is None:
            continue
        excluded = cfg.left_out(node) is not None
        if rule.output == "fold" and not excluded and _consumed_output(node.input[0], g, cfg, plan):
            quantized.add(node.input[0])  # e.g. Gemm -> Relu: quantize the Gemm's output so Relu can fold
        reason = _skip_reason(node, rule, g, cfg, quantized)
        if reason:
            plan.skipped[node.name] = reason
            continue
        if rule.output == "fold" and _can_fold(node, g, cfg, quantized):
            src = node.input[0]
            quantized.discard(src)
            quantized.add(node.output[0])
            plan.folded[node.name] = src
            plan.renames[src] = node.output[0]
            plan.op_counts[node.op_type] = plan.op_counts.get(node.op_type, 0) + 1
            continue
        act_inputs = _activation_inputs(node, rule, g)
        quantized.update(act_inputs)
        if rule.weight_input is not None:
            for idx, name in enumerate(node.input):
                if name and g.is_const(name) and g.is_float(name) and idx != rule.bias_input:
                    plan.weights.append((node.name, idx))
        if cfg.int32_bias and rule.bias_input is not None and len(node.input) > rule.bias_input:
            bias = node.input[rule.bias_input]
            if bias and g.is_const(bias) and g.is_float(bias):
                plan.biases.append((node.name, rule.bias_input))
        outs = [o for o in node.output if o and g.is_float(o)]
        if rule.output in ("always", "fold"):
            quantized.update(outs)
        elif rule.output == "shared":
            quantized.update(outs)
            for o in outs:
                shared.union(node.input[0], o)
        if rule.family == "concat":
            members = act_inputs + (outs if rule.output == "always" else [])
            for m in members[1:]:
                shared.union(members[0], m)
        plan.nodes.append(node.name)
        plan.op_counts[node.op_type] = plan.op_counts.get(node.op_type, 0) + 1
    # "consumed" outputs: quantized only if a quantized node reads them, which the loop above recorded
    plan.tensors = [t for t in _topo_tensors(model, plan.renames) if t in quantized]
    plan.groups = {t: shared.find(t) for t in plan.tensors}
    return plan


def _skip_reason(node, rule: OpRule, g: _Graph, cfg: QDQConfig, quantized: set[str]) -> str | None:
    left_out = cfg.left_out(node)
    if left_out:
        return left_out
    data_in = node.input[0] if node.input else ""
    if not data_in or not g.is_float(data_in):
        return "input is not float32"
    refusal = kernel_refusal(rule, node)
    if refusal:
        return refusal
    if rule.weight_input is not None and rule.family != "matmul":
        w = node.input[rule.weight_input] if len(node.input) > rule.weight_input else ""
        if not g.is_const(w):
            return "weight is not a constant initializer"
    if rule.family == "binary" and any(g.is_const(i) for i in node.input):
        return "has a constant operand (left in float)"
    if rule.family == "binary" and not all(g.is_float(i) for i in node.input):
        return "an input is not float32"
    if rule.family == "binary" and not all(i in quantized for i in node.input):
        # an elementwise op between a float island and the integer path costs more in Q/DQ than it saves:
        # QLinearMul/QLinearAdd only pay off when both inputs already arrive as int8
        return "an input is not quantized (left in float)"
    if rule.inputs == "shortcut" and not _shortcut_input(node, g):
        return "not a residual Add of two activations"
    if rule.output == "shared" and data_in not in quantized:
        return "input is not quantized (nothing to share a scale with)"
    if rule.output == "fold" and data_in not in quantized:
        return "input is not quantized"
    return None


def _consumed_output(src: str, g: _Graph, cfg: QDQConfig, plan: QDQPlan) -> bool:
    producer = g.producer.get(src)
    if producer is None or producer.name not in plan.nodes or len(g.consumers[src]) != 1:
        return False
    rule = rule_for(producer.op_type, cfg.target)
    return rule is not None and rule.output == "consumed" and not cfg.act_symmetric


def _can_fold(node, g: _Graph, cfg: QDQConfig, quantized: set[str]) -> bool:
    """Relu/Clip(0, hi) whose input is quantized and read by it alone: the Q's saturation does its job."""
    src = node.input[0]
    if cfg.act_symmetric or src not in quantized or src in g.outputs or len(g.consumers[src]) != 1:
        return False
    producer = g.producer.get(src)
    if producer is None or producer.op_type in ("Relu", "Clip"):
        return False
    if node.op_type == "Relu":
        return True
    lo = _clip_bound(node, g, 1, "min")
    return lo is not None and lo == 0.0


def _clip_bound(node, g: _Graph, idx: int, attr: str) -> float | None:
    if len(node.input) > idx and node.input[idx]:
        name = node.input[idx]
        return float(numpy_helper.to_array(g.inits[name])) if name in g.inits else None
    value = _attrs(node).get(attr)
    return None if value is None else float(value)


def _activation_inputs(node, rule: OpRule, g: _Graph) -> list[str]:
    if rule.inputs == "first":
        return [node.input[0]]
    if rule.inputs == "shortcut":
        return [_shortcut_input(node, g)]
    return [i for i in node.input if i and not g.is_const(i) and g.is_float(i)]


def _shortcut_input(node, g: _Graph) -> str | None:
    """The residual branch of an Add: the input not produced by a Conv/Gemm, else the older one."""
    ins = [i for i in node.input if i]
    if len(ins) != 2 or any(g.is_const(i) or not g.is_float(i) for i in ins):
        return None
    fusable = [
        g.producer.get(i) is not None and g.producer[i].op_type in ("Conv", "ConvTranspose", "Gemm") for i in ins
    ]
    if fusable[0] != fusable[1]:
        return ins[1] if fusable[0] else ins[0]
    return ins[0]  # both or neither fusable: Q/DQ on the first, the other fuses


def _topo_tensors(model: onnx.ModelProto, renames: dict[str, str]) -> list[str]:
    names = [i.name for i in model.graph.input]
    for n in model.graph.node:
        names.extend(renames.get(o, o) for o in n.output if o)
    return list(dict.fromkeys(names))


# --- applying ------------------------------------------------------------------------------------


def activation_qparams(plan: QDQPlan, ranges: dict[str, tuple[float, float]], cfg: QDQConfig) -> dict[str, QParams]:
    """One QParams per quantized tensor; members of a shared-scale group get their union range."""
    missing = [t for t in plan.tensors if t not in ranges]
    if missing:
        raise PassError(
            f"no calibration range for {len(missing)} tensor(s), e.g. {missing[:3]}",
            hint="calibrate the model returned by prepare with the plan's tensor list",
        )
    group_range: dict[str, list[float]] = {}
    for t in plan.tensors:
        lo, hi = ranges[t]
        r = group_range.setdefault(plan.groups[t], [lo, hi])
        r[0], r[1] = min(r[0], lo), max(r[1], hi)
    aq, wide = qtype(cfg.activation_type), qtype(cfg.wide_type)
    wide_groups = {plan.groups[t] for t in cfg.wide_tensors if t in plan.groups}
    by_group = {gid: compute_qparams(lo, hi, wide if gid in wide_groups else aq, symmetric=cfg.act_symmetric)
                for gid, (lo, hi) in group_range.items()}  # fmt: skip
    return {t: by_group[plan.groups[t]] for t in plan.tensors}


def apply_qdq(
    model: onnx.ModelProto,
    plan: QDQPlan,
    ranges: dict[str, tuple[float, float]],
    cfg: QDQConfig,
    *,
    weight_overrides: dict[str, np.ndarray] | None = None,
) -> PassResult:
    """Write the QDQ model. ``weight_overrides`` maps weight names to integer arrays (e.g. from AdaRound)
    that replace round-to-nearest; their quantization parameters are the ones this pass computes."""
    opset = default_opset(model) or 0
    need = cfg.required_opset()
    if opset < need:
        raise PassError(
            f"QDQ with {cfg.activation_type}/{cfg.weight_type} per_channel={cfg.per_channel} needs "
            f"opset {need}, the model has {opset}",
            hint="run the prepare pass with target_opset first",
        )
    w = _QDQWriter(model, plan, activation_qparams(plan, ranges, cfg), cfg)
    w.fold_activations()
    w.quantize_weights(weight_overrides)
    x_of = {name: w.nodes[name].input[0] for name, _ in plan.biases}  # before inputs are rewired
    w.quantize_activations()
    w.quantize_biases(x_of)
    w.assemble()
    biases_moved = biases_as_add(w.out, set(plan.nodes)) if get_target(cfg.target).bias_as_add else 0
    if biases_moved:
        _drop_unused_initializers(w.out.graph)  # the biases now live in the Adds' initializers
    details = {
        "nodes_quantized": len(plan.nodes) + len(plan.folded),
        "op_counts": dict(plan.op_counts),
        "activations_folded": len(plan.folded),
        "activation_tensors": w.stats["activations"],
        "weights": w.stats["weights"],
        "biases_int32": w.stats["biases"],
        "biases_as_add": biases_moved,
        "weights_float_for_16bit_inputs": w.stats["weights_float"],
        "bias_saturated_values": w.stats["bias_saturated"],
        "weight_scales_raised_for_int32_bias": w.stats["weight_scales_raised"],
        "skipped": dict(plan.skipped),
    }
    return PassResult(model=w.out, modified=bool(plan.nodes or plan.folded), details=details)


class _QDQWriter:
    """The steps of :func:`apply_qdq` on a copy of the model; new nodes and initializers are collected in
    order and spliced in by :meth:`assemble`."""

    def __init__(self, model: onnx.ModelProto, plan: QDQPlan, act_qp: dict[str, QParams], cfg: QDQConfig) -> None:
        self.plan, self.act_qp, self.cfg = plan, act_qp, cfg
        self.namer = _Namer(model)
        self.out = onnx.ModelProto()
        self.out.CopyFrom(model)
        self.g = self.out.graph
        self.graph = _Graph(model)
        self.nodes = {n.name: n for n in self.g.node}
        self.new_inits: list[onnx.TensorProto] = []
        self.head: list[onnx.NodeProto] = []  # weight / bias / graph-input Q-DQ nodes
        self.after: dict[str, list[onnx.NodeProto]] = defaultdict(list)  # producer -> Q/DQ to insert after it
        self.w_scale: dict[tuple[str, int], np.ndarray] = {}
        self.stats = {"weights": 0, "biases": 0, "bias_saturated": 0, "activations": 0, "weights_float": 0,
                      "weight_scales_raised": 0}  # fmt: skip
        self.removed = set(plan.folded)

    def fold_activations(self) -> None:
        """Folded activations: the producer writes the activation's output name, the activation goes away."""
        for n in self.g.node:
            for k, o in enumerate(n.output):
                if o in self.plan.renames:
                    n.output[k] = self.plan.renames[o]

    def quantize_weights(self, overrides: dict[str, np.ndarray] | None) -> None:
        cache: dict[tuple[str, int], str] = {}
        wide_groups = {self.plan.groups[t] for t in self.cfg.wide_tensors if t in self.plan.groups}
        wide = {t for t in self.plan.tensors if self.plan.groups[t] in wide_groups}
        for node_name, idx in self.plan.weights:
            node = self.nodes[node_name]
            if node.op_type in _WIDE_FLOAT_WEIGHTS and any(i in wide for i in node.input):
                self.stats["weights_float"] += 1  # see _WIDE_FLOAT_WEIGHTS
                continue
            floor = None if overrides and node.input[idx] in overrides else self._bias_floor(node, idx)
            dq_out, qp, raised = _quantize_weight(
                node, idx, self.graph, self.cfg, self.new_inits, self.head, cache, overrides, self.namer, floor
            )
            self.stats["weight_scales_raised"] += raised
            node.input[idx] = dq_out
            self.w_scale[(node_name, idx)] = qp.scale
            self.stats["weights"] += 1

    def _bias_floor(self, node: onnx.NodeProto, idx: int) -> np.ndarray | None:
        """The smallest weight scale (per output channel) at which the node's int32 bias, with scale s_x * s_w,
        stays within half the int32 range; None when there is no int32 bias to protect. A channel whose weights
        are all near zero gets a tiny s_w, and its bias would saturate int32 (it then loses its value): raising
        that scale costs the channel nothing, its weights still round to about zero."""
        bias = next((i for n, i in self.plan.biases if n == node.name), None)
        x_t = node.input[0]
        if idx != 1 or bias is None or not self.cfg.int32_bias or not self.cfg.symmetric_weights:
            return None
        if x_t not in self.act_qp or node.input[bias] not in self.graph.inits:
            return None
        b = np.abs(numpy_helper.to_array(self.graph.inits[node.input[bias]]).astype(np.float64).reshape(-1))
        s_x = float(np.asarray(self.act_qp[x_t].scale).reshape(-1)[0])
        return b / (s_x * (np.iinfo(np.int32).max / 2)) if s_x > 0 else None

    def quantize_activations(self) -> None:
        consumers_of: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        for n in self.g.node:
            if n.name not in self.removed:
                for k, i in enumerate(n.input):
                    consumers_of[i].append((n, k))
        graph_outputs = {o.name for o in self.g.output}
        producer = {o: n for n in self.g.node if n.name not in self.removed for o in n.output}
        for t in self.plan.tensors:
            q, dq, dq_out = self._activation_pair(t, t in graph_outputs, producer)
            for consumer, k in consumers_of.get(t, []):
                consumer.input[k] = dq_out
            if t in producer:
                self.after[producer[t].name] += [q, dq]
            else:
                self.head += [q, dq]
            self.stats["activations"] += 1

    def _activation_pair(self, t: str, is_output: bool, producer: dict) -> tuple[onnx.NodeProto, onnx.NodeProto, str]:
        qp = self.act_qp[t]
        base = self.namer(t)
        scale_name, zp_name = f"{base}_scale", f"{base}_zero_point"
        self.new_inits += [
            numpy_helper.from_array(np.asarray(qp.scale, np.float32), scale_name),
            make_initializer(zp_name, np.asarray(qp.zero_point), qp.qtype),
        ]
        src = t
        if is_output:  # keep the graph output's name on the DQ side
            src = f"{base}_float"
            producer[t].output[list(producer[t].output).index(t)] = src
        dq_out = t if is_output else f"{base}_dq"
        q = helper.make_node("QuantizeLinear", [src, scale_name, zp_name], [f"{base}_q"], name=f"{base}_QuantizeLinear")
        dq = helper.make_node(
            "DequantizeLinear", [f"{base}_q", scale_name, zp_name], [dq_out], name=f"{base}_DequantizeLinear"
        )
        return q, dq, dq_out

    def quantize_biases(self, x_of: dict[str, str]) -> None:
        for node_name, idx in self.plan.biases:
            x_t = x_of[node_name]
            w_key = (node_name, 1)
            if x_t not in self.act_qp or w_key not in self.w_scale:
                continue  # input not quantized: the bias stays float
            s_b = (np.float64(self.act_qp[x_t].scale) * self.w_scale[w_key].astype(np.float64)).reshape(-1)
            saturated = _quantize_bias(
                self.nodes[node_name], idx, s_b, self.graph, self.new_inits, self.head, self.namer
            )
            self.stats["biases"] += 1
            self.stats["bias_saturated"] += saturated

    def assemble(self) -> None:
        new_nodes = list(self.head)
        for n in self.g.node:
            if n.name in self.removed:
                continue
            new_nodes.append(n)
            new_nodes.extend(self.after.get(n.name, []))
        del self.g.node[:]
        self.g.node.extend(new_nodes)
        self.g.initializer.extend(self.new_inits)
        _drop_unused_initializers(self.g)
        del self.g.value_info[:]


class _Namer:
    """Base names for the tensors apply_qdq adds (``<base>_q``, ``_dq``, ``_scale``, ...) that collide
    with no name in the model nor with each other."""

    SUFFIXES = ("_q", "_dq", "_scale", "_zero_point", "_quantized", "_float", "_QuantizeLinear", "_DequantizeLinear")

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.taken = {t.name for t in g.initializer} | {i.name for i in g.input} | {o.name for o in g.output}
        self.taken |= {x for n in g.node for x in [*n.input, *n.output, n.name]}

    def __call__(self, name: str) -> str:
        base, k = name, 0
        while any(base + s in self.taken for s in self.SUFFIXES):
            k += 1
            base = f"{name}_{k}"
        self.taken |= {base + s for s in self.SUFFIXES}
        return base


def weight_qparams(w: np.ndarray, node: onnx.NodeProto, idx: int, cfg: QDQConfig) -> QParams:
    """The quantization parameters ``apply_qdq`` gives weight input ``idx`` of ``node`` (AdaRound uses
    them too, so that the integers it optimises are exactly the ones written)."""
    per_channel = cfg.per_channel and w.ndim >= 2 and idx == 1
    axis = weight_axis(node.op_type, _attrs(node), w.ndim) if per_channel else None
    wq = qtype(cfg.weight_type)
    reduce = cfg.reduce_range and wq.bits == 8
    if axis is None:
        return compute_qparams(float(min(w.min(), 0)), float(max(w.max(), 0)), wq, symmetric=cfg.symmetric_weights,
                               reduce_range=reduce)  # fmt: skip
    red = tuple(a for a in range(w.ndim) if a != axis)
    return compute_qparams(
        np.minimum(w.min(axis=red), 0),
        np.maximum(w.max(axis=red), 0),
        wq,
        symmetric=cfg.symmetric_weights,
        axis=axis,
        reduce_range=reduce,
    )


def _quantize_weight(node, idx, graph: _Graph, cfg: QDQConfig, new_inits, head, cache, overrides, namer,
                     floor: np.ndarray | None = None):  # fmt: skip
    wname = node.input[idx]
    w = numpy_helper.to_array(graph.inits[wname]).astype(np.float32)
    qp, raised = _raised(weight_qparams(w, node, idx, cfg), floor)
    axis = qp.axis
    key = (wname, -1 if axis is None else axis)
    wq = qtype(cfg.weight_type)
    if key in cache:
        return cache[key], qp, 0
    base = namer(wname + ("" if axis is None else f"_axis{axis}"))
    q = quantize(w, qp)
    if overrides and wname in overrides:
        q = np.asarray(overrides[wname])
        if q.shape != w.shape or q.dtype != q.dtype.type(0).dtype or q.min() < wq.qmin or q.max() > wq.qmax:
            raise PassError(
                f"weight override for {wname!r} does not fit: shape {q.shape} vs {w.shape}, "
                f"values must lie in [{wq.qmin}, {wq.qmax}]",
                hint="pass developer: a weight override must hold the weight's shape in the weight type's range",
            )
        q = q.astype(wq.storage)
    new_inits += [
        make_initializer(f"{base}_quantized", q, wq),
        numpy_helper.from_array(np.asarray(qp.scale, np.float32), f"{base}_scale"),
        make_initializer(f"{base}_zero_point", np.asarray(qp.zero_point), wq),
    ]
    attrs = {} if axis is None else {"axis": axis}
    out_name = f"{base}_dq"
    head.append(
        helper.make_node(
            "DequantizeLinear",
            [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
            [out_name],
            name=f"{base}_DequantizeLinear",
            **attrs,
        )
    )
    cache[key] = out_name
    return out_name, qp, raised


def _raised(qp: QParams, floor: np.ndarray | None) -> tuple[QParams, int]:
    """``qp`` with its scales raised to ``floor`` (per channel, or its largest value per tensor), and how many
    scales that changed."""
    if floor is None:
        return qp, 0
    scale = np.asarray(qp.scale, np.float64)
    if scale.size > 1 and floor.size != scale.size:
        return qp, 0
    low = floor.reshape(scale.shape) if scale.size > 1 else np.asarray(floor.max(initial=0.0))
    new = np.maximum(scale, low)
    changed = int(np.count_nonzero(new > scale))
    return (QParams(new.astype(np.float32), qp.zero_point, qp.axis, qp.qtype), changed) if changed else (qp, 0)


def _quantize_bias(node, idx, s_b: np.ndarray, graph: _Graph, new_inits, head, namer) -> int:
    """int32 bias with scale s_x * s_w: one scale (no axis, valid from opset 10) when the weight is per
    tensor, one per output channel on axis 0 when it is per channel."""
    bname = node.input[idx]
    b = numpy_helper.to_array(graph.inits[bname]).astype(np.float64).reshape(-1)
    per_channel = s_b.size > 1
    if per_channel and s_b.size != b.size:
        return 0
    s_b = np.maximum(s_b.reshape(-1) if per_channel else s_b.reshape(()), np.finfo(np.float32).tiny)
    if not (s_b <= np.finfo(np.float32).max).all():
        raise QuantizationError(
            f"the int32 bias scale of node {node.name!r} (input scale x weight scale = {float(np.max(s_b)):.3g}) "
            "overflows float32",
            hint=f"its weights or input activations are near the float32 limit: leave it in float with "
            f"--exclude-node {node.name}",
        )
    scaled = np.rint(b / s_b)
    info = np.iinfo(np.int32)
    saturated = int(((scaled < info.min) | (scaled > info.max)).sum())
    q = np.clip(scaled, info.min, info.max).astype(np.int32)
    base = namer(f"{bname}_{node.name}")
    new_inits += [
        numpy_helper.from_array(q, f"{base}_quantized"),
        numpy_helper.from_array(s_b.astype(np.float32), f"{base}_scale"),
        numpy_helper.from_array(np.zeros(s_b.shape, np.int32), f"{base}_zero_point"),
    ]
    head.append(
        helper.make_node(
            "DequantizeLinear",
            [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
            [f"{base}_dq"],
            name=f"{base}_DequantizeLinear",
            **({"axis": 0} if per_channel else {}),
        )
    )
    node.input[idx] = f"{base}_dq"
    return saturated


def _drop_unused_initializers(g: onnx.GraphProto) -> None:
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    inits = {t.name for t in keep}
    graph_inputs = [i for i in g.input if i.name in used or i.name not in inits]
    del g.input[:]
    g.input.extend(graph_inputs)


def _run(model: onnx.ModelProto, ctx: QuantizeContext, cfg: QDQConfig) -> PassResult:
    """Insert Q/DQ as planned; ``ctx.qdq`` is the config the plan was made with (it may exclude more nodes).
    The float model it starts from stays in ``ctx.pre_qdq`` for passes that write other QDQ forms of it."""
    ctx.pre_qdq = model
    return write_qdq(model, ctx, ctx.qdq)


def write_qdq(model: onnx.ModelProto, ctx: QuantizeContext, qdq: QDQConfig, plan: QDQPlan | None = None) -> PassResult:
    """The QDQ model of the prepared float ``model`` under ``qdq`` (``plan`` or ctx's, ctx's ranges and weight
    overrides), with the weights of subgraphs and the embedding tables."""
    result = apply_qdq(model, plan or ctx.plan, ctx.ranges, qdq, weight_overrides=ctx.weight_overrides)
    details = {k: v for k, v in result.details.items() if k != "skipped"}  # the plan's skips are the summary's
    subgraph_kinds = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    if any(a.type in subgraph_kinds for n in model.graph.node for a in n.attribute):
        from onnxq.passes._subgraph_weights import quantize_subgraph_weights

        details["subgraphs"] = quantize_subgraph_weights(result.model, qdq)
    if qdq.quantize_embeddings:
        from onnxq.passes._embeddings import quantize_embedding_tables

        tables = quantize_embedding_tables(result.model, EMBEDDING_MIN_ELEMENTS, qdq.left_out)
        if tables:
            details["embedding_tables"] = tables
    changed = result.modified or bool(details.get("subgraphs") or details.get("embedding_tables"))
    return PassResult(result.model, changed, details)


SPEC = PassSpec(
    name="qdq",
    phase=Phase.FORMAT,
    config=QDQConfig,
    run=_run,
    summary="QuantizeLinear/DequantizeLinear pairs by the target's placement policy; int8 weights, int32 biases",
    needs=("qdq", "plan", "ranges"),
    optional=False,
)
