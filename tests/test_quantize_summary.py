"""The quantize summary counts nodes of the input model, lists prepare's own nodes apart, shortens long lists of
names and rounds numbers."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.api import quantize
from onnxq.cli.summary import format_quantize_summary, shortened
from onnxq.quantize.driver import QuantizeSummary


def _opset7_classifier(path) -> set[str]:
    """Conv -> Relu -> GlobalAveragePool -> Dropout -> Softmax on [N, 4, 1, 1], opset 7, as squeezenet1.1 ends:
    prepare removes the Dropout and its upgrade to opset 13 spells the Softmax as Flatten -> Softmax -> Reshape."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Dropout", ["g"], ["d"]),
        helper.make_node("Softmax", ["d"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1, 1])], [w, b],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)], ir_version=4), path)
    return {n.op_type for n in nodes}


def test_counts_are_of_the_input_models_nodes_and_prepares_own_are_apart(tmp_path):
    ops = _opset7_classifier(tmp_path / "m.onnx")
    calib = {"x": np.random.default_rng(1).random((8, 1, 8, 8)).astype(np.float32)}
    summary = quantize(tmp_path / "m.onnx", tmp_path / "q.onnx", calib)
    counts = summary.node_counts
    assert counts["in_model"] == 5 and summary.nodes_quantized <= 5
    assert set(summary.op_counts) <= ops  # no op the model does not have
    assert {"Flatten", "Reshape"} <= set(counts["made_by_prepare"]) and "Dropout" in counts["removed_by_prepare"]
    assert counts["folded"] == {"Relu": 1}
    line = next(x for x in format_quantize_summary(summary).splitlines() if "nodes quantized" in x)
    assert "of the input model's 5" in line and "Flatten" not in line and "Reshape" not in line


def test_long_name_lists_are_shortened_and_floats_rounded():
    names = [f"Conv@{i}" for i in range(47)]
    summary = QuantizeSummary(
        input_path="m.onnx", output_path="q.onnx",
        recipe={"target": "ort", "activation_type": "uint8", "weight_type": "int8", "per_channel": True,
                "method": "minmax"},
        size_before=2000, size_after=1000, nodes_quantized=1, op_counts={"Conv": 1}, skipped={}, calib_samples=1,
        timings={"total_s": 0.1234}, passes=[{"pass": "plan", "float_boundary_nodes": names, "ratio": 0.123456789}],
    )  # fmt: skip
    text = format_quantize_summary(summary)
    assert "float_boundary_nodes=47 (Conv@0, Conv@1, Conv@2, Conv@3, Conv@4 ... and 42 more)" in text
    assert "Conv@46" not in text and "ratio=0.1235" in text
    assert shortened(["a", "b"]) == "a, b"
