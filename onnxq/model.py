"""Loading, validating and saving ONNX models.

``load_model`` turns every way a file can be wrong into one :class:`~onnxq.errors.OnnxqError` with a
message that says what and where; no other exception escapes it. ``save_model`` writes atomically
(temporary file in the same folder, then rename), refuses to overwrite the input model, and moves
large tensors to an external-data file when the model would pass protobuf's 2 GB limit.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from onnxq.errors import (
    ModelLoadError,
    ModelValidationError,
    OutputPathError,
    UnsafePathError,
    UnsupportedModelError,
)

MIN_IR_VERSION = 3
MAX_IR_VERSION = onnx.IR_VERSION
# ai.onnx opsets onnxq accepts: 7 is the oldest the quantizer can upgrade from; the newest is the
# newest that both onnx and the ONNX Runtime releases we support understand.
MIN_OPSET = 7
MAX_OPSET = min(26, onnx.defs.onnx_opset_version())
PROTOBUF_LIMIT = 2**31 - 1
# Tensors smaller than this stay inside the protobuf when external data is used.
EXTERNAL_DATA_MIN_BYTES = 1024

_DEFAULT_DOMAINS = ("", "ai.onnx")


def load_model(path: str | os.PathLike, *, check: bool = True) -> onnx.ModelProto:
    """Load and validate the model at ``path``, with its external data; raise an OnnxqError if it is bad."""
    path = Path(path)
    raw = _read_model_bytes(path)
    model = _parse_model(raw, path)
    _check_versions(model, path)
    if _uses_external_data(model):
        _load_external_data(model, path)
    if check:
        validate_model(model, where=str(path))
    return model


def _read_model_bytes(path: Path) -> bytes:
    if not path.exists():
        raise ModelLoadError(f"no such file: {path}", hint="check the path; run `ls` on its folder")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder, not an ONNX file", hint="pass the path of the .onnx file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror}", hint="check the file's permissions") from exc


def _parse_model(raw: bytes, path: Path) -> onnx.ModelProto:
    if not raw:
        raise ModelLoadError(f"{path} is empty (0 bytes)", hint="re-export the model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        # An ONNX file starts with field 1 (ir_version, varint), encoded as byte 0x08.
        if raw[:1] == b"\x08":
            raise ModelLoadError(
                f"{path} is truncated or corrupt: protobuf decoding failed ({exc})",
                hint="the file may be an incomplete download or copy; fetch or export it again",
            ) from exc
        raise ModelLoadError(
            f"{path} is not an ONNX model: its bytes are not an ONNX protobuf",
            hint="pass a .onnx file exported by torch.onnx, tf2onnx or another ONNX exporter",
        ) from exc
    if model.ir_version == 0 or not model.HasField("graph"):
        raise ModelLoadError(
            f"{path} is not an ONNX model: it has no IR version or no graph",
            hint="pass a .onnx file exported by torch.onnx, tf2onnx or another ONNX exporter",
        )
    return model


def _check_versions(model: onnx.ModelProto, path: Path) -> None:
    if not MIN_IR_VERSION <= model.ir_version <= MAX_IR_VERSION:
        raise UnsupportedModelError(
            f"{path} has IR version {model.ir_version}; onnxq supports {MIN_IR_VERSION} to {MAX_IR_VERSION}",
            hint="re-export the model with a current exporter, or upgrade the onnx package",
        )
    opset = default_opset(model)
    if opset is None:
        raise UnsupportedModelError(
            f"{path} imports no ai.onnx opset", hint="re-export the model so that it declares an opset"
        )
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UnsupportedModelError(
            f"{path} uses ai.onnx opset {opset}; onnxq supports opsets {MIN_OPSET} to {MAX_OPSET}",
            hint=f"re-export the model with an opset between {MIN_OPSET} and {MAX_OPSET}",
        )


def default_opset(model: onnx.ModelProto) -> int | None:
    """The version of the default (ai.onnx) opset the model imports, or None."""
    for imp in model.opset_import:
        if imp.domain in _DEFAULT_DOMAINS:
            return imp.version
    return None


# --- graph traversal ---------------------------------------------------------------------------


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


def iter_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every stored tensor: initializers and Constant-node values, in the main graph and subgraphs."""
    for graph in iter_graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


