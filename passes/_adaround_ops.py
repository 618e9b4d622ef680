"""Layer geometry for AdaRound: a weighted node written as a grouped matrix product over input rows.

Every layer AdaRound handles computes, for each output position, ``y = alpha * Wm @ x_row`` per group,
where ``Wm`` is the weight rearranged to ``[groups, out_per_group, in_per_group]`` and ``x_row`` is one
row of the input (a token for MatMul, a sample for Gemm, an im2col patch for Conv). The optimizer only
ever sees such rows, so one code path serves Conv (1-D, 2-D or more spatial dims, grouped, depthwise,
strided, padded, dilated), ConvTranspose (as the equivalent stride-1 conv of the zero-upsampled input),
Gemm and MatMul with a constant weight.

Rows are gathered at sampled positions only (``gather_rows``), never as a full im2col matrix, so the
memory per batch is that of the rows kept, whatever the size of the feature maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

SUPPORTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class Geometry:
    """How one node turns its input into rows; spatial fields are empty for Gemm and MatMul."""

    op_type: str
    groups: int = 1
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()  # begin values, then end values, as ONNX writes them
    auto_pad: str = "NOTSET"
    output_padding: tuple[int, ...] = ()
    alpha: float = 1.0
    trans_b: bool = False

    @property
    def is_conv(self) -> bool:
        return self.op_type in ("Conv", "ConvTranspose")


def geometry_of(node: onnx.NodeProto, w_shape: tuple[int, ...]) -> Geometry | str:
    """The node's geometry, or the reason AdaRound cannot handle it (a string)."""
    if node.op_type not in SUPPORTED_OPS:
        return f"{node.op_type} is not supported (AdaRound handles {', '.join(SUPPORTED_OPS)})"
    if 0 in w_shape:
        return f"its weight {list(w_shape)} is empty"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm":
        if attrs.get("transA", 0):
            return "Gemm with transA=1 (the batch is not on axis 0 of its input)"
        return Geometry("Gemm", alpha=float(attrs.get("alpha", 1.0)), trans_b=bool(attrs.get("transB", 0)))
    if node.op_type == "MatMul":
        return Geometry("MatMul") if len(w_shape) == 2 else f"MatMul weight of rank {len(w_shape)} (needs 2)"
    return _conv_geometry(node, attrs, w_shape)


def _conv_geometry(node: onnx.NodeProto, attrs: dict, w_shape: tuple[int, ...]) -> Geometry | str:
    n = len(w_shape) - 2
    if n < 1:
        return f"{node.op_type} weight of rank {len(w_shape)}"
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if node.op_type == "ConvTranspose" and (auto_pad not in ("NOTSET", "VALID") or "output_shape" in attrs):
        return "ConvTranspose with auto_pad SAME or output_shape (give explicit pads)"
    groups = int(attrs.get("group", 1))
    # Conv weights are [C_out, C_in/g, k...], ConvTranspose [C_in, C_out/g, k...]: axis 0 splits into groups
    if groups < 1 or w_shape[0] % groups:
        return f"{node.op_type} with group {groups} and a weight of {w_shape[0]} channels on axis 0 (not divisible)"
    kernel = tuple(attrs.get("kernel_shape", w_shape[2:]))
    if kernel != tuple(w_shape[2:]):
        return f"kernel_shape {kernel} differs from the weight's {tuple(w_shape[2:])}"
    return Geometry(
        node.op_type,
        groups=groups,
        kernel=kernel,
        strides=tuple(attrs.get("strides", [1] * n)),
        dilations=tuple(attrs.get("dilations", [1] * n)),
        pads=tuple(attrs.get("pads", [0] * (2 * n))),
        auto_pad=auto_pad,
        output_padding=tuple(attrs.get("output_padding", [0] * n)),
    )


# --- the weight as a grouped matrix ----------------------------------------------------------------


