"""FP16 conversion keeps the model's function to half-precision accuracy and its float32 interface."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLE_MODELS, SHARED_MODELS
from onnxq.cli import main
from onnxq.errors import PassError
from onnxq.passes.fp16 import FP16Config, convert_to_fp16
from onnxq.passes.prepare import prepare_model


def _run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _cases():
    x = np.load(SAMPLE_MODELS / "test.npz")["input"][:32]
    cases = [
        (SAMPLE_MODELS / f"{m}_digits.onnx", {"input": x})
        for m in ("mlp", "resnet", "mobilenetv2", "transformer")
    ]
    sq = SHARED_MODELS / "squeezenet1.1"
    if sq.exists():
        cases.append((sq / "model.onnx", {"data_0": np.load(sq / "real_inputs/inputs.npy")[:1]}))
    return cases


@pytest.mark.parametrize(
    "path, feeds", _cases(), ids=lambda v: getattr(v, "stem", "") or getattr(v, "name", "")
)
def test_fp16_model_matches_float_to_half_precision_with_float32_io(path, feeds):
    model = prepare_model(onnx.load(str(path))).model
    result = convert_to_fp16(model)
    onnx.checker.check_model(result.model, full_check=True)
    # the interface stays float32; every weight is float16
    assert all(vi.type.tensor_type.elem_type == TensorProto.FLOAT for vi in result.model.graph.input)
    assert all(vi.type.tensor_type.elem_type == TensorProto.FLOAT for vi in result.model.graph.output)
    assert all(
        t.data_type != TensorProto.FLOAT
        for t in result.model.graph.initializer
        if t.name not in {"roi", "scales"}
    )
    ref, got = _run(model, feeds), _run(result.model, feeds)
    assert got.dtype == np.float32
    # float16 has an 11-bit significand (~5e-4 relative); errors compound over layers: allow 1% of the range
    assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max()
    assert (got.reshape(len(got), -1).argmax(1) == ref.reshape(len(ref), -1).argmax(1)).all()


def test_resize_scales_stay_float32_and_kept_ops_stay_float32():
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="nearest"),
        helper.make_node("Relu", ["r"], ["h"], name="keep_me"),
        helper.make_node("Mul", ["h", "w"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(np.full((1, 1, 4, 4), 0.5, np.float32), "w"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # onnxruntime 1.31 reads IR <= 13; onnx 1.23 writes 14 by default
    result = convert_to_fp16(model, FP16Config(keep_nodes=("keep_me",)))
    types = {t.name: t.data_type for t in result.model.graph.initializer}
    assert types == {"scales": TensorProto.FLOAT, "w": TensorProto.FLOAT16}
    relu = next(n for n in result.model.graph.node if n.name == "keep_me")
    inferred = {vi.name: vi.type.tensor_type.elem_type for vi in result.model.graph.value_info}
    assert inferred[relu.input[0]] == TensorProto.FLOAT and inferred[relu.output[0]] == TensorProto.FLOAT
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    np.testing.assert_allclose(_run(result.model, {"x": x}), _run(model, {"x": x}), rtol=1e-3)


def test_quantized_model_is_refused(tmp_path):
    from onnxq.quantize.driver import quantize

    q = tmp_path / "q.onnx"
    quantize(SAMPLE_MODELS / "mlp_digits.onnx", q, SAMPLE_MODELS / "calib.npz")
    with pytest.raises(PassError, match="quantized"):
        convert_to_fp16(onnx.load(str(q)))


def test_cli_writes_an_fp16_model_and_keeps_the_input(tmp_path):
    src = SAMPLE_MODELS / "resnet_digits.onnx"
    before = src.read_bytes()
    out = tmp_path / "h.onnx"
    assert main(["fp16", str(src), "-o", str(out)]) == 0
    assert src.read_bytes() == before
    assert out.stat().st_size < 0.6 * len(before)
