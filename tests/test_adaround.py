"""AdaRound (passes/adaround.py): rounding contract, MSE against nearest, determinism, API, CLI, config.

The numpy core (layer geometry, gradients, schedule) is tested in test_adaround_ops.py.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLE_MODELS
from onnxq.cli import main
from onnxq.data import open_dataset
from onnxq.errors import ConfigError
from onnxq.passes._adaround_data import layer_rounds
from onnxq.passes.adaround import AdaRoundConfig, adaround_weights, find_layers
from onnxq.passes.qdq import QDQConfig, apply_qdq, name_nodes, plan_qdq, weight_qparams
from onnxq.quantize.calibrate import collect_ranges
from onnxq.quantize.driver import quantize
from onnxq.quantize.pipeline import QuantizeContext
from onnxq.quantize.qtypes import qtype
from onnxq.quantize.recipe import QuantizeRecipe


def recipe_options(options):
    """The pass's config as a recipe reads it (the one parser every pass's options go through)."""
    return QuantizeRecipe.from_dict({"passes": ["adaround"], "adaround": options}).pass_options["adaround"]



def _smooth_images(n: int, c: int, size: int, seed: int) -> np.ndarray:
    """Images with spatially and channel-correlated values (upsampled noise), like real feature maps."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, c, size // 4, size // 4)).astype(np.float32)
    mix = rng.standard_normal((c, c)).astype(np.float32) / np.sqrt(c)
    img = np.einsum("dc,nchw->ndhw", mix, coarse).repeat(4, axis=2).repeat(4, axis=3)
    return (img + 0.1 * rng.standard_normal(img.shape).astype(np.float32)).astype(np.float32)


def _single_node_model(op: str, x_shape, w: np.ndarray, attrs: dict, bias: np.ndarray | None = None, opset=21):
    inputs = ["x", "w"] + (["b"] if bias is not None else [])
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(bias, "b")] if bias is not None else [])
    node = helper.make_node(op, inputs, ["y"], name="layer", **attrs)
    x_dims = ["N", *x_shape[1:]]
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _pipeline(model: onnx.ModelProto, calib: np.ndarray, qcfg: QDQConfig):
    """What onnxq.quantize.driver.quantize hands AdaRound: the named model, plan, ranges and a context."""
    model = name_nodes(model)
    ctx = QuantizeContext(calib=open_dataset({"x": calib}, model), batch_size=16)
    plan = plan_qdq(model, qcfg)
    ranges = collect_ranges(model, ctx.calib, plan.tensors, "minmax", batch_size=16)
    return model, plan, ranges, ctx


def _single_conv(seed: int = 0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32)
    b = (rng.standard_normal(16) * 0.1).astype(np.float32)
    model = _single_node_model("Conv", (1, 8, 16, 16), w, dict(pads=[1, 1, 1, 1]), bias=b)
    return model, _smooth_images(64, 8, 16, seed=1), _smooth_images(64, 8, 16, seed=2)


def test_adaround_lowers_the_output_mse_of_a_single_conv_below_nearest_rounding():
    model, calib, held_out = _single_conv()
    qcfg = QDQConfig(weight_type="int4", per_channel=True)
    model, plan, ranges, ctx = _pipeline(model, calib, qcfg)
    overrides, details = adaround_weights(model, plan, qcfg, ranges, ctx, AdaRoundConfig(iterations=500))
    assert list(overrides) == ["w"]
    record = details["per_layer"]["layer"]
    # on the calibration rows the pass itself measures
    assert record["mse_adaround"] < 0.7 * record["mse_nearest"], record
    # and, end to end through onnxruntime, on held-out images the optimisation never saw
    want = _run(model, held_out)
    nearest = _run(apply_qdq(model, plan, ranges, qcfg).model, held_out)
    ada = _run(apply_qdq(model, plan, ranges, qcfg, weight_overrides=overrides).model, held_out)
    mse_nearest, mse_ada = float(np.mean((nearest - want) ** 2)), float(np.mean((ada - want) ** 2))
    # the activations are quantized too (uint8), which both share; AdaRound must still cut the error by 20%
    assert mse_ada < 0.8 * mse_nearest, (mse_ada, mse_nearest)