# --- external data -----------------------------------------------------------------------------


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in iter_tensors(model))


def _external_location(tensor: onnx.TensorProto) -> str:
    for entry in tensor.external_data:
        if entry.key == "location":
            return entry.value
    return ""


def resolve_external_location(location: str, model_dir: Path, tensor_name: str) -> Path:
    """The file an external-data location names, refused unless it lies inside ``model_dir``."""
    if not location:
        raise ModelValidationError(f"tensor {tensor_name!r} is marked external but has no location")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        raise UnsafePathError(
            f"tensor {tensor_name!r} stores its data at the absolute path {location!r}",
            hint="external data must sit beside the model; re-save it with a relative location",
        )
    base = model_dir.resolve()
    target = (model_dir / location).resolve()  # resolve() follows symlinks, so links out are caught too
    if base != target and base not in target.parents:
        raise UnsafePathError(
            f"tensor {tensor_name!r} stores its data at {location!r}, which resolves outside the model's "
            f"folder {base}",
            hint="move the data file into the model's folder and re-save the model with a relative location",
        )
    return target


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    model_dir = path.parent
    for tensor in iter_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        target = resolve_external_location(_external_location(tensor), model_dir, tensor.name)
        info = {e.key: e.value for e in tensor.external_data}
        if not target.is_file():
            raise ModelLoadError(
                f"tensor {tensor.name!r} stores its data in {info.get('location')!r}, which does not exist "
                f"beside {path}",
                hint="copy the external-data file next to the model",
            )
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else None
        except ValueError as exc:
            raise ModelValidationError(f"tensor {tensor.name!r} has a non-integer external offset or length") from exc
        size = target.stat().st_size
        if offset < 0 or offset > size or (length is not None and (length < 0 or offset + length > size)):
            raise ModelLoadError(
                f"tensor {tensor.name!r} reads bytes {offset}..{offset + (length or 0)} of "
                f"{info.get('location')!r}, which has only {size} bytes",
                hint="the external-data file is truncated or belongs to another model",
            )
        with open(target, "rb") as fh:
            fh.seek(offset)
            tensor.raw_data = fh.read() if length is None else fh.read(length)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


# --- validation --------------------------------------------------------------------------------


def validate_model(model: onnx.ModelProto, *, where: str = "model") -> None:
    """Check tensor names (duplicates, missing), then run onnx.checker; raise ModelValidationError."""
    _check_names(model.graph, outer=set(), where=where)
    try:
        if model.ByteSize() < PROTOBUF_LIMIT:
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown reason"
        raise ModelValidationError(
            f"{where} fails onnx.checker: {first}",
            hint="re-export the model, or run `python -m onnx.checker` on it for the full report",
        ) from exc
    except Exception as exc:  # the checker raises bare C++ errors for some malformed protos
        raise ModelValidationError(f"{where} fails onnx.checker: {exc}", hint="re-export the model") from exc


def _check_names(graph: onnx.GraphProto, outer: set[str], where: str) -> None:
    """Every input a node reads is defined before it; no name is defined twice."""
    defined: set[str] = set()

    def define(name: str, what: str) -> None:
        if not name:
            return
        if name in defined:
            raise ModelValidationError(
                f"{where}: tensor name {name!r} is defined twice (again as {what}) in graph {graph.name!r}",
                hint="every tensor must have a unique name; re-export the model",
            )
        defined.add(name)

    for init in graph.initializer:
        define(init.name, "an initializer")
    for sparse in graph.sparse_initializer:
        define(sparse.values.name, "a sparse initializer")
    for inp in graph.input:
        if inp.name not in defined:  # IR < 4 lists initializers among the inputs too
            define(inp.name, "a graph input")
    for node in graph.node:
        for name in node.input:
            if name and name not in defined and name not in outer:
                raise ModelValidationError(
                    f"{where}: node {node.name or node.op_type!r} ({node.op_type}) reads tensor {name!r}, "
                    f"which no earlier node, initializer or graph input produces",
                    hint="the graph is missing a tensor or is not topologically sorted; re-export the model",
                )
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                _check_names(sub, outer | defined, where)
        for name in node.output:
            define(name, f"an output of node {node.name or node.op_type!r}")
    for out in graph.output:
        if out.name not in defined and out.name not in outer:
            raise ModelValidationError(
                f"{where}: graph output {out.name!r} is not produced by any node, initializer or input",
                hint="re-export the model",
            )


