"""Data as feeds: where each input's batch axis is, reading ONNX test-data folders, and batching feeds.

A *feed* is exactly what ``session.run`` receives: ``{input name: array}``. Data comes either stacked (one
array per input holding many samples along that input's batch axis) or as a sequence of feeds whose shapes
may differ from feed to feed (variable sequence lengths, a recurrent state, a scalar input).

**Batch axes.** An input's batch axis is where the model's batch dimension sits: the symbolic dimension that
every input of rank >= 1 shares (``N`` in ``x [8, N, 8]`` and ``state [2, N, 32]``: axis 1), else axis 0.
Inputs without it (a rank-0 ``sr``, a shape tensor, a broadcast operand) have no batch axis: they are passed
whole with every batch, and feeds are batched together only where such inputs are equal. When every shape is
fixed, axis 0 is the batch of the inputs whose axis 0 has the first input's size (``x [3, 4, 5]`` beside a
broadcast ``y [5]``: x is batched, y is not).

**Test-data folders** are ONNX's own layout (its backend tests, the model zoo): ``test_data_set_K/input_I.pb``
(and ``output_I.pb``) holding serialized ``TensorProto`` files. Inputs are matched to the model's by the
tensor's name, else by position. int4, float8 and bfloat16 tensors are read as onnx reads them (ml_dtypes).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxq.errors import DataError

MAX_TENSOR_FILE_BYTES = 2 << 30  # one .pb tensor file; onnx's protobuf limit is 2 GiB anyway
_SET = re.compile(r"^test_data_set_(\d+)$")
_FILE = re.compile(r"^(input|output)_(\d+)\.pb$")


def batch_axes(specs: Sequence[Any]) -> dict[str, int | None]:
    """{input name: its batch axis, or None} (see the module docstring)."""
    ranked = [s for s in specs if len(s.shape) >= 1]
    dynamic = [s for s in ranked if any(not isinstance(d, int) for d in s.shape)]
    if not dynamic:  # every shape fixed: axis 0 holds the (fixed) batch, as exporters write it, of the inputs
        # whose axis 0 is the first input's; another leading size (a broadcast operand, indices) is no batch
        batch = ranked[0].shape[0] if ranked else None
        return {s.name: (0 if s in ranked and s.shape[0] == batch else None) for s in specs}
    if all(not isinstance(s.shape[0], int) for s in dynamic):
        axes = {s.name: 0 for s in dynamic}
    else:  # a fixed leading axis (time, layers): the symbol every dynamic input shares is the batch
        common = [d for d in dynamic[0].shape if isinstance(d, str) and all(d in s.shape for s in dynamic)]
        axes = {s.name: (s.shape.index(common[0]) if common else 0) for s in dynamic}
    # fully fixed inputs beside dynamic ones (shape tensors, masks, broadcast operands) and scalars: unbatched
    return {s.name: axes.get(s.name) for s in specs}


def samples_in(feeds: dict[str, np.ndarray], axes: dict[str, int | None]) -> int:
    """Samples in one feed: the size of the first batched input's batch axis (1 when nothing is batched)."""
    for name, axis in axes.items():
        if axis is not None and name in feeds and np.ndim(feeds[name]) > axis:
            return int(np.shape(feeds[name])[axis])
    return 1


