"""Loading, validating and saving ONNX models.

``load_model`` turns every way a file can be wrong into one :class:`~onnxq.errors.OnnxqError` with a
message that says what and where; no other exception escapes it. ``save_model`` writes atomically
(temporary file in the same folder, then rename), refuses to overwrite the input model, and moves
large tensors to an external-data file when the model would pass protobuf's 2 GB limit.
The files themselves (external data read safely and written, atomic renames) are handled in
:mod:`onnxq.model_files`.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from onnxq.errors import (
    ModelLoadError,
    ModelValidationError,
    OutputPathError,
    UnsupportedModelError,
)
from onnxq.model_files import (
    check_writable_folder,
    commit_files,
    external_data_files,
    iter_graphs,
    load_external_data,
    refuse_external_references,
    refuse_inputs_as_output,
    resolve_location,
    same_file,
    stored_tensors,
    tensor_size_problem,
    unlink_quietly,
    uses_external_data,
    write_external_data,
    write_temp_file,
)

__all__ = [
    "check_output_path",
    "default_opset",
    "iter_graphs",
    "iter_tensors",
    "load_model",
    "model_bytes",
    "resolve_external_location",
    "save_model",
    "validate_model",
]

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
_REREAD_HINT = "the file may be an incomplete download or copy; fetch or export it again"
_EXPORT_HINT = "pass a .onnx file exported by torch.onnx, tf2onnx or another ONNX exporter"


def load_model(path: str | os.PathLike, *, check: bool = True, external_data: bool = True) -> onnx.ModelProto:
    """Load and validate the model at ``path``, with its external data; raise an OnnxqError if it is bad.

    External data is read into the returned model (its tensors are no longer external), only from
    files inside the model's folder; ``external_data=False`` leaves those tensors as references (the graph
    only, e.g. to read its interface before a session loads the weights). ``check=False`` skips
    :func:`validate_model` (names, onnx.checker).
    """
    path = Path(path)
    raw = _read_model_bytes(path)
    model = _parse_model(raw, path)
    _check_wire_integrity(model, path)
    _check_versions(model, path)
    external = uses_external_data(model)
    if external_data and external:
        load_external_data(model, path)
    if check:
        validate_model(model, where=str(path), checker_path=path if external and not external_data else None)
    return model


def _read_model_bytes(path: Path) -> bytes:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ModelLoadError(f"no such file: {path}", hint="check the path; run `ls` on its folder") from None
    except (OSError, ValueError) as exc:  # name too long, a file used as a folder, a NUL byte
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ModelLoadError(f"cannot open {path!s:.200}: {reason}", hint="check the path") from exc
    if stat.S_ISDIR(info.st_mode):
        raise ModelLoadError(f"{path} is a folder, not an ONNX file", hint="pass the path of the .onnx file")
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
        raise ModelLoadError(f"{path} is not a regular file", hint="pass the path of a .onnx file on disk")
    if info.st_size > PROTOBUF_LIMIT:
        raise ModelLoadError(
            f"{path} is {info.st_size} bytes, more than protobuf's 2 GiB limit on one ONNX file",
            hint="models this large must keep their weights in an external-data file; re-export it that way",
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(
            f"cannot read {path}: {exc.strerror}", hint="check the file's permissions"
        ) from exc


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
                f"{path} is truncated or corrupt: protobuf decoding failed ({exc})", hint=_REREAD_HINT
            ) from exc
        raise ModelLoadError(
            f"{path} is not an ONNX model: its bytes are not an ONNX protobuf", hint=_EXPORT_HINT
        ) from exc
    if model.ir_version == 0 or not model.HasField("graph"):
        raise ModelLoadError(
            f"{path} is not an ONNX model: it has no IR version or no graph", hint=_EXPORT_HINT
        )
    return model


def _check_wire_integrity(model: onnx.ModelProto, path: Path) -> None:
    """Refuse fields the onnx schema does not know and text that is not UTF-8.

    Protobuf accepts both silently, so random or damaged bytes often parse into a "model". An IR
    version this onnx supports has no fields unknown to it, so unknown fields mean damage, not novelty.
    """
    problem = _find_wire_problem(model)
    if problem is not None:
        where, what = problem
        raise ModelLoadError(f"{path} is corrupt: {what} at {where}", hint=_REREAD_HINT)


def _find_wire_problem(root: Message) -> tuple[str, str] | None:
    stack: list[tuple[Message, str]] = [(root, "model")]
    while stack:  # iterative: garbage can nest messages deeply
        msg, where = stack.pop()
        if _unknown_field_count(msg):
            return where, "fields unknown to the ONNX schema"
        for field, value in msg.ListFields():
            if field.type == FieldDescriptor.TYPE_STRING:
                # upb hands back bytes instead of str when a string field is not valid UTF-8.
                values = value if field.is_repeated else (value,)
                if any(not isinstance(v, str) for v in values):
                    return f"{where}.{field.name}", "text that is not valid UTF-8"
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                if field.is_repeated:
                    stack.extend((sub, f"{where}.{field.name}[{i}]") for i, sub in enumerate(value))
                else:
                    stack.append((value, f"{where}.{field.name}"))
    return None


try:  # protobuf >= 4.22; the method below is the older spelling of the same question
    from google.protobuf.unknown_fields import UnknownFieldSet

    def _unknown_field_count(msg: Message) -> int:
        return len(UnknownFieldSet(msg))

except ImportError:  # pragma: no cover - depends on the installed protobuf

    def _unknown_field_count(msg: Message) -> int:
        return len(msg.UnknownFields())


def _check_versions(model: onnx.ModelProto, path: Path) -> None:
    if not MIN_IR_VERSION <= model.ir_version <= MAX_IR_VERSION:
        raise UnsupportedModelError(
            f"{path} has IR version {model.ir_version}; onnxq supports {MIN_IR_VERSION} to {MAX_IR_VERSION}",
            hint="re-export the model with a current exporter, or upgrade the onnx package",
        )
    seen: dict[str, int] = {}
    for imp in model.opset_import:
        domain = "" if imp.domain in _DEFAULT_DOMAINS else imp.domain
        if domain in seen:
            raise ModelValidationError(
                f"{path} imports the opset of domain {domain or 'ai.onnx'!r} twice "
                f"(versions {seen[domain]} and {imp.version})",
                hint="a model imports each opset domain once; re-export the model",
            )
        seen[domain] = imp.version
    opset = default_opset(model)
    if opset is None:
        raise UnsupportedModelError(
            f"{path} imports no ai.onnx opset",
            hint="re-export the model so that it declares an opset; if it was copied, it may be truncated",
        )
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UnsupportedModelError(
            f"{path} uses ai.onnx opset {opset}; onnxq supports opsets {MIN_OPSET} to {MAX_OPSET}",
            hint=f"re-export the model with an opset between {MIN_OPSET} and {MAX_OPSET}",
        )


ORT_MAX_IR_VERSION = 13  # the newest IR onnxruntime 1.31 reads; onnx >= 1.23 writes 14 by default


def lower_ir_version_for_ort(model: onnx.ModelProto) -> None:
    """Lower ``model.ir_version`` in place to what ORT reads, when the opsets allow it (models we write
    must run on ORT; IR 14 adds nothing that a quantized or fp16 graph uses)."""
    if model.ir_version <= ORT_MAX_IR_VERSION:
        return
    needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    if needed <= ORT_MAX_IR_VERSION:
        model.ir_version = max(needed, ORT_MAX_IR_VERSION)


def default_opset(model: onnx.ModelProto) -> int | None:
    """The version of the default (ai.onnx) opset the model imports, or None."""
    for imp in model.opset_import:
        if imp.domain in _DEFAULT_DOMAINS:
            return imp.version
    return None


# --- graph traversal (iter_graphs comes from onnxq.model_files) ---------------------------------


def iter_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every stored tensor: initializers and Constant-node values, in the main graph and subgraphs.

    Sparse tensors are not included (their parts are not dense tensors of the declared shape).
    """
    return stored_tensors(model, sparse=False)


