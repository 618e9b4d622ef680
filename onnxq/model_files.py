"""A model's files on disk: safe reading of external data, writing it, and atomic replacement.

External-data locations are trusted only inside the model's folder: ``..``, absolute paths and
symlinks that lead out are refused with UnsafePathError, because a model file from elsewhere must not
make onnxq read (and later copy into an output) arbitrary files. Writes go to temporary files in the
destination folder and are renamed into place, so a failure never leaves a half-written model.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from onnxq.errors import ModelLoadError, ModelValidationError, OnnxqError, OutputPathError, UnsafePathError

_DATA_FIELDS = (
    "raw_data",
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
)
_DIGITS = re.compile(r"[0-9]+")


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph inside it (If branches, Loop and Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_graphs(sub)


def stored_tensors(model: onnx.ModelProto, *, sparse: bool = True) -> Iterator[onnx.TensorProto]:
    """Initializers and Constant-node values everywhere; with ``sparse``, sparse tensors' parts too."""
    for graph in iter_graphs(model.graph):
        yield from graph.initializer
        if sparse:
            for sp in graph.sparse_initializer:
                yield from (sp.values, sp.indices)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors
                elif sparse and attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                    yield from (attr.sparse_tensor.values, attr.sparse_tensor.indices)


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def uses_external_data(model: onnx.ModelProto) -> bool:
    """Whether any tensor of the model keeps its data in an external file."""
    return any(_is_external(t) for t in stored_tensors(model))


# Elements per stored byte (raw_data) or per int32 value: the packed sub-byte types.
_PACKED = {"INT4": 2, "UINT4": 2, "FLOAT4E2M1": 2, "INT2": 4, "UINT2": 4}


