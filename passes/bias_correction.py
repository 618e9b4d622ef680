"""Bias correction (Nagel et al., 2019, "Data-Free Quantization", section 4.2), in numpy.

Rounding a layer's weights ``W`` to ``W_q`` shifts the mean of its output by ``E[W_q x] - E[W x] =
(W_q - W) E[x]`` per output channel, and the shift adds up through the network. Subtracting it from the
float bias before QDQ insertion (which then quantizes that corrected bias to int32 with scale s_x s_w)
removes it. ``W_q`` is exactly what :func:`onnxq.passes.qdq.apply_qdq` will write: the same
:func:`~onnxq.passes.qdq.weight_qparams`, and the AdaRound integers when there are any.

``E[x]`` comes from one of:

* **empirical, sequential** (default): the layer's input in the partly quantized model, with every
  layer before it quantized and bias-corrected. The QDQ model is rebuilt and run for ``rounds`` rounds,
  each using the corrections of the previous one; after round k every layer at depth <= k sees exactly
  the sequential input, and the rest converge (the change per round is reported);
* **empirical, float**: the layer's input in the float model (one run);
* **analytical** (data-free): the BatchNorm statistics kept by prepare, through the activation between:
  the mean of a normal N(beta, gamma^2) through Relu or Clip (the clipped-normal expectation in closed
  form), or through LeakyRelu/HardSwish/HardSigmoid (by integration on a fine grid).

Conv inputs keep their spatial layout in the empirical modes, so that ``(W_q - W) E[x]`` is computed with
the layer's own padding and strides (one onnxruntime run of the weight-error Convs on the mean maps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.errors import ConfigError
from onnxq.passes._graph import graph_output_names, initializers, producers, use_counts
from onnxq.passes._graph import readers as node_readers  # the name readers is a local here
from onnxq.passes._linear_layers import LinearLayer, ParamStore, attrs, linear_layer, per_channel_vector
from onnxq.passes._normal_moments import ELEMENTWISE, clipped_normal_mean, normal_mean_of
from onnxq.passes._tensor_stats import mean_maps
from onnxq.quantize.pipeline import PassResult, PassSpec, Phase, QuantizeContext

if TYPE_CHECKING:
    from onnxq.passes.qdq import QDQConfig, QDQPlan
from onnxq.quantize.qtypes import dequantize, quantize

MODES = ("auto", "empirical", "analytical")
INPUTS = ("sequential", "float")


@dataclass(frozen=True)
class BiasCorrectionConfig:
    """Options of :func:`correct_biases`; build from a recipe's ``bias_correction`` mapping."""

    mode: str = "auto"  # "empirical" (needs data), "analytical" (BatchNorm statistics), "auto": data if any
    inputs: str = "sequential"  # empirical: inputs of the partly quantized model, or of the float model
    samples: int | None = None  # calibration samples to use (None: all)
    rounds: int = 2  # sequential: rounds at most
    tolerance: float = 0.01  # sequential: stop when corrections change by less than this (relative)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"bias_correction: unknown mode {self.mode!r}", hint=f"choose one of {', '.join(MODES)}")
        if self.inputs not in INPUTS:
            raise ConfigError(
                f"bias_correction: unknown inputs {self.inputs!r}", hint=f"choose one of {', '.join(INPUTS)}"
            )
        for name in ("samples", "rounds"):
            value = getattr(self, name)
            if value is None and name == "samples":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"bias_correction: {name} must be a positive integer, got {value!r}",
                                  hint="give a whole number of 1 or more (`onnxq passes` shows the defaults)")
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float)) or self.tolerance < 0:
            raise ConfigError(f"bias_correction: tolerance must be a number >= 0, got {self.tolerance!r}",
                              hint="give 0 or more (`onnxq passes` shows the default)")

@dataclass
class _Target:
    """A quantized layer with a bias to correct and its weight error ``dw`` (float64)."""

    layer: LinearLayer
    kind: str  # "conv", "gemm", "matmul"
    dw: np.ndarray
    bias: str  # initializer to correct
    bias_kind: str  # "bias" (the node's own input) or "add" (a per-channel Add right after it)
    group: int = 1

    @property
    def name(self) -> str:
        return self.layer.name


