"""Contract tests of the prepare pass: the float function is kept, and each rewrite does what it says.

Models are compared in onnxruntime on CPU with its graph optimizations disabled, so that what is
compared is our rewrite and not onnxruntime's own fusions.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq.passes.prepare as prepare_module
from onnxq.errors import ConfigError, PassError
from onnxq.passes.prepare import PrepareConfig, prepare_model
from onnxq.quantize.pipeline import QuantizeContext

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "models"
SAMPLE_MODELS = REPO / "sample_models"
SQUEEZENET = SHARED_MODELS / "squeezenet1.1"
PPOCR = SHARED_MODELS / "ppocr_mobile_v2_cls"

# Prepare only re-associates float32 arithmetic (BN folding adds one rounding per weight and bias), so
# outputs move by a few float32 ulps (~1e-7 relative); 1e-5 is the pass's contract and leaves headroom,
# while any real mistake (a wrong channel axis, a missing bias term) gives errors of 1e-2 or more.
RTOL = 1e-5


def rel_err(reference: np.ndarray, actual: np.ndarray) -> float:
    """max|reference - actual| / max|reference| (reference outputs here are never all zero)."""
    assert reference.shape == actual.shape
    ref = reference.astype(np.float64)
    return float(np.max(np.abs(ref - actual)) / np.max(np.abs(ref)))


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1  # the test machine is shared; keep to one core
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def assert_same_outputs(
    before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict[str, np.ndarray]
) -> None:
    ref, got = run(before, feeds), run(after, feeds)
    assert list(ref) == list(got), "output names must not change"
    for name in ref:
        err = rel_err(ref[name], got[name])
        assert err <= RTOL, f"output {name!r}: relative error {err:.3g} > {RTOL}"


def op_counts(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def load_or_skip(path: Path) -> onnx.ModelProto:
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return onnx.load(str(path))


# --- real models ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def squeezenet() -> tuple[onnx.ModelProto, onnx.ModelProto, dict]:
    model = load_or_skip(SQUEEZENET / "model.onnx")
    raw = model.SerializeToString()
    result = prepare_model(model)
    assert model.SerializeToString() == raw, "prepare mutated its input model"
    return model, result.model, result.details


@pytest.fixture(scope="module")
def ppocr() -> tuple[onnx.ModelProto, onnx.ModelProto, dict, QuantizeContext]:
    model = load_or_skip(PPOCR / "model.onnx")
    raw = model.SerializeToString()
    ctx = QuantizeContext()
    result = prepare_model(model, PrepareConfig(), ctx)
    assert model.SerializeToString() == raw, "prepare mutated its input model"
    return model, result.model, result.details, ctx


def test_squeezenet_outputs_kept_on_real_images_one_at_a_time(squeezenet):
    before, after, _ = squeezenet
    images = np.load(SQUEEZENET / "real_inputs" / "inputs.npy", allow_pickle=False)
    ref_sess, got_sess = session(before), session(after)
    for i in range(len(images)):
        feeds = {"data_0": images[i : i + 1]}  # the graph fixes the batch to 1
        ref = ref_sess.run(["softmaxout_1"], feeds)[0]
        got = got_sess.run(["softmaxout_1"], feeds)[0]
        assert rel_err(ref, got) <= RTOL, f"image {i}"


def test_squeezenet_is_upgraded_and_cleaned(squeezenet):
    before, after, details = squeezenet
    opset = next(imp.version for imp in after.opset_import if imp.domain in ("", "ai.onnx"))
    assert opset >= 13 and details["opset_from"] == 7 and details["opset_to"] == opset
    assert after.ir_version >= helper.find_min_ir_version_for(list(after.opset_import))
    # IR 3 listed all 52 weights as graph inputs; now the only input is the image.
    assert [vi.name for vi in after.graph.input] == ["data_0"]
    assert details["initializer_inputs_removed"] == len(before.graph.initializer)
    assert op_counts(before)["Dropout"] == 1 and details["dropout_removed"] == 1
    assert op_counts(after)["Dropout"] == 0 and op_counts(after)["Identity"] == 0
    assert [o.name for o in after.graph.output] == ["softmaxout_1"]
    names = [n.name for n in after.graph.node]
    assert all(names) and len(set(names)) == len(names), "every node has a unique name"


def test_ppocr_outputs_kept_on_real_crops(ppocr):
    before, after, _, _ = ppocr
    files = sorted((PPOCR / "real_inputs").glob("input_0*.npy"))
    assert files
    for path in files:
        assert_same_outputs(before, after, {"x": np.load(path, allow_pickle=False)})


def test_ppocr_batchnorms_folded_and_weights_are_initializers(ppocr):
    before, after, details, _ = ppocr
    bn_before = op_counts(before)["BatchNormalization"]
    assert bn_before > 0 and details["batchnorm_folded"] == bn_before
    assert op_counts(after)["BatchNormalization"] == 0
    assert (
        op_counts(after)["Constant"] == 0
        and details["constants_to_initializers"] == op_counts(before)["Constant"]
    )
    assert op_counts(after)["Identity"] == 0 and op_counts(after)["Dropout"] == 0
    inits = {t.name for t in after.graph.initializer}
    for node in after.graph.node:
        if node.op_type == "Conv":
            assert all(name in inits for name in node.input[1:]), f"{node.name}: weight or bias is computed"
    opset = next(imp.version for imp in after.opset_import if imp.domain in ("", "ai.onnx"))
    assert opset >= 13


def test_ppocr_bn_stats_are_beta_and_abs_gamma_of_the_folded_batchnorm(ppocr):
    before, after, _, ctx = ppocr
    constants = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for n in before.graph.node
        if n.op_type == "Constant"
    }
    bns = {n.output[0]: n for n in before.graph.node if n.op_type == "BatchNormalization"}
    stats = ctx.bn_stats
    assert len(stats) == len(bns)
    producers = {n.name: n for n in after.graph.node}
    for conv_name, entry in stats.items():
        assert producers[conv_name].op_type == "Conv"
        assert producers[conv_name].output[0] == entry.output
        assert len(producers[conv_name].input) == 3, "folding gives the Conv a bias"
        bn = bns[entry.output]  # the folded Conv now writes the BN's output tensor
        np.testing.assert_array_equal(entry.mean, constants[bn.input[2]].astype(np.float32))
        np.testing.assert_array_equal(entry.std, np.abs(constants[bn.input[1]]).astype(np.float32))


def test_ppocr_literal_minus_one_batch_becomes_symbolic(ppocr):
    before, after, details, _ = ppocr
    assert before.graph.input[0].type.tensor_type.shape.dim[0].dim_value == -1
    for vi in (after.graph.input[0], after.graph.output[0]):
        assert vi.type.tensor_type.shape.dim[0].dim_param == "N"
    assert details["batch_dims_fixed"] == 2
    kept = prepare_model(before, PrepareConfig(fix_batch_dim=False)).model
    assert kept.graph.input[0].type.tensor_type.shape.dim[0].dim_value == -1


def test_intermediate_tensors_have_element_types_after_prepare(ppocr):
    _, after, _, _ = ppocr
    typed = {vi.name for vi in after.graph.value_info if vi.type.tensor_type.elem_type}
    outputs = {o.name for o in after.graph.output}
    missing = [name for node in after.graph.node for name in node.output if name not in typed | outputs]
    assert missing == []


@pytest.mark.parametrize("name", ["squeezenet", "ppocr"])
def test_prepare_is_idempotent_on_real_models(name, request):
    _, after, _, *_ = request.getfixturevalue(name)
    again = prepare_model(after)
    assert again.modified is False
    assert again.model.SerializeToString() == after.SerializeToString()
    assert all(
        v == 0 for k, v in again.details.items() if k.endswith(("_removed", "_folded", "_named", "_dropped"))
    )


def test_target_opset_21_keeps_squeezenet_outputs(squeezenet):
    before, _, _ = squeezenet
    result = prepare_model(before, PrepareConfig(target_opset=21))
    assert [imp.version for imp in result.model.opset_import if imp.domain == ""] == [21]
    image = np.load(SQUEEZENET / "real_inputs" / "inputs.npy", allow_pickle=False)[:1]
    assert_same_outputs(before, result.model, {"data_0": image})


# --- sample models ----------------------------------------------------------------------------------


def sample_feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    test = SAMPLE_MODELS / "test.npz"
    if test.exists():
        with np.load(test, allow_pickle=False) as data:
            return {"input": data["input"][:100]}
    return {"input": np.random.default_rng(0).random((16, 1, 16, 16), dtype=np.float32)}


@pytest.mark.parametrize("name", ["resnet_digits", "mobilenetv2_digits", "transformer_digits", "mlp_digits"])
def test_sample_model_outputs_kept(name):
    model = load_or_skip(SAMPLE_MODELS / f"{name}.onnx")
    raw = model.SerializeToString()
    result = prepare_model(model)
    assert model.SerializeToString() == raw
    assert_same_outputs(model, result.model, sample_feeds(model))
    bn_before = op_counts(model)["BatchNormalization"]
    assert result.details["batchnorm_folded"] == bn_before  # every BN in these models follows a Conv
    assert op_counts(result.model)["BatchNormalization"] == 0
    assert op_counts(result.model)["Constant"] == 0
    assert prepare_model(result.model).modified is False


def test_mobilenetv2_has_batchnorms_to_fold():
    model = load_or_skip(SAMPLE_MODELS / "mobilenetv2_digits.onnx")
    convs = op_counts(model)["Conv"]
    assert op_counts(model)["BatchNormalization"] == convs  # each of its Convs is followed by a BN
    assert op_counts(prepare_model(model).model)["BatchNormalization"] == 0


# --- BatchNormalization folding on inline models ----------------------------------------------------


def bn_node_and_params(rng: np.random.Generator, channels: int, x: str, y: str) -> tuple:
    gamma = rng.uniform(0.5, 2.0, channels) * rng.choice([-1.0, 1.0], channels)  # negative gammas too
    params = {
        "bn_gamma": gamma,
        "bn_beta": rng.normal(0, 1, channels),
        "bn_mean": rng.normal(0, 1, channels),
        "bn_var": rng.uniform(0.05, 3.0, channels),
    }
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()]
    node = helper.make_node("BatchNormalization", [x, *params], [y], name="bn", epsilon=1e-3)
    return node, inits, params


def make_model(nodes, inputs, outputs, inits, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    # IR 8 is what opset 17 needs; helper's default (the newest IR) is newer than onnxruntime reads.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def float_input(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def check_folded(model: onnx.ModelProto, feeds: dict, params: dict, producer: str) -> None:
    ctx = QuantizeContext()
    result = prepare_model(model, ctx=ctx)
    assert op_counts(result.model)["BatchNormalization"] == 0
    assert result.details["batchnorm_folded"] == 1
    assert [o.name for o in result.model.graph.output] == ["y"]
    assert_same_outputs(model, result.model, feeds)
    entry = ctx.bn_stats[producer]
    assert entry.output == "y"
    np.testing.assert_array_equal(entry.mean, params["bn_beta"].astype(np.float32))
    np.testing.assert_array_equal(entry.std, np.abs(params["bn_gamma"].astype(np.float32)))


@pytest.mark.parametrize("group,with_bias", [(1, True), (1, False), (2, True), (6, False)])
def test_conv_batchnorm_folding_matches_onnxruntime(group, with_bias):
    rng = np.random.default_rng(group + 10 * with_bias)
    cin, cout = 6, 6
    weight = rng.normal(0, 0.5, (cout, cin // group, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w")]
    conv_inputs = ["x", "w"]
    if with_bias:
        inits.append(numpy_helper.from_array(rng.normal(0, 1, cout).astype(np.float32), "b"))
        conv_inputs.append("b")
    conv = helper.make_node("Conv", conv_inputs, ["c"], name="conv", group=group, pads=[1, 1, 1, 1])
    bn, bn_inits, params = bn_node_and_params(rng, cout, "c", "y")
    model = make_model(
        [conv, bn], [float_input("x", [2, cin, 7, 7])], [float_input("y", [2, cout, 7, 7])], inits + bn_inits
    )
    check_folded(model, {"x": rng.normal(0, 1, (2, cin, 7, 7)).astype(np.float32)}, params, "conv")


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_batchnorm_folding_matches_onnxruntime(group):
    rng = np.random.default_rng(100 + group)
    cin, cout = 4, 6
    weight = rng.normal(0, 0.5, (cin, cout // group, 3, 3)).astype(np.float32)  # [C_in, C_out/group, k, k]
    conv = helper.make_node("ConvTranspose", ["x", "w"], ["c"], name="deconv", group=group, strides=[2, 2])
    bn, bn_inits, params = bn_node_and_params(rng, cout, "c", "y")
    model = make_model(
        [conv, bn],
        [float_input("x", [2, cin, 5, 5])],
        [float_input("y", [2, cout, 11, 11])],
        [numpy_helper.from_array(weight, "w"), *bn_inits],
    )
    check_folded(model, {"x": rng.normal(0, 1, (2, cin, 5, 5)).astype(np.float32)}, params, "deconv")


@pytest.mark.parametrize("trans_b,c_shape", [(0, (3,)), (1, (3,)), (1, None), (0, (5, 1))])
def test_gemm_batchnorm_folding_matches_onnxruntime(trans_b, c_shape):
    rng = np.random.default_rng(200 + trans_b)
    m, k, n = 5, 7, 3
    weight = rng.normal(0, 0.5, (n, k) if trans_b else (k, n)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w")]
    gemm_inputs = ["a", "w"]
    if c_shape is not None:
        inits.append(numpy_helper.from_array(rng.normal(0, 1, c_shape).astype(np.float32), "c_bias"))
        gemm_inputs.append("c_bias")
    gemm = helper.make_node("Gemm", gemm_inputs, ["g"], name="gemm", transB=trans_b, alpha=0.7, beta=1.3)
    bn, bn_inits, params = bn_node_and_params(rng, n, "g", "y")
    model = make_model([gemm, bn], [float_input("a", [m, k])], [float_input("y", [m, n])], inits + bn_inits)
    check_folded(model, {"a": rng.normal(0, 1, (m, k)).astype(np.float32)}, params, "gemm")


def test_two_convs_sharing_a_weight_each_fold_their_own_batchnorm():
    rng = np.random.default_rng(7)
    weight = numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32), "w")
    nodes, inits = [], [weight]
    for i in range(2):
        nodes.append(helper.make_node("Conv", ["x", "w"], [f"c{i}"], name=f"conv{i}"))
        bn, bn_inits, _ = bn_node_and_params(rng, 4, f"c{i}", f"y{i}")
        bn.name = f"bn{i}"
        for t in bn_inits:
            t.name = f"{t.name}{i}"
        bn.input[1:] = [f"{name}{i}" for name in bn.input[1:]]
        nodes.append(bn)
        inits += bn_inits
    model = make_model(
        nodes,
        [float_input("x", [1, 3, 4, 4])],
        [float_input("y0", [1, 4, 4, 4]), float_input("y1", [1, 4, 4, 4])],
        inits,
    )
    result = prepare_model(model)
    assert result.details["batchnorm_folded"] == 2
    assert_same_outputs(model, result.model, {"x": rng.normal(0, 1, (1, 3, 4, 4)).astype(np.float32)})


def test_batchnorm_whose_input_has_another_reader_is_left():
    rng = np.random.default_rng(8)
    weight = numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="conv")
    bn, bn_inits, _ = bn_node_and_params(rng, 4, "c", "y")
    relu = helper.make_node("Relu", ["c"], ["r"], name="relu")  # a second reader of the Conv output
    model = make_model(
        [conv, bn, relu],
        [float_input("x", [1, 3, 4, 4])],
        [float_input("y", [1, 4, 4, 4]), float_input("r", [1, 4, 4, 4])],
        [weight, *bn_inits],
    )
    result = prepare_model(model)
    assert result.details["batchnorm_folded"] == 0 and result.details["batchnorm_left"] == 1
    assert "other readers" in result.details["batchnorm_left_reasons"]["bn"]
    assert op_counts(result.model)["BatchNormalization"] == 1
    assert_same_outputs(model, result.model, {"x": rng.normal(0, 1, (1, 3, 4, 4)).astype(np.float32)})


# --- Identity, Dropout, Constant --------------------------------------------------------------------


def test_identity_writing_a_graph_output_is_removed_and_the_name_kept():
    nodes = [
        helper.make_node("Identity", ["x"], ["x_copy"], name="id_in"),
        helper.make_node("Relu", ["x_copy"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["y"], name="id_out"),
        helper.make_node("Identity", ["x"], ["x_out"], name="id_passthrough"),  # input -> output: must stay
    ]
    model = make_model(
        nodes, [float_input("x", [2, 3])], [float_input("y", [2, 3]), float_input("x_out", [2, 3])], []
    )
    result = prepare_model(model)
    assert result.details["identity_removed"] == 2
    assert [n.name for n in result.model.graph.node if n.op_type == "Identity"] == ["id_passthrough"]
    relu = next(n for n in result.model.graph.node if n.op_type == "Relu")
    assert list(relu.input) == ["x"] and list(relu.output) == ["y"]
    assert_same_outputs(model, result.model, {"x": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)})


def test_dropout_is_removed_only_when_its_mask_is_unused():
    ratio = numpy_helper.from_array(np.array(0.3, dtype=np.float32), "ratio")
    unused_mask = helper.make_node("Dropout", ["x", "ratio"], ["d", "mask_unused"], name="drop1")
    used_mask = helper.make_node("Dropout", ["d", "ratio"], ["y", "mask"], name="drop2")
    cast = helper.make_node("Cast", ["mask"], ["mask_f"], name="cast", to=TensorProto.FLOAT)
    model = make_model(
        [unused_mask, used_mask, cast],
        [float_input("x", [2, 3])],
        [float_input("y", [2, 3]), float_input("mask_f", [2, 3])],
        [ratio],
    )
    result = prepare_model(model)
    assert result.details["dropout_removed"] == 1
    assert [n.name for n in result.model.graph.node if n.op_type == "Dropout"] == ["drop2"]
    assert result.model.graph.node[0].input[0] == "x"
    assert_same_outputs(model, result.model, {"x": np.arange(6, dtype=np.float32).reshape(2, 3) + 1})


def test_constant_nodes_of_every_numeric_kind_become_initializers():
    nodes = [
        helper.make_node("Constant", [], ["k_floats"], value_floats=[1.5, -2.0, 3.0]),
        helper.make_node("Constant", [], ["k_float"], value_float=0.5),
        helper.make_node("Constant", [], ["k_tensor"], value=numpy_helper.from_array(np.float32([[1], [2]]))),
        helper.make_node("Constant", [], ["k_ints"], value_ints=[3, 2]),
        helper.make_node("Add", ["x", "k_floats"], ["a"]),
        helper.make_node("Mul", ["a", "k_float"], ["m"]),
        helper.make_node("Sub", ["m", "k_tensor"], ["s"]),
        helper.make_node("Reshape", ["s", "k_ints"], ["y"]),
    ]
    model = make_model(nodes, [float_input("x", [2, 3])], [float_input("y", [3, 2])], [])
    result = prepare_model(model, PrepareConfig(fold_constants=False))
    assert op_counts(result.model)["Constant"] == 0
    assert result.details["constants_to_initializers"] == 4
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    np.testing.assert_array_equal(inits["k_ints"], np.array([3, 2], dtype=np.int64))
    assert inits["k_float"].dtype == np.float32 and inits["k_float"].shape == ()
    assert_same_outputs(model, result.model, {"x": np.arange(6, dtype=np.float32).reshape(2, 3)})


# --- errors, config, verify -------------------------------------------------------------------------


def scan8_model() -> onnx.ModelProto:
    """A valid opset-8 Scan with sequence_lens, which onnx.version_converter cannot take to opset 9."""
    state, x_t = float_input("s_in", [2]), float_input("x_t", [2])
    body = helper.make_graph(
        [
            helper.make_node("Add", ["s_in", "x_t"], ["s_out"]),
            helper.make_node("Identity", ["s_out"], ["y_t"]),
        ],
        "body",
        [state, x_t],
        [float_input("s_out", [2]), float_input("y_t", [2])],
    )
    scan = helper.make_node(
        "Scan", ["lens", "init", "xs"], ["final", "ys"], name="the_scan", body=body, num_scan_inputs=1
    )
    graph = helper.make_graph(
        [scan],
        "g",
        [float_input("init", [1, 2]), float_input("xs", [1, 3, 2])],
        [float_input("final", [1, 2]), float_input("ys", [1, 3, 2])],
        [numpy_helper.from_array(np.array([3], dtype=np.int64), "lens")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)], ir_version=4)
    onnx.checker.check_model(model)
    return model


def test_failed_opset_conversion_raises_pass_error_naming_the_op():
    model = scan8_model()
    session(model)  # the model itself is fine: onnxruntime loads it at opset 8
    raw = model.SerializeToString()
    with pytest.raises(PassError) as info:
        prepare_model(model)
    assert "Scan" in info.value.message and "the_scan" in info.value.message
    assert "opset 8 to 13" in info.value.message and info.value.hint
    assert model.SerializeToString() == raw


@pytest.mark.parametrize("bad", [3, 99, "13", 13.0])
def test_invalid_target_opset_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        PrepareConfig(target_opset=bad)


def conv_bn_model(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])
    bn, bn_inits, _ = bn_node_and_params(rng, 4, "c", "y")
    return make_model(
        [conv, bn],
        [float_input("x", ["N", 3, 6, 6])],
        [float_input("y", ["N", 4, 6, 6])],
        [weight, *bn_inits],
    )


def test_verify_reports_errors_within_tolerance_on_random_and_calibration_data():
    model = conv_bn_model()
    errors = prepare_model(model, PrepareConfig(verify=True)).details["verify_max_rel_error"]
    assert set(errors) == {"y"} and errors["y"] <= RTOL

    class OneBatch:  # what verify reads of a Dataset
        def batches(self, batch_size=None):
            yield {"x": np.full((3, 3, 6, 6), 0.25, dtype=np.float32)}

    ctx = QuantizeContext(calib=OneBatch(), verify=True)
    errors = prepare_model(model, PrepareConfig(), ctx).details["verify_max_rel_error"]
    assert errors["y"] <= RTOL


def test_verify_catches_a_rewrite_that_changes_the_function(monkeypatch):
    real_fold = prepare_module.fold_batch_norms

    def fold_then_break(graph):
        folded = real_fold(graph)
        weight = next(t for t in graph.initializer if t.name == "w")
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.01, "w"))  # a 1% error
        return folded

    monkeypatch.setattr(prepare_module, "fold_batch_norms", fold_then_break)
    with pytest.raises(PassError, match="changed the model's outputs"):
        prepare_model(conv_bn_model(), PrepareConfig(verify=True))
    prepare_model(conv_bn_model(), PrepareConfig(verify=False))  # without verify the error goes unseen


# --- constant folding that onnx-graphsurgeon cannot do ----------------------------------------------


def if_optional_model() -> onnx.ModelProto:
    """``If(cond)`` whose branches return an optional(sequence(tensor)), as ONNX's test_if_opt: gs drops the
    Optional node's ``type`` attribute and cannot export the optional value (``unhashable type: 'TypeProto'``)."""
    elem = helper.make_tensor_type_proto(TensorProto.FLOAT, [5])
    opt = helper.make_optional_type_proto(helper.make_sequence_type_proto(elem))
    seq = numpy_helper.from_array(np.arange(5, dtype=np.float32), "five")

    def branch(name: str, empty: bool) -> onnx.GraphProto:
        nodes = [helper.make_node("Optional", [], ["o_" + name], type=helper.make_sequence_type_proto(elem))]
        if not empty:
            nodes = [helper.make_node("SequenceConstruct", ["five"], ["s_" + name]),
                     helper.make_node("Optional", ["s_" + name], ["o_" + name])]  # fmt: skip
        return helper.make_graph(nodes, name, [], [helper.make_value_info("o_" + name, opt)])

    node = helper.make_node("If", ["cond"], ["out"], then_branch=branch("then", False),
                            else_branch=branch("else", True))  # fmt: skip
    graph = helper.make_graph([node], "if_opt", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_value_info("out", opt)], [seq])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_a_graph_graphsurgeon_cannot_represent_is_left_unfolded_with_the_reason():
    model = if_optional_model()
    onnx.checker.check_model(model, full_check=True)
    result = prepare_model(model)
    assert result.details["constant_folding_skipped"] == "onnx-graphsurgeon cannot represent the optional value 'out'"
    assert result.details["nodes_folded"] == 0
    else_branch = next(a.g for a in result.model.graph.node[0].attribute if a.name == "else_branch")
    assert [a.name for a in else_branch.node[0].attribute] == ["type"], "the Optional node keeps its type"
    del model.graph.output[0].type.optional_type.elem_type.sequence_type.elem_type.tensor_type.shape.dim[:]
    model.graph.output[0].type.CopyFrom(helper.make_tensor_type_proto(TensorProto.FLOAT, None))  # a tensor now
    assert "type attribute of Optional node" in prepare_module._graphsurgeon_limit(model)
    cond = np.array(True)
    assert len(session(result.model).run(None, {"cond": cond})[0]) == 1