def tensor_size_problem(tensor: onnx.TensorProto) -> str | None:
    """Why ``tensor``'s data cannot hold prod(dims) values of its type, or None. Types onnx cannot map to
    numpy and external tensors are not checked here (other checks refuse them)."""
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        return f"has a negative dimension in {dims}"
    if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.data_type not in onnx.TensorProto.DataType.values():
        return None
    kind = onnx.TensorProto.DataType.Name(tensor.data_type)
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        field = onnx.helper.tensor_dtype_to_field(tensor.data_type)
    except (KeyError, ValueError, TypeError):  # UNDEFINED, or a type this onnx does not map
        return None
    n, per = math.prod(dims), _PACKED.get(kind, 1)
    packed = -(-n // per)  # a sub-byte type packs `per` elements per byte (raw) or per int32 value
    if tensor.HasField("raw_data"):
        if kind == "STRING":
            return "stores strings as raw bytes"
        have, need, unit = len(tensor.raw_data), packed if per > 1 else n * itemsize, "bytes"
    else:  # complex values are stored as (real, imaginary) pairs
        count = packed if per > 1 else n * (1 + kind.startswith("COMPLEX"))
        have, need, unit = len(getattr(tensor, field)), count, "values"
    if have != need:
        return f"holds {have:,} {unit} of data, but its dims {dims} of {kind.lower()} need {need:,}"
    return None


# --- reading -----------------------------------------------------------------------------------


def resolve_location(location: str, model_dir: Path, tensor_name: str) -> Path:
    """The file an external-data location names, refused unless it lies inside ``model_dir``."""
    if not location:
        raise ModelValidationError(f"tensor {tensor_name!r} is marked external but has no location",
                                   hint="the model file is damaged: re-save it with onnx.save_model")  # fmt: skip
    if "\x00" in location:
        raise ModelLoadError(f"tensor {tensor_name!r} has an external-data location with a NUL byte",
                             hint="the model file is damaged: re-save it with onnx.save_model")  # fmt: skip
    if (
        os.path.isabs(location)
        or location.startswith(("/", "\\"))
        or (len(location) > 1 and location[1] == ":")
    ):
        raise UnsafePathError(
            f"tensor {tensor_name!r} stores its data at the absolute path {location!r:.200}",
            hint="external data must sit beside the model; re-save it with a relative location",
        )
    try:
        base = model_dir.resolve()
        target = (model_dir / location).resolve()  # follows symlinks, so links out are caught too
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ModelLoadError(
            f"tensor {tensor_name!r}: cannot resolve its external-data location {location!r:.200}: {reason}",
            hint="keep the external-data file beside the model, under the name the model gives",
        ) from exc
    if base != target and base not in target.parents:
        raise UnsafePathError(
            f"tensor {tensor_name!r} stores its data at {location!r:.200}, which resolves outside the "
            f"model's folder {base}",
            hint="move the data file into the model's folder and re-save the model with a relative location",
        )
    return target


def external_data_files(model_path: Path) -> list[Path]:
    """The files the model at ``model_path`` keeps external data in, resolved, without reading them; [] when
    it is not a regular file or does not parse (load_model says why, later)."""
    try:
        if not stat.S_ISREG(model_path.stat().st_mode):
            return []
        model = onnx.ModelProto.FromString(model_path.read_bytes())
    except (OSError, ValueError, RuntimeError, DecodeError):
        return []
    found = []
    for tensor in stored_tensors(model):
        location = {e.key: e.value for e in tensor.external_data}.get("location", "") if _is_external(tensor) else ""
        if location and "\x00" not in location:
            try:
                found.append((model_path.parent / location).resolve())
            except (OSError, RuntimeError):
                continue
    return found


def load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Read every external tensor of ``model`` (loaded from ``path``) into memory, in place.

    Errors are raised with the model's path in front, so the user knows which model is at fault.
    """
    try:
        for tensor in stored_tensors(model):
            if _is_external(tensor):
                tensor.raw_data = _read_external(tensor, path)
                del tensor.external_data[:]
                tensor.ClearField("data_location")  # as if it had never been external
    except OnnxqError as exc:
        raise type(exc)(f"{path}: {exc.message}", hint=exc.hint) from exc


def _read_external(tensor: onnx.TensorProto, path: Path) -> bytes:
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    target = resolve_location(location, path.parent, tensor.name)
    offset, length = _external_span(tensor.name, info)
    try:
        if not target.is_file():
            raise ModelLoadError(
                f"tensor {tensor.name!r} stores its data in {location!r}, which is missing or not a file "
                f"beside {path}",
                hint="copy the external-data file next to the model",
            )
        size = target.stat().st_size
        if offset > size or (length is not None and offset + length > size):
            raise ModelLoadError(
                f"tensor {tensor.name!r} reads bytes {offset}..{offset + (length or 0)} of {location!r}, "
                f"which has only {size} bytes",
                hint="the external-data file is truncated or belongs to another model",
            )
        with open(target, "rb") as fh:
            fh.seek(offset)
            return fh.read() if length is None else fh.read(length)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot read external data {location!r:.200} of tensor {tensor.name!r}: {exc.strerror}",
            hint="check the data file beside the model and its permissions",
        ) from exc


def _external_span(tensor_name: str, info: dict[str, str]) -> tuple[int, int | None]:
    """(offset, length or None) of an external tensor; only plain decimal digits are accepted."""
    for key in ("offset", "length"):
        if key in info and not _DIGITS.fullmatch(info[key]):
            raise ModelValidationError(
                f"tensor {tensor_name!r} has external-data {key} {info[key]!r:.40}, "
                "not a non-negative integer",
                hint="the model file is corrupt; re-export it",
            )
    length = int(info["length"]) if "length" in info else None
    return int(info.get("offset", "0")), length


# --- writing -----------------------------------------------------------------------------------


def refuse_external_references(model: onnx.ModelProto) -> None:
    """Refuse to save a model whose tensors still point at external files (they would dangle)."""
    for tensor in stored_tensors(model):
        if _is_external(tensor):
            raise ModelValidationError(
                f"tensor {tensor.name!r} still refers to external data, so the saved model would not find it",
                hint="load the model with onnxq.model.load_model, which reads external data into memory",
            )


def write_external_data(model: onnx.ModelProto, data_path: Path, *, min_bytes: int) -> str:
    """Move tensors of ``model`` (a copy: it is edited) of at least ``min_bytes`` bytes into a temporary
    data file beside ``data_path``; the tensors point at ``data_path.name``. Returns the temporary path."""
    fd, tmp = open_temp_beside(data_path)
    try:
        with os.fdopen(fd, "wb") as fh:
            for tensor in stored_tensors(model, sparse=False):
                if tensor.data_type == onnx.TensorProto.STRING:
                    continue  # strings have no fixed-width raw encoding
                payload = tensor.raw_data if tensor.HasField("raw_data") else _raw_bytes(tensor)
                if len(payload) >= min_bytes:
                    _point_at_file(tensor, data_path.name, fh.tell(), len(payload))
                    fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        unlink_quietly(tmp)
        raise
    return tmp


def _point_at_file(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    for name in _DATA_FIELDS:  # name, dims, type, doc string and metadata stay
        tensor.ClearField(name)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _raw_bytes(tensor: onnx.TensorProto) -> bytes:
    array = onnx.numpy_helper.to_array(tensor)
    return onnx.numpy_helper.from_array(np.ascontiguousarray(array)).raw_data


def open_temp_beside(final: Path) -> tuple[int, str]:
    """Create a new hidden temporary file in ``final``'s folder; return (write descriptor, path).

    Unlike tempfile.mkstemp (mode 0600), the file gets the usual 0666 minus umask, so the renamed
    result has the permissions any other new file would have.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = str(final.parent / f".{final.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue  # astronomically unlikely; try another random name
    raise FileExistsError(f"could not create a temporary file beside {final}")


def check_writable_folder(final: Path, what: str) -> None:
    """Create and remove a temporary file beside ``final``, so that a folder we cannot write fails now,
    before any work, and not after it (permission bits alone do not say: root, ACLs, read-only mounts)."""
    try:
        fd, tmp = open_temp_beside(final)
    except OSError as exc:
        raise OutputPathError(
            f"cannot write the {what} {final}: its folder {final.parent} is not writable ({exc.strerror or exc})",
            hint="choose a folder you can write to, or fix its permissions",
        ) from exc
    os.close(fd)
    unlink_quietly(tmp)


def refuse_inputs_as_output(out: Path, inputs: Iterable[tuple[str, object]], what: str) -> None:
    """Refuse an output path that is one of ``inputs`` ((description, path or None) pairs; what is not a
    path is skipped), by any spelling or link: writing it would destroy an input."""
    for description, source in inputs:
        if isinstance(source, (str, os.PathLike)) and same_file(out, Path(source)):
            raise OutputPathError(
                f"the {what} {out} is {description} {source}; onnxq never overwrites its inputs",
                hint="choose a path that is none of the inputs",
            )


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (links followed); False when either cannot be resolved."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte: nothing to overwrite there
        return False


def write_temp_file(final: Path, payload: bytes) -> str:
    """Write ``payload`` to a fresh temporary file beside ``final`` (synced to disk); return its path."""
    fd, tmp = open_temp_beside(final)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        unlink_quietly(tmp)
        raise
    return tmp


def commit_files(data: list[tuple[str, Path]], model_tmp: str, out: Path) -> None:
    """Rename temporary files into place, data files first and the model last.

    If a rename fails, the temporaries are removed and data files already replaced are put back, so
    the old model keeps working with its old data; the failure is raised as OutputPathError.
    """
    done: list[tuple[Path, str | None]] = []  # (destination, backup of what was there before)
    try:
        for tmp, dest in data:
            backup = _backup(dest)
            done.append((dest, backup))
            os.replace(tmp, dest)
        os.replace(model_tmp, out)
    except OSError as exc:
        _roll_back(data, model_tmp, done)
        raise OutputPathError(
            f"cannot move the new model into place at {out}: {exc.strerror or exc}",
            hint="check the folder's permissions and free space; the previous files were left as they were",
        ) from exc
    except BaseException:
        _roll_back(data, model_tmp, done)
        raise
    for _, backup in done:
        if backup:
            unlink_quietly(backup)


def _backup(dest: Path) -> str | None:
    """A hidden copy of ``dest`` (a hard link where the file system allows it), or None if absent."""
    if not dest.exists():
        return None
    backup = str(dest.parent / f".{dest.name}.{secrets.token_hex(6)}.bak")
    try:
        os.link(dest, backup)
    except OSError:  # file systems without hard links: a copy does the same job, slower
        shutil.copy2(dest, backup)
    return backup


def _roll_back(data: list[tuple[str, Path]], model_tmp: str, done: list[tuple[Path, str | None]]) -> None:
    unlink_quietly(model_tmp)
    for tmp, _ in data:
        unlink_quietly(tmp)  # already renamed ones are gone: nothing happens
    for dest, backup in reversed(done):
        try:
            if backup:
                os.replace(backup, dest)
            elif dest.exists():
                os.unlink(dest)  # there was no file before this save
        except OSError:
            pass  # the original error is what gets reported; this is best-effort cleanup
        if backup:
            unlink_quietly(backup)


def unlink_quietly(path: str | os.PathLike) -> None:
    """Remove a file we created, ignoring its absence: used only on cleanup paths."""
    try:
        os.unlink(path)
    except OSError:
        pass
