"""Re-batching: a graph that fixes batch 1 gets a checked copy with a symbolic batch axis, or a clean refusal.

The checks run on the CPU EP (ORT's kernels are the same on 1 and 2 samples, so the copy must match the
original to float32 rounding: rtol 1e-3, atol 1e-4 of the largest output; samples that mix differ by O(1)).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SHARED_MODELS
from onnxq.cli import main
from onnxq.errors import ConfigError
from onnxq.model import load_model
from onnxq.rebatch import BATCH_DIM, rebatch, symbolic_batch_copy

RNG = np.random.default_rng(7)


def _flatten_head(target: list[int]) -> onnx.ModelProto:
    """x [1, 4, 3, 3] -> Conv -> Relu -> Reshape(target) -> MatMul -> y [1, 5]: a typical fixed-batch export."""
    inits = [
        numpy_helper.from_array(RNG.standard_normal((6, 4, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(target, np.int64), "shape"),
        numpy_helper.from_array(RNG.standard_normal((54, 5)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_reshape_to_a_leading_1_becomes_a_copy_of_the_batch_and_the_copy_matches_per_sample():
    original = _flatten_head([1, 54])
    done = rebatch(original)
    assert done.batched_inputs == ("x",) and done.reshapes == 1
    assert done.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == BATCH_DIM
    assert done.model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == BATCH_DIM
    assert done.max_abs_diff < 1e-4
    assert original.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1  # the original is untouched


def test_a_reshape_that_folds_the_batch_into_the_features_is_refused():
    # [1, 54] written as [-1] + a MatMul over everything: on 2 samples the Reshape makes [108], which
    # the MatMul cannot take, or (here) the rows mix: the check refuses either way
    original = _flatten_head([1, 54])
    copy = symbolic_batch_copy(original).model
    shape = next(t for t in copy.graph.initializer if t.name.startswith("shape_symbolic"))
    shape.CopyFrom(numpy_helper.from_array(np.array([1, -1], np.int64), shape.name))  # the batch folded away
    from onnxq.rebatch import Rebatched, check_symbolic_batch

    with pytest.raises(ConfigError, match="cannot make the batch symbolic") as info:
        check_symbolic_batch(original, Rebatched(copy, ("x",), 1))
    assert "re-export the model with a dynamic batch axis" in info.value.hint


def test_an_expand_to_a_constant_shape_is_refused_naming_the_suspect():
    inits = [numpy_helper.from_array(np.array([1, 3], np.int64), "to"), numpy_helper.from_array(
        np.ones((1, 3), np.float32), "ones")]  # fmt: skip
    nodes = [helper.make_node("Expand", ["ones", "to"], ["e"]), helper.make_node("Add", ["x", "e"], ["y"]),
             helper.make_node("ReduceSum", ["y"], ["s"], keepdims=0)]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("s", TensorProto.FLOAT, [])], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(ConfigError, match="Expand x1"):
        rebatch(model)  # ReduceSum over all axes sums both samples together


def test_a_model_with_no_leading_1_is_refused():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])])  # fmt: skip
    with pytest.raises(ConfigError, match="no input of the model has a leading dimension of 1"):
        symbolic_batch_copy(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_squeezenet_gets_a_symbolic_batch_with_its_weights_no_longer_inputs():
    path = SHARED_MODELS / "squeezenet1.1" / "model.onnx"
    if not path.exists():
        pytest.skip("../shared/models is absent")
    original = load_model(path)
    done = rebatch(original)
    assert len(original.graph.input) > 1 and [i.name for i in done.model.graph.input] == ["data_0"]
    assert done.model.ir_version >= 4 and done.max_abs_diff < 1e-5


def test_bench_cli_measures_a_fixed_batch_model_at_batch_3_and_says_how(tmp_path, capsys):
    model = tmp_path / "head.onnx"
    onnx.save(_flatten_head([1, 54]), model)
    assert main(["bench", str(model), "--batch", "3", "--runs", "3", "--warmup", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[:3] == ["head", "cpu", "3"]
    assert "symbolic batch axis on x (1 Reshape target(s) rewritten)" in out


def test_bench_cli_refuses_a_graph_that_cannot_take_another_batch_in_two_lines(tmp_path, capsys):
    model = tmp_path / "mix.onnx"
    m = _flatten_head([1, 54])
    m.graph.node[2].attribute.append(helper.make_attribute("allowzero", 1))  # its [1, 54] cannot follow the batch
    onnx.save(m, model)
    assert main(["bench", str(model), "--batch", "2", "--runs", "2", "--warmup", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: cannot make the batch symbolic") and err[1].startswith("hint:")