def test_a_graphsurgeon_failure_leaves_the_model_unfolded_instead_of_failing(monkeypatch):
    def broken(self, *args, **kwargs):
        raise TypeError("unhashable type: 'TypeProto'")

    monkeypatch.setattr(prepare_module.gs.Graph, "fold_constants", broken)
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [float_input("x", [2])], [float_input("y", [2])], [])
    result = prepare_model(model)
    assert result.details["constant_folding_skipped"] == "onnx-graphsurgeon failed: unhashable type: 'TypeProto'"
    assert [n.op_type for n in result.model.graph.node] == ["Relu"]


def test_ort_sessions_made_while_folding_write_no_warnings(capfd):
    # t's declared shape [1] disagrees with the [4] ORT infers: ORT's default logger warns (MergeShapeInfo), as
    # it does for the sessions gs creates on ONNX's expanded attention models
    nodes = [helper.make_node("Mul", ["c", "two"], ["t"]), helper.make_node("Add", ["x", "t"], ["y"])]
    inits = [numpy_helper.from_array(np.ones(4, np.float32), "c"), numpy_helper.from_array(np.float32(2), "two")]
    model = make_model(nodes, [float_input("x", [4])], [float_input("y", [4])], inits)
    model.graph.value_info.append(float_input("t", [1]))
    capfd.readouterr()
    with prepare_module.quiet_graphsurgeon():
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert "onnxruntime" not in capfd.readouterr().err
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert "MergeShapeInfo" in capfd.readouterr().err, "outside folding, ORT's default severity is back"