# --- saving ------------------------------------------------------------------------------------


def check_output_path(output: str | os.PathLike, input_path: str | os.PathLike | None = None) -> Path:
    """Refuse an output that is the input model, or whose folder does not exist."""
    out = Path(output)
    if input_path is not None:
        inp = Path(input_path)
        same = out.resolve() == inp.resolve() or (out.exists() and inp.exists() and os.path.samefile(out, inp))
        if same:
            raise OutputPathError(
                f"the output path {out} is the input model; onnxq never overwrites its input",
                hint="choose another output path, e.g. model.int8.onnx",
            )
    if out.is_dir():
        raise OutputPathError(f"the output path {out} is a folder", hint="give a file name ending in .onnx")
    if not out.parent.resolve().is_dir():
        raise OutputPathError(
            f"the output folder {out.parent} does not exist", hint=f"create it first: mkdir -p {out.parent}"
        )
    return out


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    input_path: str | os.PathLike | None = None,
    external_data: bool | None = None,
    size_threshold: int = PROTOBUF_LIMIT,
) -> Path:
    """Write ``model`` to ``path`` atomically; never mutates ``model``.

    ``external_data`` None means automatic: tensors of at least 1 KiB go to ``<name>.data`` beside the
    model when the serialized model would reach ``size_threshold`` bytes.
    """
    out = check_output_path(path, input_path)
    use_external = external_data if external_data is not None else model.ByteSize() >= size_threshold
    to_write = onnx.ModelProto()
    to_write.CopyFrom(model)
    data_tmp: str | None = None
    data_name = out.name + ".data"
    try:
        if use_external:
            data_tmp = _write_external_data(to_write, out.parent, data_name)
        model_tmp = _write_tmp(out.parent, out.name, to_write.SerializeToString())
    except BaseException:
        if data_tmp:
            _unlink_quietly(data_tmp)
        raise
    if data_tmp:
        os.replace(data_tmp, out.parent / data_name)
    os.replace(model_tmp, out)
    return out


def _write_tmp(folder: Path, name: str, payload: bytes) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _write_external_data(model: onnx.ModelProto, folder: Path, data_name: str) -> str:
    """Move large tensors of ``model`` (already a copy) into a temporary data file; return its path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{data_name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            for tensor in iter_tensors(model):
                if tensor.data_location == onnx.TensorProto.EXTERNAL:
                    continue
                if tensor.data_type == onnx.TensorProto.STRING:
                    continue
                payload = tensor.raw_data if tensor.HasField("raw_data") else _raw_bytes(tensor)
                if len(payload) < EXTERNAL_DATA_MIN_BYTES:
                    continue
                offset = fh.tell()
                fh.write(payload)
                name = tensor.name
                dims = list(tensor.dims)
                dtype = tensor.data_type
                tensor.Clear()
                tensor.name, tensor.data_type = name, dtype
                tensor.dims.extend(dims)
                tensor.data_location = onnx.TensorProto.EXTERNAL
                for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(payload)))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _raw_bytes(tensor: onnx.TensorProto) -> bytes:
    array = onnx.numpy_helper.to_array(tensor)
    return onnx.numpy_helper.from_array(np.ascontiguousarray(array)).raw_data


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def model_bytes(model: onnx.ModelProto) -> int:
    """Serialized size of the model including its tensors (what a file on disk would take)."""
    return model.ByteSize()
