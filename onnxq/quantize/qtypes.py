"""Quantized data types and the affine quantization math, bit-exact with ONNX QuantizeLinear/DequantizeLinear.

A real value ``r`` is stored as an integer ``q`` with ``r ~ scale * (q - zero_point)``. :func:`quantize`
computes ``saturate(rint(x / scale) + zero_point)``: the division is done in float32 (as ONNX Runtime
and the ONNX reference do), ``rint`` rounds half to even, and saturation clips to the type's range.
:func:`dequantize` computes ``(q - zero_point) * scale`` in float32.

Conventions of :func:`compute_qparams` (checked against ``onnxruntime.quantization.quant_utils``):

* the float range is always widened to include 0, so 0 is exactly representable;
* asymmetric: ``scale = (rmax - rmin) / (hi - lo)``, ``zero_point = round(lo - rmin / scale)``,
  computed in float64 and then stored as float32, exactly as ORT does;
* symmetric: the zero point is the middle level (0 for signed types, 128 for uint8, 8 for uint4) and
  ``scale = absmax / M`` where ``M`` is the number of levels on the *shorter* side of the zero point:
  127 for int8 and uint8, 32767 for int16/uint16, 7 for int4/uint4. For int8 and int16 this is ORT's
  restricted symmetric range ([-127, 127]); both ``-absmax`` and ``+absmax`` are exactly representable.
  ORT differs for uint8/uint16/int4/uint4, where it divides by (qmax - qmin) / 2 = 127.5 (7.5), so that
  ``+absmax`` saturates one half step short; we prefer the range that covers both ends.
* ``reduce_range`` uses one bit less: [0, 127] for uint8 (as ORT), [-64, 64] for int8 (as ORT: weights of
  magnitude <= 64 keep the u8 x s8 pair sums of VPMADDUBSW inside int16).
* a range of width 0 (all values 0) gives scale 1.0 and the zero point of the empty range (the middle
  level when symmetric, so per-channel symmetric zero points stay equal across channels).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from onnxq.errors import ConfigError, DataError


@dataclass(frozen=True)
class QType:
    """An integer type that tensors are quantized to; ``storage`` is the numpy dtype holding its values."""

    name: str
    onnx_type: int
    storage: np.dtype
    qmin: int
    qmax: int
    bits: int
    signed: bool


def _make(name: str, onnx_type: int, storage: type, bits: int, signed: bool) -> QType:
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return QType(name, onnx_type, np.dtype(storage), qmin, qmax, bits, signed)


# 4-bit values are held one per int8/uint8 element in numpy; make_initializer packs them two per byte.
QTYPES: dict[str, QType] = {
    q.name: q
    for q in (
        _make("uint8", TensorProto.UINT8, np.uint8, 8, False),
        _make("int8", TensorProto.INT8, np.int8, 8, True),
        _make("uint16", TensorProto.UINT16, np.uint16, 16, False),
        _make("int16", TensorProto.INT16, np.int16, 16, True),
        _make("uint4", TensorProto.UINT4, np.uint8, 4, False),
        _make("int4", TensorProto.INT4, np.int8, 4, True),
        _make("int32", TensorProto.INT32, np.int32, 32, True),  # biases only
    )
}


def qtype(name: str | QType) -> QType:
    """The QType called ``name`` (a QType is returned unchanged); ConfigError for an unknown name."""
    if isinstance(name, QType):
        return name
    if name not in QTYPES:
        raise ConfigError(
            f"unknown quantized type {name!r}",
            hint=f"use one of: {', '.join(QTYPES)}",
        )
    return QTYPES[name]


@dataclass(frozen=True)
class QParams:
    """Scale (float32) and zero point (the qtype's storage dtype): shape () per tensor, (C,) per axis."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None
    qtype: QType

    def __post_init__(self) -> None:
        scale = np.asarray(self.scale, dtype=np.float32)
        zp = np.asarray(self.zero_point)
        if zp.shape != scale.shape:
            raise ConfigError(f"scale has shape {scale.shape} but zero point has shape {zp.shape}",
                              hint="give one zero point per scale")
        want_ndim = 0 if self.axis is None else 1
        if scale.ndim != want_ndim:
            raise ConfigError(
                f"{'per-tensor' if self.axis is None else 'per-axis'} quantization needs a scale of rank "
                f"{want_ndim}, got shape {scale.shape}",
                hint="per-tensor: one scale; per-axis: a vector of one scale per channel",
            )
        if not (np.isfinite(scale).all() and (scale > 0).all()):
            raise ConfigError(f"scales must be finite and positive, got {scale.ravel()[:8]}",
                              hint="a range of zero width or one past float32's limit gives such a scale: check the "
                              "tensor's range, or leave it in float")  # fmt: skip
        if ((zp < self.qtype.qmin) | (zp > self.qtype.qmax)).any():
            raise ConfigError(
                f"zero point {zp.ravel()[:8]} lies outside {self.qtype.name}'s range "
                f"[{self.qtype.qmin}, {self.qtype.qmax}]",
                hint=f"give zero points within [{self.qtype.qmin}, {self.qtype.qmax}]",
            )
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zp.astype(self.qtype.storage))


