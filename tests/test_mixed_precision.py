"""Mixed precision to a target SQNR: the node reading the activation where 8 bits break is left float (or the
activation goes to 16 bits), and only what the target needs. The model has one hidden tensor whose one
outlier channel (100x the others, read by nothing) sets its 8-bit scale, so the channels that matter round to
about one step; the SQNRs are measured here in ORT (or onnx.reference) against the float model on held-out
inputs, not read from the pass."""

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


def outlier_mlp(factors: tuple[float, ...] = (100.0,)) -> onnx.ModelProto:
    """x -> Gemm(W1, b1) -> h (channel 0 carries 100x the others) -> Gemm(W2, b2) -> y, and W2 does not read
    channel 0 (its row is 0): channel 0 alone sets h's range and nothing of y depends on it. With more
    ``factors``, more such layers: h, h2, h3... each with its own outlier channel."""
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for k, factor in enumerate(factors):
        h = "h" if k == 0 else f"h{k + 1}"
        w = rng.normal(size=(D if k == 0 else HIDDEN, HIDDEN)).astype(np.float32) / (1 if k == 0 else 5)
        w[:, 0] *= factor
        if k:
            w[0] = 0.0  # the previous outlier channel is read by nothing
        inits += [numpy_helper.from_array(w, f"w{k + 1}"),
                  numpy_helper.from_array(rng.normal(size=HIDDEN).astype(np.float32), f"b{k + 1}")]  # fmt: skip
        nodes.append(helper.make_node("Gemm", [x, f"w{k + 1}", f"b{k + 1}"], [h], name=f"fc{k + 1}"))
        x = h
    n = len(factors) + 1
    w_out = rng.normal(size=(HIDDEN, D)).astype(np.float32)
    w_out[0] = 0.0
    inits += [numpy_helper.from_array(w_out, f"w{n}"),
              numpy_helper.from_array(rng.normal(size=D).astype(np.float32), f"b{n}")]  # fmt: skip
    nodes.append(helper.make_node("Gemm", [x, f"w{n}", f"b{n}"], ["y"], name=f"fc{n}"))
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


def test_the_node_reading_the_broken_tensor_is_left_float_and_the_target_is_met(setup):
    src, calib, held_out, tmp = setup
    plain = quantize(src, tmp / "int8.onnx", calib, QuantizeRecipe(per_channel=True))
    base = sqnr(src, tmp / "int8.onnx", held_out)
    assert base < 30, base  # the outlier channel ruins h's 8-bit grid
    summary = quantize(src, tmp / "mixed.onnx", calib, QuantizeRecipe(target_sqnr=30))
    entry = next(e for e in summary.passes if e["pass"] == "mixed-precision")
    assert entry["target_met"] and entry["raised"] == ["fc2"]  # fc2 alone: nothing the target does not need
    assert sqnr(src, tmp / "mixed.onnx", held_out) >= 30  # held out, in a default ORT session
    model = onnx.load(str(tmp / "mixed.onnx"))
    fc1, fc2 = (next(n for n in model.graph.node if n.name == name) for name in ("fc1", "fc2"))
    assert fc2.input[:] == ["h", "w2", "b2"]  # float: its input, weight and bias
    assert all(i.endswith("_dq") for i in fc1.input[:2]) and "h" not in activation_types(tmp / "mixed.onnx")
    assert plain.warnings == summary.warnings == []
    assert plain.nodes_quantized - summary.nodes_quantized == 1  # the summary counts what the model holds
    assert summary.skipped["fc2"] == "left float by mixed precision (--target-sqnr)"


def test_int16_raises_the_activation_and_the_graph_computes_it(setup):
    from onnx.reference import ReferenceEvaluator

    src, calib, held_out, tmp = setup
    recipe = QuantizeRecipe(target_sqnr=30, pass_options={"mixed-precision": {"raise_to": "int16"}})
    summary = quantize(src, tmp / "a16.onnx", calib, recipe)
    entry = next(e for e in summary.passes if e["pass"] == "mixed-precision")
    assert entry["target_met"] and entry["raised"] == ["h"] and entry["raise_to"] == "int16"
    types = activation_types(tmp / "a16.onnx")
    assert types["h"] == TensorProto.UINT16 and types["x"] == TensorProto.UINT8
    fc2 = next(n for n in onnx.load(str(tmp / "a16.onnx")).graph.node if n.name == "fc2")
    assert fc2.input[1:] == ["w2", "b2"]  # a MatMul/Gemm behind a 16-bit input keeps its float weight
    ref = ReferenceEvaluator(str(src)).run(None, {"x": held_out})[0].astype(np.float64)
    got = ReferenceEvaluator(str(tmp / "a16.onnx")).run(None, {"x": held_out})[0].astype(np.float64)
    assert 10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2)) >= 30  # what the QDQ graph means


def test_a_target_the_8bit_model_meets_changes_nothing(setup):
    src, calib, _, tmp = setup
    quantize(src, tmp / "int8.onnx", calib, QuantizeRecipe())
    summary = quantize(src, tmp / "mixed.onnx", calib, QuantizeRecipe(target_sqnr=5))
    entry = next(e for e in summary.passes if e["pass"] == "mixed-precision")
    assert entry["target_met"] and entry["raised"] == [] and entry["evaluations"] == 1
    a, b = onnx.load(str(tmp / "int8.onnx")), onnx.load(str(tmp / "mixed.onnx"))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    assert set(activation_types(tmp / "mixed.onnx").values()) == {TensorProto.UINT8}