def correct_biases(
    model: onnx.ModelProto,
    plan: QDQPlan,
    qcfg: QDQConfig,
    ranges: dict[str, tuple[float, float]],
    ctx: QuantizeContext,
    cfg: BiasCorrectionConfig | None = None,
    weight_overrides: dict[str, np.ndarray] | None = None,
) -> PassResult:
    """A copy of ``model`` whose float biases are corrected for the weight rounding of ``plan``/``qcfg``.

    Layers without a bias (or BatchNorm statistics, analytically) are skipped with a reason. Details give
    the mode used, layers and channels corrected, the largest correction and, sequentially, the rounds.
    """
    cfg = cfg or BiasCorrectionConfig()
    mode = cfg.mode if cfg.mode != "auto" else ("empirical" if ctx.calib is not None else "analytical")
    if mode == "empirical" and ctx.calib is None:
        raise ConfigError(
            "bias_correction: mode 'empirical' needs calibration data, and none was given",
            hint="pass calibration data, or use mode 'analytical' (BatchNorm statistics, data-free)",
        )
    targets, skipped = find_targets(model, plan, qcfg, weight_overrides)
    details: dict[str, Any] = {"mode": mode}
    if mode == "analytical":
        eps, more = _analytical(model, targets, ctx)
        skipped.update(more)
    elif cfg.inputs == "float":
        eps, source = _empirical(model, targets, ctx, cfg)
        details.update(inputs="float", means_from=source)
    else:
        eps, rounds, change = _sequential(model, targets, plan, qcfg, ranges, ctx, cfg, weight_overrides)
        details.update(inputs="sequential", rounds=rounds, last_round_change=change)
    out = _with_corrections(model, targets, eps)
    shifts = [np.abs(e) for e in eps.values()]
    details.update(
        layers_corrected=len(eps),
        channels_corrected=int(sum((s > 0).sum() for s in shifts)),
        largest_correction=float(max((s.max() for s in shifts), default=0.0)),
        layers_skipped=len(skipped),
        skip_reasons=skipped,
    )
    return PassResult(model=out, modified=bool(eps), details=details)


# --- targets --------------------------------------------------------------------------------------


def find_targets(
    model: onnx.ModelProto, plan: QDQPlan, qcfg: QDQConfig, overrides: dict[str, np.ndarray] | None = None
) -> tuple[list[_Target], dict[str, str]]:
    """The layers of ``plan`` whose weight is quantized and that have a bias; {name: reason} for the rest."""
    from onnxq.passes.qdq import weight_qparams

    g = model.graph
    inits, uses, outputs = initializers(g), use_counts(g), graph_output_names(g)
    readers = node_readers(g)
    by_name = {n.name: n for n in g.node}
    quantized = {name for name, idx in plan.weights if idx == 1}
    with_bias = {name for name, idx in plan.biases if idx == 2}
    targets, skipped = [], {}
    for name in plan.nodes:
        node = by_name[name]
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        layer = _layer(node, inits)
        if isinstance(layer, str) or name not in quantized:
            skipped[name] = layer if isinstance(layer, str) else "its weight is not quantized"
            continue
        bias, bias_kind = _bias_of(node, layer, inits, uses, outputs, readers, name in with_bias)
        if bias is None:
            skipped[name] = bias_kind
            continue
        w = numpy_helper.to_array(inits[layer.weight]).astype(np.float32)
        qp = weight_qparams(w, node, 1, qcfg)
        q = overrides[layer.weight] if overrides and layer.weight in overrides else quantize(w, qp)
        dw = dequantize(np.asarray(q), qp).astype(np.float64) - w.astype(np.float64)
        kind = "conv" if node.op_type == "Conv" else node.op_type.lower()
        targets.append(_Target(layer, kind, dw, bias, bias_kind, int(attrs(node).get("group", 1))))
    return targets, skipped


