"""The cuda target: INT8 QDQ whose every node has a CUDA EP kernel, so no node runs on the host.

ORT's CUDA EP has no int32 DequantizeLinear; an int32 bias (the ort and tensorrt targets') is dequantized on
the CPU every run and copied over, and a CUDA graph is then refused. The cuda target keeps biases float, as
an Add after the node (ORT's own BiasQuantization rewrite turns a float bias inside a QDQ Conv/Gemm into an
int32 DequantizeLinear: seen on the H200), and puts Q/DQ only on the inputs of Conv, Gemm and MatMul, int8
with zero point 0. Both the file and the graph ORT makes of it (its level-1 rewrites run on the CPU EP too)
are checked for int32 tensors.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import SAMPLE_MODELS, SHARED_MODELS
from onnxq.cli import main
from onnxq.errors import ConfigError
from onnxq.measure.bench import qdq_on_ep_warnings
from onnxq.passes.placement import format_policy
from onnxq.quantize.driver import quantize
from onnxq.quantize.recipe import QuantizeRecipe


def _int32_dequantize_nodes(model: onnx.ModelProto) -> list[str]:
    int32 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT32}
    return [n.name for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int32]


def _check_host_free(model: onnx.ModelProto) -> None:
    inits = {t.name: t for t in model.graph.initializer}
    assert _int32_dequantize_nodes(model) == []
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:  # int8, zero point 0: types the CUDA EP's QuantizeLinear/DequantizeLinear take
        zp = numpy_helper.to_array(inits[n.input[2]])
        assert zp.dtype == np.int8 and not zp.any()
    adds = {n.input[0]: n for n in model.graph.node if n.op_type == "Add" and n.name.endswith("_bias_Add")}
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm") and n.input[0].endswith("_dq"):
            assert len(n.input) == 2  # no bias inside the node, where ORT would quantize it
            assert inits[adds[n.output[0]].input[1]].data_type == onnx.TensorProto.FLOAT  # the float bias, added


def _unused_initializers(model: onnx.ModelProto) -> list[str]:
    used = {i for n in model.graph.node for i in n.input}
    return [t.name for t in model.graph.initializer if t.name not in used]


def _int32_after_ort_rewrites(path, tmp_path) -> int:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # where BiasQuantization runs
    so.optimized_model_filepath = str(tmp_path / "ort_rewritten.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    rewritten = onnx.load(so.optimized_model_filepath)
    return sum(t.data_type == onnx.TensorProto.INT32 for t in rewritten.graph.initializer)


@pytest.mark.parametrize("name", ["resnet_digits", "mlp_digits", "transformer_digits"])
def test_cuda_target_leaves_no_int32_bias_and_keeps_accuracy(name, tmp_path):
    out = tmp_path / "q.onnx"
    quantize(SAMPLE_MODELS / f"{name}.onnx", out, SAMPLE_MODELS / "calib.npz", QuantizeRecipe(target="cuda"))
    model = onnx.load(out)
    _check_host_free(model)
    assert _int32_after_ort_rewrites(out, tmp_path) == 0
    assert _unused_initializers(model) == []  # the moved biases leave nothing behind (ORT would warn of each)
    assert main(["eval", str(out), "--data", str(SAMPLE_MODELS / "test.npz"), "--reference",
                 str(SAMPLE_MODELS / f"{name}.onnx")]) == 0  # fmt: skip


def test_the_ort_target_on_the_same_model_has_int32_biases_and_the_bench_warning_names_the_cuda_target(tmp_path):
    ort_q, cuda_q = tmp_path / "ort.onnx", tmp_path / "cuda.onnx"
    src, calib = SAMPLE_MODELS / "resnet_digits.onnx", SAMPLE_MODELS / "calib.npz"
    quantize(src, ort_q, calib)
    quantize(src, cuda_q, calib, QuantizeRecipe(target="cuda"))
    assert len(_int32_dequantize_nodes(onnx.load(ort_q))) == 7  # 6 Conv + 1 Gemm biases
    assert _int32_after_ort_rewrites(cuda_q, tmp_path) == 0
    ort_warnings = qdq_on_ep_warnings(onnx.load(ort_q), "cuda")
    assert any("7 int32 bias DequantizeLinear" in w and "--target cuda" in w for w in ort_warnings)
    (cuda_warning,) = qdq_on_ep_warnings(onnx.load(cuda_q), "cuda")  # only: dequantize + float, use TensorRT
    assert "not faster than float" in cuda_warning and "--ep tensorrt --trt-int8" in cuda_warning


def test_cuda_target_on_squeezenet_is_host_free(tmp_path):
    model = SHARED_MODELS / "squeezenet1.1" / "model.onnx"
    if not model.exists():
        pytest.skip("../shared/models is absent")
    out = tmp_path / "q.onnx"
    summary = quantize(model, out, model.parent / "real_inputs" / "inputs.npy", QuantizeRecipe(target="cuda"))
    _check_host_free(onnx.load(out))
    assert _int32_after_ort_rewrites(out, tmp_path) == 0
    (qdq,) = [p for p in summary.to_dict()["passes"] if p["pass"] == "qdq"]
    assert qdq["biases_as_add"] == 26


def test_policy_prints_the_cuda_placement_with_float_biases(capsys):
    assert "2 (float)" in format_policy("cuda") and "2 (int32)" in format_policy("ort")
    assert main(["policy", "--target", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "cuda" in out and "biases float" in out


def test_cuda_target_refuses_uint8_activations():
    with pytest.raises(ConfigError, match="--activation-type uint8 contradicts --target cuda"):
        QuantizeRecipe(target="cuda", activation_type="uint8")