def resolve_external_location(location: str, model_dir: Path, tensor_name: str) -> Path:
    """The file an external-data location names, refused unless it lies inside ``model_dir``."""
    return resolve_location(location, model_dir, tensor_name)


# --- validation --------------------------------------------------------------------------------


def validate_model(model: onnx.ModelProto, *, where: str = "model", checker_path: Path | None = None) -> None:
    """Check outputs and tensor names (duplicates, missing), then onnx.checker; raise ModelValidationError.

    Models of 2 GB or more cannot be serialized for onnx.checker, so for them only the name checks run.
    ``checker_path``: the file of a model whose external data is not loaded, which the checker then reads from
    disk (it resolves the data files beside it, and has no 2 GB limit that way).
    """
    if not model.graph.output:
        raise ModelValidationError(
            f"{where}: the graph has no outputs, so running it computes nothing",
            hint="re-export the model with its outputs declared",
        )
    _check_names(model.graph, outer=set(), where=where)
    for tensor in stored_tensors(model):  # onnx.checker does not compare the data with the dims
        problem = tensor_size_problem(tensor)
        if problem:
            raise ModelValidationError(
                f"{where}: tensor {tensor.name!r} {problem}", hint="the file is corrupt or truncated; re-export it"
            )
    try:
        if checker_path is not None:
            onnx.checker.check_model(str(checker_path))
        elif model_bytes(model) < PROTOBUF_LIMIT:
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelValidationError(
            f"{where} fails onnx.checker: {_checker_summary(str(exc))}",
            hint="re-export the model, or run `python -m onnx.checker` on it for the full report",
        ) from exc
    except Exception as exc:  # the checker raises bare C++ errors for some malformed protos
        raise ModelValidationError(f"{where} fails onnx.checker: {exc}", hint="re-export the model") from exc


