"""uint8 x int8 saturation in ORT's CPU kernels (x86 without VNNI): the probe, the weight type onnxq picks, and
the warnings when a model computes such products here (onnxq.runtime.cpu_int8)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLE_MODELS
from onnxq.cli import main
from onnxq.quantize.driver import quantize
from onnxq.quantize.recipe import QuantizeRecipe
from onnxq.runtime import cpu_int8
from onnxq.runtime.cpu_int8 import ENV, int8_weight_products, u8s8_saturates

RESNET = SAMPLE_MODELS / "resnet_digits.onnx"


def _calib(n: int = 64) -> dict[str, np.ndarray]:
    with np.load(SAMPLE_MODELS / "calib.npz") as d:
        return {"input": d["input"][:n]}


def _run(path, x, optimize: bool = True) -> np.ndarray:
    so = ort.SessionOptions()
    if not optimize:  # DQ -> float op -> Q: what the model defines, without ORT's integer kernels
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def _sqnr(ref: np.ndarray, y: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - y).astype(np.float64) ** 2)))


def test_the_probe_agrees_with_an_integer_matmul_on_this_machine(monkeypatch):
    """Another kernel than the probe's QLinearConv: MatMulInteger of 255s by 127s over 64 terms."""
    monkeypatch.delenv(ENV, raising=False)
    k = 64
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [numpy_helper.from_array(np.full((k, 3), 127, np.int8), "b")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    y = ort.InferenceSession(model.SerializeToString()).run(None, {"a": np.full((1, k), 255, np.uint8)})[0]
    assert u8s8_saturates() == bool((y != 255 * 127 * k).any())


@pytest.mark.parametrize("given, weights", [("saturates", "uint8"), ("exact", "int8")])
def test_the_default_weight_type_follows_the_kernels(monkeypatch, given, weights):
    monkeypatch.setenv(ENV, given)
    assert QuantizeRecipe().weights() == weights
    assert QuantizeRecipe(activation_type="uint16").weights() == "int8"  # no 16-bit integer kernel
    assert QuantizeRecipe(target="tensorrt").weights() == "int8"
    assert QuantizeRecipe(weight_type="int4").weights() == "int4"


def test_a_bad_override_is_one_error_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(ENV, "maybe")
    code = main(["quantize", str(RESNET), "-o", str(tmp_path / "q.onnx"), "--calib", str(SAMPLE_MODELS / "calib.npz")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {ENV}='maybe'") and "\nhint: " in err and "Traceback" not in err
    assert not (tmp_path / "q.onnx").exists()


def test_uint8_weights_lie_on_the_int8_grid_and_define_the_same_model(monkeypatch, tmp_path):
    paths = {}
    for given in ("saturates", "exact"):
        monkeypatch.setenv(ENV, given)
        paths[given] = tmp_path / f"{given}.onnx"
        summary = quantize(RESNET, paths[given], _calib(), QuantizeRecipe())
        assert bool(summary.notes) == (given == "saturates") and not summary.warnings
    inits = {g: {t.name: numpy_helper.to_array(t) for t in onnx.load(p).graph.initializer} for g, p in paths.items()}
    weights = [n for n, v in inits["exact"].items() if v.dtype == np.int8 and v.ndim >= 2]
    assert len(weights) >= 5
    for name in weights:
        u8 = inits["saturates"][name]
        assert u8.dtype == np.uint8 and np.array_equal(u8.astype(np.int16) - 128, inits["exact"][name])
    x = _calib(32)["input"]
    np.testing.assert_array_equal(_run(paths["saturates"], x, optimize=False), _run(paths["exact"], x, optimize=False))


def test_the_default_model_computes_what_it_defines_on_this_machine(monkeypatch, tmp_path):
    """With int8 weights on a CPU without VNNI this gives about 9 dB (pairs saturate); uint8 weights are exact."""
    monkeypatch.delenv(ENV, raising=False)
    out = tmp_path / "q.onnx"
    quantize(RESNET, out, _calib(), QuantizeRecipe())
    x = _calib(64)["input"]
    assert _sqnr(_run(out, x, optimize=False), _run(out, x)) > 30


def test_int8_weights_on_saturating_kernels_are_warned_about(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(ENV, "saturates")
    out = tmp_path / "q8.onnx"
    summary = quantize(RESNET, out, _calib(), QuantizeRecipe(weight_type="int8"))
    assert any("saturate uint8 x int8" in w for w in summary.warnings) and not summary.notes
    model = onnx.load(out)
    linear = sum(n.op_type in ("Conv", "Gemm", "MatMul") for n in model.graph.node)
    assert int8_weight_products(model) == linear > 0
    signed = tmp_path / "s8s8.onnx"  # int8 activations (an int8 zero point) count as 8-bit too
    quantize(RESNET, signed, _calib(), QuantizeRecipe(weight_type="int8", activation_type="int8"))
    assert int8_weight_products(onnx.load(signed)) == linear
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(SAMPLE_MODELS / "test.npz")]) == 0
    assert f"warning: {linear} node(s) multiply 8-bit activations by int8 weights" in capsys.readouterr().out
    monkeypatch.setenv(ENV, "exact")
    assert cpu_int8.saturation_warning(model) is None
    assert main(["eval", str(out), "--data", str(SAMPLE_MODELS / "test.npz")]) == 0
    assert "int8 weights" not in capsys.readouterr().out


def test_uint8_weight_models_count_no_saturating_products(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV, "saturates")
    out = tmp_path / "q.onnx"
    quantize(RESNET, out, _calib(), QuantizeRecipe())
    assert int8_weight_products(onnx.load(out)) == 0
    dyn = tmp_path / "dyn.onnx"
    quantize(SAMPLE_MODELS / "transformer_digits.onnx", dyn, None, QuantizeRecipe(dynamic=True))
    model = onnx.load(dyn)
    assert int8_weight_products(model) == 0 and any(n.op_type == "MatMulInteger" for n in model.graph.node)


def test_reduce_range_gives_7_bit_int8_weights_that_compute_what_they_define_here(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV, raising=False)
    out = tmp_path / "q.onnx"
    summary = quantize(RESNET, out, _calib(), QuantizeRecipe(reduce_range=True))
    assert summary.recipe["weight_type"] == "int8" and not summary.notes and not summary.warnings
    model = onnx.load(out)
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.INT8 and t.dims]
    assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) == 64  # 7 bits, all used
    assert int8_weight_products(model) == 0
    x = _calib(64)["input"]
    assert _sqnr(_run(out, x, optimize=False), _run(out, x)) > 30


def test_reduce_range_in_dynamic_quantization_and_where_it_has_no_meaning(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(ENV, "saturates")
    out = tmp_path / "dyn.onnx"
    quantize(SAMPLE_MODELS / "transformer_digits.onnx", out, None, QuantizeRecipe(dynamic=True, reduce_range=True))
    stored = [numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer if t.name.endswith("_W_quantized")]
    assert stored and all(w.dtype == np.int8 and np.abs(w.astype(np.int16)).max() == 64 for w in stored)
    for extra in (["--weight-only", "int4"], ["--weight-type", "int4"]):
        calib = str(SAMPLE_MODELS / "calib.npz")
        out = str(tmp_path / "x.onnx")
        code = main(["quantize", str(RESNET), "-o", out, "--calib", calib, "--reduce-range", *extra])
        err = capsys.readouterr().err
        assert code == 2 and "error: --reduce-range" in err and "hint: drop --reduce-range" in err
