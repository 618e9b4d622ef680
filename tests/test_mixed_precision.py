"""Mixed precision to a target SQNR: the activation where 8 bits break goes to 16 bits, and only what the target
needs. The model has one hidden tensor whose one outlier channel (100x the others, read by nothing) sets its
8-bit scale, so the channels that matter round to about one step; the SQNRs are measured here in ORT against
the float model on held-out inputs, not read from the pass."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.cli import main
from onnxq.errors import ConfigError
from onnxq.quantize.driver import quantize
from onnxq.quantize.recipe import QuantizeRecipe

D, HIDDEN = 16, 32


def outlier_mlp() -> onnx.ModelProto:
    """x -> Gemm(W1, b1) -> h (channel 0 carries 100x the others) -> Gemm(W2, b2) -> y, and W2 does not read
    channel 0 (its row is 0): channel 0 alone sets h's range and nothing of y depends on it."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(D, HIDDEN)).astype(np.float32)
    w1[:, 0] *= 100
    w2 = rng.normal(size=(HIDDEN, D)).astype(np.float32)
    w2[0] = 0.0
    b1, b2 = rng.normal(size=HIDDEN).astype(np.float32), rng.normal(size=D).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")]  # fmt: skip
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], name="fc2")]  # fmt: skip
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", D])], inits)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def sqnr(float_path, quant_path, x) -> float:
    ref = ort.InferenceSession(str(float_path)).run(None, {"x": x})[0].astype(np.float64)
    got = ort.InferenceSession(str(quant_path)).run(None, {"x": x})[0].astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2)))


@pytest.fixture()
def setup(tmp_path):
    src = tmp_path / "mlp.onnx"
    onnx.save(outlier_mlp(), src)
    rng = np.random.default_rng(1)
    calib, held_out = (rng.normal(size=(n, D)).astype(np.float32) for n in (64, 256))
    return src, {"x": calib}, held_out, tmp_path


def activation_types(path) -> dict[str, int]:
    """Quantized activation tensor -> the element type of its QuantizeLinear's zero point."""
    model = onnx.load(str(path))
    zps = {t.name: t.data_type for t in model.graph.initializer}
    return {n.input[0]: zps[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_the_tensor_where_8_bits_break_goes_to_16_bits_and_the_target_is_met(setup):
    src, calib, held_out, tmp = setup
    plain = quantize(src, tmp / "int8.onnx", calib, QuantizeRecipe(per_channel=True))
    base = sqnr(src, tmp / "int8.onnx", held_out)
    assert base < 30, base  # the outlier channel ruins h's 8-bit grid
    summary = quantize(src, tmp / "mixed.onnx", calib, QuantizeRecipe(target_sqnr=30))
    entry = next(e for e in summary.passes if e["pass"] == "mixed-precision")
    assert entry["target_met"] and entry["raised_tensors"] == ["h"]  # h alone, nothing the target does not need
    assert sqnr(src, tmp / "mixed.onnx", held_out) >= 28  # held out: within 2 dB of the calibration-sample score
    types = activation_types(tmp / "mixed.onnx")
    assert types["h"] == TensorProto.UINT16 and types["x"] == TensorProto.UINT8
    model = onnx.load(str(tmp / "mixed.onnx"))
    int32_inits = {t.name for t in model.graph.initializer if t.data_type == TensorProto.INT32}
    int32 = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int32_inits}
    fc1, fc2 = (next(n for n in model.graph.node if n.name == name) for name in ("fc1", "fc2"))
    assert fc1.input[2] in int32 and fc2.input[2] == "b2"  # fc2 reads 16-bit h: its bias stays float
    assert fc2.input[1] == "w2"  # and its weight: ORT would run DQ(int8) -> MatMul as MatMulNBits on int8 inputs
    assert plain.warnings == summary.warnings == []


def test_a_target_the_8bit_model_meets_changes_nothing(setup):
    src, calib, _, tmp = setup
    quantize(src, tmp / "int8.onnx", calib, QuantizeRecipe())
    summary = quantize(src, tmp / "mixed.onnx", calib, QuantizeRecipe(target_sqnr=5))
    entry = next(e for e in summary.passes if e["pass"] == "mixed-precision")
    assert entry["target_met"] and entry["raised_tensors"] == [] and entry["evaluations"] == 1
    a, b = onnx.load(str(tmp / "int8.onnx")), onnx.load(str(tmp / "mixed.onnx"))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    assert set(activation_types(tmp / "mixed.onnx").values()) == {TensorProto.UINT8}


def test_an_unreachable_target_warns_and_keeps_the_best_model(setup):
    src, calib, held_out, tmp = setup
    summary = quantize(src, tmp / "mixed.onnx", calib, QuantizeRecipe(target_sqnr=150))
    entry = next(e for e in summary.passes if e["pass"] == "mixed-precision")
    assert not entry["target_met"] and entry["sqnr_db"] < 150
    assert any(w.startswith("--target-sqnr 150 dB not reached") for w in summary.warnings)
    assert entry["raised_tensors"][0] == "h" and sqnr(src, tmp / "mixed.onnx", held_out) > 28  # the best found


def test_the_cli_flag_and_its_contradictions(setup, capsys):
    src, calib, _, tmp = setup
    np.savez(tmp / "calib.npz", **calib)
    out = tmp / "cli.onnx"
    assert main(["quantize", str(src), "-o", str(out), "--calib", str(tmp / "calib.npz"), "--target-sqnr", "30",
                 "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert next(e for e in report["passes"] if e["pass"] == "mixed-precision")["raised_tensors"] == ["h"]
    for extra in (["--dynamic"], ["--activation-type", "uint16"], ["--target", "tensorrt"]):
        code = main(["quantize", str(src), "-o", str(tmp / "bad.onnx"), "--calib", str(tmp / "calib.npz"),
                     "--target-sqnr", "40", *extra])  # fmt: skip
        err = capsys.readouterr().err.splitlines()
        assert code == 2 and err[0].startswith("error: ") and err[1].startswith("hint: "), (extra, err)
        assert not (tmp / "bad.onnx").exists()


def test_the_recipe_round_trips_and_refuses_two_targets():
    recipe = QuantizeRecipe(target_sqnr=32)
    again = QuantizeRecipe.from_dict(recipe.to_dict())
    assert again == recipe and again.passes == ("mixed-precision",)
    with pytest.raises(ConfigError, match="contradicts"):
        QuantizeRecipe.from_dict({"target_sqnr": 30, "mixed_precision": {"target_sqnr_db": 40}})
    chosen = QuantizeRecipe.from_dict({"passes": ["mixed-precision"]})  # by its name: the default target
    assert chosen.pass_options["mixed-precision"].target_sqnr_db == 30.0 and chosen.target_sqnr is None
    with pytest.raises(ConfigError, match="between 0 and 200"):
        QuantizeRecipe.from_dict({"passes": ["mixed-precision"], "mixed_precision": {"target_sqnr_db": 500}})
