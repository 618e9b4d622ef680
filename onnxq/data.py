"""Calibration and evaluation data: loading, validation against the model's inputs, batching.

Samples are stacked along axis 0 of every array. A source is a ``.npz`` file (one key per model input,
plus an optional label key), a ``.npy`` file (single-input models), a folder of ``.npy`` files
(concatenated along axis 0), or a Python iterable of ``{input_name: array}`` dicts. Everything is checked
up front, so that a bad file fails before a long calibration starts, with a message naming the input
and, for NaN or Inf, the sample index.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxq.data_files import Budget, list_npy_files, read_npy, read_npz
from onnxq.errors import DataError, ModelValidationError
from onnxq.feeds import batch_axes, feed_groups, is_test_data_folder, join_feeds, read_test_data_folder, samples_in

LABEL_KEYS = ("label", "labels", "y", "target", "targets")


@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, numpy dtype, shape (int, symbolic name, or None where unknown)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the graph fixes on axis 0, or None when it is dynamic."""
        if self.shape and isinstance(self.shape[0], int) and self.shape[0] > 0:
            return self.shape[0]
        return None


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (initializers listed as inputs, as IR < 4 does, are left out)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        ttype = vi.type.tensor_type
        dtype = _input_dtype(vi.name, ttype.elem_type)
        dims: list[int | str | None] = []
        for d in ttype.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
        specs.append(InputSpec(vi.name, dtype, tuple(dims)))
    return specs


def _input_dtype(name: str, elem_type: int) -> np.dtype:
    """The numpy dtype of a graph input's ONNX element type (float32 when undefined)."""
    if not elem_type:
        return np.dtype("float32")
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelValidationError(
            f"graph input {name!r} has element type {elem_type}, which is no ONNX tensor type",
            hint="the model file is corrupt or was written by a broken exporter; re-export it",
        ) from exc