def _conv_bn(group: int, out_channels: int = 4) -> onnx.GraphProto:
    rng = np.random.default_rng(0)
    inits = {
        "w": rng.standard_normal((out_channels, 1, 3, 3)).astype(np.float32),
        **{k: rng.uniform(0.5, 1.5, out_channels).astype(np.float32) for k in ("g", "b", "m", "v")},
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", group=group),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn"),
    ]
    return helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )


@pytest.mark.parametrize("group", [0, -2])
def test_batchnorm_after_a_conv_with_no_groups_is_left_with_a_reason(group):
    from onnxq.passes._fold_batchnorm import fold_batch_norms

    folded, _, left = fold_batch_norms(_conv_bn(group))  # group 0 divided by zero here
    assert folded == 0 and f"group {group}" in left["bn"]


def test_quantize_of_a_conv_with_group_0_is_a_clean_error(tmp_path, capsys):
    from onnxq.cli import main

    model = onnx.load(SAMPLE_MODELS / "mobilenetv2_digits.onnx")
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    next(a for a in conv.attribute if a.name == "group").i = 0
    onnx.save(model, tmp_path / "g0.onnx")
    argv = ["quantize", str(tmp_path / "g0.onnx"), "-o", str(tmp_path / "q.onnx"), "--calib"]
    assert main([*argv, str(SAMPLE_MODELS / "calib.npz"), "--calib-samples", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    # the pipeline turns a crash inside a pass into "pass prepare failed: ZeroDivisionError: ..."
    assert err.startswith("error:") and "failed: ZeroDivisionError" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g0.onnx"]


def test_a_fold_that_would_overflow_float32_leaves_the_batchnorm_without_a_warning():
    import warnings

    from onnxq.passes._fold_batchnorm import fold_batch_norms

    graph = _conv_bn(1)
    mean = next(t for t in graph.initializer if t.name == "m")
    mean.CopyFrom(numpy_helper.from_array(np.full(4, 3e38, np.float32), "m"))  # shift = beta - s * mean: -inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warning broke the CLI's one-line error
        folded, _, left = fold_batch_norms(graph)
    assert folded == 0 and "overflows float32" in left["bn"]


def test_a_dropout_whose_mask_is_read_stays_even_when_it_writes_no_graph_output():
    """The mask check alone keeps it (a Dropout writing a graph output is kept for another reason)."""
    ratio = numpy_helper.from_array(np.array(0.3, dtype=np.float32), "ratio")
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Dropout", ["r", "ratio"], ["d", "mask"], name="drop"),
        helper.make_node("Neg", ["d"], ["y"], name="neg"),
        helper.make_node("Cast", ["mask"], ["mask_f"], name="cast", to=TensorProto.FLOAT),
    ]
    model = make_model(nodes, [float_input("x", [2, 3])], [float_input("y", [2, 3]), float_input("mask_f", [2, 3])],
                       [ratio])  # fmt: skip
    result = prepare_model(model)
    assert result.details["dropout_removed"] == 0
    assert [n.name for n in result.model.graph.node if n.op_type == "Dropout"] == ["drop"]
    assert_same_outputs(model, result.model, {"x": np.arange(6, dtype=np.float32).reshape(2, 3) - 2})


def test_a_batchnorm_without_an_epsilon_attribute_folds_with_onnxs_default_1e_5():
    """Variances of 1e-4 make epsilon matter: 1e-3 instead of ONNX's default 1e-5 would move outputs by ~70%.
    ORT runs the unfolded model with the spec's default; RTOL is the prepare contract."""
    rng = np.random.default_rng(41)
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="conv")
    bn = helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn")  # no epsilon
    params = {"g": rng.uniform(0.5, 2.0, 3), "b": rng.normal(0, 1, 3), "m": rng.normal(0, 0.01, 3),
              "v": np.full(3, 1e-4)}  # fmt: skip
    inits = [numpy_helper.from_array(rng.normal(0, 0.01, (3, 2, 1, 1)).astype(np.float32), "w")]
    inits += [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()]
    model = make_model([conv, bn], [float_input("x", [1, 2, 4, 4])], [float_input("y", [1, 3, 4, 4])], inits)
    result = prepare_model(model)
    assert result.details["batchnorm_folded"] == 1
    assert_same_outputs(model, result.model, {"x": rng.normal(0, 1, (1, 2, 4, 4)).astype(np.float32)})


@pytest.mark.parametrize("start, end, want", [(1, 2, [5]), (-2, None, [5, 3]), (None, 1, [2])])
def test_shape_with_start_and_end_of_a_static_tensor_folds_to_its_slice(start, end, want):
    """onnx-graphsurgeon 0.6 folds Shape(start, end) to the whole shape; prepare must fold it to the slice."""
    attrs = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    nodes = [helper.make_node("Shape", ["x"], ["s"], **attrs), helper.make_node("ReduceProd", ["s"], ["p"]),
             helper.make_node("Cast", ["p"], ["f"], to=TensorProto.FLOAT), helper.make_node("Mul", ["x", "f"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 3])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    result = prepare_model(model)
    assert [n.op_type for n in result.model.graph.node] == ["Mul"]  # folded, not left for ORT
    x = np.ones((2, 5, 3), np.float32)
    y = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(y[0], np.full((2, 5, 3), np.prod(want), np.float32))
