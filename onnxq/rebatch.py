"""A copy of a model whose graph fixes batch 1, with a symbolic batch axis, where the graph allows it.

Exporters often write batch 1 into the graph (``data_0 [1, 3, 224, 224]``), and then no batch sweep can run.
:func:`symbolic_batch_copy` names axis 0 of the inputs and outputs of size 1 ``N``, turns the leading 1 of
constant Reshape targets into 0 (ONNX: copy the input's dim 0, which is then the batch), drops the stored
intermediate shapes, and lists as plain initializers the weights that IR 3 also lists as graph inputs.
:func:`check_symbolic_batch` proves the copy numerically on the CPU: on one sample it gives the original's
outputs, and on two samples each output row is the original's on that sample alone, so nothing mixes
samples (a Reshape that folds the batch into the features, an Expand to a constant shape). A copy that ORT
cannot load or that fails a check is refused with the reason, as a ConfigError.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.errors import ConfigError

BATCH_DIM = "N"
# ops whose constant shape input may carry the batch as a number; named in a refusal's reason
_SHAPE_CARRYING_OPS = ("Expand", "Tile", "ConstantOfShape", "Range", "Resize", "Slice")
_RTOL = 1e-3  # same kernels on one or two samples: only summation order may differ
_ATOL_OF_SCALE = 1e-4  # of the largest reference magnitude; samples that mix differ by O(1) of it


@dataclass(frozen=True)
class Rebatched:
    model: onnx.ModelProto
    batched_inputs: tuple[str, ...]
    reshapes: int  # constant Reshape targets whose leading 1 became 0
    max_abs_diff: float = 0.0  # the check's largest difference from the original

    def note(self) -> str:
        inputs = ", ".join(self.batched_inputs)
        return (f"the graph fixes batch 1: measured a copy with a symbolic batch axis on {inputs} ({self.reshapes} "
                "Reshape target(s) rewritten), checked on CPU against the original on 1 and 2 samples (max abs "
                f"diff {self.max_abs_diff:.3g})")  # fmt: skip


def symbolic_batch_copy(model: onnx.ModelProto) -> Rebatched:
    """The copy described in the module docstring, unchecked; ConfigError if no input has a leading 1."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    data_inputs = [vi for vi in g.input if vi.name not in inits]
    batched = [vi.name for vi in data_inputs if _leading_dim(vi) == 1]
    if not batched:
        raise ConfigError("no input of the model has a leading dimension of 1 to make the batch axis",
                          hint="measure it at its own batch (leave out --batch)")  # fmt: skip
    for vi in [*data_inputs, *(o for o in g.output if _leading_dim(o) == 1)]:
        if vi.name in batched or vi.name in {o.name for o in g.output}:
            vi.type.tensor_type.shape.dim[0].Clear()
            vi.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    if len(data_inputs) < len(g.input):  # IR 3 lists the weights as inputs too; as constants ORT can fold them
        del g.input[:]
        g.input.extend(data_inputs)
        out.ir_version = max(out.ir_version, 4)
    reshapes = _rewrite_reshape_targets(g, inits)
    del g.value_info[:]
    return Rebatched(out, tuple(batched), reshapes)


def _leading_dim(vi: onnx.ValueInfoProto) -> int | None:
    dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else None


def _rewrite_reshape_targets(g: onnx.GraphProto, inits: dict[str, onnx.TensorProto]) -> int:
    """Reshape targets [1, ...] (constants, allowzero 0) become [0, ...]: dim 0 is copied from the input."""
    constants = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output}
    count = 0
    for node in g.node:
        allowzero = next((a.i for a in node.attribute if a.name == "allowzero"), 0)
        if node.op_type != "Reshape" or len(node.input) < 2 or allowzero:
            continue
        target = _constant_value(node.input[1], inits, constants)
        if target is None or target.ndim != 1 or target.size == 0 or target[0] != 1:
            continue
        new = target.copy()
        new[0] = 0
        name = f"{node.input[1]}_symbolic_batch_{count}"
        g.initializer.append(numpy_helper.from_array(new.astype(np.int64), name))
        node.input[1] = name
        count += 1
    return count


