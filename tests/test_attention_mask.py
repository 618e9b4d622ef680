"""Additive attention masks (float32's lowest value at padded positions) stay out of the activation ranges."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxq.data import open_dataset
from onnxq.quantize.calibrate import MASK_SENTINEL, collect_ranges
from onnxq.quantize.driver import quantize
from onnxq.quantize.recipe import QuantizeRecipe

LOWEST = np.finfo(np.float32).min


def _masked_attention(mask: str = "mask") -> onnx.ModelProto:
    """scores = (x W) x^T + (1 - mask) * lowest; y = Softmax(scores) x: what BERT-style exports compute. An
    input named ``mask`` is read as the attention mask (its padded positions are left out of the statistics
    before any sentinel is seen); another name leaves the sentinels to the sentinel rule alone."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["q"], name="proj"),
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1], name="t"),
        helper.make_node("MatMul", ["q", "xt"], ["scores"], name="qk"),
        helper.make_node("Cast", [mask], ["maskf"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Sub", ["one", "maskf"], ["inv"], name="inv"),
        helper.make_node("Mul", ["inv", "lowest"], ["bias"], name="bias"),
        helper.make_node("Unsqueeze", ["bias", "axis1"], ["bias3"], name="unsq"),
        helper.make_node("Add", ["scores", "bias3"], ["masked"], name="add_mask"),
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["p", "x"], ["y"], name="pv"),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32) * 0.5, "w"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(LOWEST, np.float32), "lowest"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]  # fmt: skip
    graph = helper.make_graph(
        nodes, "attn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 8]),
         helper.make_tensor_value_info(mask, TensorProto.INT64, ["N", "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 8])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _padded(n=32, t=10, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, t, 8)).astype(np.float32)
    lengths = rng.integers(3, t + 1, n)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int64)
    return (x * mask[..., None]).astype(np.float32), mask


def test_mask_sentinels_are_left_out_of_the_ranges_and_reported():
    model = _masked_attention("valid")  # not named as a mask: the sentinels reach the observers
    x, mask = _padded()
    ranges = collect_ranges(model, open_dataset({"x": x, "valid": mask}, model), ["masked", "scores"], "minmax")
    assert ranges.masked == ["masked"] and ranges.padding == ""
    lo, hi = ranges["masked"]
    assert lo == ranges["scores"][0] and hi == ranges["scores"][1]  # exactly the unmasked scores' range
    assert lo > MASK_SENTINEL


def test_padded_batches_with_a_mask_quantize_close_to_float(tmp_path):
    src = tmp_path / "attn.onnx"
    onnx.save(_masked_attention(), src)
    x, mask = _padded()
    summary = quantize(src, tmp_path / "q.onnx", {"x": x, "mask": mask}, QuantizeRecipe())
    calibrate = next(e for e in summary.passes if e["pass"] == "calibrate")
    n_pad = int(mask.size - mask.sum())
    assert calibrate["padding_left_out"].startswith(f"{n_pad} of {mask.size} positions are padding")
    assert "mask_sentinels_left_out" not in calibrate  # the padded key columns went with the padding
    xt, mt = _padded(8, seed=2)
    ref = ort.InferenceSession(str(src)).run(None, {"x": xt, "mask": mt})[0]
    got = ort.InferenceSession(str(tmp_path / "q.onnx")).run(None, {"x": xt, "mask": mt})[0]
    valid = mt.astype(bool)
    sqnr = 10 * np.log10(np.square(ref[valid]).sum() / np.square(ref[valid] - got[valid]).sum())
    assert sqnr > 20, sqnr  # with the sentinel in the range, the scores' scale is ~1e36 and every score rounds to 0
