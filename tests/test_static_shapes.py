"""The static-shape copy that lets a model with run-time shape arithmetic be captured as a CUDA graph
(onnxq.runtime.static_shapes): it folds the arithmetic away, keeps the function, and refuses shapes that do
not fit. The CUDA side (ORT accepting the copy's graph) is in test_gpu.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_decoder import tiny_decoder

from conftest import SHARED_MODELS
from onnxq.runtime.static_shapes import outputs_agree, shape_nodes, static_copy

MINILM = Path.home() / ".cache" / "onnxq-models" / "paraphrase_minilm_l3" / "model.onnx"
SENTENCES = SHARED_MODELS / "paraphrase_minilm_l3" / "sentences_padded.npz"


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def reshaping_model() -> onnx.ModelProto:
    """x [N, 64] -> Reshape to [N, 8, 8] by its own Shape -> MatMul -> Reshape back to [N, 64]."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "w")
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("zero", [0]), ("one", [1]), ("eight", [8, 8]), ("minus", [-1]))]  # fmt: skip
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
        helper.make_node("Concat", ["n", "eight"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["x3"]),
        helper.make_node("MatMul", ["x3", "w"], ["y3"]),
        helper.make_node("Concat", ["n", "minus"], ["back"], axis=0),
        helper.make_node("Reshape", ["y3", "back"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "reshaping", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], [w, *consts])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_the_copy_folds_the_shape_arithmetic_and_computes_the_same_outputs():
    model = reshaping_model()
    before = model.SerializeToString()
    copy = static_copy(model, {"x": (4, 64)})
    assert model.SerializeToString() == before  # the model itself is left alone
    assert shape_nodes(model) == 1 and copy.shape_nodes_left == 0
    assert {n.op_type for n in copy.model.graph.node} == {"Reshape", "MatMul"}
    assert copy.nodes_after == 3 < copy.nodes_before == 7
    assert [d.dim_value for d in copy.model.graph.input[0].type.tensor_type.shape.dim] == [4, 64]
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    np.testing.assert_array_equal(_run(copy.model, {"x": x})[0], _run(model, {"x": x})[0])
    assert "x [4, 64]" in copy.note() and "7 -> 3 nodes" in copy.note()


@pytest.mark.parametrize("shape, says", [((4, 64, 1), "rank 2"), ((4, 32), "fixes a dim to 64")])
def test_a_shape_that_does_not_fit_the_input_is_refused(shape, says):
    with pytest.raises(ValueError, match=says):
        static_copy(reshaping_model(), {"x": shape})


def test_a_decoder_with_a_kv_cache_folds_its_mask_arithmetic_and_keeps_its_logits():
    model = tiny_decoder(with_past=True)  # Shape nodes with start/end attributes build its causal mask
    shapes = {"input_ids": (1, 1), **{i.name: (1, 12, 64) for i in model.graph.input if i.name != "input_ids"}}
    copy = static_copy(model, shapes)
    assert shape_nodes(model) == 6 and copy.shape_nodes_left == 0
    rng = np.random.default_rng(2)
    feeds = {"input_ids": rng.integers(0, 256, (1, 1))}
    feeds |= {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items() if k != "input_ids"}
    assert outputs_agree(_run(model, feeds), _run(copy.model, feeds)) is None


def test_the_real_minilm_export_loses_its_shape_nodes_and_keeps_its_embeddings():
    if not MINILM.is_file():
        pytest.skip("paraphrase-MiniLM-L3 is not fetched (../shared/tools/get-paraphrase-minilm)")
    model = onnx.load(MINILM)
    with np.load(SENTENCES) as z:
        feeds = {k: z[k][:16] for k in ("input_ids", "attention_mask")}
    copy = static_copy(model, {k: v.shape for k, v in feeds.items()})
    assert shape_nodes(model) == 31 and copy.shape_nodes_left == 0
    assert copy.nodes_after < copy.nodes_before / 2
    ref, got = _run(model, feeds), _run(copy.model, feeds)
    assert outputs_agree(ref, got) is None
    np.testing.assert_allclose(got[3], ref[3], rtol=0, atol=1e-5)  # "461", the sentence embedding


def test_outputs_agree_names_each_kind_of_difference():
    a = np.linspace(-1, 1, 100, dtype=np.float32)
    ints = np.arange(4)
    assert outputs_agree([a, ints], [a + 1e-4, ints]) is None  # 80 dB: agreement
    assert "shape" in outputs_agree([a], [a[:50]])
    assert "differs" in outputs_agree([ints], [ints + 1])
    assert "dB" in outputs_agree([a], [a * 1.05])  # 26 dB
    assert "non-finite" in outputs_agree([a], [np.where(a > 0.5, np.nan, a)])
    assert "2 outputs instead of 1" == outputs_agree([a], [a, a])