def _layer(node: onnx.NodeProto, inits) -> LinearLayer | str:
    """The layer view; any Conv (grouped too: its weight error is applied by onnxruntime's own Conv)."""
    if node.op_type != "Conv":
        return linear_layer(node, inits)
    if len(node.input) < 2 or node.input[1] not in inits:
        return "its weight is not an initializer"
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    dims = tuple(inits[node.input[1]].dims)
    group = int(attrs(node).get("group", 1))
    if 0 in dims:
        return f"Conv weight {list(dims)} is empty"
    if len(dims) < 3 or group < 1 or dims[0] % group:
        return f"Conv weight {list(dims)} does not fit group {group} (output channels must split into groups)"
    return LinearLayer(node, "conv", node.input[1], bias, 1, 0, len(dims))


def _bias_of(node, layer, inits, uses, outputs, readers, int32_bias: bool) -> tuple[str | None, str]:
    """(initializer, "bias"|"add"), or (None, reason): the node's bias when QDQ quantizes it to int32,
    else a per-channel constant Add that is the only reader of the node's output."""
    channels = _out_channels(layer, inits)
    if layer.bias and int32_bias:
        if uses[layer.bias] != 1:
            return None, "its bias is shared with other nodes"
        return layer.bias, "bias"  # Gemm's C may have any broadcastable shape; the correction broadcasts
    out = node.output[0]
    nxt = readers.get(out, [])
    if len(nxt) != 1 or out in outputs or nxt[0].op_type != "Add":
        return None, "it has no bias, or its bias is not quantized to int32"
    other = nxt[0].input[1] if nxt[0].input[0] == out else nxt[0].input[0]
    if other not in inits or uses[other] != 1 or other == out:
        return None, "it has no bias, and the Add after it is not a constant of its own"
    value = numpy_helper.to_array(inits[other])
    rank = layer.out_rank if layer.kind == "conv" else max(value.ndim, 1)
    axis = 1 if layer.kind == "conv" else rank - 1
    if value.dtype != np.float32 or per_channel_vector(value, rank, axis, channels) is None:
        return None, "the Add after it is not one float per output channel"
    return other, "add"


def _out_channels(layer: LinearLayer, inits) -> int:
    return tuple(inits[layer.weight].dims)[layer.out_axis]


# --- expectations of the inputs -------------------------------------------------------------------


def _sequential(model, targets, plan, qcfg, ranges, ctx, cfg, overrides) -> tuple[dict, int, float | None]:
    """Corrections from the inputs of the partly quantized, partly corrected model, refined per round."""
    from onnxq.passes.qdq import apply_qdq

    eps: dict[str, np.ndarray] = {}
    change = None
    rounds = 0
    current = model
    for rounds in range(1, cfg.rounds + 1):  # noqa: B007 (the count is reported)
        qmodel = apply_qdq(current, plan, ranges, qcfg, weight_overrides=overrides).model
        qnodes = {n.name: n for n in qmodel.graph.node}
        inputs = {t.name: qnodes[t.name].input[0] for t in targets}
        new = _corrections(targets, _means(qmodel, targets, inputs, ctx, cfg))
        change = _relative_change(eps, new) if eps else None
        eps = new
        current = _with_corrections(model, targets, eps)
        if change is not None and change <= cfg.tolerance:
            break
    return eps, rounds, change




def float_input_tensors(model: onnx.ModelProto, plan: QDQPlan) -> dict[str, bool]:
    """{input tensor: keep positions} of the layers bias correction may correct, for calibration to
    average on its way (:func:`onnxq.quantize.calibrate.collect_ranges` ``mean_tensors``); a superset of what
    :func:`find_targets` keeps, since it does not look at biases."""
    quantized = {name for name, idx in plan.weights if idx == 1}
    return {
        n.input[0]: n.op_type == "Conv"
        for n in model.graph.node
        if n.name in quantized and n.op_type in ("Conv", "Gemm", "MatMul") and n.input
    }