_CHECKER_NODE = re.compile(r"Name:\s*(.*?)\s+OpType:\s*(\S+)")


def _checker_summary(text: str) -> str:
    """The checker's first line, plus the node it was checking (the context sits at the end)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "unknown reason"
    found = _CHECKER_NODE.search(lines[-1]) if len(lines) > 1 else None
    if found is None:
        return lines[0]
    name, op_type = found.groups()
    return (
        f"{lines[0]} (at {op_type} node {name!r})" if name else f"{lines[0]} (at an unnamed {op_type} node)"
    )


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
    initializers = set(defined)
    for inp in graph.input:
        if inp.name not in initializers:  # IR < 4 lists initializers among the inputs too
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


def check_output_path(
    output: str | os.PathLike,
    input_path: str | os.PathLike | None = None,
    *,
    inputs: Iterable[tuple[str, object]] = (),
) -> Path:
    """Refuse an output that is the input model or one of ``inputs`` ((description, path) pairs), by any
    spelling or link, that is a folder, or whose folder does not exist or cannot be written."""
    out = Path(output)
    try:
        out.resolve()  # Python < 3.13 raises RuntimeError for a symlink loop
        is_dir, parent_ok = out.is_dir(), out.parent.resolve().is_dir()
    except (OSError, RuntimeError, ValueError) as exc:
        raise OutputPathError(
            f"the output path {output!s:.200} is unusable: {exc}", hint="choose another path"
        ) from exc
    if input_path is not None and same_file(out, Path(input_path)):
        raise OutputPathError(
            f"the output path {out} is the input model; onnxq never overwrites its input",
            hint="choose another output path, e.g. model.int8.onnx",
        )
    if input_path is not None and out.is_file():  # only an existing file can be overwritten
        data_files = [("an external-data file of the input model", f) for f in external_data_files(Path(input_path))]
        refuse_inputs_as_output(out, data_files, "output path")
    refuse_inputs_as_output(out, inputs, "output path")
    if is_dir:
        raise OutputPathError(f"the output path {out} is a folder", hint="give a file name ending in .onnx")
    if not parent_ok:
        raise OutputPathError(
            f"the output folder {out.parent} does not exist", hint=f"create it first: mkdir -p {out.parent}"
        )
    check_writable_folder(out, "output model")
    return out


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    input_path: str | os.PathLike | None = None,
    external_data: bool | None = None,
    size_threshold: int = PROTOBUF_LIMIT,
) -> Path:
    """Write ``model`` to ``path`` atomically and return the path; never mutates ``model``.

    ``external_data`` None means automatic: tensors of at least 1 KiB go to ``<name>.data`` beside the
    model when the serialized model would reach ``size_threshold`` bytes. Either the new model (and its
    data file) is in place afterwards, or the old files are untouched and no temporary file remains.
    Raises OutputPathError for an unusable path (the input model, a missing folder, a failed write).
    """
    out = check_output_path(path, input_path)
    refuse_external_references(model)
    use_external = external_data if external_data is not None else model_bytes(model) >= size_threshold
    to_write = onnx.ModelProto()
    to_write.CopyFrom(model)
    data_path = out.with_name(out.name + ".data")
    data_tmp: str | None = None
    try:
        if use_external:
            data_tmp = write_external_data(to_write, data_path, min_bytes=EXTERNAL_DATA_MIN_BYTES)
        model_tmp = write_temp_file(out, to_write.SerializeToString())
    except OSError as exc:
        if data_tmp:
            unlink_quietly(data_tmp)
        raise OutputPathError(
            f"cannot write {out}: {exc.strerror or exc}",
            hint="check free disk space and the folder's permissions",
        ) from exc
    except BaseException:
        if data_tmp:
            unlink_quietly(data_tmp)
        raise
    commit_files([(data_tmp, data_path)] if data_tmp else [], model_tmp, out)
    return out


def model_bytes(model: onnx.ModelProto) -> int:
    """Serialized size of the model including its tensors (what a file on disk would take); past protobuf's
    2 GiB limit, where ``ByteSize`` raises, the tensors' bytes (a lower bound that is already too large)."""
    tensors = sum(len(t.raw_data) for t in stored_tensors(model))
    if tensors >= PROTOBUF_LIMIT:
        return tensors
    try:
        return model.ByteSize()
    except Exception:  # EncodeError: the model is past the limit in fields other than raw_data
        return PROTOBUF_LIMIT