def group_feeds(
    feeds: Sequence[dict[str, np.ndarray]], counts: Sequence[int], axes: dict[str, int | None], batch_size: int
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """``(samples, feed)`` batches of :func:`feed_groups`, each group joined by :func:`join_feeds`."""
    for group in feed_groups(feeds, counts, axes, batch_size):
        yield sum(counts[j] for j in group), join_feeds([feeds[j] for j in group], axes)


def feed_groups(
    feeds: Sequence[dict[str, np.ndarray]], counts: Sequence[int], axes: dict[str, int | None], batch_size: int
) -> list[list[int]]:
    """Indices of consecutive feeds that join into one batch: at most ``batch_size`` samples, equal on every other
    dimension, and equal unbatched inputs; feeds that cannot join stand alone."""
    groups: list[list[int]] = []
    for i in range(len(feeds)):
        group = groups[-1] if groups else None
        if (
            group
            and sum(counts[j] for j in group) + counts[i] <= batch_size
            and _joinable(feeds[group[0]], feeds[i], axes)
        ):
            group.append(i)
        else:
            groups.append([i])
    return groups


def _joinable(a: dict[str, np.ndarray], b: dict[str, np.ndarray], axes: dict[str, int | None]) -> bool:
    if all(axis is None for axis in axes.values()):
        return False  # nothing to batch along
    for name, axis in axes.items():
        x, y = a[name], b[name]
        if axis is None:
            if x.shape != y.shape or not np.array_equal(x, y):
                return False
        elif x.ndim != y.ndim or x.shape[:axis] + x.shape[axis + 1 :] != y.shape[:axis] + y.shape[axis + 1 :]:
            return False
    return True


def join_feeds(parts: Sequence[dict[str, np.ndarray]], axes: dict[str, int | None]) -> dict[str, np.ndarray]:
    """Feeds concatenated along each name's axis; a name whose axis is None is taken from the first."""
    if len(parts) == 1:
        return parts[0]
    return {
        name: parts[0][name] if axis is None else np.concatenate([p[name] for p in parts], axis=axis)
        for name, axis in axes.items()
        if name in parts[0]
    }


# --- ONNX test-data folders ----------------------------------------------------------------------------


@dataclass
class FeedFolder:
    """What a test-data folder holds: feeds, the stored outputs of each (may be empty), labels if any."""

    feeds: list[dict[str, np.ndarray]]
    outputs: list[dict[str, np.ndarray]]
    labels: np.ndarray | None


def is_test_data_folder(path: Path) -> bool:
    """A folder of ``test_data_set_*`` folders, or one such set (``input_*.pb`` files)."""
    if not path.is_dir():
        return False
    return any(_SET.match(p.name) and p.is_dir() for p in path.iterdir()) or any(
        _FILE.match(p.name) for p in path.iterdir()
    )


def read_test_data_folder(path: Path, input_names: list[str], output_names: list[str],
                          skip_outputs: Collection[str] = ()) -> FeedFolder:  # fmt: skip
    """The feeds of a test-data folder, in set order (test_data_set_2 before test_data_set_10).

    ``skip_outputs`` names outputs whose files are not read: a sequence, optional or map output is stored as
    another proto than a TensorProto (one that parses as garbage tensor), and no metric compares it.
    """
    sets = sorted((int(m.group(1)), p) for p in path.iterdir() if (m := _SET.match(p.name)) and p.is_dir())
    folders = [p for _, p in sets] or [path]
    feeds, outputs = [], []
    for folder in folders:
        files = _numbered_files(folder)
        if not files.get("input") and input_names:
            raise DataError(
                f"{folder} holds no input_*.pb files", hint="a test-data set holds input_0.pb, input_1.pb, ..."
            )
        feeds.append(_named(files.get("input", []), input_names, folder, "input"))
        outputs.append(_named(files.get("output", []), output_names, folder, "output", skip_outputs))
    labels = _labels(path / "labels.npy") if (path / "labels.npy").is_file() else None
    return FeedFolder(feeds, outputs, labels)


def read_stored_outputs(
    path: Path, output_names: list[str], skip_outputs: Collection[str] = ()
) -> list[dict[str, np.ndarray]]:
    """The ``output_*.pb`` of each set of a test-data folder, in set order, without reading the inputs."""
    sets = sorted((int(m.group(1)), p) for p in path.iterdir() if (m := _SET.match(p.name)) and p.is_dir())
    folders = [p for _, p in sets] or [path]
    outputs = []
    for folder in folders:
        files = _numbered_files(folder).get("output", [])
        if not files:
            raise DataError(
                f"{folder} holds no output_*.pb files",
                hint="stored outputs are output_0.pb, output_1.pb, ... in each test_data_set_*",
            )
        outputs.append(_named(files, output_names, folder, "output", skip_outputs))
    return outputs


def _numbered_files(folder: Path) -> dict[str, list[Path]]:
    found: dict[str, list[tuple[int, Path]]] = {}
    for p in folder.iterdir():
        m = _FILE.match(p.name)
        if m:
            found.setdefault(m.group(1), []).append((int(m.group(2)), p))
    out = {}
    for kind, items in found.items():
        items.sort()
        if [i for i, _ in items] != list(range(len(items))):
            raise DataError(
                f"{folder}: {kind}_*.pb files are not numbered 0..{len(items) - 1}",
                hint="number the files from 0 without gaps",
            )
        out[kind] = [p for _, p in items]
    return out


def _named(files: list[Path], names: list[str], folder: Path, kind: str,
           skip: Collection[str] = ()) -> dict[str, np.ndarray]:  # fmt: skip
    """{model name: array}: by the tensor's own name when it is one of ``names``, else by position. The file at
    the position of a name in ``skip`` is not read."""
    if len(files) > len(names):
        raise DataError(
            f"{folder}: {len(files)} {kind}_*.pb files for a model with {len(names)} {kind}s {names}",
            hint=f"give one {kind}_I.pb per model {kind}",
        )
    read = [(i, f) for i, f in enumerate(files) if names[i] not in skip]
    tensors = [read_tensor_file(f) for _, f in read]
    by_name = all(t.name in names for t in tensors) and len({t.name for t in tensors}) == len(tensors)
    out = {}
    for (i, path), t in zip(read, tensors, strict=True):
        out[t.name if by_name else names[i]] = _to_array(t, path)
    return out


def read_tensor_file(path: Path) -> onnx.TensorProto:
    """A serialized TensorProto; DataError for anything else (non-regular, too large, not a tensor)."""
    if not path.is_file():
        raise DataError(f"{path} is not a regular file", hint="test-data tensors are plain .pb files")
    size = path.stat().st_size
    if size > MAX_TENSOR_FILE_BYTES:
        raise DataError(f"{path} is {size} bytes, above the {MAX_TENSOR_FILE_BYTES} bytes a tensor file may hold",
                        hint="split the data into more test_data_set_* folders, one feed each")  # fmt: skip
    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError and friends
        raise DataError(
            f"{path} is not a serialized onnx.TensorProto: {exc}",
            hint="write it with onnx.numpy_helper.from_array(a, name).SerializeToString()",
        ) from exc
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raise DataError(
            f"{path} stores its data externally, which onnxq does not read for data files",
            hint="store the values in the .pb file itself",
        )
    return tensor


def _to_array(tensor: onnx.TensorProto, path: Path) -> np.ndarray:
    from onnx import numpy_helper

    if tensor.data_type not in onnx.helper.get_all_tensor_dtypes():
        raise DataError(f"{path}: unknown tensor data type {tensor.data_type}", hint="re-create the file with onnx")
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        raise DataError(
            f"{path}: {onnx.helper.tensor_dtype_to_string(tensor.data_type)} tensors are not data onnxq feeds",
            hint="onnxq calibrates and evaluates models on numeric and boolean inputs only",
        )
    n = int(np.prod(tensor.dims, dtype=np.float64)) if tensor.dims else 1
    if any(d < 0 for d in tensor.dims) or n > MAX_TENSOR_FILE_BYTES:
        raise DataError(f"{path}: the tensor's dims {list(tensor.dims)} are invalid or too large",
                        hint="it may hold another proto than a TensorProto; re-create it with onnx")  # fmt: skip
    try:
        return np.ascontiguousarray(numpy_helper.to_array(tensor)) if tensor.dims else numpy_helper.to_array(tensor)
    except Exception as exc:  # a raw_data size that does not match dims, and similar
        raise DataError(f"{path}: the tensor cannot be read: {exc}", hint="re-create the file with onnx") from exc


def _labels(path: Path) -> np.ndarray:
    try:
        labels = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path} is not a readable .npy file ({exc})", hint="save the labels with np.save") from exc
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}",
                        hint="save one integer class index per sample with np.save")  # fmt: skip
    return labels.astype(np.int64)
