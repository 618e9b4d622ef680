"""Activation calibration: run the model batch by batch and feed each requested tensor to an observer.

:func:`collect_ranges` exposes the requested intermediate tensors as outputs of a copy of the model, runs
it with onnxruntime one batch at a time, hands each tensor's values to its own streaming observer
(:mod:`onnxq.quantize.observers`) and drops them, so memory stays bounded by the observers' histograms whatever
the size of the calibration set. The observers are re-exported here.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from onnxq.errors import ConfigError, DataError, ProviderError
from onnxq.model import PROTOBUF_LIMIT, iter_graphs, iter_tensors, model_bytes, save_model
from onnxq.progress import Progress
from onnxq.quantize.observers import (
    OBSERVERS,
    AbsHistogram,
    EntropyObserver,
    MinMaxObserver,
    MSEObserver,
    PercentileObserver,
    kl_divergence_curve,
    make_observer,
)
from onnxq.quantize.padding import drop_padding, mask_input, real_positions, sequence_axes
from onnxq.runtime.session import internal_session

__all__ = [
    "OBSERVERS",
    "AbsHistogram",
    "EntropyObserver",
    "MSEObserver",
    "MinMaxObserver",
    "PercentileObserver",
    "RangeTable",
    "collect_ranges",
    "kl_divergence_curve",
    "make_observer",
]

# --- the activation collector ------------------------------------------------------------------

_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT: "float",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "double",
}
_ORT_FLOAT_TYPES = {f"tensor({t})" for t in _FLOAT_TYPES.values()}
# Tensors at least this big are stripped from the copy used for type inference (it needs dtypes only).
_STRIP_BYTES = 1024


class RangeTable(dict):
    """Tensor name -> (rmin, rmax), plus what calibration saw: ``method``, ``num_samples``,
    ``num_batches``, ``skipped`` (tensor name -> why it has no range), ``batch_size``, ``batch_note``
    (how the batch size was chosen) and ``means`` (the mean tensors asked for with ``mean_tensors``)."""

    def __init__(
        self,
        ranges: dict[str, tuple[float, float]],
        *,
        method: str,
        num_samples: int,
        num_batches: int,
        skipped: dict[str, str],
        batch_size: int | None = None,
        batch_note: str = "",
        means: dict[str, np.ndarray] | None = None,
        masked: list[str] | None = None,
        padding: str = "",
    ) -> None:
        super().__init__(ranges)
        self.masked = masked or []
        self.padding = padding  # how many padded positions were left out of the statistics, and by which mask
        self.means = means or {}
        self.method = method
        self.num_samples = num_samples
        self.num_batches = num_batches
        self.skipped = skipped
        self.batch_size = batch_size
        self.batch_note = batch_note


@dataclass
class _Plan:
    outputs: list[str] = field(default_factory=list)  # intermediate tensors exposed as graph outputs
    from_inputs: list[str] = field(default_factory=list)  # graph inputs, observed from the feeds
    types: dict[str, int] = field(default_factory=dict)  # known element types
    skipped: dict[str, str] = field(default_factory=dict)


def collect_ranges(
    model: onnx.ModelProto,
    dataset: Any,
    tensor_names: Sequence[str],
    method: str,
    *,
    batch_size: int | None = None,
    observer_opts: dict[str, Any] | None = None,
    progress: bool = False,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    intra_op_threads: int | None = None,
    method_overrides: dict[str, str] | None = None,
    mean_tensors: dict[str, bool] | None = None,
) -> RangeTable:
    """Run ``model`` on ``dataset`` one batch at a time and calibrate a range for each named tensor.

    ``dataset`` has ``batches(batch_size)`` (an :class:`onnxq.data.Dataset`); anything else is opened
    with :func:`onnxq.data.open_dataset`. The requested tensors become extra outputs of a copy of the
    model (``model`` is not changed); each batch's values go to one observer per tensor and are dropped.
    ``method_overrides`` maps tensor names to another method (with its default options) for those tensors.
    ``batch_size`` None lets onnxq choose it (see :func:`_batching`); the ranges do not depend on it.
    ``mean_tensors`` ({name: keep positions}) also averages those tensors over the samples in the same runs,
    in float64, into ``.means``: the whole tensor but the batch axis (keep positions, e.g. a Conv input's
    [C, H, W] map), or a vector over the last axis; a tensor that cannot be exposed is left out.
    Non-float tensors, constants and tensors inside subgraphs are skipped and listed in ``.skipped``;
    unknown names raise ConfigError; non-finite activations raise DataError.
    """
    opts = dict(observer_opts or {})
    make_observer(method, **opts)  # reject a bad method or option before any work
    if not hasattr(dataset, "batches"):
        from onnxq.data import open_dataset

        dataset = open_dataset(dataset, model)
    wanted = set(tensor_names)
    means_of = {n: k for n, k in (mean_tensors or {}).items()}
    plan = _plan(model, list(dict.fromkeys([*tensor_names, *means_of])))
    augmented = _augment(model, plan)
    means = RunningMeans(means_of, checked=wanted)
    with _session(augmented, providers, intra_op_threads) as sess:
        _drop_non_float_outputs(sess, plan)
        batching = _batching(sess, dataset, plan, batch_size)
        observers = _observers(plan, wanted, method, opts, method_overrides or {})
        padding, label = _Padding.of(model, plan.from_inputs + plan.outputs), f"calibrate ({method})"
        num_samples, num_batches, masked = _observe(sess, dataset, batching, plan, observers, means, label, progress,
                                                    padding)  # fmt: skip
    if num_samples == 0 and observers:
        raise DataError("the calibration data yielded no batches", hint="give at least one sample")
    ranges = {name: observers[name].finalize() for name in tensor_names if name in observers}
    return RangeTable(
        ranges,
        method=method,
        num_samples=num_samples,
        num_batches=num_batches,
        skipped={k: v for k, v in plan.skipped.items() if k in wanted},
        batch_size=batching.batch_size,
        batch_note=batching.note,
        means=means.result(),
        masked=sorted(masked),
        padding=padding.summary(),
    )


def _observers(plan: _Plan, wanted: set[str], method: str, opts: dict, overrides: dict[str, str]) -> dict[str, Any]:
    """One observer per calibrated tensor: ``method`` with ``opts``, or the override's method with its defaults."""
    return {
        name: make_observer(overrides[name]) if name in overrides else make_observer(method, **opts)
        for name in plan.from_inputs + plan.outputs
        if name in wanted
    }


