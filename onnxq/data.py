"""Calibration and evaluation data: loading, validation against the model's inputs, batching.

Samples are stacked along axis 0 of every array. A source is a ``.npz`` file (one key per model input,
plus an optional label key), a ``.npy`` file (single-input models), a folder of ``.npy`` files
(concatenated along axis 0), or a Python iterable of ``{input_name: array}`` dicts. Everything is checked
up front, so that a bad file fails before a long calibration starts, with a message naming the input
and, for NaN or Inf, the sample index.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxq.data_files import Budget, list_npy_files, read_npy, read_npz
from onnxq.errors import DataError, ModelValidationError

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
    """Validated samples for a model: ``len()`` samples, fed in batches with :meth:`batches`."""

    def __init__(
        self, arrays: dict[str, np.ndarray], specs: list[InputSpec], labels: np.ndarray | None, source: str
    ) -> None:
        self.arrays = arrays
        self.specs = specs
        self.labels = labels
        self.source = source

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def default_batch_size(self) -> int:
        fixed = [s.fixed_batch for s in self.specs if s.fixed_batch]
        return fixed[0] if fixed else 1

    def batches(self, batch_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Feeds for ``session.run``; the last batch may be smaller unless the graph fixes the batch size."""
        bs = self.check_batch_size(batch_size)
        n = len(self)
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            if stop - start < bs and any(s.fixed_batch for s in self.specs):
                break  # a graph with a fixed batch cannot take a short last batch
            yield {name: arr[start:stop] for name, arr in self.arrays.items()}

    def check_batch_size(self, batch_size: int | None) -> int:
        bs = batch_size or self.default_batch_size()
        if bs < 1:
            raise DataError(f"batch size must be at least 1, got {bs}")
        for spec in self.specs:
            if spec.fixed_batch and spec.fixed_batch != bs:
                raise DataError(
                    f"input {spec.name!r} has a fixed batch size of {spec.fixed_batch} in the graph, "
                    f"but batch size {bs} was asked for",
                    hint=f"use --batch-size {spec.fixed_batch}, or re-export the model with a dynamic batch axis",
                )
        return bs

    def take(self, n: int) -> Dataset:
        """The first ``n`` samples as a new Dataset (arrays are views)."""
        arrays = {k: v[:n] for k, v in self.arrays.items()}
        labels = None if self.labels is None else self.labels[:n]
        return Dataset(arrays, self.specs, labels, self.source)


def open_dataset(
    source: Any, model: onnx.ModelProto, *, labels_key: str | None = None, limit: int | None = None
) -> Dataset:
    """Load ``source`` and check it against ``model``'s inputs; raise DataError on any mismatch."""
    specs = input_specs(model)
    if isinstance(source, Dataset):
        return source.take(limit) if limit else source
    arrays, where = _load_arrays(source, specs)
    labels = _pop_labels(arrays, labels_key, specs, where)
    arrays = _check_arrays(arrays, specs, where)
    n = len(next(iter(arrays.values())))
    if labels is not None and len(labels) != n:
        raise DataError(f"{where}: {len(labels)} labels for {n} samples", hint="give one label per sample")
    if limit is not None:
        arrays = {k: v[:limit] for k, v in arrays.items()}
        labels = None if labels is None else labels[:limit]
    return Dataset(arrays, specs, labels, where)


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
    if isinstance(source, Iterable):
        return _stack_dicts(source), "data iterable"
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


def _stack_dicts(items: Iterable[Any]) -> dict[str, np.ndarray]:
    columns: dict[str, list[np.ndarray]] = {}
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise DataError(
                f"data item {i} is a {type(item).__name__}, not a dict of arrays",
                hint="yield {input_name: array} dicts",
            )
        for k, v in item.items():
            columns.setdefault(k, []).append(np.asarray(v))
    if not columns:
        raise DataError("the data iterable yielded no samples")
    try:
        return {k: np.concatenate(v, axis=0) for k, v in columns.items()}
    except ValueError as exc:
        raise DataError(f"the data iterable's arrays do not stack along axis 0: {exc}") from exc


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
            f"{where}: labels {key!r} must be a 1-D integer array, got {labels.dtype} {labels.shape}"
        )
    return labels.astype(np.int64)


def _check_arrays(arrays: dict[str, np.ndarray], specs: list[InputSpec], where: str) -> dict[str, np.ndarray]:
    names = [s.name for s in specs]
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
    out = {}
    counts = set()
    for spec in specs:
        arr = _check_one(arrays[spec.name], spec, where)
        counts.add(len(arr))
        out[spec.name] = arr
    if len(counts) > 1:
        raise DataError(
            f"{where}: inputs have different numbers of samples: {sorted(counts)}",
            hint="stack the same number of samples for every input",
        )
    if 0 in counts:
        raise DataError(f"{where}: the data holds 0 samples")
    return out


def _check_one(arr: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    if arr.ndim != len(spec.shape):
        raise DataError(
            f"{where}: input {spec.name!r} has rank {arr.ndim} (shape {arr.shape}), the model expects rank "
            f"{len(spec.shape)} {_fmt_shape(spec.shape)}",
            hint="stack samples along axis 0, keeping the model's batch axis",
        )
    for axis, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=False)):
        if axis == 0:
            continue  # samples are stacked along the batch axis
        if isinstance(want, int) and got != want:
            raise DataError(
                f"{where}: input {spec.name!r} has shape {arr.shape}, the model expects {_fmt_shape(spec.shape)} "
                f"(axis {axis} is {got}, not {want})",
                hint="resize or re-preprocess the data to the model's input shape",
            )
    if arr.dtype != spec.dtype:
        if (
            np.issubdtype(arr.dtype, np.floating)
            and np.issubdtype(spec.dtype, np.floating)
            or (np.issubdtype(arr.dtype, np.integer) and np.issubdtype(spec.dtype, np.integer))
        ):
            arr = arr.astype(spec.dtype)
        else:
            raise DataError(
                f"{where}: input {spec.name!r} is {arr.dtype}, the model expects {spec.dtype}",
                hint=f"convert it with .astype(np.{spec.dtype})",
            )
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        if bad.any():
            idx = int(np.flatnonzero(bad)[0])
            kind = "NaN" if np.isnan(arr[idx]).any() else "Inf"
            raise DataError(
                f"{where}: input {spec.name!r} holds {kind} at sample {idx} ({int(bad.sum())} bad samples in all)",
                hint="clean or drop those samples; onnxq never calibrates on non-finite values",
            )
    return np.ascontiguousarray(arr)


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