@pytest.mark.parametrize(
    "qcfg",
    [
        QDQConfig(weight_type="int4", per_channel=True),
        QDQConfig(weight_type="uint8", per_channel=False, symmetric_weights=False),
        QDQConfig(weight_type="int8", per_channel=True),
    ],
    ids=["int4-per-channel", "uint8-asymmetric-per-tensor", "int8-per-channel"],
)
def test_every_hard_rounded_weight_is_the_floor_or_the_ceiling_of_the_scaled_weight(qcfg):
    model, calib, _ = _single_conv()
    model, plan, ranges, ctx = _pipeline(model, calib, qcfg)
    overrides, details = adaround_weights(model, plan, qcfg, ranges, ctx, AdaRoundConfig(iterations=200))
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
    qp = weight_qparams(w, model.graph.node[0], 1, qcfg)
    shape = [1] * w.ndim
    if qp.axis is not None:
        shape[qp.axis] = -1
    scale, zp = qp.scale.reshape(shape), qp.zero_point.reshape(shape).astype(np.int64)
    ratio = w / scale  # float32, as QuantizeLinear divides
    q = overrides["w"].astype(np.int64)
    assert overrides["w"].dtype == qtype(qcfg.weight_type).storage
    assert q.min() >= qtype(qcfg.weight_type).qmin and q.max() <= qtype(qcfg.weight_type).qmax
    grid = q - zp
    assert np.all((grid == np.floor(ratio)) | (grid == np.ceil(ratio)))
    nearest = np.rint(ratio)
    assert np.mean(grid != nearest) > 0.02  # AdaRound did move weights off nearest (else the check is empty)
    assert not details["per_layer"]["layer"]["kept_nearest"]


def test_the_qdq_model_stores_exactly_the_optimised_integers():
    model, calib, held_out = _single_conv()
    qcfg = QDQConfig(weight_type="int4", per_channel=True)
    model, plan, ranges, ctx = _pipeline(model, calib, qcfg)
    overrides, _ = adaround_weights(model, plan, qcfg, ranges, ctx, AdaRoundConfig(iterations=100))
    qmodel = apply_qdq(model, plan, ranges, qcfg, weight_overrides=overrides).model
    stored = {t.name: numpy_helper.to_array(t) for t in qmodel.graph.initializer}
    np.testing.assert_array_equal(stored["w_axis0_quantized"].astype(np.int64), overrides["w"].astype(np.int64))
    assert np.isfinite(_run(qmodel, held_out[:4])).all()


def test_never_worse_keeps_nearest_when_the_rounding_found_is_worse(monkeypatch):
    model, calib, _ = _single_conv()
    qcfg = QDQConfig(weight_type="int4", per_channel=True)
    model, plan, ranges, ctx = _pipeline(model, calib, qcfg)

    def round_away_from_nearest(p, **_):  # V >= 0 exactly where nearest rounds down: the worst choice
        return np.where(p.rest < 0.5, 1.0, -1.0).astype(p.rest.dtype)

    monkeypatch.setattr("onnxq.passes.adaround.optimize_rounding", round_away_from_nearest)
    for never_worse in (True, False):
        cfg = AdaRoundConfig(iterations=1, never_worse=never_worse)
        overrides, details = adaround_weights(model, plan, qcfg, ranges, ctx, cfg)
        record = details["per_layer"]["layer"]
        assert record["mse_adaround"] > record["mse_nearest"]
        w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
        nearest = np.rint(w / weight_qparams(w, model.graph.node[0], 1, qcfg).scale.reshape(-1, 1, 1, 1))
        assert record["kept_nearest"] is never_worse
        assert np.array_equal(overrides["w"], nearest.astype(np.int8)) is never_worse
        assert details["layers_kept_nearest"] == (1 if never_worse else 0)  # the one layer, counted