def level_range(qt: QType, reduce_range: bool = False) -> tuple[int, int]:
    """The integer levels [lo, hi] that calibrated ranges are mapped onto (see the module docstring)."""
    if not reduce_range:
        return qt.qmin, qt.qmax
    if qt.signed:
        return -(2 ** (qt.bits - 2)), 2 ** (qt.bits - 2)
    return 0, 2 ** (qt.bits - 1) - 1


def compute_qparams(
    rmin: float | np.ndarray,
    rmax: float | np.ndarray,
    qt: QType | str,
    *,
    symmetric: bool,
    axis: int | None = None,
    reduce_range: bool = False,
) -> QParams:
    """Scale and zero point mapping [rmin, rmax] (widened to hold 0) onto ``qt``.

    With ``axis``, rmin and rmax are arrays of shape (C,), one range per channel.
    """
    qt = qtype(qt)
    lo_r, hi_r = _check_range(rmin, rmax, axis)
    lo_r = np.minimum(lo_r, 0.0)
    hi_r = np.maximum(hi_r, 0.0)
    lo, hi = level_range(qt, reduce_range)
    if symmetric:
        mid = (lo + hi + 1) // 2
        scale64 = np.maximum(-lo_r, hi_r) / min(mid - lo, hi - mid)
        zero_point = np.full(scale64.shape, float(mid))
    else:
        scale64 = (hi_r - lo_r) / (hi - lo)
        with np.errstate(divide="ignore", invalid="ignore"):
            zero_point = np.clip(np.rint(lo - lo_r / scale64), lo, hi)
    scale = scale64.astype(np.float32)
    if not np.isfinite(scale).all():
        raise ConfigError(
            f"range [{lo_r.min()}, {hi_r.max()}] is too wide for a float32 scale",
            hint="clip the calibration range, or exclude this tensor from quantization",
        )
    # A (near-)empty range: any scale represents it; 1.0 keeps the model well-defined, as ORT does.
    empty = scale < np.finfo(np.float32).tiny
    scale = np.where(empty, np.float32(1.0), scale)
    empty_zp = float((lo + hi + 1) // 2) if symmetric else float(np.clip(0, lo, hi))
    zero_point = np.where(empty, empty_zp, zero_point)
    return QParams(scale.astype(np.float32), zero_point.astype(qt.storage), axis, qt)


def _check_range(rmin, rmax, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    lo_r = np.asarray(rmin, dtype=np.float64)
    hi_r = np.asarray(rmax, dtype=np.float64)
    want_ndim = 0 if axis is None else 1
    if lo_r.shape != hi_r.shape or lo_r.ndim != want_ndim:
        raise ConfigError(
            f"rmin {lo_r.shape} and rmax {hi_r.shape} must both be "
            f"{'scalars' if axis is None else 'vectors of one value per channel'}",
            hint="give rmin and rmax of the same shape",
        )
    if not (np.isfinite(lo_r).all() and np.isfinite(hi_r).all()):
        raise ConfigError(
            "the quantization range is not finite",
            hint="the tensor holds Inf or NaN; exclude it from quantization or clean the data",
        )
    if (lo_r > hi_r).any():
        raise ConfigError(f"rmin {lo_r} is greater than rmax {hi_r}", hint="give rmin <= rmax")
    return lo_r, hi_r


def _per_axis(qp: QParams, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point shaped to broadcast against a tensor of shape ``shape``."""
    if qp.axis is None:
        return qp.scale, qp.zero_point
    ndim = len(shape)
    axis = qp.axis + ndim if qp.axis < 0 else qp.axis
    if not 0 <= axis < ndim:
        raise ValueError(f"axis {qp.axis} is out of range for a tensor of rank {ndim}")
    if shape[axis] != qp.scale.shape[0]:
        raise ValueError(f"{qp.scale.shape[0]} scales for {shape[axis]} channels on axis {qp.axis}")
    bshape = [1] * ndim
    bshape[axis] = -1
    return qp.scale.reshape(bshape), qp.zero_point.reshape(bshape)


def quantize(x: np.ndarray, qp: QParams) -> np.ndarray:
    """ONNX QuantizeLinear: ``saturate(rint(x / scale) + zero_point)``, the division in float32."""
    x = np.asarray(x)
    if x.dtype.kind == "f" and np.isnan(x).any():
        raise DataError("cannot quantize a tensor holding NaN", hint="check the model's weights or the data")
    scale, zp = _per_axis(qp, x.shape)
    qt = qp.qtype
    with np.errstate(over="ignore"):  # x / scale past float32's range is inf, which saturates as it should
        if qt.bits > 16:
            # int32 (bias) values do not fit float32's 24-bit mantissa: divide in float64.
            ratio = np.asarray(x, np.float64) / scale.astype(np.float64)
        else:
            ratio = np.asarray(x, np.float32) / scale
    # rint(ratio) is an exact integer; adding the zero point in float64 is exact below 2**53.
    q = np.rint(ratio).astype(np.float64) + zp.astype(np.float64)
    return np.clip(q, qt.qmin, qt.qmax).astype(qt.storage)


def dequantize(q: np.ndarray, qp: QParams) -> np.ndarray:
    """ONNX DequantizeLinear: ``(q - zero_point) * scale`` in float32."""
    q = np.asarray(q)
    scale, zp = _per_axis(qp, q.shape)
    diff = q.astype(np.int64) - zp.astype(np.int64)
    return (diff.astype(np.float32) * scale).astype(np.float32)


def make_initializer(name: str, q: np.ndarray, qt: QType | str) -> onnx.TensorProto:
    """A TensorProto of ``qt``'s ONNX type holding ``q`` (int4/uint4 are packed two per byte)."""
    qt = qtype(qt)
    q = np.asarray(q)
    if q.dtype.kind not in "iu":
        raise ValueError(f"make_initializer needs integer values, got {q.dtype}")
    if q.size and (q.min() < qt.qmin or q.max() > qt.qmax):
        raise ValueError(f"values of {name!r} lie outside {qt.name}'s range [{qt.qmin}, {qt.qmax}]")
    # onnx maps INT4/UINT4 to ml_dtypes' 4-bit numpy types, which numpy_helper packs into raw_data.
    np_type = onnx.helper.tensor_dtype_to_np_dtype(qt.onnx_type)
    return onnx.numpy_helper.from_array(q.astype(np_type), name)


@functools.cache
def min_opset(qt: QType | str, per_channel: bool) -> int:
    """The lowest ai.onnx opset whose QuantizeLinear and DequantizeLinear accept ``qt`` (and ``axis``).

    Read from onnx.defs: 10 for per-tensor int8/uint8, 13 per-channel, 21 for 16- and 4-bit types.
    int32 is a bias type: only DequantizeLinear has to accept it.
    """
    qt = qtype(qt)
    type_str = f"tensor({qt.name})"  # our names are ONNX's type names
    ops = ["DequantizeLinear"] if qt.name == "int32" else ["QuantizeLinear", "DequantizeLinear"]
    for version in range(1, onnx.defs.onnx_opset_version() + 1):
        if all(_schema_accepts(op, version, type_str, per_channel) for op in ops):
            return version
    raise ConfigError(
        f"no opset of the installed onnx quantizes to {qt.name}", hint="upgrade the onnx package"
    )


def _schema_accepts(op: str, version: int, type_str: str, per_channel: bool) -> bool:
    try:
        schema = onnx.defs.get_schema(op, version)
    except onnx.defs.SchemaError:
        return False  # the operator does not exist yet at this opset
    if per_channel and "axis" not in schema.attributes:
        return False
    # the quantized tensor is QuantizeLinear's output and DequantizeLinear's input
    formal = schema.outputs[0] if op == "QuantizeLinear" else schema.inputs[0]
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    return type_str in allowed.get(formal.type_str, {formal.type_str})
