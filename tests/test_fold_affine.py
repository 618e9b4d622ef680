"""Per-channel Mul and Add after a Conv (a Caffe Scale layer, BatchNorm spelled out) folded by prepare.

The model is the trained resnet_digits sample with a ``* c + d`` (or ``+ d`` then ``* c``) of random
per-channel constants written after every Conv, as a Caffe export writes BatchNorm: prepare must leave no
such Mul/Add, keep the float outputs on real inputs (to float32 rounding of one product and one sum per
weight), and the quantized model must then quantize every Conv with nothing float between them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxq.passes.prepare import PrepareConfig, prepare_model
from onnxq.quantize.pipeline import BNStats, QuantizeContext

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
FLOAT_TOLERANCE = 1e-5  # relative to the output's range: one float32 rounding per folded product and sum


def _caffe_style(order: str, seed: int = 0) -> onnx.ModelProto:
    """resnet_digits with ``Mul(c)`` and ``Add(d)`` (in ``order``) after every Conv, c and d per channel."""
    model = onnx.load(SAMPLES / "resnet_digits.onnx")
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        nodes.append(node)
        if node.op_type != "Conv":
            continue
        channels = inits[node.input[1]].dims[0]
        out = node.output[0]
        node.output[0] = f"{out}_conv"
        sign = rng.choice([-1.0, 1.0], (1, channels, 1, 1))
        c = (rng.uniform(0.5, 2.0, (1, channels, 1, 1)) * sign).astype(np.float32)
        d = rng.normal(0, 0.3, (channels, 1, 1)).astype(np.float32)
        model.graph.initializer.extend([numpy_helper.from_array(c, f"{out}_c"), numpy_helper.from_array(d, f"{out}_d")])
        mul, add = ("Mul", f"{out}_c"), ("Add", f"{out}_d")
        first, second = (mul, add) if order == "mul-add" else (add, mul)
        nodes.append(helper.make_node(first[0], [f"{out}_conv", first[1]], [f"{out}_mid"], name=f"{out}_{first[0]}"))
        nodes.append(helper.make_node(second[0], [f"{out}_mid", second[1]], [out], name=f"{out}_{second[0]}"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no fusion of ORT's own
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {"input": x})[0]


def _images() -> np.ndarray:
    with np.load(SAMPLES / "test.npz") as d:
        return d["input"][:200]


@pytest.mark.parametrize("order", ["mul-add", "add-mul"])
def test_prepare_folds_a_spelled_out_scale_layer_and_keeps_the_float_function(order):
    model = _caffe_style(order)
    convs = Counter(n.op_type for n in model.graph.node)["Conv"]
    result = prepare_model(model)
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert result.details["scale_muls_folded"] == convs and result.details["bias_adds_folded"] >= convs
    residual_adds = Counter(n.op_type for n in onnx.load(SAMPLES / "resnet_digits.onnx").graph.node)["Add"]
    assert ops["Mul"] == 0 and ops["Add"] == residual_adds  # only the residual Adds of two activations stay
    x = _images()
    ref, got = _run(model, x), _run(result.model, x)
    assert np.abs(got - ref).max() <= FLOAT_TOLERANCE * np.abs(ref).max()


def test_quantized_caffe_style_model_has_every_conv_quantized_and_no_float_affine_op(tmp_path):
    from onnxq.quantize.driver import quantize

    src = tmp_path / "caffe.onnx"
    onnx.save(_caffe_style("mul-add"), src)
    summary = quantize(src, tmp_path / "q.onnx", str(SAMPLES / "calib.npz"))
    q = onnx.load(tmp_path / "q.onnx")
    assert summary.op_counts["Conv"] == 6 and not any(n.op_type == "Mul" for n in q.graph.node)


def _conv_mul_model(c: np.ndarray, *, second_reader: bool = False, shared_weight: bool = False,
                    output_too: bool = False) -> onnx.ModelProto:  # fmt: skip
    w = np.random.default_rng(1).normal(size=(4, 3, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(c, "c")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["y", "c"], ["z"], name="mul")]  # fmt: skip
    outputs = [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)]
    if second_reader:
        nodes.append(helper.make_node("Relu", ["y"], ["r"], name="relu"))
        outputs.append(helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, None))
    if output_too:  # the Conv's own output is a graph output as well
        outputs.append(helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None))
    if shared_weight:
        nodes.append(helper.make_node("Conv", ["x", "w"], ["y2"], name="conv2", pads=[1, 1, 1, 1]))
        outputs.append(helper.make_tensor_value_info("y2", onnx.TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              outputs, inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize(("c", "kw", "folded"), [
    (np.full((1, 4, 1, 1), 2.0, np.float32), {}, 1),
    (np.full((1, 1, 8, 8), 2.0, np.float32), {}, 0),  # varies over space, not per channel
    (np.full((1, 4, 1, 1), 2.0, np.float32), {"second_reader": True}, 0),  # the Relu reads the unscaled output
    (np.full((1, 4, 1, 1), 2.0, np.float32), {"shared_weight": True}, 1),  # conv2 keeps the unscaled weight
    (np.full((1, 4, 1, 1), 2.0, np.float32), {"output_too": True}, 0),  # the graph output is the unscaled one
    (np.full((1, 4, 1, 1), np.inf, np.float32), {}, 0),
])  # fmt: skip
def test_only_a_per_channel_mul_that_nothing_else_sees_is_folded(c, kw, folded):
    model = _conv_mul_model(c, **kw)
    result = prepare_model(model, PrepareConfig(fold_constants=False))
    assert result.details["scale_muls_folded"] == folded
    x = np.random.default_rng(2).normal(size=(1, 3, 8, 8)).astype(np.float32)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    before = ort.InferenceSession(model.SerializeToString(), so).run(None, {"x": x})
    after = ort.InferenceSession(result.model.SerializeToString(), so).run(None, {"x": x})
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * float(np.abs(a[np.isfinite(a)]).max(initial=1)))


def test_batchnorm_statistics_follow_a_folded_scale_and_shift():
    """Conv -> BatchNorm -> Mul(c) -> Add(d): the pre-activation's mean becomes beta * c + d, its std |gamma * c|."""
    rng = np.random.default_rng(3)
    model = _conv_mul_model(rng.uniform(-2, 2, (1, 4, 1, 1)).astype(np.float32))
    g = model.graph
    gamma, beta = rng.uniform(0.5, 1.5, 4).astype(np.float32), rng.normal(size=4).astype(np.float32)
    d = rng.normal(size=(4, 1, 1)).astype(np.float32)
    params = {"gamma": gamma, "beta": beta, "mean": np.zeros(4, np.float32), "var": np.ones(4, np.float32), "d": d}
    g.initializer.extend(numpy_helper.from_array(v, n) for n, v in params.items())
    g.node.insert(1, helper.make_node("BatchNormalization", ["y", "gamma", "beta", "mean", "var"], ["bn"], name="bn"))
    g.node[2].input[0] = "bn"
    g.node.append(helper.make_node("Add", ["z", "d"], ["out"], name="add"))
    g.output[0].name = "out"
    ctx = QuantizeContext()
    result = prepare_model(model, PrepareConfig(fold_constants=False), ctx)
    c = numpy_helper.to_array(next(t for t in g.initializer if t.name == "c")).reshape(4)
    stats: BNStats = ctx.bn_stats["conv"]
    assert stats.output == "out" == result.model.graph.node[-1].output[0]
    np.testing.assert_allclose(stats.mean, beta * c + d.reshape(4), rtol=1e-6)
    np.testing.assert_allclose(stats.std, np.abs(gamma * c), rtol=1e-6)
