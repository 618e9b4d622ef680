"""Weights inside If bodies are stored as integers (weight-only) and the summary says so per subgraph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxq.quantize.driver import quantize
from onnxq.quantize.recipe import QuantizeRecipe

RNG = np.random.default_rng(0)


def _if_model() -> onnx.ModelProto:
    """MatMul, then If(cond): the then body holds its weight as an initializer, the else body as a Constant."""
    w_then, w_else = (RNG.standard_normal((8, 4)).astype(np.float32) for _ in range(2))
    out = lambda name: [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 4])]  # noqa: E731
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "w_then"], ["y_then"], name="then_mm")], "then", [],
                               out("y_then"), [numpy_helper.from_array(w_then, "w_then")])  # fmt: skip
    constant = helper.make_node("Constant", [], ["w_else"], value=numpy_helper.from_array(w_else, "w_else"), name="c")
    else_mm = helper.make_node("MatMul", ["x", "w_else"], ["y_else"], name="else_mm")
    else_g = helper.make_graph([constant, else_mm], "else", [], out("y_else"))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["inp", "w0"], ["x"], name="mm0"),
         helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="branch")], "m",
        [helper.make_tensor_value_info("inp", TensorProto.FLOAT, ["N", 8]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        out("y"), [numpy_helper.from_array(RNG.standard_normal((8, 8)).astype(np.float32), "w0")])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _bodies(model: onnx.ModelProto) -> dict[str, onnx.GraphProto]:
    node = next(n for n in model.graph.node if n.op_type == "If")
    return {a.name: a.g for a in node.attribute}


def test_if_body_weights_are_quantized_weight_only_and_both_branches_stay_close(tmp_path):
    src = tmp_path / "if.onnx"
    onnx.save(_if_model(), src)
    x = RNG.standard_normal((16, 8)).astype(np.float32)
    summary = quantize(src, tmp_path / "q.onnx", {"inp": x, "cond": np.array(True)}, QuantizeRecipe())
    entry = next(e for e in summary.passes if e["pass"] == "qdq")
    assert set(entry["subgraphs"]) == {"main/branch.then_branch", "main/branch.else_branch"}
    assert all(v.startswith("1 weight(s) quantized weight-only") for v in entry["subgraphs"].values())
    q = onnx.load(tmp_path / "q.onnx")
    for body in _bodies(q).values():
        assert [n.op_type for n in body.node] == ["DequantizeLinear", "MatMul"]  # the Constant is gone
        assert all(t.data_type != TensorProto.FLOAT for t in body.initializer if t.name.endswith("_quantized"))
    float_sess, quant_sess = ort.InferenceSession(str(src)), ort.InferenceSession(str(tmp_path / "q.onnx"))
    for cond in (True, False):
        feeds = {"inp": x, "cond": np.array(cond)}
        ref, got = float_sess.run(None, feeds)[0], quant_sess.run(None, feeds)[0]
        sqnr = 10 * np.log10(np.square(ref).sum() / np.square(ref - got).sum())
        assert sqnr > 30, (cond, sqnr)  # int8 weights and one int8 activation: about 40 dB here


def test_a_subgraph_node_can_be_excluded_by_name(tmp_path):
    src = tmp_path / "if.onnx"
    onnx.save(_if_model(), src)
    x = RNG.standard_normal((16, 8)).astype(np.float32)
    quantize(src, tmp_path / "q.onnx", {"inp": x, "cond": np.array(True)}, QuantizeRecipe(exclude_nodes=("then_mm",)))
    bodies = _bodies(onnx.load(tmp_path / "q.onnx"))
    assert [n.op_type for n in bodies["then_branch"].node] == ["MatMul"]
    assert [n.op_type for n in bodies["else_branch"].node] == ["DequantizeLinear", "MatMul"]