def _branching_model() -> onnx.ModelProto:
    """Conv -> Relu -> (depthwise Conv | 1x1 Conv) -> Add -> ConvTranspose -> Flatten -> MatMul -> Gemm."""
    rng = np.random.default_rng(5)

    def w(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ar"], name="relu_a"),
        helper.make_node("Conv", ["ar", "wb"], ["b"], name="depthwise_b", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["ar", "wc"], ["c"], name="pointwise_c"),
        helper.make_node("Add", ["b", "c"], ["bc"], name="add"),
        helper.make_node("ConvTranspose", ["bc", "wd"], ["d"], name="up_d", strides=[2, 2]),
        helper.make_node("Flatten", ["d"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "we"], ["e"], name="matmul_e"),
        helper.make_node("Gemm", ["e", "wg", "bg"], ["y"], name="gemm_g", transB=1),
    ]
    inits = [
        w("wa", 8, 4, 3, 3),
        w("wb", 8, 1, 3, 3),
        w("wc", 8, 8, 1, 1),
        w("wd", 8, 4, 2, 2),
        w("we", 1024, 16, scale=0.05),
        w("wg", 5, 16),
        w("bg", 5),
    ]
    graph = helper.make_graph(
        nodes,
        "branching",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model)


def test_every_supported_op_is_rounded_in_dependency_rounds_and_beats_nearest():
    model = _branching_model()
    qcfg = QDQConfig(weight_type="int4", per_channel=True)
    model, plan, ranges, ctx = _pipeline(model, _smooth_images(64, 4, 8, seed=3), qcfg)
    layers, skipped = find_layers(model, plan, qcfg, AdaRoundConfig())
    assert not skipped
    rounds = [[layer.node for layer in group] for group in layer_rounds(model, layers)]
    # the two branches read the same tensor, so one run of the partly quantized model serves both
    assert rounds == [["conv_a"], ["depthwise_b", "pointwise_c"], ["up_d"], ["matmul_e"], ["gemm_g"]]
    overrides, details = adaround_weights(model, plan, qcfg, ranges, ctx, AdaRoundConfig(iterations=300))
    assert sorted(overrides) == ["wa", "wb", "wc", "wd", "we", "wg"]
    for node, record in details["per_layer"].items():
        assert record["mse_adaround"] < record["mse_nearest"], (node, record)
    held_out = _smooth_images(64, 4, 8, seed=4)
    want = _run(model, held_out)
    nearest = _run(apply_qdq(model, plan, ranges, qcfg).model, held_out)
    ada = _run(apply_qdq(model, plan, ranges, qcfg, weight_overrides=overrides).model, held_out)
    # held-out images: the whole network's output error must drop below nearest rounding's
    assert np.mean((ada - want) ** 2) < np.mean((nearest - want) ** 2)


# --- through the quantize API and the CLI ----------------------------------------------------------


def test_same_seed_gives_the_same_model_byte_for_byte(tmp_path):
    model, calib, _ = _single_conv()
    src = tmp_path / "conv.onnx"
    onnx.save(model, src)
    np.savez(tmp_path / "calib.npz", x=calib)
    # a small cache forces sampling of patches, so that the seed decides which rows are used
    opts = {"iterations": 150, "cache_mb": 0.05}
    outs = []
    for i, seed in enumerate((7, 7, 8)):
        out = tmp_path / f"q{i}.onnx"
        options = {"adaround": {**opts, "seed": seed}}
        recipe = QuantizeRecipe(weight_type="int4", passes=("adaround",), pass_options=options)
        quantize(src, out, tmp_path / "calib.npz", recipe)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]  # the seed matters: another seed samples other rows


def test_adaround_recovers_per_tensor_w4_accuracy_on_the_residual_sample_model(tmp_path):
    src = SAMPLE_MODELS / "resnet_digits.onnx"
    if not src.exists():
        pytest.skip("sample models not built")
    data = np.load(SAMPLE_MODELS / "test.npz", allow_pickle=False)

    def accuracy(path) -> float:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return float((sess.run(None, {"input": data["input"]})[0].argmax(1) == data["label"]).mean())

    accs = {}
    for passes in ((), ("adaround",)):
        out = tmp_path / f"q{len(passes)}.onnx"
        options = {"adaround": {"iterations": 300}} if passes else {}
        recipe = QuantizeRecipe(weight_type="int4", per_channel=False, passes=passes, pass_options=options)
        quantize(src, out, SAMPLE_MODELS / "calib.npz", recipe)
        accs[passes] = accuracy(out)
    # measured here: 81.75% nearest, 99.75% AdaRound at 300 iterations (float 99.75%); the 10-point margin
    # leaves room for other CPUs and BLAS builds
    assert accs[("adaround",)] >= accs[()] + 0.10, accs


