"""Padded positions kept out of the activation statistics: the zeros of a batch's attention mask.

A transformer calibrated on padded batches (each sentence right-padded to the batch's longest, with an
``attention_mask`` of 1 at real tokens and 0 at padding) computes activations at the padded positions too:
the pad token's embedding, the rows of padded queries, the columns of padded keys. The model's outputs at
real positions do not depend on them (the mask takes them out of the attention), so neither should the
ranges: a model calibrated on padded batches must get the ranges it gets from the same sentences unpadded.

Which axes of a tensor are the sequence axes is read from the model where shape inference knows it (the
axes whose symbolic dimension is the mask's sequence dimension); where it does not (a shape computed at run
time, as after the Reshape to attention heads), it is the first axis after the batch axis whose size is the
mask's length, and the last axis as well when it also has that size (the key axis of attention scores
[B, heads, T, T]). A tensor with no such axis is observed whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

MaskAxes = dict[str, tuple[int, ...] | None]  # tensor -> its sequence axes; None: unknown, decided by sizes


def mask_input(model: onnx.ModelProto) -> str | None:
    """The model's attention-mask input: a rank-2 input whose name contains "mask"; None when there is none."""
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.name not in inits and "mask" in vi.name.lower() and len(dims) == 2:
            return vi.name
    return None


def sequence_axes(model: onnx.ModelProto, names: Sequence[str], mask: str) -> MaskAxes:
    """Per tensor in ``names``: the axes that carry the mask's symbolic sequence dimension, () when shape
    inference knows every axis and none is it, None when it does not know (the sizes decide at run time)."""
    dims = {vi.name: vi.type.tensor_type.shape.dim for vi in model.graph.input}
    seq = dims[mask][1].dim_param if mask in dims else ""
    if not seq:  # a fixed length: the sizes decide everywhere
        return dict.fromkeys(names)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001  (inference is a hint; without it the sizes decide)
        return dict.fromkeys(names)
    graph = inferred.graph
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        dims.setdefault(vi.name, vi.type.tensor_type.shape.dim)
    out: MaskAxes = {}
    for name in names:
        shape = dims.get(name)
        if shape is None or not len(shape) or not all(_known(d) for d in shape):
            out[name] = None
        else:
            out[name] = tuple(a for a, d in enumerate(shape) if a > 0 and d.dim_param == seq)
    return out


def _known(dim: onnx.TensorShapeProto.Dimension) -> bool:
    """A size, or a symbol of the model's; shape inference names the dimensions it cannot relate "unk__N"."""
    return dim.HasField("dim_value") or bool(dim.dim_param and not dim.dim_param.startswith("unk__"))


def real_positions(feeds: Mapping[str, np.ndarray], mask: str | None) -> np.ndarray | None:
    """The [B, T] boolean mask of real positions of one batch; None when nothing is padded (or no mask)."""
    if mask is None or mask not in feeds:
        return None
    m = np.asarray(feeds[mask])
    if m.ndim != 2 or m.size == 0 or m.dtype.kind not in "biuf" or not np.isin(m, (0, 1)).all():
        return None  # not a 0/1 mask: an additive one, say; its sentinels are left out elsewhere
    keep = m.astype(bool)
    return None if keep.all() else keep


def drop_padding(value: np.ndarray, keep: np.ndarray, axes: tuple[int, ...] | None) -> np.ndarray:
    """``value``'s entries at real positions (a flat or [n, ...] array), or ``value`` itself when it has no
    sequence axis of this batch."""
    b, t = keep.shape
    if value.ndim < 2 or value.shape[0] != b:
        return value
    if axes is None:
        found = [a for a in range(1, value.ndim) if value.shape[a] == t]
        axes = tuple(dict.fromkeys(found[:1] + found[-1:]))
    axes = tuple(a for a in axes if value.shape[a] == t)
    if not axes:
        return value
    if axes == (1,):
        return value[keep]
    mask = np.ones((b,) + (1,) * (value.ndim - 1), dtype=bool)
    for a in axes:
        shape = [1] * value.ndim
        shape[0], shape[a] = b, t
        mask = mask & keep.reshape(shape)
    return value[np.broadcast_to(mask, value.shape)]
