"""ONNX test-data folders whose model has inputs or outputs that are not tensors (sequences, optionals, maps)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.cli import main
from onnxq.data import open_dataset, type_text
from onnxq.errors import DataError

FLOAT4 = helper.make_tensor_type_proto(TensorProto.FLOAT, [4])


def _write(folder: Path, name: str, proto) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(proto.SerializeToString())


def test_eval_compares_the_tensor_outputs_and_skips_a_stored_sequence(tmp_path):
    # output_1.pb holds a SequenceProto, which parses as a TensorProto of garbage dims: it must not be read so;
    # the session returns the sequence as a list of arrays of different lengths, which no metric compares
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("SplitToSequence", ["x", "split"], ["s"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4]),
                               helper.make_value_info("s", helper.make_sequence_type_proto(FLOAT4))],
                              [numpy_helper.from_array(np.array([1, 3], np.int64), "split")])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "m.onnx")
    x = np.array([-1, 0, 1, 2], np.float32)
    sets = tmp_path / "data" / "test_data_set_0"
    _write(sets, "input_0.pb", numpy_helper.from_array(x, "x"))
    _write(sets, "output_0.pb", numpy_helper.from_array(np.maximum(x, 0), "y"))
    _write(sets, "output_1.pb", onnx.numpy_helper.from_list([x[:1], x[1:]], "s"))
    model = onnx.load(tmp_path / "m.onnx")
    dataset = open_dataset(tmp_path / "data", model)
    assert list(dataset.references[0]) == ["y"]
    assert main(["eval", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "data")]) == 0


@pytest.mark.parametrize(
    "type_proto, text",
    [
        (helper.make_sequence_type_proto(FLOAT4), "sequence(tensor(float))"),
        (helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.INT32, [])),
         "optional(tensor(int32))"),  # fmt: skip
        (helper.make_map_type_proto(TensorProto.INT64, FLOAT4), "map(int64, tensor(float))"),
    ],
)
def test_an_input_that_is_not_a_tensor_is_a_data_error_naming_its_type(type_proto, text, tmp_path, capsys):
    assert type_text(type_proto) == text
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_value_info("x", type_proto)],
                              [helper.make_value_info("y", type_proto)])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    with pytest.raises(DataError, match=rf"model input 'x' is of type {re.escape(text)}: onnxq feeds tensors only"):
        open_dataset({"x": np.zeros(4, np.float32)}, model)
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.zeros(4, np.float32))
    assert main(["quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "--calib",
                 str(tmp_path / "d.npz")]) == 2  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: model input 'x' is of type") and err[1].startswith("hint:")


def test_fixed_shapes_batch_the_inputs_that_share_the_first_inputs_leading_size():
    from onnxq.data import InputSpec
    from onnxq.feeds import batch_axes

    f32 = np.dtype("float32")
    specs = [InputSpec("x", f32, (3, 4, 5)), InputSpec("y", f32, (5,)), InputSpec("z", f32, (3, 1, 1)),
             InputSpec("s", f32, ())]  # fmt: skip
    assert batch_axes(specs) == {"x": 0, "y": None, "z": 0, "s": None}


def test_a_fixed_shape_model_with_a_broadcast_operand_evaluates_and_quantizes_from_its_test_data(tmp_path):
    # x [2, 3, 4, 4] and a broadcast bias input b [4]: b's leading 4 is no batch size, so there is no conflict
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3, 3, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4]),
                                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 4])], [w])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "m.onnx")
    x, b = rng.standard_normal((2, 3, 4, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    sets = tmp_path / "test_data_set_0"
    _write(sets, "input_0.pb", numpy_helper.from_array(x, "x"))
    _write(sets, "input_1.pb", numpy_helper.from_array(b, "b"))
    _write(sets, "output_0.pb", numpy_helper.from_array(np.zeros((2, 3, 4, 4), np.float32), "y"))
    model, data = str(tmp_path / "m.onnx"), str(tmp_path)
    assert main(["eval", model, "--data", data]) == 0
    assert main(["quantize", model, "-o", str(tmp_path / "q.onnx"), "--calib", data]) == 0
