"""onnxq.model: loading (one clear error per problem), external data (safe paths), atomic saving,
round trips."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import make_tiny_model
from onnxq.errors import (
    ModelLoadError,
    ModelValidationError,
    OnnxqError,
    OutputPathError,
    UnsafePathError,
    UnsupportedModelError,
)
from onnxq.model import check_output_path, iter_graphs, iter_tensors, load_model, save_model


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_proto(path: Path, model: onnx.ModelProto) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def tensor_arrays(model: onnx.ModelProto) -> list[tuple[str, int, bytes]]:
    """(name, ONNX dtype, exact bytes) of every stored tensor, decoded by onnx's own numpy_helper."""
    return [(t.name, t.data_type, _exact(numpy_helper.to_array(t))) for t in iter_tensors(model)]


def _exact(array: np.ndarray) -> bytes | list:
    return array.tolist() if array.dtype == object else array.tobytes()  # strings: compare the values


# --- load errors: one per problem ---------------------------------------------------------------


def _bad_truncated(tmp_path: Path) -> Path:
    raw = make_tiny_model().SerializeToString()
    return _put(tmp_path, raw[: len(raw) // 2])


def _bad_checker(tmp_path: Path) -> Path:
    model = make_tiny_model()
    model.graph.node[3].op_type = "NoSuchOp"
    return write_proto(tmp_path / "m.onnx", model)


def _bad_ir(tmp_path: Path) -> Path:
    model = make_tiny_model()
    model.ir_version = 99
    return write_proto(tmp_path / "m.onnx", model)


def _bad_opset(version: int):
    def build(tmp_path: Path) -> Path:
        model = make_tiny_model()
        model.opset_import[0].version = version
        return write_proto(tmp_path / "m.onnx", model)

    return build


def _bad_duplicate_name(tmp_path: Path) -> Path:
    model = make_tiny_model()
    model.graph.node[1].output[0] = "f"  # Reshape also writes "f"
    model.graph.node[2].input[0] = "c"
    return write_proto(tmp_path / "m.onnx", model)


def _bad_missing_tensor(tmp_path: Path) -> Path:
    model = make_tiny_model()
    model.graph.node[2].input[0] = "ghost_tensor"
    return write_proto(tmp_path / "m.onnx", model)


def _bad_duplicate_opset(tmp_path: Path) -> Path:
    model = make_tiny_model()
    model.opset_import.add(domain="ai.onnx", version=17)
    return write_proto(tmp_path / "m.onnx", model)


def _bad_no_outputs(tmp_path: Path) -> Path:
    model = make_tiny_model()
    del model.graph.output[:]
    return write_proto(tmp_path / "m.onnx", model)


def _bad_utf8(tmp_path: Path) -> Path:
    model = make_tiny_model()
    model.graph.node[0].name = "NAMEXX"
    return _put(tmp_path, model.SerializeToString().replace(b"NAMEXX", b"NA\xff\xfeXX"))


def _bad_unknown_field(tmp_path: Path) -> Path:
    model = make_tiny_model()
    # Field 99 (varint, value 1) inside node 2: the schema has no field 99 in NodeProto.
    node_bytes = model.graph.node[2].SerializeToString() + b"\x98\x06\x01"
    model.graph.node[2].Clear()
    model.graph.node[2].MergeFromString(node_bytes)
    return write_proto(tmp_path / "m.onnx", model)


def _put(tmp_path: Path, raw: bytes, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


# (id, builder, error class, fragments the message must contain besides the file's path)
LOAD_ERRORS = [
    ("empty", lambda d: _put(d, b""), ModelLoadError, ["empty"]),
    ("not_onnx", lambda d: _put(d, b"hello, I am a text file\n" * 10), ModelLoadError, ["not an ONNX model"]),
    ("zero_header", lambda d: _put(d, b"\0" * 64), ModelLoadError, ["not an ONNX model"]),
    ("truncated", _bad_truncated, ModelLoadError, ["truncated or corrupt"]),
    ("checker", _bad_checker, ModelValidationError, ["onnx.checker", "NoSuchOp", "'fc'"]),
    ("ir_version", _bad_ir, UnsupportedModelError, ["IR version 99"]),
    ("opset_old", _bad_opset(5), UnsupportedModelError, ["opset 5"]),
    ("opset_new", _bad_opset(99), UnsupportedModelError, ["opset 99"]),
    ("duplicate_name", _bad_duplicate_name, ModelValidationError, ["'f'", "defined twice"]),
    ("missing_tensor", _bad_missing_tensor, ModelValidationError, ["'ghost_tensor'", "'flatten'"]),
    ("duplicate_opset", _bad_duplicate_opset, ModelValidationError, ["twice", "13", "17"]),
    ("no_outputs", _bad_no_outputs, ModelValidationError, ["no outputs"]),
    ("bad_utf8", _bad_utf8, ModelLoadError, ["UTF-8", "model.graph.node[0].name"]),
    ("unknown_field", _bad_unknown_field, ModelLoadError, ["unknown", "model.graph.node[2]"]),
]


@pytest.mark.parametrize("case", LOAD_ERRORS, ids=[c[0] for c in LOAD_ERRORS])
def test_load_gives_one_clear_error_per_problem_and_leaves_the_file_alone(tmp_path, case):
    _, build, error, fragments = case
    path = build(tmp_path)
    before = sha256(path)
    with pytest.raises(error) as info:
        load_model(path)
    assert str(path) in info.value.message
    for fragment in fragments:
        assert fragment in info.value.message
    assert info.value.hint, "every load error tells the user what to do"
    assert sha256(path) == before


def test_missing_file_folder_and_device_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file") as info:
        load_model(tmp_path / "absent.onnx")
    assert "absent.onnx" in info.value.message
    with pytest.raises(ModelLoadError, match="is a folder"):
        load_model(tmp_path)
    with pytest.raises(ModelLoadError, match="NUL|null"):
        load_model(str(tmp_path / "a\x00b.onnx"))
    if Path("/dev/null").exists():  # a device is not a model (a FIFO would block the read forever)
        with pytest.raises(ModelLoadError, match="not a regular file"):
            load_model("/dev/null")


def test_valid_model_loads_unchanged(tmp_path, tiny_model):
    path = write_proto(tmp_path / "m.onnx", tiny_model)
    loaded = load_model(path)
    assert loaded.SerializeToString() == tiny_model.SerializeToString()


# --- external data ------------------------------------------------------------------------------


def save_with_onnx_external(model: onnx.ModelProto, folder: Path, location: str = "weights.data") -> Path:
    """Save with onnx's own external-data writer (every tensor external, one file)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(
        copy,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    return path


def relocate(path: Path, location: str) -> None:
    """Point every external tensor of the model at ``path`` to ``location`` (offsets unchanged)."""
    model = onnx.load(path, load_external_data=False)
    for tensor in iter_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())


def test_onnx_external_data_loads_into_memory(tmp_path, tiny_model):
    path = save_with_onnx_external(tiny_model, tmp_path / "m")
    raw = onnx.load(path, load_external_data=False)
    # onnx moves only tensors held in raw_data: every one but fc_w (float_data)
    external = {t.name for t in iter_tensors(raw) if t.data_location == TensorProto.EXTERNAL}
    assert external == {"conv_w", "conv_b", "flat_shape", "clip_lo", "clip_hi"}
    loaded = load_model(path)
    assert not any(t.data_location == TensorProto.EXTERNAL or t.external_data for t in iter_tensors(loaded))
    assert tensor_arrays(loaded) == tensor_arrays(tiny_model)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink_out", "dotdot_inside_name"])
def test_external_location_outside_the_model_folder_is_refused(tmp_path, tiny_model, how):
    path = save_with_onnx_external(tiny_model, tmp_path / "m")
    data = tmp_path / "m" / "weights.data"
    outside = tmp_path / "outside.data"  # a real, well-formed file: only its place makes it wrong
    outside.write_bytes(data.read_bytes())
    if how == "dotdot":
        relocate(path, "../outside.data")
    elif how == "absolute":
        relocate(path, str(outside))
    elif how == "symlink_out":
        (tmp_path / "m" / "link.data").symlink_to(outside)
        relocate(path, "link.data")
    else:
        (tmp_path / "m" / "sub").mkdir()
        relocate(path, "sub/../../outside.data")
    with pytest.raises(UnsafePathError) as info:
        load_model(path)
    assert "outside" in info.value.message or "absolute" in info.value.message
    assert str(path) in info.value.message


def test_symlink_that_stays_inside_the_folder_is_accepted(tmp_path, tiny_model):
    path = save_with_onnx_external(tiny_model, tmp_path / "m")
    (tmp_path / "m" / "sub").mkdir()
    os.replace(tmp_path / "m" / "weights.data", tmp_path / "m" / "sub" / "real.data")
    (tmp_path / "m" / "link.data").symlink_to(tmp_path / "m" / "sub" / "real.data")
    relocate(path, "link.data")
    assert tensor_arrays(load_model(path)) == tensor_arrays(tiny_model)


def test_missing_or_short_external_data_is_a_load_error(tmp_path, tiny_model):
    path = save_with_onnx_external(tiny_model, tmp_path / "m")
    data = tmp_path / "m" / "weights.data"
    full = data.read_bytes()
    data.write_bytes(full[: len(full) - 10])
    with pytest.raises(ModelLoadError, match="only"):
        load_model(path)
    data.unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        load_model(path)


@pytest.mark.parametrize("location", ["x" * 5000, "a\x00b", ""])
def test_odd_external_locations_are_onnxq_errors(tmp_path, tiny_model, location):
    path = save_with_onnx_external(tiny_model, tmp_path / "m")
    relocate(path, location)
    with pytest.raises(OnnxqError) as info:
        load_model(path)
    assert str(path) in info.value.message


def test_external_offset_must_be_plain_digits(tmp_path, tiny_model):
    path = save_with_onnx_external(tiny_model, tmp_path / "m")
    model = onnx.load(path, load_external_data=False)
    tensor = model.graph.initializer[0]
    for entry in tensor.external_data:
        if entry.key == "offset":
            entry.value = "1_0"  # int() would accept this; a corrupt file must not
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelValidationError, match="offset"):
        load_model(path)


# --- saving ------------------------------------------------------------------------------------


def folder_listing(folder: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in folder.iterdir() if p.is_file()}


def test_save_writes_exactly_onnx_serialization_with_normal_permissions(tmp_path, tiny_model):
    out = save_model(tiny_model, tmp_path / "out.onnx")
    assert out.read_bytes() == tiny_model.SerializeToString()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_failed_rename_leaves_destination_untouched_and_no_temp_files(tmp_path, tiny_model, monkeypatch):
    dest = write_proto(tmp_path / "out.onnx", make_tiny_model())
    dest.write_bytes(b"previous content")
    before = folder_listing(tmp_path)

    def refuse(src, dst):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    changed = onnx.ModelProto()
    changed.CopyFrom(tiny_model)
    changed.graph.name = "changed"
    with pytest.raises(OutputPathError, match="out.onnx"):
        save_model(changed, dest)
    assert folder_listing(tmp_path) == before


def test_failed_write_is_an_output_error_and_leaves_no_temp_files(tmp_path, tiny_model, monkeypatch):
    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    for external in (False, True):
        with pytest.raises(OutputPathError, match="No space left"):
            save_model(tiny_model, tmp_path / "out.onnx", external_data=external)
        assert list(tmp_path.iterdir()) == []


def test_failed_model_rename_restores_the_previous_data_file(tmp_path, tiny_model, monkeypatch):
    dest = tmp_path / "out.onnx"
    save_model(tiny_model, dest, size_threshold=1000)
    before = folder_listing(tmp_path)
    assert "out.onnx.data" in before
    real_replace = os.replace

    def fail_on_model(src, dst):
        if Path(dst) == dest:
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_model)
    changed = onnx.ModelProto()
    changed.CopyFrom(tiny_model)
    fc_w = numpy_helper.from_array(np.full((4, 72), 7.0, np.float32), "fc_w")
    changed.graph.initializer[2].CopyFrom(fc_w)
    with pytest.raises(OutputPathError):
        save_model(changed, dest, size_threshold=1000)
    monkeypatch.undo()
    assert folder_listing(tmp_path) == before
    assert tensor_arrays(load_model(dest)) == tensor_arrays(tiny_model)


def test_large_model_goes_to_external_data_and_loads_back_identical(tmp_path, tiny_model):
    before = tiny_model.SerializeToString()
    out = save_model(tiny_model, tmp_path / "out.onnx", size_threshold=1000)
    assert tiny_model.SerializeToString() == before, "save_model must not mutate its argument"
    assert (tmp_path / "out.onnx.data").stat().st_size == 4 * 72 * 4  # only fc_w is >= 1 KiB
    raw = onnx.load(out, load_external_data=False)
    external = {t.name for t in iter_tensors(raw) if t.data_location == TensorProto.EXTERNAL}
    assert external == {"fc_w"}
    assert tensor_arrays(load_model(out)) == tensor_arrays(tiny_model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data"]


def test_below_threshold_stays_in_one_file(tmp_path, tiny_model):
    save_model(tiny_model, tmp_path / "out.onnx", size_threshold=tiny_model.ByteSize() + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_external_save_keeps_dtypes_and_tensor_metadata(tmp_path):
    values = np.linspace(-3, 3, 1024).astype(np.float16)
    half = helper.make_tensor("half", TensorProto.FLOAT16, [1024], values.view(np.uint16).tolist(), raw=False)
    half.doc_string = "fp16 kept in int32_data"
    big_int = numpy_helper.from_array(np.arange(-300, 300, dtype=np.int64), "ints")
    words = helper.make_tensor("words", TensorProto.STRING, [2], [b"a" * 700, b"b" * 700])
    nodes = [helper.make_node("Add", ["x", "half"], ["y"]), helper.make_node("Identity", ["words"], ["w"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1024])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1024]),
            helper.make_tensor_value_info("w", TensorProto.STRING, [2]),
        ],
        [half, big_int, words],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    out = save_model(model, tmp_path / "out.onnx", external_data=True)
    raw = {t.name: t for t in onnx.load(out, load_external_data=False).graph.initializer}
    assert (
        raw["half"].data_location == TensorProto.EXTERNAL
        and raw["ints"].data_location == TensorProto.EXTERNAL
    )
    assert raw["words"].data_location != TensorProto.EXTERNAL  # strings have no raw encoding
    assert raw["half"].doc_string == "fp16 kept in int32_data"
    loaded = load_model(out)
    assert tensor_arrays(loaded) == tensor_arrays(model)
    assert numpy_helper.to_array(loaded.graph.initializer[0]).dtype == np.float16


def test_saving_a_model_with_dangling_external_references_is_refused(tmp_path, tiny_model):
    path = save_with_onnx_external(tiny_model, tmp_path / "m")
    not_loaded = onnx.load(path, load_external_data=False)
    with pytest.raises(ModelValidationError, match="external data"):
        save_model(not_loaded, tmp_path / "copy.onnx")
    assert not (tmp_path / "copy.onnx").exists()


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink", "hardlink"])
def test_output_equal_to_input_is_refused(tmp_path, tiny_model, monkeypatch, spelling):
    folder = tmp_path / "a"
    folder.mkdir()
    src = write_proto(folder / "m.onnx", tiny_model)
    before = sha256(src)
    monkeypatch.chdir(tmp_path)
    if spelling == "same":
        out = "a/m.onnx"
    elif spelling == "dotdot":
        out = "./a/../a/m.onnx"
    elif spelling == "symlink":
        (tmp_path / "link.onnx").symlink_to(src)
        out = "link.onnx"
    else:
        os.link(src, tmp_path / "hard.onnx")
        out = "hard.onnx"
    changed = onnx.ModelProto()
    changed.CopyFrom(tiny_model)
    changed.graph.name = "changed"
    with pytest.raises(OutputPathError, match="is the input model"):
        save_model(changed, out, input_path=str(src))
    assert sha256(src) == before


def test_output_folder_problems_are_refused(tmp_path, tiny_model):
    with pytest.raises(OutputPathError, match="does not exist"):
        save_model(tiny_model, tmp_path / "nowhere" / "m.onnx")
    with pytest.raises(OutputPathError, match="is a folder"):
        save_model(tiny_model, tmp_path)
    assert check_output_path(tmp_path / "ok.onnx", tmp_path / "in.onnx") == tmp_path / "ok.onnx"


# --- round trips on real models ------------------------------------------------------------------


def assert_same_model(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    """Same structure (graph with tensor data removed) and bit-identical tensor values."""
    assert tensor_arrays(a) == tensor_arrays(b)

    def skeleton(model: onnx.ModelProto) -> bytes:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        for tensor in iter_tensors(copy):
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                tensor.ClearField(field)
        return copy.graph.SerializeToString()

    assert skeleton(a) == skeleton(b)


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external"])
def test_round_trip_sample_models(tmp_path, sample_model_path, external):
    _round_trip(tmp_path, sample_model_path, external)


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external"])
def test_round_trip_shared_models(tmp_path, shared_model_path, external):
    _round_trip(tmp_path, shared_model_path, external)


def _round_trip(tmp_path: Path, src: Path, external: bool) -> None:
    before = sha256(src)
    original = load_model(src)
    out = save_model(original, tmp_path / "rt.onnx", input_path=src, external_data=external)
    assert (tmp_path / "rt.onnx.data").exists() == external
    back = load_model(out)
    if external:
        assert_same_model(original, back)
    else:
        assert back.graph.SerializeToString() == original.graph.SerializeToString()
    assert sha256(src) == before


def test_iter_graphs_and_iter_tensors_reach_into_subgraphs():
    def branch(name: str, value: float) -> onnx.GraphProto:
        tensor = numpy_helper.from_array(np.array([value], np.float32), name)
        const = helper.make_node("Constant", [], [f"{name}_out"], value=tensor)
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1])
        return helper.make_graph([const], name, [], [out])

    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch("a", 1.0), else_branch=branch("b", 2.0))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(
        helper.make_graph([node], "main", [], [y], [cond]), opset_imports=[helper.make_opsetid("", 13)]
    )
    graphs = [g.name for g in iter_graphs(model.graph)]
    assert graphs[0] == "main" and sorted(graphs[1:]) == ["a", "b"]  # helper sorts attributes by name
    tensors = [t.name for t in iter_tensors(model)]
    assert tensors[0] == "cond" and sorted(tensors[1:]) == ["a", "b"]


@pytest.mark.parametrize("edit", ["raw-dims", "typed-dims", "negative", "no-data", "wrong-field"])
def test_tensors_whose_data_does_not_fit_their_dims_are_refused(tmp_path, tiny_model, edit):
    # onnx.checker lets these through; numpy_helper.to_array then raised ValueError inside prepare
    conv_w = next(t for t in tiny_model.graph.initializer if t.name == "conv_w")  # raw, [2, 1, 3, 3]
    fc_w = next(t for t in tiny_model.graph.initializer if t.name == "fc_w")  # float_data, [4, 72]
    if edit == "raw-dims":
        conv_w.dims[0] = 3
    elif edit == "typed-dims":
        del fc_w.dims[-1]
    elif edit == "negative":
        conv_w.dims[1] = -1
    elif edit == "no-data":
        conv_w.ClearField("raw_data")
    else:
        fc_w.int64_data.extend(int(v) for v in fc_w.float_data)
        fc_w.ClearField("float_data")
    path = tmp_path / "m.onnx"
    path.write_bytes(tiny_model.SerializeToString())
    with pytest.raises(ModelValidationError, match="tensor '(conv_w|fc_w)' (holds|has a negative)"):
        load_model(path)


def test_packed_complex_and_empty_tensors_fit_their_dims(tmp_path, tiny_model):
    extra = [
        helper.make_tensor("i4", TensorProto.INT4, [5], [1, 2, 3, 4, 5]),  # 3 int32 values, 2 per value
        helper.make_tensor("c64", TensorProto.COMPLEX64, [2], [1 + 2j, 3]),  # 4 floats
        numpy_helper.from_array(np.zeros((0, 3), np.float32), "empty"),
        helper.make_tensor("s", TensorProto.STRING, [2], [b"a", b"b"]),
    ]
    for tensor in extra:
        tiny_model.graph.initializer.append(tensor)
    path = tmp_path / "m.onnx"
    path.write_bytes(tiny_model.SerializeToString())
    assert len(load_model(path).graph.initializer) == 6 + len(extra)
