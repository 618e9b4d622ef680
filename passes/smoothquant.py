"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights, keeping the float function.

A transformer's LayerNormalization output ``X`` has a few channels with values far larger than the rest, which
per-tensor int8 activations cannot represent together; the MatMuls that read ``X`` have no such outliers in
their weights. For ``Y = X W`` and any per-input-channel ``s > 0``, ``Y = (X / s)(diag(s) W)``: dividing the
LayerNormalization's scale and bias by ``s`` and multiplying row ``j`` of every reading MatMul's weight by
``s_j`` leaves the function unchanged. With ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` the ranges meet in
the middle. ``alpha`` is searched per LayerNormalization among :attr:`SmoothQuantConfig.alphas` by the error
of the int8 product on rows sampled from the calibration data (activations per tensor, uint8 asymmetric;
weights per column, int8 symmetric, as the QDQ pass quantizes them); a group keeps ``s = 1`` when no alpha
lowers that error.

A group is a LayerNormalization whose output is read by MatMuls with a constant 2-D weight of their own on input
1 (the Q, K, V projections after one norm; the first MLP layer after another). Where those MatMuls are its only
readers (pre-LN transformers), ``1 / s`` folds into the norm's scale and bias; where the residual Add reads the
norm's output too (post-LN, as BERT), a ``Mul`` by ``1 / s`` is inserted before the MatMuls alone, as Intel
Neural Compressor does: one elementwise op per group, and quantization then sees ``X / s``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.errors import ConfigError, DataError
from onnxq.passes._graph import graph_output_names, use_counts
from onnxq.quantize.pipeline import PassResult, PassSpec, Phase, QuantizeContext

VERIFY_TOLERANCE = 1e-4  # s rescales in float64, rounded to float32 once: outputs move by float32 ulps


@dataclass(frozen=True)
class SmoothQuantConfig:
    alphas: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # the migration strengths tried per group
    rows: int = 2048  # activation rows sampled per group for the search
    samples: int | None = None  # calibration samples to use (None: all)
    seed: int = 0
    # keep s = 1 unless the sampled int8 error drops by this much: the proxy (one per-tensor range for the
    # sample, exact per-column weights) overrates small gains, which measured worse end to end
    min_gain_db: float = 1.0
    verify: bool = False  # check at run time that the float outputs are kept

    def __post_init__(self) -> None:
        if not self.alphas or not all(0 <= a <= 1 for a in self.alphas):
            raise ConfigError(
                f"smoothquant: alphas must be numbers in [0, 1], got {self.alphas}",
                hint='e.g. {"smoothquant": {"alphas": [0.5, 0.75]}}',
            )
        if self.rows < 16 or (self.samples is not None and self.samples < 1):
            raise ConfigError(
                "smoothquant: rows must be at least 16 and samples at least 1", hint="`onnxq passes` shows the defaults"
            )


@dataclass
class Group:
    norm: onnx.NodeProto
    tensor: str
    matmuls: list[onnx.NodeProto] = field(default_factory=list)
    fold: bool = True  # 1 / s into the norm's parameters; else a Mul before the MatMuls


def find_groups(model: onnx.ModelProto) -> tuple[list[Group], dict[str, str]]:
    """The LayerNormalization -> MatMul groups SmoothQuant can rescale, and why each other norm is skipped."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    uses, outputs = use_counts(g), graph_output_names(g)
    groups, skipped = [], {}
    for norm in (n for n in g.node if n.op_type == "LayerNormalization"):
        reason = _why_not(norm, inits, readers, uses, outputs)
        if reason:
            skipped[norm.name] = reason
        else:
            x = norm.output[0]
            matmuls = [r for r in readers[x] if _own_weight(r, x, inits, uses)]
            own_params = all(p in inits and uses.get(p, 0) == 1 for p in norm.input[1:3] if p)
            groups.append(Group(norm, x, matmuls, fold=len(matmuls) == len(readers[x]) and own_params))
    return groups, skipped


def _own_weight(node: onnx.NodeProto, x: str, inits, uses) -> bool:
    if node.op_type != "MatMul" or len(node.input) < 2 or node.input[0] != x:
        return False
    w = inits.get(node.input[1])
    return w is not None and len(w.dims) == 2 and uses.get(w.name, 0) == 1


def _why_not(norm, inits, readers, uses, outputs) -> str | None:
    x = norm.output[0]
    if x in outputs or not readers.get(x):
        return "its output is a graph output or unread"
    axis = next((onnx.helper.get_attribute_value(a) for a in norm.attribute if a.name == "axis"), -1)
    if axis != -1:
        return f"it normalizes from axis {axis}, not the last axis only"
    if not any(_own_weight(r, x, inits, uses) for r in readers[x]):
        return "no MatMul with a weight of its own reads its output"
    return None


def smooth(model: onnx.ModelProto, ctx: QuantizeContext, cfg: SmoothQuantConfig) -> PassResult:
    if ctx.calib is None:
        raise DataError("smoothquant needs calibration data", hint="pass --calib DATA")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    groups, skipped = find_groups(out)
    stats = _collect(out, ctx, groups, cfg) if groups else {}
    inits = {t.name: t for t in out.graph.initializer}
    chosen: dict[str, float] = {}
    gains: list[float] = []
    for group in groups:
        xmax, rows = stats[group.tensor]
        weights = [numpy_helper.to_array(inits[m.input[1]]).astype(np.float64) for m in group.matmuls]
        alpha, before, after = _search(xmax, rows, weights, cfg.alphas)
        if alpha is not None and after > 0 and 10 * np.log10(before / after) < cfg.min_gain_db:
            alpha = None
        if alpha is None:
            skipped[group.norm.name] = f"no alpha lowers the int8 error on the sampled rows by {cfg.min_gain_db} dB"
            continue
        _apply(out.graph, group, _scales(xmax, weights, alpha), inits)
        chosen[group.norm.name] = alpha
        gains.append(10 * np.log10(before / after) if after > 0 else float("inf"))
    details: dict[str, Any] = {
        "groups_smoothed": len(chosen),
        "groups_skipped": len(skipped),
        "alphas": chosen,
        "skip_reasons": skipped,
        "mean_error_reduction_db": round(float(np.mean(gains)), 2) if gains else None,
    }
    if cfg.verify or ctx.verify:
        from onnxq.passes.prepare import verify_outputs

        details["verify_max_rel_error"] = verify_outputs(model, out, ctx)
    return PassResult(out, modified=bool(chosen), details=details)


def _collect(model: onnx.ModelProto, ctx: QuantizeContext, groups: list[Group], cfg: SmoothQuantConfig) -> dict:
    """Per group tensor: max |x| per channel (last axis) over the data, and a seeded sample of rows."""
    from onnxq.passes._tensor_stats import _run_all

    rng = np.random.default_rng(cfg.seed)
    acc: dict[str, list] = {g.tensor: [None, []] for g in groups}

    def reduce(name: str, value: np.ndarray) -> None:
        rows = value.reshape(-1, value.shape[-1]).astype(np.float64)
        a = acc[name]
        a[0] = np.abs(rows).max(axis=0) if a[0] is None else np.maximum(a[0], np.abs(rows).max(axis=0))
        take = rows[rng.choice(len(rows), min(len(rows), cfg.rows), replace=False)]
        a[1].append(take)

    _run_all(model, ctx.calib, list(acc), ctx.batch_size, cfg.samples, reduce)
    out = {}
    for name, (xmax, parts) in acc.items():
        rows = np.concatenate(parts)
        out[name] = (xmax, rows[rng.choice(len(rows), min(len(rows), cfg.rows), replace=False)])
    return out


def _scales(xmax: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    wmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    s = np.power(np.maximum(xmax, 1e-8), alpha) / np.power(np.maximum(wmax, 1e-8), 1 - alpha)
    s = np.where((xmax > 0) & (wmax > 0), s, 1.0)
    return np.clip(s, 1e-4, 1e4)


def _int8_error(rows: np.ndarray, weights: list[np.ndarray], s: np.ndarray) -> float:
    """Relative squared error of the int8 products (X / s)(s W) against the float X W, over all MatMuls."""
    x = rows / s
    lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
    step = (hi - lo) / 255 or 1.0
    zp = np.rint(-lo / step)
    xq = (np.clip(np.rint(x / step) + zp, 0, 255) - zp) * step
    err = ref = 0.0
    for w in weights:
        ws = w * s[:, None]
        col = np.abs(ws).max(axis=0) / 127
        col = np.where(col > 0, col, 1.0)
        wq = np.clip(np.rint(ws / col), -127, 127) * col
        y = rows @ w
        err += float(np.square(y - xq @ wq).sum())
        ref += float(np.square(y).sum())
    return err / ref if ref > 0 else 0.0


def _search(xmax, rows, weights, alphas) -> tuple[float | None, float, float]:
    """(best alpha or None when none beats s = 1, error without smoothing, error with the best alpha)."""
    base = _int8_error(rows, weights, np.ones_like(xmax))
    best, best_err = None, base
    for alpha in alphas:
        err = _int8_error(rows, weights, _scales(xmax, weights, alpha))
        if err < best_err:
            best, best_err = alpha, err
    return best, base, best_err


def _apply(graph: onnx.GraphProto, group: Group, s: np.ndarray, inits: dict[str, onnx.TensorProto]) -> None:
    if group.fold:
        for name in group.norm.input[1:3]:
            if name:
                p = numpy_helper.to_array(inits[name]).astype(np.float64)
                inits[name].CopyFrom(numpy_helper.from_array((p / s).astype(np.float32), name))
    else:
        _insert_mul(graph, group, (1.0 / s).astype(np.float32))
    for m in group.matmuls:
        w = numpy_helper.to_array(inits[m.input[1]]).astype(np.float64)
        inits[m.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), m.input[1]))


def _insert_mul(graph: onnx.GraphProto, group: Group, inv_s: np.ndarray) -> None:
    """x_smoothed = x * (1 / s), right after the norm, read by the group's MatMuls only."""
    from onnx import helper

    from onnxq.passes._graph import all_tensor_names, unique_name

    taken = all_tensor_names(graph) | {n.name for n in graph.node}
    factor, smoothed = (
        unique_name(f"{group.tensor}_smooth_factor", taken),
        unique_name(f"{group.tensor}_smoothed", taken),
    )
    graph.initializer.append(numpy_helper.from_array(inv_s, factor))
    mul = helper.make_node(
        "Mul", [group.tensor, factor], [smoothed], name=unique_name(f"{group.norm.name}_smooth", taken)
    )
    for m in group.matmuls:
        m.input[0] = smoothed
    at = list(graph.node).index(group.norm) + 1
    graph.node.insert(at, mul)


SPEC = PassSpec(
    name="smoothquant",
    phase=Phase.FLOAT,
    config=SmoothQuantConfig,
    run=smooth,
    summary="migrates activation outliers of LayerNorm outputs into the MatMul weights; keeps the float function",
    needs=("calib",),
    after=("cle",),
)