@dataclass
class _Padding:
    """The attention-mask input, each observed tensor's sequence axes, and the padded positions left out."""

    mask: str | None = None
    axes: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    positions: int = 0
    padded: int = 0

    @classmethod
    def of(cls, model: onnx.ModelProto, names: list[str]) -> _Padding:
        mask = mask_input(model)
        return cls(mask, sequence_axes(_skeleton(model), names, mask) if mask else {})

    def keep(self, feeds: dict[str, np.ndarray]) -> np.ndarray | None:
        keep = real_positions(feeds, self.mask)
        if keep is not None:
            self.positions += keep.size
            self.padded += int(keep.size - np.count_nonzero(keep))
        return keep

    def summary(self) -> str:
        if not self.padded:
            return ""
        return (f"{self.padded} of {self.positions} positions are padding (attention mask {self.mask!r}), "
                "left out of the activation statistics")  # fmt: skip


def _observe(sess, dataset, batching, plan: _Plan, observers: dict, means: RunningMeans, label: str,
             progress: bool, padding: _Padding) -> tuple[int, int, set[str]]:  # fmt: skip
    """Run every batch, hand each tensor to its observer (and mean) and drop it; return (samples, batches).
    Positions the batch's attention mask marks as padding are left out of the observers (not the means)."""
    num_samples = num_batches = 0
    masked: set[str] = set()  # tensors that held mask sentinels (left out of their ranges)
    total = len(dataset) if hasattr(dataset, "__len__") else None
    names = plan.from_inputs + plan.outputs
    with Progress(label, total, enabled=progress) as bar:
        for feeds in batching.feeds:
            outs = _run(sess, plan.outputs, feeds, num_batches) if plan.outputs else []
            values = [feeds[n] for n in plan.from_inputs] + outs
            keep = padding.keep(feeds)
            for name, value in zip(names, values, strict=True):
                if name in observers:
                    real = value if keep is None else drop_padding(value, keep, padding.axes.get(name))
                    _observe_one(observers[name], real, name, num_batches, masked)
                if name in means.keep:
                    means.add(name, value, num_batches)
            del outs, values  # never hold activations beyond one batch
            n = dataset.samples_in(feeds)
            num_samples += n
            num_batches += 1
            bar.update(n)
    return num_samples, num_batches, masked