def test_composes_with_cle_and_bias_correction_without_touching_the_integers(tmp_path):
    src = SAMPLE_MODELS / "resnet_digits.onnx"
    if not src.exists():
        pytest.skip("sample models not built")
    weights = {}
    for passes in (("cle", "adaround"), ("cle", "adaround", "bias-correction")):
        out = tmp_path / f"q{len(passes)}.onnx"
        recipe = QuantizeRecipe(weight_type="int4", passes=passes, pass_options={"adaround": {"iterations": 100}})
        summary = quantize(src, out, SAMPLE_MODELS / "calib.npz", recipe)
        assert [p["pass"] for p in summary.passes if p["pass"] in passes] == list(passes)
        model = onnx.load(out)
        weights[passes] = {
            t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("_quantized")
        }
    plain, corrected = weights.values()
    w_names = [n for n in plain if plain[n].dtype != np.int32]
    b_names = [n for n in plain if plain[n].dtype == np.int32]
    assert w_names and b_names
    # bias correction changes the int32 biases only; the AdaRound integers arrive untouched
    assert all(np.array_equal(plain[n], corrected[n]) for n in w_names)
    assert any(not np.array_equal(plain[n], corrected[n]) for n in b_names)


def test_cli_passes_adaround_with_recipe_options_and_progress(tmp_path, capsys):
    model, calib, _ = _single_conv()
    src = tmp_path / "conv.onnx"
    onnx.save(model, src)
    np.savez(tmp_path / "calib.npz", x=calib)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"weight-type": "int4", "adaround": {"iterations": 20, "lambda": 0.02}}))
    out = tmp_path / "q.onnx"
    args = ["quantize", str(src), "-o", str(out), "--calib", str(tmp_path / "calib.npz")]
    code = main([*args, "--recipe", str(recipe), "--passes", "adaround", "--progress"])
    assert code == 0
    assert "adaround layer 1/1 layer: 20 iterations" in capsys.readouterr().err  # one line per layer, which of how many
    recipe.write_text(json.dumps({"adaround": {"iteration": 20}}))
    assert main([*args, "--recipe", str(recipe), "--passes", "adaround"]) == 2
    err = capsys.readouterr().err
    assert "unknown option 'iteration'" in err and "iterations" in err


# --- configuration ---------------------------------------------------------------------------------


def test_config_from_dict_reads_every_option_and_the_lambda_alias():
    cfg = recipe_options(
        {
            "iterations": 50,
            "samples-per-iteration": 64,
            "lambda": 0.1,
            "beta_range": [10, 3],
            "warm_start": 0.1,
            "learning_rate": 0.05,
            "input": "float",
            "cache_mb": 1,
            "seed": 3,
            "never_worse": False,
            "op_types": ["Conv"],
            "samples": 32,
            "blas_threads": None,
        }
    )
    assert (cfg.iterations, cfg.samples_per_iteration, cfg.reg_lambda, cfg.beta_range) == (50, 64, 0.1, (10.0, 3.0))
    assert (cfg.warm_start, cfg.learning_rate, cfg.input, cfg.cache_mb, cfg.seed) == (0.1, 0.05, "float", 1.0, 3)
    assert cfg.never_worse is False and cfg.op_types == ("Conv",)
    assert cfg.samples == 32 and cfg.blas_threads is None


@pytest.mark.parametrize(
    "options, message",
    [
        ({"iters": 5}, "unknown option 'iters'"),
        ({"iterations": 0}, "at least 1"),
        ({"iterations": "100"}, "must be an integer"),
        ({"beta_range": [20]}, "beta_range"),
        ({"warm_start": 1.5}, "warm_start"),
        ({"input": "quant"}, "unknown input"),
        ({"lambda": -1}, "lambda"),
        ({"op_types": ["LSTM"]}, "not supported"),
        ({"never_worse": "yes"}, "true or false"),
        ({"blas_threads": 0}, "at least 1"),
        ({"samples": 2.5}, "must be an integer"),
    ],
)
def test_config_rejects_bad_options_with_a_config_error(options, message):
    with pytest.raises(ConfigError) as info:
        recipe_options(options)
    assert message in str(info.value)
    if "unknown option" in message:
        assert "iterations" in info.value.hint and "lambda" in info.value.hint