WEIGHTLESS_LOCATION = "__onnxq_weightless__"


def weightless(model: onnx.ModelProto, keep_bytes: int = 4096) -> onnx.ModelProto:
    """A copy of ``model`` whose main-graph initializers above ``keep_bytes`` bytes carry their name, type and
    dims but no data (marked external, at a location that does not exist): what shape inference and the
    checker's structure checks need, without serializing the weights (a 4.4 GB model would exceed protobuf's
    2 GB limit, and a 655 MB one costs seconds per pass). Small tensors (the int64 shapes data propagation
    reads) keep their values; subgraphs are copied whole."""
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    g, lg = model.graph, light.graph
    _copy_fields(g, lg, skip="initializer")
    for t in g.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL and len(t.raw_data) <= keep_bytes and \
                t.ByteSize() <= keep_bytes + 512:  # fmt: skip
            lg.initializer.add().CopyFrom(t)
            continue
        lt = lg.initializer.add()
        lt.name, lt.data_type = t.name, t.data_type
        lt.dims.extend(t.dims)
        lt.data_location = onnx.TensorProto.EXTERNAL
        entry = lt.external_data.add()
        entry.key, entry.value = "location", WEIGHTLESS_LOCATION
    return light


def _copy_fields(src: Any, dst: Any, skip: str) -> None:
    """Copy every set field of the message ``src`` into ``dst`` but ``skip``."""
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def infer_shapes_weightless(model: onnx.ModelProto, **options: Any) -> onnx.ModelProto:
    """``model`` (edited in place and returned) with the nodes, inputs, outputs and value_info that
    onnx.shape_inference gives for its :func:`weightless` copy (``options``: check_type, strict_mode,
    data_prop). Raises what infer_shapes raises."""
    inferred = onnx.shape_inference.infer_shapes(weightless(model), **options)
    g, ig = model.graph, inferred.graph
    for name in ("node", "input", "output", "value_info"):
        del getattr(g, name)[:]
        getattr(g, name).extend(getattr(ig, name))
    return model


def same_model(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    """Whether two models serialize alike, compared without serializing the weights whole (past 2 GB
    protobuf cannot): the weightless copies, then each initializer's bytes."""
    if weightless(a).SerializeToString() != weightless(b).SerializeToString():
        return False
    return all(x.SerializeToString() == y.SerializeToString()
               for x, y in zip(a.graph.initializer, b.graph.initializer, strict=True))
