"""Block-wise weight quantization: the grid, round-to-nearest, and the storage layouts of the two output forms.

A MatMul weight ``W`` [K, N] (``y = x @ W``) is quantized per output column ``n`` in blocks of ``block`` values
along the input dimension K: block ``b`` of column ``n`` holds ``W[b*block:(b+1)*block, n]`` and has one scale
(and, asymmetric, one zero point). The math works on the transposed weight ``wt = W.T`` [N, K], rows padded
with zeros to a whole number of blocks, because that is MatMulNBits' layout.

Integers are kept as their *unsigned storage values* ``q`` in ``[0, 2**bits - 1]`` with a zero point ``z``:
``w ~ (q - z) * scale``. Symmetric grids have ``z = 2**(bits-1)`` (8 for 4 bits, ORT's default when the zero
points are left out) and a signed scale chosen as MLAS does: the value of largest magnitude in the block, with
its sign, lands exactly on ``-2**(bits-1)``, so all 16 levels are used and the block's extreme is exact.
Asymmetric grids span ``[min(block, 0), max(block, 0)]``.

Storage:
* ``com.microsoft.MatMulNBits``: ``B`` uint8 [N, n_blocks, block*bits/8], 4-bit values two per byte, the
  element with the even index in the low nibble; ``scales`` float [N * n_blocks]; ``zero_points`` uint8
  packed the same way, per row of N padded to a whole byte (left out when symmetric).
* ONNX ``DequantizeLinear`` (opset 21) with ``axis=0, block_size=block``: the weight [K, N] as INT4/UINT4/
  INT8/UINT8, the scale [n_blocks, N]; symmetric grids stored signed with no zero point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx


@dataclass(frozen=True)
class BlockFormat:
    """The grid: ``bits`` (4 or 8) and ``block`` values along K per scale; symmetric or with zero points."""

    bits: int = 4
    block: int = 128
    symmetric: bool = True

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1

    @property
    def mid(self) -> int:
        return 1 << (self.bits - 1)

    def n_blocks(self, k: int) -> int:
        return -(-k // self.block)


@dataclass
class BlockQuant:
    """One quantized weight: storage values ``q`` [N, n_blocks * block] (uint8, padding included), ``scale`` and
    ``zero`` [N, n_blocks] (float32, int32), for a weight of ``k`` input rows."""

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    fmt: BlockFormat
    k: int

    def dequantize(self) -> np.ndarray:
        """The dequantized weight as the MatMul sees it, [K, N] float32."""
        n, nb = self.scale.shape
        blocks = self.q.reshape(n, nb, self.fmt.block).astype(np.float32) - self.zero[..., None]
        return (blocks * self.scale[..., None]).reshape(n, -1)[:, : self.k].T.astype(np.float32)


def padded_blocks(wt: np.ndarray, fmt: BlockFormat) -> np.ndarray:
    """``wt`` [N, K] as [N, n_blocks, block], the last block padded with zeros."""
    n, k = wt.shape
    pad = fmt.n_blocks(k) * fmt.block - k
    if pad:
        wt = np.concatenate([wt, np.zeros((n, pad), wt.dtype)], axis=1)
    return wt.reshape(n, -1, fmt.block)


def block_grid(blocks: np.ndarray, fmt: BlockFormat, ratio: np.ndarray | float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point per block of ``blocks`` [N, n_blocks, block], the range shrunk by ``ratio`` (a clipping
    search's candidate; 1 keeps the block's extremes)."""
    if fmt.symmetric:
        idx = np.abs(blocks).argmax(axis=-1)[..., None]
        extreme = np.take_along_axis(blocks, idx, axis=-1)[..., 0] * ratio
        scale = (extreme / -fmt.mid).astype(np.float32)
        zero = np.full(scale.shape, fmt.mid, np.int32)
    else:
        lo = np.minimum(blocks.min(axis=-1), 0) * ratio
        hi = np.maximum(blocks.max(axis=-1), 0) * ratio
        scale = ((hi - lo) / fmt.qmax).astype(np.float32)
        safe = np.where(scale == 0, 1, scale)
        zero = np.clip(np.rint(-lo / safe), 0, fmt.qmax).astype(np.int32)
    scale = np.where(scale == 0, np.float32(1), scale).astype(np.float32)  # an all-zero block: q = z, exact
    return scale, zero


def quantize_with(blocks: np.ndarray, scale: np.ndarray, zero: np.ndarray, fmt: BlockFormat) -> np.ndarray:
    """Storage values of ``blocks`` [..., block] on the grid ``scale``/``zero`` [...]."""
    q = np.rint(blocks / scale[..., None]) + zero[..., None]
    return np.clip(q, 0, fmt.qmax).astype(np.uint8)


