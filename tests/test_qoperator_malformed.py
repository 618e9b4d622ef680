"""``onnxq convert`` on damaged QDQ models: a clean error or a checked model, never a traceback.

Each case takes onnxq's QDQ model of a sample model and damages one Q/DQ node the way a buggy exporter or a
hand edit would (scales zero, negative, NaN or huge, zero points dropped or of the wrong type, axes out of
range, per-channel scales on activations, names that point nowhere, DequantizeLinear outputs shared). The
command must exit 0 with an output ORT runs, or 2 with one ``error:`` and one ``hint:`` line and no output
file; the input is never modified.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxq.cli import main
from onnxq.quantize.driver import quantize
from onnxq.quantize.recipe import QuantizeRecipe

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def _init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _set(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    _init(model, name).CopyFrom(numpy_helper.from_array(array, name))


def _scale_value(value: float) -> Callable:
    def damage(model: onnx.ModelProto, node: onnx.NodeProto) -> None:
        scale = numpy_helper.to_array(_init(model, node.input[1]))
        _set(model, node.input[1], np.full_like(scale, value))

    return damage


def _negate_scale(model, node) -> None:
    _set(model, node.input[1], -numpy_helper.to_array(_init(model, node.input[1])))


def _drop_zero_point(model, node) -> None:
    del node.input[2:]


def _zero_point_int8(model, node) -> None:
    zp = numpy_helper.to_array(_init(model, node.input[2]))
    _set(model, node.input[2], zp.astype(np.int8) if zp.dtype == np.uint8 else zp.astype(np.uint8))


def _axis(value: int) -> Callable:
    def damage(model, node) -> None:
        node.attribute.append(helper.make_attribute("axis", value))

    return damage


def _per_channel_activation(model, node) -> None:
    scale = numpy_helper.to_array(_init(model, node.input[1]))
    if scale.size == 1:
        _set(model, node.input[1], np.full(4, float(scale), np.float32))
        _set(model, node.input[2], np.zeros(4, numpy_helper.to_array(_init(model, node.input[2])).dtype))


def _dangling_scale(model, node) -> None:
    node.input[1] = "no_such_scale"


def _scale_float16(model, node) -> None:
    _set(model, node.input[1], numpy_helper.to_array(_init(model, node.input[1])).astype(np.float16))


def _share_dequantize(model, node) -> None:
    """Make a second consumer read this DequantizeLinear's output (ORT's fusion refuses shared DQs)."""
    users = [n for n in model.graph.node if node.output[0] in n.input]
    others = [n for n in model.graph.node if n.op_type in ("Add", "Mul") and n not in users]
    if users and others:
        others[0].input[0] = node.output[0]


DAMAGES = {
    "scale 0": _scale_value(0.0), "scale NaN": _scale_value(float("nan")), "scale inf": _scale_value(float("inf")),
    "scale 1e30": _scale_value(1e30), "scale 1e-30": _scale_value(1e-30), "scale negative": _negate_scale,
    "zero point dropped": _drop_zero_point, "zero point other signedness": _zero_point_int8, "axis 7": _axis(7),
    "axis -1": _axis(-1), "per-channel activation": _per_channel_activation, "dangling scale": _dangling_scale,
    "scale float16": _scale_float16, "shared DQ": _share_dequantize,
}  # fmt: skip


@pytest.fixture(scope="module")
def qdq_models(tmp_path_factory) -> dict[str, bytes]:
    work = tmp_path_factory.mktemp("qdq")
    out = {}
    for name in ("resnet_digits", "transformer_digits"):
        quantize(SAMPLES / f"{name}.onnx", work / f"{name}.onnx", str(SAMPLES / "calib.npz"), QuantizeRecipe())
        out[name] = (work / f"{name}.onnx").read_bytes()
    return out


def _cases() -> list[tuple[str, str, str]]:
    # (model, damage, which Q/DQ node): the first DQ of an activation, of a weight, and the first Q
    return [(m, d, w) for m in ("resnet_digits", "transformer_digits") for d in DAMAGES for w in ("act", "weight", "q")]


def _target(model: onnx.ModelProto, which: str) -> onnx.NodeProto | None:
    inits = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if which == "q" and node.op_type == "QuantizeLinear" and len(node.input) == 3:
            return node
        if (
            node.op_type == "DequantizeLinear"
            and len(node.input) == 3
            and (node.input[0] in inits) == (which == "weight")
        ):
            return node
    return None


@pytest.mark.parametrize(("model_name", "damage", "which"), _cases())
def test_convert_on_a_damaged_qdq_model_is_a_checked_model_or_a_clean_error(
    qdq_models, tmp_path, capsys, model_name, damage, which
):
    model = onnx.ModelProto.FromString(qdq_models[model_name])
    node = _target(model, which)
    if node is None:
        pytest.skip(f"{model_name} has no {which} node with a zero point")
    DAMAGES[damage](model, node)
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    src.write_bytes(model.SerializeToString())
    before = src.read_bytes()
    code = main(["convert", str(src), "-o", str(out), "--data", str(SAMPLES / "test.npz"), "--samples", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert src.read_bytes() == before
    assert code in (0, 2), err
    if code == 2:
        assert err[0].startswith("error:") and err[1].startswith("hint:") and not out.exists(), err
        assert not any("Traceback" in line for line in err)
    else:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