class RunningMeans:
    """Running sums of tensors over the batch axis (or over every axis but the last): float32 partial
    sums of up to FLUSH_SAMPLES samples (3x faster to add than float64; relative error ~1e-6), flushed
    into float64 totals.

    ``checked`` names tensors already checked for NaN/Inf elsewhere (by an observer, say); the others are
    checked here.
    """

    FLUSH_SAMPLES = 256

    def __init__(self, keep_positions: dict[str, bool], checked: set[str] | None = None) -> None:
        self.keep = keep_positions
        self.checked = checked or set()
        self.sums: dict[str, np.ndarray] = {}
        self.partial: dict[str, np.ndarray] = {}
        self.pending: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: np.ndarray, batch: int) -> None:
        if name not in self.checked and not np.isfinite(value).all():
            raise DataError(
                f"tensor {name!r} holds NaN or Inf in calibration batch {batch}",
                hint="check the data; the float model itself produces non-finite values on it",
            )
        v = (value if self.keep[name] else value.reshape(-1, value.shape[-1])).astype(np.float32, copy=False)
        if name not in self.sums:
            self.sums[name] = np.zeros(v.shape[1:], np.float64)
            self.partial[name] = np.zeros(v.shape[1:], np.float32)
            self.pending[name] = self.counts[name] = 0
        np.add(self.partial[name], v[0] if v.shape[0] == 1 else v.sum(axis=0), out=self.partial[name])
        self.pending[name] += v.shape[0]
        self.counts[name] += v.shape[0]
        if self.pending[name] >= self.FLUSH_SAMPLES:
            self._flush(name)

    def _flush(self, name: str) -> None:
        np.add(self.sums[name], self.partial[name], out=self.sums[name])
        self.partial[name][...] = 0
        self.pending[name] = 0

    def result(self) -> dict[str, np.ndarray]:
        return {name: (self.sums[name] + self.partial[name]) / self.counts[name] for name in self.sums}


# --- the batch size: chosen from the size of the activations when the caller leaves it open -------------

AUTO_BATCH_BYTES = 32 * 2**20  # exposed activations per batch when onnxq chooses the batch size
MAX_AUTO_BATCH = 64


@dataclass
class _Batching:
    feeds: Any  # iterable of feeds dicts
    batch_size: int | None
    note: str  # how the batch size was chosen


def _batching(sess: ort.InferenceSession, dataset: Any, plan: _Plan, batch_size: int | None) -> _Batching:
    """The feeds to calibrate on, their batch size and how it was chosen.

    A batch size given by the caller is used as given (and checked against the graph); a batch fixed by
    the graph is kept. Otherwise onnxq picks one that keeps the exposed activations of a batch near
    AUTO_BATCH_BYTES (at most MAX_AUTO_BATCH samples), measured on one sample: fewer, larger runs where
    activations are small, and memory bounded where they are large. The observers are batch-size
    invariant, so this changes speed and memory, not the ranges (tests/test_calibrate.py checks it).
    """
    from onnxq.data import Dataset

    dynamic = isinstance(dataset, Dataset) and dataset.fixed_batch_size() is None
    if batch_size is not None or not dynamic or len(dataset) == 0 or not plan.outputs:
        bs = dataset.check_batch_size(batch_size) if hasattr(dataset, "check_batch_size") else batch_size
        how = "as given" if batch_size is not None else "fixed by the graph" if bs and bs > 1 else ""
        return _Batching(dataset.batches(batch_size), bs, how)
    one = next(dataset.batches(1))
    exposed = sum(o.nbytes for o in _run(sess, plan.outputs, one, 0)) + sum(one[n].nbytes for n in plan.from_inputs)
    per_sample = exposed // max(1, dataset.samples_in(one))
    bs = int(max(1, min(MAX_AUTO_BATCH, AUTO_BATCH_BYTES // max(1, per_sample))))
    note = f"chosen by onnxq: about {AUTO_BATCH_BYTES >> 20} MiB of activations a batch"
    return _Batching(dataset.batches(bs), bs, note)


def _plan(model: onnx.ModelProto, tensor_names: Sequence[str]) -> _Plan:
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    constants |= {o for node in graph.node if node.op_type == "Constant" for o in node.output}
    inputs = {vi.name: vi for vi in graph.input if vi.name not in constants}
    produced = {o for node in graph.node for o in node.output if o}
    nested = {o for sub in list(iter_graphs(graph))[1:] for node in sub.node for o in node.output}
    nested |= {vi.name for sub in list(iter_graphs(graph))[1:] for vi in sub.input}
    plan = _Plan(types=_elem_types(model, [n for n in tensor_names if n in produced]))
    missing = []
    for name in dict.fromkeys(tensor_names):
        elem = plan.types.get(name) or (inputs[name].type.tensor_type.elem_type if name in inputs else 0)
        if name in constants:
            plan.skipped[name] = "a constant (initializer or Constant output), not an activation"
        elif elem and elem not in _FLOAT_TYPES:
            type_name = onnx.helper.tensor_dtype_to_string(elem).split(".")[-1].lower()
            plan.skipped[name] = f"element type {type_name} is not floating point"
        elif name in inputs:
            plan.from_inputs.append(name)
        elif name in produced:
            plan.outputs.append(name)
        elif name in nested:
            plan.skipped[name] = "inside a subgraph (If/Loop/Scan body), which onnxruntime cannot expose"
        else:
            missing.append(name)
    if missing:
        raise ConfigError(
            f"{len(missing)} tensor(s) to calibrate are not in the model: {missing[:5]}",
            hint="name graph inputs or node outputs of the main graph; `onnxq inspect` lists them",
        )
    return plan


def _elem_types(model: onnx.ModelProto, names: list[str]) -> dict[str, int]:
    """Element types of ``names`` from the model's value_info, completed by shape inference if needed."""
    graph = model.graph
    known = {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.value_info, *graph.output]}
    if all(known.get(n) for n in names):
        return known
    try:
        inferred = onnx.shape_inference.infer_shapes(_skeleton(model), strict_mode=False)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return known  # types stay unknown; the session's outputs say them (see _drop_non_float_outputs)
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        known.setdefault(vi.name, vi.type.tensor_type.elem_type)
        known[vi.name] = known[vi.name] or vi.type.tensor_type.elem_type
    return known


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without the payload of large tensors: type inference needs their dtype and dims only,
    and a model past protobuf's 2 GB limit could not be handed to the inference C++ code at all."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in iter_tensors(copy):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.ByteSize() < _STRIP_BYTES:
            continue
        name, dims, dtype = tensor.name, list(tensor.dims), tensor.data_type
        tensor.Clear()
        tensor.name, tensor.data_type = name, dtype
        tensor.dims.extend(dims)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", "stripped-for-type-inference"
    return copy


def _augment(model: onnx.ModelProto, plan: _Plan) -> onnx.ModelProto:
    """A copy of ``model`` with every tensor of ``plan.outputs`` also a graph output."""
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output}
    for name in plan.outputs:
        if name in existing:
            continue
        vi = augmented.graph.output.add()
        vi.name = name
        if plan.types.get(name):  # left untyped when unknown: onnxruntime infers it
            vi.type.tensor_type.elem_type = plan.types[name]
    return augmented


@contextlib.contextmanager
def _session(
    model: onnx.ModelProto,
    providers: Sequence[str],
    intra_op_threads: int | None,
    external_threshold: int = PROTOBUF_LIMIT,
) -> Iterator[ort.InferenceSession]:
    """An ORT session for ``model``; past ``external_threshold`` bytes it goes through a temporary file
    with external data, which lives until the session is closed."""
    available = ort.get_available_providers()
    for p in providers:
        if p not in available:
            raise ProviderError(
                f"execution provider {p!r} is not available; this onnxruntime has {available}",
                hint="install the onnxruntime package for that provider (e.g. onnxruntime-gpu), or use CPU",
            )
    with contextlib.ExitStack() as stack:
        if model_bytes(model) < external_threshold:
            source: Any = model.SerializeToString()
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="onnxq-calibrate-")))
            source = str(save_model(model, tmp / "augmented.onnx", external_data=True))
        try:
            # Basic optimizations only: they keep the float numerics of the graph as written.
            sess = internal_session(source, optimization="basic", threads=intra_op_threads, providers=tuple(providers))
        except Exception as exc:  # ORT raises its own exception types, all with a useful message
            raise ProviderError(
                f"onnxruntime cannot load the model augmented for calibration: {_first_line(exc)}",
                hint="check that the float model itself runs in onnxruntime",
            ) from exc
        yield sess