def _constant_value(name: str, inits: dict[str, onnx.TensorProto], constants: dict[str, onnx.NodeProto]):
    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = constants.get(name)
    value = next((a.t for a in node.attribute if a.name == "value"), None) if node is not None else None
    return None if value is None else numpy_helper.to_array(value)


def check_symbolic_batch(original: onnx.ModelProto, rebatched: Rebatched, shapes: dict | None = None,
                         seed: int = 0) -> Rebatched:  # fmt: skip
    """Run both models on CPU as the module docstring says; return ``rebatched`` with the largest difference,
    or raise ConfigError naming what failed. ``shapes`` gives dims the graph leaves symbolic (axis 0 is 1)."""
    from onnxq.data import input_specs, random_feeds
    from onnxq.runtime.session import internal_session

    specs = input_specs(original)
    samples = [random_feeds(specs, 1, shapes, seed=seed + k) for k in range(2)]
    try:
        ref_session = internal_session(original)
        new_session = internal_session(rebatched.model)
        refs = [ref_session.run(None, s) for s in samples]
        one = new_session.run(None, samples[0])
        two = new_session.run(None, _stack(samples, rebatched.batched_inputs))
    except Exception as exc:  # ORT's own errors: shape inference or a kernel refused the symbolic batch
        raise _refusal(original, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from exc
    try:
        worst = _compare(original, refs, one, two)
    except _Mismatch as exc:
        raise _refusal(original, str(exc)) from None
    return Rebatched(rebatched.model, rebatched.batched_inputs, rebatched.reshapes, worst)


class _Mismatch(Exception):
    """What differs between the copy and the original (becomes the refusal's reason)."""


def _compare(original: onnx.ModelProto, refs: list, one: list, two: list) -> float:
    """The largest difference of the copy's outputs (on 1 and on 2 samples) from the original's per sample."""
    worst = 0.0
    for k, name in enumerate(o.name for o in original.graph.output):
        ref0, ref1 = np.asarray(refs[0][k]), np.asarray(refs[1][k])
        worst = max(worst, _difference(one[k], ref0, f"output {name!r} on one sample"))
        got = np.asarray(two[k])
        if ref0.ndim and ref0.shape[0] == 1:
            if got.shape[:1] != (2,):
                raise _Mismatch(f"output {name!r} has shape {list(got.shape)} on 2 samples")
            pairs = [(got[i : i + 1], ref) for i, ref in enumerate((ref0, ref1))]
        else:
            pairs = [(got, ref0)]
        for i, (row, ref) in enumerate(pairs):
            worst = max(worst, _difference(row, ref, f"output {name!r}, sample {i} of 2"))
    return worst


def _stack(samples: list[dict[str, np.ndarray]], batched: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([s[k] for s in samples]) if k in batched else samples[0][k] for k in samples[0]}


def _difference(got: Any, ref: np.ndarray, what: str) -> float:
    got = np.asarray(got)
    if got.shape != ref.shape:
        raise _Mismatch(f"{what} has shape {list(got.shape)}, the original's {list(ref.shape)}")
    if not np.issubdtype(ref.dtype, np.floating):
        if not np.array_equal(got, ref):
            raise _Mismatch(f"{what} differs from the original's")
        return 0.0
    diff = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    if not np.allclose(got, ref, rtol=_RTOL, atol=_ATOL_OF_SCALE * scale, equal_nan=True):
        raise _Mismatch(f"{what} differs from the original's by up to {diff:.3g} (largest value {scale:.3g}), so "
                        "the graph mixes samples or fixes the batch elsewhere")
    return diff


_HINT = "re-export the model with a dynamic batch axis, or measure it at batch 1"


def _refusal(model: onnx.ModelProto, why: str) -> ConfigError:
    ops = Counter(n.op_type for n in model.graph.node if n.op_type in _SHAPE_CARRYING_OPS)
    suspects = f"; ops that may carry the batch as a constant: {', '.join(f'{o} x{n}' for o, n in ops.items())}"
    return ConfigError(f"cannot make the batch symbolic: {why}" + (suspects if ops else ""), hint=_HINT)


def rebatch(model: onnx.ModelProto, shapes: dict | None = None, seed: int = 0) -> Rebatched:
    """:func:`symbolic_batch_copy` then :func:`check_symbolic_batch`."""
    return check_symbolic_batch(model, symbolic_batch_copy(model), shapes, seed)