RTN_CHUNK_VALUES = 1 << 22  # rows of wt per step: the float temporaries stay near 16 MB, not a few times the weight


def rtn(wt: np.ndarray, fmt: BlockFormat, ratio: np.ndarray | float = 1.0) -> BlockQuant:
    """Round-to-nearest of ``wt`` [N, K] (the transposed MatMul weight), a chunk of output rows at a time (each
    row's blocks are quantized on their own, so the chunks change nothing but the memory)."""
    wt = np.asarray(wt, np.float32)
    n, k = wt.shape
    nb = fmt.n_blocks(k)
    q = np.empty((n, nb * fmt.block), np.uint8)
    scale, zero = np.empty((n, nb), np.float32), np.empty((n, nb), np.int32)
    step = max(1, RTN_CHUNK_VALUES // max(1, nb * fmt.block))
    for r in range(0, n, step):
        part = ratio[r : r + step] if isinstance(ratio, np.ndarray) and ratio.ndim == 2 else ratio
        blocks = padded_blocks(wt[r : r + step], fmt)
        scale[r : r + step], zero[r : r + step] = block_grid(blocks, fmt, part)
        q[r : r + step] = quantize_with(blocks, scale[r : r + step], zero[r : r + step], fmt).reshape(len(blocks), -1)
    return BlockQuant(q, scale, zero, fmt, k)


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """4-bit values (the last axis, padded to even with zeros) two per byte, the even index in the low nibble."""
    v = np.asarray(values, np.uint8) & 0xF
    if v.shape[-1] % 2:
        v = np.concatenate([v, np.zeros((*v.shape[:-1], 1), np.uint8)], axis=-1)
    return (v[..., 0::2] | (v[..., 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`pack_nibbles` for ``count`` values along the last axis."""
    out = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    return out[..., :count]


def matmulnbits_tensors(bq: BlockQuant) -> dict[str, np.ndarray]:
    """``B``, ``scales`` and (asymmetric) ``zero_points`` of a MatMulNBits node for ``bq``."""
    n, nb = bq.scale.shape
    blocks = bq.q.reshape(n, nb, bq.fmt.block)
    out = {"B": pack_nibbles(blocks) if bq.fmt.bits == 4 else blocks.copy(), "scales": bq.scale.reshape(-1)}
    if not bq.fmt.symmetric:
        z = bq.zero.astype(np.uint8)
        out["zero_points"] = (pack_nibbles(z) if bq.fmt.bits == 4 else z).reshape(-1)
    return out


DQ_TYPES = {(4, True): onnx.TensorProto.INT4, (4, False): onnx.TensorProto.UINT4,
            (8, True): onnx.TensorProto.INT8, (8, False): onnx.TensorProto.UINT8}  # fmt: skip


def dq_tensors(bq: BlockQuant, name: str) -> tuple[onnx.TensorProto, onnx.TensorProto, onnx.TensorProto | None]:
    """Weight [K, N], scale [n_blocks, N] and zero point (asymmetric) for ``DequantizeLinear(axis=0, block_size)``.
    Symmetric grids are stored signed (``q - z``) with no zero point."""
    fmt = bq.fmt
    n, nb = bq.scale.shape
    q = bq.q[:, : bq.k].T  # [K, N]
    dtype = DQ_TYPES[(fmt.bits, fmt.symmetric)]
    values = q.astype(np.int16) - fmt.mid if fmt.symmetric else q
    weight = _integer_tensor(values, dtype, f"{name}_quantized")
    scale = onnx.numpy_helper.from_array(np.ascontiguousarray(bq.scale.T), f"{name}_scale")
    zero = None if fmt.symmetric else _integer_tensor(bq.zero.T.astype(np.uint8), dtype, f"{name}_zero_point")
    return weight, scale, zero


def _integer_tensor(values: np.ndarray, dtype: int, name: str) -> onnx.TensorProto:
    """A TensorProto of ``dtype`` holding ``values``; 4-bit types packed two per byte over the flat array."""
    t = onnx.TensorProto()
    t.name, t.data_type = name, dtype
    t.dims.extend(values.shape)
    if dtype in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        t.raw_data = pack_nibbles(values.astype(np.int16).reshape(-1) & 0xF).tobytes()
    else:
        np_type = np.int8 if dtype == onnx.TensorProto.INT8 else np.uint8
        t.raw_data = np.ascontiguousarray(values, dtype=np_type).tobytes()
    return t