def _drop_non_float_outputs(sess: ort.InferenceSession, plan: _Plan) -> None:
    """Skip exposed tensors whose type (as onnxruntime resolved it) is not floating point."""
    resolved = {o.name: o.type for o in sess.get_outputs()}
    for name in list(plan.outputs):
        if resolved.get(name) not in _ORT_FLOAT_TYPES:
            type_name = (resolved.get(name) or "unknown").removeprefix("tensor(").removesuffix(")")
            plan.skipped[name] = f"element type {type_name} is not floating point"
            plan.outputs.remove(name)


def _run(sess: ort.InferenceSession, names: list[str], feeds: dict[str, np.ndarray], batch: int) -> list:
    try:
        return sess.run(names, feeds)
    except Exception as exc:
        raise DataError(
            f"onnxruntime failed on calibration batch {batch}: {_first_line(exc)}",
            hint="check the data's shapes against the model's inputs (`onnxq inspect`)",
        ) from exc


# Additive attention masks write about -3.4e38 (float32's lowest) at padded positions; such values are a
# sentinel, not an activation, and would make the tensor's scale ~1e36. Values at or below this are left out of
# the ranges: quantized, they saturate to the range's minimum, which after Softmax is still ~0.
MASK_SENTINEL = -1e30


def _observe_one(observer: Any, value: np.ndarray, name: str, batch: int, masked: set[str] | None = None) -> None:
    if value.dtype.kind == "f" and value.size and value.min() <= MASK_SENTINEL:
        if masked is not None:
            masked.add(name)
        value = value[value > MASK_SENTINEL]
        if value.size == 0:
            return
    try:
        observer.update(value)
    except DataError as exc:
        raise DataError(
            f"tensor {name!r} in calibration batch {batch}: {exc.message}",
            hint="exclude this tensor from quantization (e.g. a mask using -inf), or check the input data",
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
