"""High-bias absorption for equalized pairs (DFQ, section 4.1; the pass itself is in passes/cle.py).

For ``layer1 -> act -> layer2`` with a ReLU-like ``act`` (``act(x) = x`` for ``x >= 0``), where channel i of
layer1's pre-activation output stays at or above ``c_i >= 0``: ``act(x) = act(x - c) + c``, so subtracting
``c`` from layer1's bias and adding ``W2 c`` to layer2's bias keeps the function and narrows the
activation's range by ``c``. ``W2 c`` is exact only when layer2 does not pad its input (padding would feed
zeros, not ``c``, at the borders), so padded Convs are skipped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx

from onnxq.errors import ConfigError
from onnxq.passes._graph import all_tensor_names, unique_name
from onnxq.passes._linear_layers import LinearLayer, ParamStore, apply_to_constant, conv_has_padding
from onnxq.passes._tensor_stats import channel_stats

# With n values seen per channel, a new value falls below their minimum with probability about 1/(n+1);
# 1000 values bound that by 0.1% (squeeze-excite tensors have one value per sample: too few to trust).
MIN_VALUES_PER_CHANNEL = 1000


def absorb_high_biases(model: onnx.ModelProto, pairs: list, ctx: Any, cfg: Any) -> tuple[str, int, dict[str, str]]:
    """Absorb in place into ``model`` (already equalized); return (source used, channels moved,
    {pair: why skipped}). ``ctx.bn_stats`` means are shifted by the amounts moved."""
    source = cfg.absorption_source
    if source == "auto":
        source = "data" if ctx.calib is not None else "bn"
    if source == "data" and ctx.calib is None:
        raise ConfigError(
            "cle: absorption_source 'data' needs calibration data, and none was given",
            hint="pass calibration data, or set absorption_source to 'bn' or 'auto'",
        )
    skipped: dict[str, str] = {}
    candidates = []
    for p in pairs:
        if p.act_kind == "none":
            continue  # without an activation nothing is clipped, so no shift narrows the range
        if p.second.kind in ("conv", "depthwise") and conv_has_padding(p.second.node):
            skipped[p.label] = "the second layer pads its input, so W2 c would be wrong at the borders"
            continue
        candidates.append(p)
    lower = _lower_bounds(model, candidates, ctx, cfg, source, skipped)
    params = ParamStore(model.graph)
    taken = all_tensor_names(model.graph)
    moved = 0
    for p in candidates:
        if p.label not in lower:
            continue
        c = np.maximum(lower[p.label], 0.0)
        if not (c > 0).any():
            continue
        _shift_first(p, params, c, taken)
        _shift_second(p.second, params, c, taken)
        _shift_bn_mean(ctx, p, c)
        moved += int((c > 0).sum())
    params.write(model.graph)
    return source, moved, skipped


def _lower_bounds(model, candidates, ctx, cfg, source: str, skipped: dict[str, str]) -> dict[str, np.ndarray]:
    """Per pair, a per-channel value the pre-activation output stays above."""
    if not candidates:
        return {}
    if source == "data":
        axes = {p.pre_act: p.first.channel_axis for p in candidates}
        stats = channel_stats(model, ctx.calib, axes, batch_size=ctx.batch_size, samples=cfg.absorption_samples)
        out = {}
        for p in candidates:
            s = stats[p.pre_act]
            if s["count"] < MIN_VALUES_PER_CHANNEL:
                skipped[p.label] = (
                    f"only {s['count']} calibration values per channel (fewer than {MIN_VALUES_PER_CHANNEL}): "
                    "their minimum is no safe bound"
                )
                continue
            # below both the observed minimum and mean - k std, so that the tail of unseen data is covered
            out[p.label] = np.minimum(s["min"], s["mean"] - cfg.absorption_sigmas * s["std"])
        return out
    out = {}
    for p in candidates:
        entry = ctx.bn_stats.get(p.first.name)
        if entry is None or entry.output != p.pre_act:
            skipped[p.label] = "no BatchNorm statistics for the first layer's output"
            continue
        out[p.label] = entry.mean.astype(np.float64) - cfg.absorption_sigmas * entry.std.astype(np.float64)
    return out


def _shift_first(p, params: ParamStore, c: np.ndarray, taken: set[str]) -> None:
    """Subtract c from layer1's pre-activation output: from its Add constant, else its bias."""
    if p.add:
        params.set(p.add, params.vector(p.add, p.first, p.channels) - c)
        return
    beta = p.first.beta if p.first.kind == "gemm" else 1.0
    name = _bias_of(p.first) or _add_bias(p.first, params, p.channels, taken)
    params.set(name, params.vector(name, p.first, p.channels) - c / beta)


def _shift_second(layer: LinearLayer, params: ParamStore, c: np.ndarray, taken: set[str]) -> None:
    """Add W2 c (what the constant c on each input channel contributes) to layer2's bias."""
    delta = apply_to_constant(layer, params.get(layer.weight), c)
    beta = layer.beta if layer.kind == "gemm" else 1.0
    name = _bias_of(layer) or _add_bias(layer, params, delta.size, taken)
    params.set(name, params.get(name) + delta / beta)  # broadcasting keeps any valid Gemm C shape valid


def _add_bias(layer: LinearLayer, params: ParamStore, channels: int, taken: set[str]) -> str:
    """Give a bias-less Conv or Gemm a zero bias input and return its name."""
    name = unique_name(f"{layer.name}_bias", taken)
    params.values[name] = np.zeros(channels)
    params.layout[name] = (channels,)
    node = layer.node
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = name
    return name


def _bias_of(layer: LinearLayer) -> str | None:
    """The bias input as the node has it now (a middle layer's bias may have been added by its other pair)."""
    node = layer.node
    return node.input[2] if len(node.input) > 2 and node.input[2] else None


def _shift_bn_mean(ctx: Any, p, c: np.ndarray) -> None:
    entry = ctx.bn_stats.get(p.first.name)
    if entry is not None and entry.output == p.pre_act and np.shape(entry.mean) == c.shape:
        ctx.bn_stats[p.first.name] = dataclasses.replace(entry, mean=(entry.mean - c).astype(np.float32))
