"""A copy of a model with its inputs' shapes fixed and its shape arithmetic folded into constants.

A real export computes shapes at run time (``Shape -> Gather -> Concat -> Reshape``, masks built from
``Shape``). On the CUDA EP ORT runs that arithmetic on the host, with Memcpy nodes around it, and refuses to
capture such a session as a CUDA graph. A CUDA graph replays fixed shapes anyway, so for one set of input
shapes the arithmetic is constant: fixing the inputs' dims and folding it (ONNX shape inference with data
propagation, then onnx-graphsurgeon's constant folding with ``fold_shapes``) leaves a graph that can run
entirely on the GPU. On the paraphrase MiniLM at [32, 52] that takes 354 nodes to 122, with identical outputs
on ORT's CPU EP.

Tensors above :data:`FOLD_SIZE_LIMIT` bytes are not folded into constants (a folded ``Expand`` of a mask or a
``Gather`` of an embedding row per position would grow with the batch). :func:`outputs_agree` is the check that
the copy computes what the model does, on the caller's inputs and EP.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

SHAPE_OPS = frozenset({"Shape", "Size"})
FOLD_SIZE_LIMIT = 1 << 20
MIN_FLOAT_SQNR_DB = 40.0  # the copy against the model on one EP: fp16 kernels may be fused differently


@dataclass(frozen=True)
class StaticCopy:
    model: Any  # onnx.ModelProto
    shapes: dict[str, tuple[int, ...]]
    nodes_before: int
    nodes_after: int
    shape_nodes_left: int

    def note(self) -> str:
        dims = ", ".join(f"{k} {list(v)}" for k, v in self.shapes.items())
        return (f"a copy with the input shapes fixed ({dims}) and the shape arithmetic folded: "
                f"{self.nodes_before} -> {self.nodes_after} nodes")  # fmt: skip


def shape_nodes(model: Any) -> int:
    """Shape/Size nodes of the main graph: the run-time shape arithmetic a static copy can fold."""
    return sum(n.op_type in SHAPE_OPS for n in model.graph.node)


def static_copy(model: Any, shapes: Mapping[str, tuple[int, ...]]) -> StaticCopy:
    """``model`` (not modified) with each input in ``shapes`` given those dims, and every tensor that then
    depends on no input folded into a constant (up to :data:`FOLD_SIZE_LIMIT` bytes each).

    Raises ValueError when a shape does not fit an input (its rank, or a fixed dim it contradicts) or when the
    copy cannot be made (shape inference or folding fails): the caller keeps the model as it is."""
    import onnx
    import onnx_graphsurgeon as gs

    from onnxq.passes._graph import split_static_shape_slices
    from onnxq.passes.prepare import quiet_graphsurgeon

    work = onnx.ModelProto()
    work.CopyFrom(model)
    inits = {t.name for t in work.graph.initializer}
    for vi in work.graph.input:
        if vi.name in inits or vi.name not in shapes:
            continue
        dims = vi.type.tensor_type.shape.dim
        want = tuple(int(d) for d in shapes[vi.name])
        if len(dims) != len(want):
            raise ValueError(f"input {vi.name!r} has rank {len(dims)}, the shape {list(want)} has {len(want)}")
        for d, v in zip(dims, want, strict=True):
            if d.HasField("dim_value") and d.dim_value != v:
                raise ValueError(f"input {vi.name!r} fixes a dim to {d.dim_value}, not {v}")
            d.Clear()
            d.dim_value = v
    before = len(work.graph.node)
    with quiet_graphsurgeon():
        try:
            for _ in range(4):  # a folded shape makes the next layer's inferable: infer and fold again
                count = len(work.graph.node)
                _forget_shapes(work)
                inferred = onnx.shape_inference.infer_shapes(work, data_prop=True)
                split_static_shape_slices(inferred)  # gs folds Shape(start, end) wrong otherwise
                graph = gs.import_onnx(inferred)
                graph.fold_constants(fold_shapes=True, size_threshold=FOLD_SIZE_LIMIT).cleanup()
                exported = gs.export_onnx(graph.toposort())
                work.graph.CopyFrom(exported.graph)
                if len(work.graph.node) == count:
                    break
            _forget_shapes(work)
            exported = onnx.shape_inference.infer_shapes(work, data_prop=True)
        except Exception as exc:  # onnx's inference errors, gs's, ORT's (gs evaluates with it)
            raise ValueError(f"the shapes could not be folded: {str(exc).strip().splitlines()[0]}") from exc
    work.graph.CopyFrom(exported.graph)
    return StaticCopy(work, {k: tuple(int(d) for d in v) for k, v in shapes.items()}, before,
                      len(work.graph.node), shape_nodes(work))  # fmt: skip


def _forget_shapes(model: Any) -> None:
    """Drop the intermediate and output shapes (stale symbolic dims would contradict the fixed ones) for
    shape inference to fill in again; the outputs keep their element types."""
    del model.graph.value_info[:]
    for vi in model.graph.output:
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")


def outputs_agree(reference: list[Any], copy: list[Any]) -> str | None:
    """None when the copy's outputs match the model's (same shapes; integers equal; floats within
    :data:`MIN_FLOAT_SQNR_DB` and finite), else what differs."""
    if len(reference) != len(copy):
        return f"{len(copy)} outputs instead of {len(reference)}"
    for i, (a, b) in enumerate(zip(reference, copy, strict=True)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return f"output {i} has shape {list(b.shape)} instead of {list(a.shape)}"
        if a.dtype.kind != "f":
            if not np.array_equal(a, b):
                return f"output {i} ({a.dtype}) differs"
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        if not np.isfinite(b64).all() and not np.array_equal(np.isfinite(a64), np.isfinite(b64)):
            return f"output {i} has non-finite values the model's has not"
        ok = np.isfinite(a64) & np.isfinite(b64)
        noise = float(np.sum((a64[ok] - b64[ok]) ** 2))
        signal = float(np.sum(a64[ok] ** 2))
        if noise > 0 and (signal == 0 or 10 * np.log10(signal / noise) < MIN_FLOAT_SQNR_DB):
            sqnr = "-inf" if signal == 0 else f"{10 * np.log10(signal / noise):.1f}"
            return f"output {i} is {sqnr} dB from the model's (at least {MIN_FLOAT_SQNR_DB:.0f} dB expected)"
    return None