def _empirical(model, targets, ctx, cfg) -> tuple[dict[str, np.ndarray], str]:
    """Corrections from the float model's inputs: the means calibration gathered when they cover every
    target and the same samples, else a run of their own."""
    inputs = {t.name: t.layer.node.input[0] for t in targets}
    pre = ctx.input_means or {}
    all_samples = cfg.samples is None or (ctx.calib is not None and cfg.samples >= len(ctx.calib))
    if all_samples and all(inputs[t.name] in pre for t in targets):
        return _corrections(targets, {t.name: pre[inputs[t.name]] for t in targets}), "calibration"
    return _corrections(targets, _means(model, targets, inputs, ctx, cfg)), "own run"


def _means(model, targets, inputs: dict[str, str], ctx, cfg) -> dict[str, np.ndarray]:
    """Mean input of each target over the data: a [C, H, W] map for Convs, a [K] vector otherwise."""
    if not targets:
        return {}
    keep = {inputs[t.name]: t.kind == "conv" for t in targets}
    maps = mean_maps(model, ctx.calib, list(keep), batch_size=ctx.batch_size, samples=cfg.samples, keep_positions=keep)
    return {t.name: maps[inputs[t.name]] for t in targets}


def _relative_change(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> float:
    diff = max((float(np.abs(new[k] - old[k]).max()) for k in new), default=0.0)
    scale = max((float(np.abs(v).max()) for v in new.values()), default=0.0)
    return diff / scale if scale > 0 else 0.0


def _corrections(targets: list[_Target], means: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(W_q - W) E[x] per output channel of each target, from mean maps (Conv) or mean vectors."""
    eps = {}
    convs = [t for t in targets if t.kind == "conv" and means[t.name].ndim >= 2]
    eps.update(_conv_corrections(convs, means))
    for t in targets:
        if t.name in eps:
            continue
        m = means[t.name]
        if t.kind == "conv":  # a per-channel mean (analytical): spatial positions all alike
            eps[t.name] = _conv_on_constant(t, m)
        elif t.kind == "gemm":
            eps[t.name] = t.layer.alpha * ((t.dw @ m) if t.layer.in_axis == 1 else (m @ t.dw))
        else:
            eps[t.name] = m @ t.dw
    return eps


def _conv_on_constant(t: _Target, m: np.ndarray) -> np.ndarray:
    """A Conv's weight error applied to an input constant per channel (borders treated as interior)."""
    summed = t.dw.reshape(t.dw.shape[0], t.dw.shape[1], -1).sum(axis=2)  # [O, C/group]
    per_group = t.dw.shape[0] // t.group
    x = m.reshape(t.group, -1)  # [group, C/group]
    return np.einsum("gok,gk->go", summed.reshape(t.group, per_group, -1), x).reshape(-1)


def _conv_corrections(targets: list[_Target], means: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run every weight-error Conv on its mean input map in one onnxruntime session; average the output
    over positions. Linearity makes this E[conv(x, W_q - W)] exactly, padding and strides included."""
    if not targets:
        return {}
    from onnxq.runtime.session import internal_session

    nodes, inputs, outputs, inits, feeds = [], [], [], [], {}
    for k, t in enumerate(targets):
        x = means[t.name][None].astype(np.float32)
        inputs.append(helper.make_tensor_value_info(f"x{k}", onnx.TensorProto.FLOAT, list(x.shape)))
        outputs.append(helper.make_tensor_value_info(f"y{k}", onnx.TensorProto.FLOAT, None))
        inits.append(numpy_helper.from_array(t.dw.astype(np.float32), f"w{k}"))
        node = helper.make_node("Conv", [f"x{k}", f"w{k}"], [f"y{k}"])
        node.attribute.extend(t.layer.node.attribute)
        nodes.append(node)
        feeds[f"x{k}"] = x
    graph = helper.make_graph(nodes, "weight_error", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    sess = internal_session(model, optimization="disable")
    ys = sess.run([f"y{k}" for k in range(len(targets))], feeds)
    return {
        t.name: y[0].reshape(y.shape[1], -1).astype(np.float64).mean(axis=1) for t, y in zip(targets, ys, strict=True)
    }


def _with_corrections(model: onnx.ModelProto, targets: list[_Target], eps: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` with ``eps`` subtracted from each target's bias (Gemm: C -= eps / beta)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    params = ParamStore(out.graph)
    for t in targets:
        if t.name not in eps:
            continue
        e = eps[t.name] / (t.layer.beta if t.kind == "gemm" and t.bias_kind == "bias" else 1.0)
        value = params.get(t.bias)
        if value.size == e.size:
            params.set(t.bias, value - e.reshape(value.shape))
        else:  # one value for all channels becomes one per channel, on the output's channel axis
            shape = (
                (-1, 1, 1)[: 1 + max(t.layer.out_rank - 2, 0)] if t.kind == "conv" and t.bias_kind == "add" else (-1,)
            )
            params.set(t.bias, value.reshape(()) - e.reshape(shape))
    params.write(out.graph)
    return out


# --- analytical -----------------------------------------------------------------------------------


def _analytical(model, targets, ctx) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Corrections from BatchNorm statistics; {name: reason} for targets whose input has none."""
    stats = {e.output: e for e in ctx.bn_stats.values()}
    made = producers(model.graph)
    inits = initializers(model.graph)
    means, skipped = {}, {}
    for t in targets:
        mean = _input_mean(t.layer.node.input[0], stats, made, inits)
        if isinstance(mean, str):
            skipped[t.name] = mean
        else:
            means[t.name] = mean
    kept = [t for t in targets if t.name in means]
    return _corrections(kept, means), skipped


def _input_mean(tensor: str, stats, made, inits) -> np.ndarray | str:
    """E[x] per channel of ``tensor`` = act(z), z ~ N(beta, gamma^2) from the BatchNorm before act."""
    if tensor in stats:
        return stats[tensor].mean.astype(np.float64)
    act = made.get(tensor)
    if act is None or act.input[0] not in stats:
        return "no BatchNorm statistics for its input"
    mu = stats[act.input[0]].mean.astype(np.float64)
    sigma = stats[act.input[0]].std.astype(np.float64)
    op = act.op_type
    if op == "Relu":
        return clipped_normal_mean(mu, sigma, 0.0, math.inf)
    if op == "Clip":
        lo, hi = (_bound(act, i, inits) for i in (1, 2))
        if lo is None or hi is None:
            return "Clip bounds are not constants"
        return clipped_normal_mean(mu, sigma, lo, hi)
    f = ELEMENTWISE.get(op)
    if f is None:
        return f"the mean of a normal through {op} is not implemented"
    return normal_mean_of(lambda z: f(z, attrs(act)), mu, sigma)


def _bound(node, idx: int, inits) -> float | None:
    if len(node.input) <= idx or not node.input[idx]:
        return -math.inf if idx == 1 else math.inf
    if node.input[idx] not in inits:
        return None
    return float(numpy_helper.to_array(inits[node.input[idx]]))


__all__ = [
    "INPUTS",
    "MODES",
    "BiasCorrectionConfig",
    "clipped_normal_mean",
    "correct_biases",
    "find_targets",
    "normal_mean_of",
]


def _request_means(model: onnx.ModelProto, ctx: QuantizeContext, cfg: BiasCorrectionConfig) -> None:
    """With float inputs, the layers' input means come with calibration's own runs."""
    if cfg.mode != "analytical" and cfg.inputs == "float":
        ctx.mean_tensors.update(float_input_tensors(model, ctx.plan))


def _run(model: onnx.ModelProto, ctx: QuantizeContext, cfg: BiasCorrectionConfig) -> PassResult:
    return correct_biases(model, ctx.plan, ctx.qdq, ctx.ranges, ctx, cfg, weight_overrides=ctx.weight_overrides)


SPEC = PassSpec(
    name="bias-correction",
    phase=Phase.WEIGHT,
    config=BiasCorrectionConfig,
    run=_run,
    summary="corrects each layer's bias for the mean error its weight rounding causes (empirical or analytical)",
    needs=("qdq", "plan", "ranges"),
    after=("adaround",),
    before_calibration=_request_means,
)
