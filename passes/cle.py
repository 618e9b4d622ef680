"""Cross-layer equalization and high-bias absorption (Nagel et al., 2019, "Data-Free Quantization").

**Equalization.** For a chain ``layer1 -> [act] -> layer2`` where ``act`` is positively homogeneous
(``act(x / s) = act(x) / s`` for ``s > 0``: Relu, LeakyRelu, PRelu with positive slopes, Clip(0, inf), or
nothing), dividing output channel i of layer1 (weight row and bias) by ``s_i`` and multiplying input
channel i of layer2 by ``s_i`` leaves the chain's function unchanged. With ``r1_i`` the range (max |w|)
of layer1's output channel i and ``r2_i`` that of layer2's input channel i, ``s_i = sqrt(r1_i r2_i) / r2_i``
makes both ranges ``sqrt(r1_i r2_i)``, which evens out the per-channel weight ranges that per-tensor
quantization suffers from. Depthwise convs in the middle of three-layer chains take part in two pairs;
the pairs are swept until no scale moves by more than ``tolerance`` (in log space).

A pair is skipped, with a reason, when the tensor between the layers has other readers, when the
activation is not positively homogeneous, or when weights are shared. ReLU6 (Clip(0, 6)) is not: the clip
point would move per channel. ``relu6_to_relu`` replaces it by Relu, as DFQ does; that changes the float
function, and the pass says so.

**High-bias absorption.** Where layer1's pre-activation output stays above ``c_i > 0`` in channel i, a
ReLU-like activation satisfies ``act(x) = act(x - c) + c``, so ``c`` can leave layer1's bias and enter
layer2's bias as ``W2 c``, which narrows the activation range. ``c`` comes from the calibration data (the
per-channel minimum) or from the BatchNorm statistics kept by prepare (``beta - 3 |gamma|``). It is done
only into layers without zero padding, where ``W2 c`` is exact at the borders too.

**Contract.** Without ReLU6 replacement, and with absorption taken from data, the float outputs on the
calibration data are unchanged up to float32 rounding (relative error <= :data:`VERIFY_TOLERANCE`);
``verify`` (or ``ctx.verify``) checks this at run time. ``ctx.bn_stats`` is updated to the new
scale and shift of each layer, so later passes (analytical bias correction) stay consistent.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.errors import ConfigError, PassError
from onnxq.passes._graph import graph_output_names, initializers, prune_unused_initializers, readers, use_counts
from onnxq.passes._linear_layers import (
    LinearLayer,
    ParamStore,
    channel_ranges,
    linear_layer,
    per_channel_vector,
    scale_channels,
)
from onnxq.passes._tensor_stats import run_outputs, verify_feeds
from onnxq.quantize.pipeline import PassResult, PassSpec, Phase, QuantizeContext

# CLE re-associates float arithmetic: each weight is scaled in float64 and rounded to float32 once, so
# outputs move by a few float32 ulps; 1e-5 relative leaves two orders of magnitude of headroom.
VERIFY_TOLERANCE = 1e-5
ABSORPTION_SOURCES = ("auto", "data", "bn")
# Activations that may sit between the layers of a pair (after the optional per-channel bias Add).
_ACTIVATIONS = ("Relu", "LeakyRelu", "PRelu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "Elu",
                "Selu", "Gelu", "Softplus", "Mish", "Softsign", "ThresholdedRelu", "Celu")  # fmt: skip
_LINEAR_KINDS = {"conv": "conv", "depthwise": "conv", "gemm": "gemm"}


@dataclass(frozen=True)
class CLEConfig:
    """Options of :func:`equalize` (the recipe's ``cle`` mapping)."""

    iterations: int = 100  # sweeps over all pairs at most
    tolerance: float = 1e-4  # stop when max |log s| of a sweep falls below this
    relu6_to_relu: bool = False  # replace Clip(0, 6) between a pair by Relu (changes the float function)
    high_bias_absorption: bool = True
    absorption_source: str = "auto"  # "data" (calibration minima), "bn" (BatchNorm statistics), "auto"
    absorption_sigmas: float = 3.0  # c = mean - sigmas * std (BatchNorm's, or the data's, capped by its min)
    absorption_samples: int | None = None  # "data": calibration samples to use (None: all)
    verify: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.type == "int | None":
                continue
            kind = str(f.type).removesuffix(" | None")
            want = {"int": int, "float": (int, float), "bool": bool, "str": str}[kind]
            if isinstance(value, bool) != (kind == "bool") or not isinstance(value, want):
                raise ConfigError(f"cle: {f.name} must be of type {f.type}, got {value!r}",
                                  hint="`onnxq passes` lists cle's options with their types and defaults")
        if self.iterations < 1:
            raise ConfigError(f"cle: iterations must be at least 1, got {self.iterations}", hint="e.g. 100")
        if not self.tolerance > 0:
            raise ConfigError(f"cle: tolerance must be positive, got {self.tolerance}",
                              hint="`onnxq passes` shows the default")
        if self.absorption_source not in ABSORPTION_SOURCES:
            raise ConfigError(
                f"cle: unknown absorption_source {self.absorption_source!r}",
                hint=f"choose one of {', '.join(ABSORPTION_SOURCES)}",
            )
        if not self.absorption_sigmas >= 0:
            raise ConfigError(f"cle: absorption_sigmas must be >= 0, got {self.absorption_sigmas}",
                              hint="e.g. 3 (the default); 0 turns high-bias absorption off")
        if self.absorption_samples is not None and self.absorption_samples < 1:
            raise ConfigError(f"cle: absorption_samples must be at least 1, got {self.absorption_samples}",
                              hint="give 1 or more, or leave it out to use every calibration sample")

@dataclass
class Pair:
    """``first -> [add] -> [act] -> second``; ``pre_act`` is the activation's input tensor."""

    first: LinearLayer
    second: LinearLayer
    add: str | None  # initializer of a per-channel Add right after ``first`` (exporters' separate bias)
    act: onnx.NodeProto | None
    act_kind: str  # "none", "relu", "relu6"
    pre_act: str
    channels: int

    @property
    def label(self) -> str:
        return f"{self.first.name} -> {self.second.name}"


def equalize(model: onnx.ModelProto, cfg: CLEConfig | None = None, ctx: QuantizeContext | None = None) -> PassResult:
    """Equalize every eligible pair of ``model`` (prepared: BatchNorm folded); return a new model.

    ``model`` is not changed; ``ctx.bn_stats`` is updated in place to the rescaled layers. The
    details report pairs equalized and skipped (with reasons), sweeps, the largest per-channel weight
    range ratio before and after, ReLU6 replacements, channels absorbed and, with verify, the error.
    """
    cfg = cfg or CLEConfig()
    ctx = ctx or QuantizeContext()
    work = onnx.ModelProto()
    work.CopyFrom(model)
    pairs, skipped = find_pairs(work, cfg.relu6_to_relu)
    params = ParamStore(work.graph)
    layers = {p.first.name: p.first for p in pairs} | {p.second.name: p.second for p in pairs}
    ratio_before = _largest_range_ratio(layers.values(), params)
    sweeps, converged, scales = _equalize_pairs(pairs, params, cfg)
    params.write(work.graph)
    _rescale_bn_stats(ctx, pairs, scales)
    replaced = [p.act.name for p in pairs if p.act_kind == "relu6"]
    for p in pairs:
        if p.act_kind == "relu6":
            _to_relu(p.act)
    details: dict[str, Any] = {
        "pairs_equalized": len(pairs),
        "pairs_skipped": len(skipped),
        "most_common_skip": _most_common(skipped),
        "skip_reasons": skipped,
        "sweeps": sweeps,
        "converged": converged,
        "largest_range_ratio_before": ratio_before,
        "largest_range_ratio_after": _largest_range_ratio(layers.values(), params),
        "relu6_replaced": len(replaced),
        "relu6_replaced_nodes": replaced,
    }
    source = None
    if cfg.high_bias_absorption and pairs:
        from onnxq.passes._absorb import absorb_high_biases

        source, absorbed, absorb_skipped = absorb_high_biases(work, pairs, ctx, cfg)
        details.update(bias_absorbed_channels=absorbed, absorption_source=source, absorption_skipped=absorb_skipped)
    prune_unused_initializers(work.graph)
    exact = not replaced and not (source == "bn" and details.get("bias_absorbed_channels"))
    details["float_function_kept"] = exact
    if replaced:
        details["note"] = f"the float function changed: {len(replaced)} ReLU6 replaced by Relu"
    elif not exact:
        details["note"] = "the float function changed slightly: biases absorbed from BatchNorm statistics"
    if cfg.verify or ctx.verify:
        details["verify_max_rel_error"] = verify_float_outputs(model, work, ctx, enforce=exact)
    return PassResult(model=work, modified=bool(pairs), details=details)


def _most_common(skipped: dict[str, str]) -> str | None:
    if not skipped:
        return None
    top, count = Counter(skipped.values()).most_common(1)[0]  # ties: the first seen, so output is stable
    return f"{count} x {top}"


# --- finding pairs --------------------------------------------------------------------------------


def find_pairs(model: onnx.ModelProto, relu6_to_relu: bool = False) -> tuple[list[Pair], dict[str, str]]:
    """The equalizable pairs of ``model`` in graph order, and {"first -> second": reason} for the skipped."""
    g = model.graph
    inits, uses, outputs = initializers(g), use_counts(g), graph_output_names(g)
    view = _View(inits, uses, outputs, readers(g), relu6_to_relu)
    pairs: list[Pair] = []
    skipped: dict[str, str] = {}
    for node in g.node:
        first = linear_layer(node, inits) if node.op_type in ("Conv", "Gemm") else None
        if not isinstance(first, LinearLayer):
            continue
        found = view.follow(first)
        if isinstance(found, Pair):
            pairs.append(found)
        elif found is not None:
            skipped[found[0]] = found[1]
    return pairs, skipped


@dataclass
class _View:
    inits: dict[str, onnx.TensorProto]
    uses: Any
    outputs: set[str]
    readers: dict[str, list[onnx.NodeProto]]
    relu6_to_relu: bool

    def single_reader(self, tensor: str) -> onnx.NodeProto | None:
        readers = self.readers.get(tensor, [])
        if tensor in self.outputs or len(readers) != 1 or self.uses[tensor] != 1:
            return None
        return readers[0]

    def follow(self, first: LinearLayer) -> Pair | tuple[str, str] | None:
        """The pair starting at ``first``; (label, reason) when one is near but not allowed; else None."""
        channels = first.out_channels(tuple(self.inits[first.weight].dims))
        tensor, add, act, kind = first.node.output[0], None, None, "none"
        nxt = self.single_reader(tensor)
        if nxt is not None and nxt.op_type == "Add":
            add = self._bias_add(nxt, tensor, first, channels)
            if add is not None:
                tensor, nxt = nxt.output[0], self.single_reader(nxt.output[0])
        pre_act = tensor
        if nxt is not None and nxt.op_type in _ACTIVATIONS:
            act, tensor = nxt, nxt.output[0]
            kind = self._activation_kind(nxt)
            nxt = self.single_reader(tensor)
        if nxt is None:
            return self._why_no_reader(first, tensor, act)
        second = linear_layer(nxt, self.inits) if nxt.op_type in ("Conv", "Gemm") else None
        if not isinstance(second, LinearLayer) or nxt.input[0] != tensor:
            return None if second is None else (f"{first.name} -> {nxt.name}", str(second))
        label = f"{first.name} -> {second.name}"
        if kind not in ("none", "relu", "relu6"):
            return label, kind
        if kind == "relu6" and not self.relu6_to_relu:
            return label, "Clip(0, 6) (ReLU6) is not positively homogeneous; relu6_to_relu=true replaces it"
        reason = self._why_not_compatible(first, second, add, channels)
        if reason:
            return label, reason
        return Pair(first, second, add, act, kind, pre_act, channels)

    def _why_no_reader(self, first: LinearLayer, tensor: str, act) -> tuple[str, str] | None:
        readers = self.readers.get(tensor, [])
        if any(r.op_type in ("Conv", "Gemm") for r in readers) and (len(readers) > 1 or tensor in self.outputs):
            return f"{first.name} -> ?", f"{tensor!r} has {len(readers)} readers (or is a graph output)"
        return None

    def _bias_add(self, add: onnx.NodeProto, tensor: str, first: LinearLayer, channels: int) -> str | None:
        other = add.input[1] if add.input[0] == tensor else add.input[0]
        if other not in self.inits or self.uses[other] != 1 or other == tensor:
            return None
        value = numpy_helper.to_array(self.inits[other])
        if value.dtype != np.float32:
            return None
        ok = per_channel_vector(value, first.out_rank, first.channel_axis, channels)
        return other if ok is not None else None

    def _activation_kind(self, act: onnx.NodeProto) -> str:
        """ "none"/"relu"/"relu6" when usable, else the reason it is not."""
        op = act.op_type
        if op == "Relu":
            return "relu"
        if op == "LeakyRelu":
            alpha = next((a.f for a in act.attribute if a.name == "alpha"), 0.01)
            return "relu" if alpha >= 0 else "LeakyRelu with a negative slope is not handled"
        if op == "PRelu":
            slope = self._const(act.input[1]) if len(act.input) > 1 else None
            if slope is None or not (slope > 0).all():
                return "PRelu slopes are not constant and positive"
            return "relu"
        if op == "Clip":
            lo, hi = (self._scalar(act, i) for i in (1, 2))
            if lo == 0.0 and hi is None:
                return "relu"
            if lo == 0.0 and hi == 6.0:
                return "relu6"
            return f"Clip({lo}, {hi}) is not positively homogeneous"
        return f"{op} is not positively homogeneous"

    def _const(self, name: str) -> np.ndarray | None:
        return numpy_helper.to_array(self.inits[name]) if name in self.inits else None

    def _scalar(self, node: onnx.NodeProto, idx: int) -> float | None:
        if len(node.input) <= idx or not node.input[idx]:
            return None
        value = self._const(node.input[idx])
        return float("nan") if value is None or value.size != 1 else float(value)

    def _why_not_compatible(self, first: LinearLayer, second: LinearLayer, add, channels: int) -> str | None:
        if _LINEAR_KINDS[first.kind] != _LINEAR_KINDS[second.kind]:
            return f"{first.kind} feeding {second.kind} (channel layouts differ)"
        if second.in_channels(tuple(self.inits[second.weight].dims)) != channels:
            return "the layers' channel counts differ"
        for name in (first.weight, first.bias, second.weight):
            if name and self.uses[name] != 1:
                return f"initializer {name!r} is shared with other nodes"
        if first.kind == "gemm" and first.bias:
            c = numpy_helper.to_array(self.inits[first.bias])
            if per_channel_vector(c, 2, 1, channels) is None:
                return f"Gemm bias of shape {c.shape} is not one value per output channel"
        return None


# --- equalizing -----------------------------------------------------------------------------------


def _equalize_pairs(pairs: list[Pair], params: ParamStore, cfg: CLEConfig) -> tuple[int, bool, list[np.ndarray]]:
    """Sweep the pairs until no scale moves by more than ``tolerance``; return (sweeps, converged,
    the total scale s of each pair's intermediate tensor: new = old / s)."""
    totals = [np.ones(p.channels) for p in pairs]
    for sweep in range(1, cfg.iterations + 1):
        worst = 0.0
        for k, p in enumerate(pairs):
            s = _equalize_pair(p, params)
            totals[k] *= s
            worst = max(worst, float(np.abs(np.log(s)).max(initial=0.0)))
        if worst < cfg.tolerance:
            return sweep, True, totals
    return cfg.iterations, False, totals


def _equalize_pair(p: Pair, params: ParamStore) -> np.ndarray:
    """Rescale one pair in place; return s (layer1's channel i was divided by s_i, layer2's multiplied)."""
    w1, w2 = params.get(p.first.weight), params.get(p.second.weight)
    r1 = channel_ranges(w1, p.first.out_axis)
    r2 = channel_ranges(w2, p.second.in_axis)
    s = np.ones(p.channels)
    live = (r1 > 0) & (r2 > 0)  # a dead channel (all-zero weights) has nothing to balance
    s[live] = np.sqrt(r1[live] / r2[live])  # = sqrt(r1 r2) / r2
    params.set(p.first.weight, scale_channels(w1, p.first.out_axis, 1.0 / s))
    params.set(p.second.weight, scale_channels(w2, p.second.in_axis, s))
    for name in (p.first.bias, p.add):
        if name:
            params.set(name, params.vector(name, p.first, p.channels) / s)
    return s


def _largest_range_ratio(layers, params: ParamStore) -> float | None:
    """max over layers of (largest / smallest non-zero per-output-channel range) of the weight."""
    ratios = []
    for layer in layers:
        r = channel_ranges(params.get(layer.weight), layer.out_axis)
        r = r[r > 0]
        if r.size:
            ratios.append(float(r.max() / r.min()))
    return round(max(ratios), 3) if ratios else None


def _rescale_bn_stats(ctx: QuantizeContext, pairs: list[Pair], scales: list[np.ndarray]) -> None:
    """BatchNorm statistics describe layer1's output, which is now divided by s per channel."""
    for p, s in zip(pairs, scales, strict=True):
        entry = ctx.bn_stats.get(p.first.name)
        if entry is not None and np.shape(entry.mean) == s.shape:
            ctx.bn_stats[p.first.name] = dataclasses.replace(
                entry, mean=(entry.mean / s).astype(np.float32), std=(entry.std / s).astype(np.float32)
            )


def _to_relu(node: onnx.NodeProto) -> None:
    """Turn Clip(x, 0, 6) into Relu(x) in place (the bound initializers are pruned later)."""
    node.op_type = "Relu"
    del node.input[1:]
    del node.attribute[:]


# --- checking -------------------------------------------------------------------------------------


def verify_float_outputs(
    before: onnx.ModelProto, after: onnx.ModelProto, ctx: QuantizeContext, *, enforce: bool
) -> float:
    """Largest relative output error of ``after`` vs ``before`` on ctx.calib's first batch (random data
    without one); with ``enforce``, PassError when it exceeds :data:`VERIFY_TOLERANCE`."""
    from onnxq.passes.prepare import relative_error

    feeds = verify_feeds(before, ctx)
    reference = run_outputs(before, feeds, "the model before CLE")
    actual = run_outputs(after, feeds, "the model after CLE")
    error = max((relative_error(ref, actual[name]) for name, ref in reference.items()), default=0.0)
    if enforce and not error <= VERIFY_TOLERANCE:
        raise PassError(
            f"CLE changed the model's float outputs: relative error {error:.3g} exceeds {VERIFY_TOLERANCE:g}",
            hint="this is an onnxq bug; run with --debug and report it; drop 'cle' from --passes meanwhile",
        )
    return error


__all__ = [
    "ABSORPTION_SOURCES",
    "CLEConfig",
    "Pair",
    "VERIFY_TOLERANCE",
    "equalize",
    "find_pairs",
    "verify_float_outputs",
]


SPEC = PassSpec(
    name="cle",
    phase=Phase.FLOAT,
    config=CLEConfig,
    run=lambda model, ctx, cfg: equalize(model, cfg, ctx),
    summary="cross-layer equalization of Conv/Gemm pairs and high-bias absorption; keeps the float function",
)
