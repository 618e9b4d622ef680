"""Presets: the transformer preset (SmoothQuant) is taken by a model with attention blocks unless told otherwise,
and a classifier's Softmax over a constant-weight MatMul is not an attention block."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLE_MODELS
from onnxq.cli import main
from onnxq.errors import ConfigError
from onnxq.quantize.driver import quantize
from onnxq.quantize.presets import apply_preset, attention_blocks
from onnxq.quantize.recipe import QuantizeRecipe

CALIB = SAMPLE_MODELS / "calib.npz"


def classifier_head() -> onnx.ModelProto:
    """x W -> Softmax: a MatMul with a constant weight before a Softmax is a classifier, not attention."""
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Softmax", ["z"], ["p"])]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 3])], [w])  # fmt: skip
    return helper.make_model(graph)


def test_attention_blocks_are_counted_from_the_graph():
    assert attention_blocks(onnx.load(SAMPLE_MODELS / "transformer_digits.onnx")) == 2  # its two layers
    assert attention_blocks(onnx.load(SAMPLE_MODELS / "resnet_digits.onnx")) == 0
    assert attention_blocks(classifier_head()) == 0


def test_auto_takes_the_transformer_preset_only_for_attention_models():
    transformer = onnx.load(SAMPLE_MODELS / "transformer_digits.onnx")
    chosen, line = apply_preset(transformer, QuantizeRecipe())
    assert chosen.passes == ("smoothquant",) and line == "transformer (auto: 2 attention block(s)): smoothquant added"
    cnn = onnx.load(SAMPLE_MODELS / "resnet_digits.onnx")
    assert apply_preset(cnn, QuantizeRecipe()) == (QuantizeRecipe(), "")
    assert apply_preset(transformer, QuantizeRecipe(preset="none")) == (QuantizeRecipe(preset="none"), "")
    assert apply_preset(transformer, QuantizeRecipe(dynamic=True))[0].passes == ()  # dynamic: no calibration
    assert apply_preset(transformer, QuantizeRecipe(), has_data=False)[0].passes == ()  # ranges from a cache alone
    named, line = apply_preset(cnn, QuantizeRecipe(preset="transformer"))
    assert named.passes == ("smoothquant",) and line.startswith("transformer (asked for)")
    again, line = apply_preset(transformer, QuantizeRecipe(passes=("smoothquant",)))
    assert again.passes == ("smoothquant",) and line.endswith("its passes were chosen already")


def test_the_preset_runs_and_is_reported(tmp_path, capsys):
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(SAMPLE_MODELS / "transformer_digits.onnx"), "-o", str(out), "--calib", str(CALIB),
                 "--no-progress"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "  preset: transformer (auto: 2 attention block(s)): smoothquant added" in text
    assert "pass smoothquant:" in text
    summary = quantize(SAMPLE_MODELS / "transformer_digits.onnx", tmp_path / "n.onnx", CALIB,
                       QuantizeRecipe(preset="none"))  # fmt: skip
    assert summary.preset == "" and "smoothquant" not in [e["pass"] for e in summary.passes]


def test_bad_presets_are_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown preset"):
        QuantizeRecipe(preset="bert")
    with pytest.raises(ConfigError, match="contradicts --dynamic"):
        apply_preset(
            onnx.load(SAMPLE_MODELS / "resnet_digits.onnx"), QuantizeRecipe(preset="transformer", dynamic=True)
        )
    code = main(["quantize", str(SAMPLE_MODELS / "mlp_digits.onnx"), "-o", str(tmp_path / "q.onnx"), "--dynamic",
                 "--preset", "transformer"])  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert (
        code == 2 and err[0].startswith("error: --preset transformer contradicts --dynamic") and err[1][:6] == "hint: "
    )