def test_an_unreachable_target_warns_and_keeps_the_best_model(setup):
    src, calib, held_out, tmp = setup
    # every node float would meet any target: 4 evaluations (8-bit, each node alone, one step) cannot
    recipe = QuantizeRecipe(target_sqnr=150, pass_options={"mixed-precision": {"max_evaluations": 4}})
    summary = quantize(src, tmp / "mixed.onnx", calib, recipe)
    entry = next(e for e in summary.passes if e["pass"] == "mixed-precision")
    assert not entry["target_met"] and entry["sqnr_db"] < 150 and entry["evaluations"] == 4
    assert any(w.startswith("--target-sqnr 150 dB not reached") for w in summary.warnings)
    assert entry["raised"][0] == "fc2" and sqnr(src, tmp / "mixed.onnx", held_out) > 30  # the best found


def test_the_cli_flag_and_its_contradictions(setup, capsys):
    src, calib, _, tmp = setup
    np.savez(tmp / "calib.npz", **calib)
    out = tmp / "cli.onnx"
    assert main(["quantize", str(src), "-o", str(out), "--calib", str(tmp / "calib.npz"), "--target-sqnr", "30",
                 "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    (tmp / "a16.json").write_text(json.dumps({"mixed_precision": {"raise_to": "int16"}}))
    assert next(e for e in report["passes"] if e["pass"] == "mixed-precision")["raised"] == ["fc2"]
    for extra in (["--dynamic"], ["--recipe", str(tmp / "a16.json"), "--activation-type", "uint16"],
                  ["--recipe", str(tmp / "a16.json"), "--target", "tensorrt"]):  # fmt: skip
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


def test_two_broken_tensors_are_raised_one_after_the_other(tmp_path):
    # h's outlier is 100x (8 bits hopeless), h2's 12x (8 bits costly): fc3 (reading h2) gains nothing alone
    # while h is broken, and is still raised once fc2 (reading h) is float
    src = tmp_path / "mlp2.onnx"
    onnx.save(outlier_mlp((100.0, 12.0)), src)
    rng = np.random.default_rng(1)
    calib, held_out = (rng.normal(size=(n, D)).astype(np.float32) for n in (64, 256))
    summary = quantize(src, tmp_path / "m.onnx", {"x": calib}, QuantizeRecipe(target_sqnr=30))
    entry = next(e for e in summary.passes if e["pass"] == "mixed-precision")
    assert entry["target_met"] and entry["raised"] == ["fc2", "fc3"], entry
    first, second = entry["steps"]["fc2"], entry["steps"]["fc3"]
    assert first["sqnr_db_after"] < 30 <= second["sqnr_db_after"] and second["sqnr_db_alone"] < first["sqnr_db_alone"]
    assert sqnr(src, tmp_path / "m.onnx", held_out) >= 30


@pytest.mark.parametrize("with_both", [12.0, 20.05])  # worse; or better by less than min_gain_db (0.1)
def test_a_step_that_makes_it_worse_is_dropped(setup, monkeypatch, with_both):
    # the search alone, on scripted scores: raising h helps (20 dB), raising x with it hurts or gains noise
    from onnxq.passes import mixed_precision

    scores = {frozenset(): 10.0, frozenset({"h"}): 20.0, frozenset({"x"}): 15.0, frozenset({"h", "x"}): with_both}

    def scripted(self, model):
        self.evaluations += 1
        wide = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"
                and onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == n.input[2])).dtype
                == np.uint16}  # fmt: skip
        return scores[frozenset(wide)]

    monkeypatch.setattr(mixed_precision._Scorer, "__call__", scripted)
    src, calib, _, tmp = setup
    recipe = QuantizeRecipe(target_sqnr=30, pass_options={"mixed-precision": {"raise_to": "int16"}})
    summary = quantize(src, tmp / "m.onnx", calib, recipe)
    entry = next(e for e in summary.passes if e["pass"] == "mixed-precision")
    assert entry["raised"] == ["h"] and entry["sqnr_db"] == 20.0 and entry["tried_and_dropped"] == 1
    assert entry["evaluations"] == 1 + 2 + 2 and not entry["target_met"]
    assert set(activation_types(tmp / "m.onnx").values()) == {TensorProto.UINT8, TensorProto.UINT16}
    assert activation_types(tmp / "m.onnx")["x"] == TensorProto.UINT8  # the model written is the best one


def test_the_target_is_measured_on_the_data_given(setup, tmp_path):
    src, calib, held_out, tmp = setup
    np.savez(tmp / "held.npz", x=held_out)
    recipe = QuantizeRecipe(target_sqnr=30, target_data=str(tmp / "held.npz"))
    summary = quantize(src, tmp / "m.onnx", calib, recipe)
    entry = next(e for e in summary.passes if e["pass"] == "mixed-precision")
    assert entry["measured_on"] == f"32 samples of {tmp / 'held.npz'}" and entry["raised"] == ["fc2"]
    assert QuantizeRecipe.from_dict(recipe.to_dict()) == recipe
    with pytest.raises(ConfigError, match="--target-data is the data --target-sqnr is measured on"):
        QuantizeRecipe(target_data=str(tmp / "held.npz"))


def test_16_bit_activations_into_gemm_warn_about_ort_cpu(setup):
    src, calib, _, tmp = setup
    summary = quantize(src, tmp / "a16.onnx", calib, QuantizeRecipe(activation_type="uint16"))
    assert any(w.startswith("uint16 activations into MatMul/Gemm: ORT's CPU EP") for w in summary.warnings)
    plain = quantize(src, tmp / "a8.onnx", calib, QuantizeRecipe())
    assert not any("MatMulNBits" in w for w in plain.warnings)