def weight_to_matrix(geom: Geometry, w: np.ndarray) -> np.ndarray:
    """``w`` in its ONNX layout -> ``[groups, out_per_group, in_per_group]`` (a permutation of its values)."""
    if geom.op_type == "Gemm":
        return (w if geom.trans_b else w.T)[None]
    if geom.op_type == "MatMul":
        return w.T[None]
    g = geom.groups
    if geom.op_type == "Conv":
        return w.reshape(g, w.shape[0] // g, -1)
    # ConvTranspose [C_in, C_out/g, k...]: the equivalent conv reads the kernel flipped, in and out swapped
    spatial = tuple(range(2, w.ndim))
    flipped = np.flip(w, axis=spatial)
    per_group = flipped.reshape(g, w.shape[0] // g, w.shape[1], *w.shape[2:])
    return np.swapaxes(per_group, 1, 2).reshape(g, w.shape[1], -1)


def matrix_to_weight(geom: Geometry, m: np.ndarray, w_shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`weight_to_matrix` (used to bring gradients back to the weight's layout)."""
    if geom.op_type == "Gemm":
        return m[0] if geom.trans_b else m[0].T
    if geom.op_type == "MatMul":
        return m[0].T
    g = geom.groups
    if geom.op_type == "Conv":
        return m.reshape(w_shape)
    c_in, c_out_g, kernel = w_shape[0], w_shape[1], w_shape[2:]
    per_group = m.reshape(g, c_out_g, c_in // g, *kernel)
    w = np.swapaxes(per_group, 1, 2).reshape(w_shape)
    return np.flip(w, axis=tuple(range(2, len(w_shape))))


# --- rows of the input -----------------------------------------------------------------------------


def positions_per_sample(geom: Geometry, x_shape: tuple[int, ...]) -> int:
    """How many rows one sample of an input of shape ``x_shape`` (batch first) gives."""
    if geom.op_type == "Gemm":
        return 1
    if geom.op_type == "MatMul":
        return int(np.prod(x_shape[1:-1], dtype=np.int64))
    conv, xs = _as_conv(geom, x_shape)
    return int(np.prod(_conv_output_shape(conv, xs[2:]), dtype=np.int64))


def gather_rows(geom: Geometry, x: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (batch first) at flat positions ``flat`` (sample-major), as ``[groups, R, in_per_group]``."""
    if geom.op_type == "Gemm":
        return x.reshape(x.shape[0], -1)[flat][None]
    if geom.op_type == "MatMul":
        return x.reshape(-1, x.shape[-1])[flat][None]
    conv, xs = _as_conv(geom, x.shape)
    if geom.op_type == "ConvTranspose":
        x = _upsample(geom, x)
    return _conv_rows(conv, x, xs, flat)


def output_shape(geom: Geometry, x_shape: tuple[int, ...], out_channels: int) -> tuple[int, ...]:
    """The node's output shape for an input of ``x_shape`` (used to lay rows back out in tests)."""
    if geom.op_type == "Gemm":
        return (x_shape[0], out_channels)
    if geom.op_type == "MatMul":
        return (*x_shape[:-1], out_channels)
    conv, xs = _as_conv(geom, x_shape)
    return (x_shape[0], out_channels, *_conv_output_shape(conv, xs[2:]))


def _as_conv(geom: Geometry, x_shape: tuple[int, ...]) -> tuple[Geometry, tuple[int, ...]]:
    """A plain Conv geometry and the shape of the input it reads: itself for Conv; for ConvTranspose,
    stride 1 over the zero-upsampled input, with pads ``dilation * (k - 1) - pad`` (negative: a crop)."""
    if geom.op_type == "Conv":
        return _resolve_auto_pad(geom, x_shape), tuple(x_shape)
    n = len(geom.kernel)
    up = tuple((s - 1) * st + 1 for s, st in zip(x_shape[2:], geom.strides, strict=True))
    span = [d * (k - 1) for d, k in zip(geom.dilations, geom.kernel, strict=True)]
    begin = [span[i] - geom.pads[i] for i in range(n)]
    end = [span[i] - geom.pads[n + i] + geom.output_padding[i] for i in range(n)]
    conv = Geometry("Conv", geom.groups, geom.kernel, (1,) * n, geom.dilations, tuple(begin + end), "NOTSET")
    return conv, (*x_shape[:2], *up)


def _upsample(geom: Geometry, x: np.ndarray) -> np.ndarray:
    """Insert ``stride - 1`` zeros between neighbouring input values along each spatial axis."""
    shape = (*x.shape[:2], *((s - 1) * st + 1 for s, st in zip(x.shape[2:], geom.strides, strict=True)))
    up = np.zeros(shape, x.dtype)
    up[(slice(None), slice(None), *(slice(None, None, st) for st in geom.strides))] = x
    return up


def _resolve_auto_pad(geom: Geometry, x_shape: tuple[int, ...]) -> Geometry:
    """Explicit pads for ``auto_pad`` SAME_UPPER / SAME_LOWER / VALID (as the ONNX Conv spec computes them)."""
    if geom.auto_pad in ("NOTSET", ""):
        return geom
    n = len(geom.kernel)
    if geom.auto_pad == "VALID":
        pads = (0,) * (2 * n)
    else:
        begin, end = [], []
        for s, st, d, k in zip(x_shape[2:], geom.strides, geom.dilations, geom.kernel, strict=True):
            out = -(-s // st)
            total = max(0, (out - 1) * st + d * (k - 1) + 1 - s)
            small, large = total // 2, total - total // 2
            begin.append(small if geom.auto_pad == "SAME_UPPER" else large)
            end.append(large if geom.auto_pad == "SAME_UPPER" else small)
        pads = tuple(begin + end)
    return Geometry("Conv", geom.groups, geom.kernel, geom.strides, geom.dilations, pads, "NOTSET")


def _conv_output_shape(conv: Geometry, spatial: tuple[int, ...]) -> tuple[int, ...]:
    n = len(spatial)
    return tuple(
        (spatial[i] + conv.pads[i] + conv.pads[n + i] - conv.dilations[i] * (conv.kernel[i] - 1) - 1) // conv.strides[i]
        + 1
        for i in range(n)
    )


def _conv_rows(conv: Geometry, x: np.ndarray, x_shape: tuple[int, ...], flat: np.ndarray) -> np.ndarray:
    """im2col rows at the sampled output positions only: ``[groups, R, C_in / groups * prod(kernel)]``."""
    n = len(conv.kernel)
    batch, channels = x.shape[:2]
    out = _conv_output_shape(conv, tuple(x_shape[2:]))
    # pad, or crop where a pad is negative (ConvTranspose with pads larger than the kernel's span)
    widths = [(0, 0), (0, 0)] + [(max(conv.pads[i], 0), max(conv.pads[n + i], 0)) for i in range(n)]
    xp = np.pad(x, widths)
    crop = tuple(slice(max(-conv.pads[i], 0), xp.shape[2 + i] - max(-conv.pads[n + i], 0)) for i in range(n))
    xp = xp[(slice(None), slice(None), *crop)]
    coords = np.unravel_index(flat, (batch, *out))
    rows = len(flat)
    ones = (1,) * n
    index = [coords[0].reshape(rows, 1, *ones), np.arange(channels).reshape(1, channels, *ones)]
    for d in range(n):
        shape = [1] * (n + 2)
        shape[2 + d] = conv.kernel[d]
        offsets = (np.arange(conv.kernel[d]) * conv.dilations[d]).reshape(shape)
        index.append(coords[1 + d].reshape(rows, 1, *ones) * conv.strides[d] + offsets)
    patches = xp[tuple(index)]  # [R, C, *kernel]
    return np.ascontiguousarray(patches.reshape(rows, conv.groups, -1).transpose(1, 0, 2))