class Dataset:
    """Validated samples for a model, stacked along each input's batch axis (:func:`onnxq.feeds.batch_axes`).

    ``len()`` is the number of samples; :meth:`batches` yields feeds for ``session.run``, slicing every batched
    input along its batch axis and passing unbatched inputs (scalars, shape tensors) whole with each batch.
    """

    def __init__(self, arrays: dict[str, np.ndarray], specs: list[InputSpec], labels: np.ndarray | None,
                 source: str, axes: dict[str, int | None] | None = None) -> None:  # fmt: skip
        self.arrays = arrays
        self.specs = specs
        self.labels = labels
        self.source = source
        self.axes = axes if axes is not None else batch_axes(specs)
        self.references: list[dict[str, np.ndarray]] | None = None  # stored outputs per feed (test-data folders)

    def __len__(self) -> int:
        return samples_in(self.arrays, self.axes)

    def samples_in(self, feeds: dict[str, np.ndarray]) -> int:
        """How many samples one of this dataset's feeds holds."""
        return samples_in(feeds, self.axes)

    def fixed_batch_size(self) -> int | None:
        """The batch size the graph fixes (on an input whose batch axis is 0), or None when it is dynamic."""
        fixed = [s.fixed_batch for s in self.specs if s.fixed_batch and self.axes.get(s.name) == 0]
        return fixed[0] if fixed else None

    def default_batch_size(self) -> int:
        return self.fixed_batch_size() or 1

    def batches(self, batch_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Feeds for ``session.run``; the last batch may be smaller unless the graph fixes the batch size."""
        bs = self.check_batch_size(batch_size)
        n = len(self)
        if not any(axis is not None for axis in self.axes.values()):
            yield dict(self.arrays)  # nothing is batched: one feed holds it all
            return
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            if stop - start < bs and self.fixed_batch_size():
                break  # a graph with a fixed batch cannot take a short last batch
            yield self._slice(start, stop)

    def _slice(self, start: int, stop: int) -> dict[str, np.ndarray]:
        out = {}
        for name, arr in self.arrays.items():
            axis = self.axes.get(name)
            out[name] = arr if axis is None else arr[(slice(None),) * axis + (slice(start, stop),)]
        return out

    def check_batch_size(self, batch_size: int | None) -> int:
        bs = self.default_batch_size() if batch_size is None else batch_size
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise DataError(f"batch size must be a whole number of at least 1, got {bs!r}",
                            hint="leave it open for the model's fixed batch (or onnxq's choice), or give 1 or more")
        for spec in self.specs:
            if spec.fixed_batch and self.axes.get(spec.name) == 0 and spec.fixed_batch != bs:
                raise DataError(
                    f"input {spec.name!r} has a fixed batch size of {spec.fixed_batch} in the graph, "
                    f"but batch size {bs} was asked for",
                    hint=f"use --batch-size {spec.fixed_batch}, or re-export the model with a dynamic batch axis",
                )
        return bs

    def take(self, n: int) -> Dataset:
        """The first ``n`` samples as a new Dataset (arrays are views)."""
        labels = None if self.labels is None else self.labels[:n]
        return Dataset(self._slice(0, n), self.specs, labels, self.source, self.axes)


class FeedsDataset(Dataset):
    """Samples as a sequence of feeds, each exactly what the session receives; shapes may differ between feeds.

    :meth:`batches` concatenates consecutive feeds along their batch axes up to the batch size where the model
    and the feeds allow it (:func:`onnxq.feeds.feed_groups`), and otherwise yields them one by one.
    """

    def __init__(self, feeds: list[dict[str, np.ndarray]], specs: list[InputSpec], labels: np.ndarray | None,
                 source: str, axes: dict[str, int | None] | None = None,
                 references: list[dict[str, np.ndarray]] | None = None) -> None:  # fmt: skip
        super().__init__({}, specs, labels, source, axes)
        self.feeds = feeds
        self.counts = [samples_in(f, self.axes) for f in feeds]
        self.labels_key: str | None = None  # where the labels came from, when the source says
        self.references = references if references and any(references) else None

    def __len__(self) -> int:
        return sum(self.counts)

    def batches(self, batch_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        for group in self._groups(batch_size):
            yield join_feeds([self.feeds[j] for j in group], self.axes)

    def reference_batches(self, batch_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """The stored outputs, grouped as :meth:`batches` groups the feeds (outputs batch along axis 0)."""
        refs = self.references or [{} for _ in self.feeds]
        for group in self._groups(batch_size):
            parts = [refs[j] for j in group]
            yield join_feeds(parts, dict.fromkeys(parts[0], 0))

    def _groups(self, batch_size: int | None) -> list[list[int]]:
        return feed_groups(self.feeds, self.counts, self.axes, self.check_batch_size(batch_size))

    def take(self, n: int) -> FeedsDataset:
        """The first feeds that hold ``n`` samples (whole feeds; at least one)."""
        kept, total = [], 0
        for feed, count in zip(self.feeds, self.counts, strict=True):
            if kept and total + count > n:
                break
            kept.append(feed)
            total += count
        labels = None if self.labels is None else self.labels[:total]
        refs = None if self.references is None else self.references[: len(kept)]
        taken = FeedsDataset(kept, self.specs, labels, self.source, self.axes, refs)
        taken.labels_key = self.labels_key
        return taken


def open_dataset(
    source: Any, model: onnx.ModelProto, *, labels_key: str | None = None, limit: int | None = None
) -> Dataset:
    """Load ``source`` and check it against ``model``'s inputs; raise DataError on any mismatch.

    ``source`` is a stacked form (a .npz, a .npy, a folder of .npy, a dict of arrays) or a sequence of feeds
    (an ONNX test-data folder, a folder of .npz files with one feed each, an iterable of dicts).
    """
    _refuse_non_tensor_inputs(model)
    specs = input_specs(model)
    if isinstance(source, Dataset):
        return source.take(limit) if limit else source
    feeds = _load_feeds(source, model, specs)
    if feeds is not None:
        return feeds.take(limit) if limit else feeds
    arrays, where = _load_arrays(source, specs)
    labels = _pop_labels(arrays, labels_key, specs, where)
    axes = batch_axes(specs)
    arrays = _check_arrays(arrays, specs, axes, where)
    dataset = Dataset(arrays, specs, labels, where, axes)
    if labels is not None and len(labels) != len(dataset):
        raise DataError(f"{where}: {len(labels)} labels for {len(dataset)} samples", hint="give one label per sample")
    return dataset.take(limit) if limit is not None else dataset


def _refuse_non_tensor_inputs(model: onnx.ModelProto) -> None:
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        kind = vi.type.WhichOneof("value")
        if vi.name not in inits and kind != "tensor_type":
            raise DataError(f"model input {vi.name!r} is of type {type_text(vi.type)}: onnxq feeds tensors only",
                            hint="data for onnxq is tensors (arrays); sequence, optional, map and sparse "
                            "inputs cannot be fed")  # fmt: skip


def type_text(tp: onnx.TypeProto) -> str:
    """``sequence(tensor(float))``, ``optional(tensor(int64))``, ``map(string, tensor(float))``..."""
    kind = tp.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        elem = getattr(tp, kind).elem_type
        name = onnx.TensorProto.DataType.Name(elem).lower() if elem in onnx.TensorProto.DataType.values() else "?"
        return f"{kind[:-5]}({name})"
    if kind in ("sequence_type", "optional_type"):
        return f"{kind[:-5]}({type_text(getattr(tp, kind).elem_type)})"
    if kind == "map_type":
        key = onnx.TensorProto.DataType.Name(tp.map_type.key_type).lower()
        return f"map({key}, {type_text(tp.map_type.value_type)})"
    return "value of no declared type"


def _load_feeds(source: Any, model: onnx.ModelProto, specs: list[InputSpec]) -> FeedsDataset | None:
    """A FeedsDataset for the feed forms of ``source``; None for the stacked forms."""
    axes = batch_axes(specs)
    names = [s.name for s in specs]
    folder = _feed_folder_kind(source)
    if folder == "test-data":
        outputs = model.graph.output
        not_tensors = [o.name for o in outputs if o.type.WhichOneof("value") != "tensor_type"]
        folder = read_test_data_folder(Path(source), names, [o.name for o in outputs], not_tensors)
        feeds = [_check_feed(f, specs, axes, f"{source} set {i}") for i, f in enumerate(folder.feeds)]
        dataset = _feeds_dataset(feeds, specs, folder.labels, str(source), axes, folder.outputs)
        dataset.labels_key = "labels.npy" if folder.labels is not None else None
        return dataset
    if folder == "npz":
        files = sorted(Path(source).glob("*.npz"))
        loaded = [_load_npz(f) for f in files]
        labels = [_pop_labels(a, None, specs, str(f)) for a, f in zip(loaded, files, strict=True)]
        feeds = [_check_feed(a, specs, axes, str(f)) for a, f in zip(loaded, files, strict=True)]
        joined = np.concatenate(labels) if all(lb is not None for lb in labels) else None
        return _feeds_dataset(feeds, specs, joined, str(source), axes, None)
    if isinstance(source, Iterable) and not isinstance(source, (str, bytes, os.PathLike, Mapping, np.ndarray)):
        feeds = [_check_feed(_as_feed(item, i), specs, axes, f"data item {i}") for i, item in enumerate(source)]
        return _feeds_dataset(feeds, specs, None, "data iterable", axes, None)
    return None


def _feed_folder_kind(source: Any) -> str | None:
    """"test-data" or "npz" for a folder of feeds; None for anything else (including a path that cannot be
    read, which the stacked loader then reports)."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = Path(source)
    try:
        if not stat.S_ISDIR(path.stat().st_mode):
            return None
        if is_test_data_folder(path):
            return "test-data"
        return "npz" if any(p.suffix == ".npz" for p in path.iterdir()) else None
    except (OSError, ValueError):
        return None


def _feeds_dataset(feeds, specs, labels, where, axes, outputs) -> FeedsDataset:
    if not feeds:
        raise DataError(f"{where}: the data holds no feeds", hint="give at least one sample")
    dataset = FeedsDataset(feeds, specs, labels, where, axes, outputs)
    if labels is not None and len(labels) != len(dataset):
        raise DataError(f"{where}: {len(labels)} labels for {len(dataset)} samples", hint="give one label per sample")
    return dataset


def _as_feed(item: Any, i: int) -> dict[str, np.ndarray]:
    if not isinstance(item, Mapping):
        raise DataError(f"data item {i} is a {type(item).__name__}, not a dict of arrays",
                        hint="yield {input_name: array} dicts, one feed each")  # fmt: skip
    return {str(k): np.asarray(v) for k, v in item.items()}


def _load_arrays(source: Any, specs: list[InputSpec]) -> tuple[dict[str, np.ndarray], str]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            is_dir = stat.S_ISDIR(path.stat().st_mode)
        except FileNotFoundError:
            raise DataError(
                f"data path {path} does not exist", hint="pass a .npz, a .npy or a folder of .npy files"
            ) from None
        except (OSError, ValueError) as exc:  # a symlink loop, a name too long, a NUL byte
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise DataError(f"cannot open the data path {path!s:.200}: {reason}", hint="check the path") from exc
        if is_dir:
            return _load_npy_folder(path, specs), str(path)
        if path.suffix == ".npz":
            return _load_npz(path), str(path)
        if path.suffix == ".npy":
            return {_single_input_name(specs, path): _load_npy(path)}, str(path)
        raise DataError(
            f"{path}: unsupported data file type {path.suffix!r}",
            hint="use .npz (one key per input), .npy, or a folder of .npy files",
        )
    if isinstance(source, Mapping):
        return {k: np.asarray(v) for k, v in source.items()}, "data dict"
    if isinstance(source, np.ndarray):
        return {_single_input_name(specs, "array"): source}, "array"
    raise DataError(
        f"cannot read data from a {type(source).__name__}",
        hint="pass a path, a dict of arrays or an iterable of {input_name: array} dicts",
    )


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a .npz, read without pickle and within the caps of :mod:`onnxq.data_files`."""
    return read_npz(path)


def _load_npy(path: Path, budget: Budget | None = None) -> np.ndarray:
    return read_npy(path, budget)


def _load_npy_folder(path: Path, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    files = list_npy_files(path)
    if not files:
        raise DataError(f"folder {path} holds no .npy files", hint="put one .npy per sample or batch there")
    name = _single_input_name(specs, path)
    budget = Budget(path)  # one cap for the whole folder
    parts = [_load_npy(f, budget) for f in files]
    if any(p.ndim == 0 for p in parts):
        raise DataError(
            f"{path}: a .npy file holds a single scalar; samples are stacked along axis 0",
            hint="save each file with a leading sample axis",
        )
    shapes = {p.shape[1:] for p in parts}
    if len(shapes) > 1:
        raise DataError(
            f"{path}: the .npy files disagree on the per-sample shape: {sorted(shapes)}",
            hint="give every file the same shape after axis 0",
        )
    return {name: np.concatenate(parts, axis=0)}


def _single_input_name(specs: list[InputSpec], where: Any) -> str:
    if len(specs) != 1:
        names = [s.name for s in specs]
        raise DataError(
            f"{where}: a bare array can only feed a single-input model, but this one has inputs {names}",
            hint="use a .npz with one key per input name",
        )
    return specs[0].name


def _pop_labels(
    arrays: dict[str, np.ndarray], labels_key: str | None, specs: list[InputSpec], where: str
) -> np.ndarray | None:
    input_names = {s.name for s in specs}
    if labels_key is not None:
        if labels_key not in arrays:
            raise DataError(
                f"{where}: no label array {labels_key!r}; it has {sorted(arrays)}",
                hint="pass --labels with one of those keys",
            )
        key = labels_key
    else:
        key = next((k for k in LABEL_KEYS if k in arrays and k not in input_names), None)
        if key is None:
            return None
    labels = arrays.pop(key)
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1:
        raise DataError(
            f"{where}: labels {key!r} must be a 1-D integer array, got {labels.dtype} {labels.shape}",
            hint="save one integer class index per sample (np.int64), or name the label key with --labels",
        )
    return labels.astype(np.int64)


def _check_arrays(arrays: dict[str, np.ndarray], specs: list[InputSpec], axes: dict[str, int | None],
                  where: str) -> dict[str, np.ndarray]:  # fmt: skip
    """Stacked arrays checked against the inputs; every batched input holds the same number of samples."""
    out = _check_feed(arrays, specs, axes, where)
    counts = {name: out[name].shape[axis] for name, axis in axes.items() if axis is not None}
    if len(set(counts.values())) > 1:
        raise DataError(
            f"{where}: inputs have different numbers of samples along their batch axes: {counts}",
            hint="stack the same number of samples for every input, or give one feed per sample "
            "(a folder of test_data_set_*/input_*.pb, or of .npz files)",
        )
    if 0 in counts.values():
        raise DataError(f"{where}: the data holds 0 samples", hint="give at least one sample")
    return out


def _check_feed(arrays: dict[str, np.ndarray], specs: list[InputSpec], axes: dict[str, int | None],
                where: str) -> dict[str, np.ndarray]:  # fmt: skip
    """One feed (or stacked arrays) checked against the inputs: names, ranks, fixed dims, dtypes, finiteness."""
    names = [s.name for s in specs]
    arrays = with_empty_cache(arrays, specs, axes)
    missing = [n for n in names if n not in arrays]
    extra = [k for k in arrays if k not in names]
    if missing:
        raise DataError(
            f"{where}: no data for model input(s) {missing}; the data has {sorted(arrays)}",
            hint=f"name the arrays after the model's inputs {names}",
        )
    if extra:
        raise DataError(
            f"{where}: array(s) {extra} match no model input; the model's inputs are {names}",
            hint="rename or remove them (a label array may be named 'label')",
        )
    return {spec.name: _check_one(np.asarray(arrays[spec.name]), spec, axes.get(spec.name), where) for spec in specs}


_CACHE_INPUT = re.compile(r"past|cache", re.IGNORECASE)


def with_empty_cache(arrays: dict[str, Any], specs: list[InputSpec], axes: dict[str, int | None]) -> dict[str, Any]:
    """``arrays`` with an empty key/value cache for a decoder whose data gives none: when every input the data
    lacks is a float cache input (named past*/*cache*, one symbolic length axis besides the batch), each gets
    zeros with that axis 0 (a prompt with no past), as many samples as the data holds. Otherwise unchanged."""
    missing = [s for s in specs if s.name not in arrays]
    if not missing or not all(_CACHE_INPUT.search(s.name) for s in missing):
        return arrays
    given = [np.shape(v)[axes[k]] for k, v in arrays.items() if axes.get(k) is not None and np.ndim(v) > axes[k]]
    fill = {}
    for spec in missing:
        shape = _empty_cache_shape(spec, axes.get(spec.name), given[0] if given else 1)
        if shape is None:
            return arrays
        fill[spec.name] = np.zeros(shape, spec.dtype)
    return {**arrays, **fill}


def _empty_cache_shape(spec: InputSpec, batch_axis: int | None, n: int) -> tuple[int, ...] | None:
    if spec.dtype.kind != "f" or len(spec.shape) < 3:
        return None
    dims = list(spec.shape)
    if batch_axis is not None:
        dims[batch_axis] = n
    length = [i for i, d in enumerate(dims) if not isinstance(d, int)]
    if len(length) != 1:
        return None
    dims[length[0]] = 0
    return tuple(int(d) for d in dims)


def _check_one(arr: np.ndarray, spec: InputSpec, batch_axis: int | None, where: str) -> np.ndarray:
    if arr.dtype.kind in "OVU" and not _is_onnx_dtype(arr.dtype):
        raise DataError(
            f"{where}: input {spec.name!r} holds {arr.dtype} values, not numbers",
            hint="give numeric arrays (int4, float8 and bfloat16 tensors can come as .pb files)",
        )
    if arr.ndim != len(spec.shape):
        raise DataError(
            f"{where}: input {spec.name!r} has rank {arr.ndim} (shape {arr.shape}), the model expects rank "
            f"{len(spec.shape)} {_fmt_shape(spec.shape)}",
            hint=_layout_hint(spec, batch_axis),
        )
    for axis, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=False)):
        if axis == batch_axis:
            continue  # samples are stacked along the batch axis
        if isinstance(want, int) and got != want:
            raise DataError(
                f"{where}: input {spec.name!r} has shape {arr.shape}, the model expects {_fmt_shape(spec.shape)} "
                f"(axis {axis} is {got}, not {want})",
                hint="resize or re-preprocess the data to the model's input shape",
            )
    arr = _cast(arr, spec, where)
    _check_finite(arr, spec, batch_axis, where)
    return np.ascontiguousarray(arr) if arr.ndim else arr  # ascontiguousarray would make a scalar 1-D


def _layout_hint(spec: InputSpec, batch_axis: int | None) -> str:
    if batch_axis is None:
        return f"{spec.name!r} has no batch axis: give it exactly as the model takes it"
    return (f"stack samples along axis {batch_axis} of {spec.name!r} (its batch axis), or give one feed per "
            "sample: a folder of test_data_set_*/input_*.pb, or of .npz files")  # fmt: skip


def _is_onnx_dtype(dtype: np.dtype) -> bool:
    """int4, float8 and bfloat16 arrays as onnx reads them (ml_dtypes), which numpy shows as void-like."""
    try:
        onnx.helper.np_dtype_to_tensor_dtype(dtype)
        return True
    except Exception:
        return False


def _cast(arr: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    if arr.dtype == spec.dtype:
        return arr
    both_float = np.issubdtype(arr.dtype, np.floating) and np.issubdtype(spec.dtype, np.floating)
    both_int = np.issubdtype(arr.dtype, np.integer) and np.issubdtype(spec.dtype, np.integer)
    if both_float or both_int:
        return arr.astype(spec.dtype)
    raise DataError(
        f"{where}: input {spec.name!r} is {arr.dtype}, the model expects {spec.dtype}",
        hint=f"convert it with .astype(np.{spec.dtype})",
    )


def _check_finite(arr: np.ndarray, spec: InputSpec, batch_axis: int | None, where: str) -> None:
    if not np.issubdtype(arr.dtype, np.floating) or arr.size == 0:
        return
    finite = np.isfinite(arr)
    if finite.all():
        return
    if batch_axis is None:
        raise DataError(f"{where}: input {spec.name!r} holds NaN or Inf",
                        hint="clean the data; onnxq never calibrates on non-finite values")  # fmt: skip
    per_sample = np.moveaxis(finite, batch_axis, 0).reshape(arr.shape[batch_axis], -1).all(axis=1)
    bad = np.flatnonzero(~per_sample)
    idx = int(bad[0])
    kind = "NaN" if np.isnan(np.take(arr, idx, axis=batch_axis)).any() else "Inf"
    raise DataError(
        f"{where}: input {spec.name!r} holds {kind} at sample {idx} ({len(bad)} bad samples in all)",
        hint="clean or drop those samples; onnxq never calibrates on non-finite values",
    )


def _fmt_shape(shape: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def random_feeds(
    specs: list[InputSpec],
    batch_size: int = 1,
    shapes: dict[str, tuple[int, ...]] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random inputs for benchmarking: standard normal floats, small non-negative integers."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        if shapes and spec.name in shapes:
            shape = tuple(shapes[spec.name])
        else:
            shape = []
            for axis, d in enumerate(spec.shape):
                if isinstance(d, int):
                    shape.append(d)
                elif axis == 0:
                    shape.append(batch_size)
                else:
                    raise DataError(
                        f"input {spec.name!r} has an unknown dimension {d or '?'} on axis {axis}",
                        hint=f"give its shape with --shape {spec.name}:"
                        + ",".join(str(x) if isinstance(x, int) else "N" for x in spec.shape),
                    )
            shape = tuple(shape)
        if np.issubdtype(spec.dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == np.bool_:
            feeds[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            feeds[spec.name] = rng.integers(0, 10, shape).astype(spec.dtype)
    return feeds
