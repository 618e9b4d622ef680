"""Measurement, report and inspect behaviour that one-line mistakes (bench/mutants.py) broke with no test failing:
bench's config check, label and reference checks in evaluation, Markdown cells, and what counts as depthwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.errors import ConfigError, DataError


def _identity(path: Path, classes: int, in_name: str = "input") -> Path:
    graph = helper.make_graph([helper.make_node("Identity", [in_name], ["logits"])], "g",
                              [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["N", classes])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


def test_bench_refuses_a_negative_warm_up():
    from onnxq.measure.bench import BenchConfig

    assert BenchConfig(warmup_runs=0).warmup_runs == 0
    with pytest.raises(ConfigError, match="warmup >= 0, got runs=10 warmup=-1"):
        BenchConfig(runs=10, warmup_runs=-1)


def test_a_label_equal_to_the_number_of_classes_is_refused(tmp_path):
    """Class indices run from 0 to classes - 1: label 4 of a 4-class model names no class."""
    from onnxq.measure.evaluate import evaluate

    model = _identity(tmp_path / "m.onnx", 4)
    x = np.eye(4, dtype=np.float32)
    assert evaluate(model, {"input": x, "label": np.arange(4)})["accuracy"]["top1"] == 1.0  # 3 is still valid
    with pytest.raises(DataError, match="label 4 of sample 2 is outside the model's 4 classes"):
        evaluate(model, {"input": x, "label": np.array([0, 1, 4, 3])})


def test_a_reference_with_other_inputs_is_refused(tmp_path):
    from onnxq.measure.evaluate import evaluate

    model, ref = _identity(tmp_path / "m.onnx", 3), _identity(tmp_path / "r.onnx", 3, in_name="pixels")
    with pytest.raises(ConfigError, match=r"takes inputs \['pixels'\], but .* takes \['input'\]"):
        evaluate(model, {"input": np.eye(3, dtype=np.float32)}, reference=ref)


def test_a_pipe_in_a_markdown_cell_is_escaped_so_the_row_keeps_its_columns():
    from onnxq.report.markdown import _cell, _table

    assert _cell("a|b") == "a\\|b"
    header, _, row = _table((["model", "ep"], [["left|right", "cpu"]]))
    unescaped = lambda line: line.replace("\\|", "").count("|")  # noqa: E731
    assert unescaped(row) == unescaped(header) == 3  # | model | ep |


def test_a_one_channel_convolution_is_not_depthwise():
    """Depthwise means group == in == out channels > 1; a plain Conv of one channel in and out is not."""
    from onnxq.inspect.facts import inspect_model

    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    dw = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "dw")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="plain"),
             helper.make_node("Conv", ["c4", "dw"], ["y"], name="depthwise", group=4)]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 5]),
                                           helper.make_tensor_value_info("c4", TensorProto.FLOAT, [1, 4, 5, 5])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, dw])  # fmt: skip
    report = inspect_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))
    assert {q.name: q.depthwise for q in report.quantizable} == {"plain": False, "depthwise": True}
