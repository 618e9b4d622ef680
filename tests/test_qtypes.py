"""onnxq.quantize.qtypes against ONNX Runtime and the ONNX reference evaluator: the semantics we must match."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnxruntime.quantization import quant_utils

from onnxq.errors import ConfigError, DataError
from onnxq.quantize.qtypes import (
    QTYPES,
    QParams,
    compute_qparams,
    dequantize,
    make_initializer,
    min_opset,
    qtype,
    quantize,
)

QUANT_NAMES = ["uint8", "int8", "uint16", "int16", "int4", "uint4"]


def qdq_model(qt, shape, qp: QParams) -> onnx.ModelProto:
    """QuantizeLinear(x) -> int32 output, and DequantizeLinear(Cast(q_in)) -> float output, at opset 21.

    ORT cannot hand 4-bit tensors to numpy, so quantized values cross the graph boundary as int32; the
    Casts between int32 and the quantized type are exact for in-range values.
    """
    kw = {} if qp.axis is None else {"axis": qp.axis}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], **kw),
        helper.make_node("Cast", ["q"], ["q_out"], to=TensorProto.INT32),
        helper.make_node("Cast", ["q_in"], ["q_cast"], to=qt.onnx_type),
        helper.make_node("DequantizeLinear", ["q_cast", "scale", "zp"], ["deq"], **kw),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("q_in", TensorProto.INT32, shape),
        ],
        [
            helper.make_tensor_value_info("q_out", TensorProto.INT32, shape),
            helper.make_tensor_value_info("deq", TensorProto.FLOAT, shape),
        ],
        [numpy_helper.from_array(qp.scale, "scale"), make_initializer("zp", qp.zero_point, qt)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model)
    return model


def run_both(model, x, q_in):
    feeds = {"x": x, "q_in": q_in.astype(np.int32)}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got_ort = sess.run(None, feeds)
    got_ref = ReferenceEvaluator(model).run(None, feeds)
    return got_ort, got_ref


@st.composite
def cases(draw):
    """A quantized type, per-tensor or per-axis qparams, a float tensor with ties, and quantized values."""
    qt = QTYPES[draw(st.sampled_from(QUANT_NAMES))]
    per_axis = draw(st.booleans())
    channels = draw(st.integers(1, 5))
    shape = (draw(st.integers(1, 3)), channels, draw(st.integers(1, 6)))
    n_scales = channels if per_axis else 1
    # powers of two make x / scale exact, so exact .5 ties occur; other scales exercise float32 division
    exps = draw(st.lists(st.integers(-12, 4), min_size=n_scales, max_size=n_scales))
    mants = draw(st.lists(st.sampled_from([1.0, 1.1, 0.3, 0.77]), min_size=n_scales, max_size=n_scales))
    scale = np.array([m * 2.0**e for m, e in zip(mants, exps, strict=True)], np.float32)
    zps = draw(st.lists(st.integers(qt.qmin, qt.qmax), min_size=n_scales, max_size=n_scales))
    zp = np.array(zps).astype(qt.storage)
    if not per_axis:
        scale, zp = scale.reshape(()), zp.reshape(())
    qp = QParams(scale, zp, 1 if per_axis else None, qt)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bshape = [1, -1, 1] if per_axis else []
    s = scale.reshape(bshape) if per_axis else scale
    span = (qt.qmax - qt.qmin) * 0.75
    x = (rng.uniform(-span, span, shape) * s).astype(np.float32)
    ties = (np.round(rng.uniform(-span, span, shape)) + 0.5).astype(np.float32) * s
    x = np.where(rng.random(shape) < 0.3, ties, x).astype(np.float32)
    q_in = rng.integers(qt.qmin, qt.qmax + 1, shape)
    return qt, qp, x, q_in


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_quantize_and_dequantize_match_onnxruntime_and_reference_bit_exactly(case):
    qt, qp, x, q_in = case
    (ort_q, ort_deq), (ref_q, ref_deq) = run_both(qdq_model(qt, list(x.shape), qp), x, q_in)
    ours_q = quantize(x, qp)
    assert ours_q.dtype == qt.storage
    # Bit-exact: integer outputs must be identical; dequantized floats must be the same float32 bits.
    np.testing.assert_array_equal(ours_q.astype(np.int32), ort_q)
    np.testing.assert_array_equal(ours_q.astype(np.int32), ref_q)
    ours_deq = dequantize(q_in.astype(qt.storage), qp)
    assert ours_deq.dtype == np.float32
    np.testing.assert_array_equal(ours_deq.view(np.int32), ort_deq.view(np.int32))
    np.testing.assert_array_equal(ours_deq.view(np.int32), ref_deq.astype(np.float32).view(np.int32))


@pytest.mark.parametrize("name", QUANT_NAMES)
def test_quantize_rounds_half_to_even(name):
    qt = qtype(name)
    zp = 0 if qt.signed else 8  # 8 fits every unsigned type, and leaves room below for -1.5
    qp = QParams(np.float32(0.25), np.array(zp).astype(qt.storage), None, qt)
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 3.5], np.float32) * np.float32(0.25)
    expected = np.array([0, 2, 2, 0, -2, 4]) + zp  # half to even, by hand
    np.testing.assert_array_equal(quantize(x, qp).astype(np.int64), expected)
    ort_q, _ = run_both(qdq_model(qt, [6], qp), x, np.zeros(6, np.int64))[0]
    np.testing.assert_array_equal(ort_q, expected)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # onnx.reference overflows on purpose here
@pytest.mark.parametrize("name", QUANT_NAMES)
def test_quantize_saturates_far_out_of_range_values(name):
    qt = qtype(name)
    qp = QParams(np.float32(0.1), np.array((qt.qmin + qt.qmax + 1) // 2).astype(qt.storage), None, qt)
    x = np.array([1e6, -1e6, 1e30, -1e30, 3.0e38, -3.0e38, np.inf, -np.inf], np.float32)
    expected = np.array([qt.qmax, qt.qmin] * 4)
    np.testing.assert_array_equal(quantize(x, qp).astype(np.int64), expected)
    (ort_q, _), (ref_q, _) = run_both(qdq_model(qt, [8], qp), x, np.zeros(8, np.int64))
    np.testing.assert_array_equal(ort_q, expected)
    # The one disagreement found: onnx.reference casts x / scale to int32 before saturating, so values
    # with |x / scale| >= 2**31 (and Inf) wrap to INT32_MIN and end up at qmin. ORT and the ONNX spec
    # saturate; we follow them. Within int32 the two agree.
    np.testing.assert_array_equal(ref_q[:2], expected[:2])


def test_quantize_refuses_nan():
    qp = compute_qparams(-1.0, 1.0, "int8", symmetric=True)
    with pytest.raises(DataError, match="NaN"):
        quantize(np.array([0.0, np.nan], np.float32), qp)


# --- compute_qparams ---------------------------------------------------------------------------


def _ort_qparams(rmin, rmax, name, symmetric, reduce_range):
    onnx_type = QTYPES[name].onnx_type
    qmin, qmax = quant_utils.get_qmin_qmax_for_qType(
        onnx_type, reduce_range=reduce_range, symmetric=symmetric
    )
    zp, scale = quant_utils.compute_scale_zp(
        np.array(rmin, np.float32), np.array(rmax, np.float32), qmin, qmax, symmetric=symmetric
    )
    return np.float32(scale), int(zp)


# (name, symmetric, reduce_range) where our convention and ORT's quantizer agree (module docstring).
ORT_AGREES = (
    [(n, False, False) for n in QUANT_NAMES]
    + [(n, False, True) for n in ("uint8", "uint16", "int8", "int16")]
    + [(n, True, r) for n in ("int8", "int16") for r in (False, True)]
)


@settings(max_examples=80, deadline=None)
@given(
    conv=st.sampled_from(ORT_AGREES),
    rmin=st.floats(-1e4, 1e4, width=32),
    width=st.floats(0, 1e4, width=32),
)
def test_compute_qparams_equals_onnxruntime_quantizer(conv, rmin, width):
    name, symmetric, reduce_range = conv
    rmax = np.float32(rmin + width)
    qp = compute_qparams(np.float32(rmin), rmax, name, symmetric=symmetric, reduce_range=reduce_range)
    scale, zp = _ort_qparams(rmin, rmax, name, symmetric, reduce_range)
    assert qp.scale.dtype == np.float32
    assert qp.scale == scale  # exact: same float64 formula, then one cast to float32
    assert int(qp.zero_point) == zp


def test_symmetric_int8_scale_is_absmax_over_127_like_onnxruntime():
    qp = compute_qparams(-2.54, 1.0, "int8", symmetric=True)
    assert qp.scale == np.float32(2.54 / 127)  # 127, not 127.5: ORT's restricted range [-127, 127]
    assert _ort_qparams(-2.54, 1.0, "int8", True, False)[0] == qp.scale


@pytest.mark.parametrize(
    "name,zp,m",
    [
        ("int8", 0, 127),
        ("uint8", 128, 127),
        ("int16", 0, 32767),
        ("uint16", 32768, 32767),
        ("int4", 0, 7),
        ("uint4", 8, 7),
    ],
)
def test_symmetric_zero_point_is_the_middle_and_both_ends_are_representable(name, zp, m):
    qp = compute_qparams(-0.3, 5.0, name, symmetric=True)
    assert int(qp.zero_point) == zp
    assert qp.scale == np.float32(5.0 / m)
    # +absmax and -absmax land exactly on zp +- m: no saturation at either end
    q = quantize(np.array([5.0, -5.0], np.float32), qp).astype(np.int64)
    np.testing.assert_array_equal(q, [zp + m, zp - m])


@settings(max_examples=80, deadline=None)
@given(
    name=st.sampled_from(QUANT_NAMES),
    symmetric=st.booleans(),
    reduce_range=st.booleans(),
    lo=st.floats(-1e3, 1e3),
    width=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_qparams_represent_zero_exactly_and_cover_the_range(name, symmetric, reduce_range, lo, width, seed):
    rmin, rmax = np.float32(lo), np.float32(lo + width)
    qp = compute_qparams(rmin, rmax, name, symmetric=symmetric, reduce_range=reduce_range)
    assert dequantize(quantize(np.float32(0.0), qp), qp) == 0.0
    lo_r, hi_r = min(float(rmin), 0.0), max(float(rmax), 0.0)
    x = np.concatenate([[lo_r, hi_r], np.random.default_rng(seed).uniform(lo_r, hi_r, 64)]).astype(np.float32)
    err = np.abs(dequantize(quantize(x, qp), qp) - x)
    # Half a step, plus float32 rounding of x / scale and of the product (2**-24 each, relative).
    s = float(qp.scale)
    tol = 0.5 * s + 2.0**-22 * (np.abs(x) + s)
    assert (err <= tol).all(), (err.max(), s)


def test_per_axis_qparams_are_computed_per_channel():
    rmin = np.array([-1.0, 0.0, -3.0, 0.0])
    rmax = np.array([1.0, 2.0, 0.5, 0.0])
    qp = compute_qparams(rmin, rmax, "int8", symmetric=True, axis=0)
    np.testing.assert_array_equal(qp.scale, np.array([1 / 127, 2 / 127, 3 / 127, 1.0], np.float32))
    np.testing.assert_array_equal(qp.zero_point, np.zeros(4, np.int8))
    asym = compute_qparams(rmin, rmax, "uint8", symmetric=False, axis=0)
    for c in range(4):
        one = compute_qparams(rmin[c], rmax[c], "uint8", symmetric=False)
        assert asym.scale[c] == one.scale and asym.zero_point[c] == one.zero_point
    w = np.random.default_rng(0).uniform(-1, 1, (4, 3)).astype(np.float32)
    q = quantize(w, qp)
    for c in range(4):
        one = QParams(qp.scale[c], qp.zero_point[c], None, qp.qtype)
        np.testing.assert_array_equal(q[c], quantize(w[c], one))


def test_empty_range_gets_unit_scale():
    qp = compute_qparams(0.0, 0.0, "uint8", symmetric=False)
    assert qp.scale == 1.0 and int(qp.zero_point) == 0
    qp = compute_qparams(0.0, 0.0, "uint8", symmetric=True)
    assert qp.scale == 1.0 and int(qp.zero_point) == 128


@pytest.mark.parametrize("bad", [(1.0, -1.0), (np.inf, 1.0), (0.0, np.nan)])
def test_compute_qparams_rejects_bad_ranges(bad):
    with pytest.raises(ConfigError):
        compute_qparams(bad[0], bad[1], "int8", symmetric=False)


def test_unknown_qtype_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        qtype("int7")
    assert "int8" in info.value.hint and "uint4" in info.value.hint


def test_qparams_reject_bad_scales_and_zero_points():
    with pytest.raises(ConfigError):
        QParams(np.float32(0.0), np.int8(0), None, qtype("int8"))
    with pytest.raises(ConfigError):
        QParams(np.float32(1.0), np.array(16), None, qtype("uint4"))
    with pytest.raises(ConfigError):
        QParams(np.ones(3, np.float32), np.zeros(3, np.int8), None, qtype("int8"))


# --- initializers and opsets ---------------------------------------------------------------------


@pytest.mark.parametrize("name", QUANT_NAMES + ["int32"])
def test_make_initializer_round_trips_through_numpy_helper(name):
    qt = qtype(name)
    values = np.random.default_rng(1).integers(qt.qmin, qt.qmax + 1, (3, 5)).astype(qt.storage)  # odd count
    tensor = make_initializer("w", values, qt)
    assert tensor.data_type == qt.onnx_type and list(tensor.dims) == [3, 5]
    if qt.bits == 4:
        assert len(tensor.raw_data) == 8  # 15 values packed two per byte
    np.testing.assert_array_equal(numpy_helper.to_array(tensor).astype(np.int64), values.astype(np.int64))


def test_int4_initializer_is_read_correctly_by_onnxruntime():
    qt = qtype("int4")
    values = np.arange(-8, 7).astype(np.int8)  # 15 values, odd count
    node = helper.make_node("DequantizeLinear", ["w", "s"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [15])],
        [make_initializer("w", values, qt), numpy_helper.from_array(np.float32(0.5), "s")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
    np.testing.assert_array_equal(y, values.astype(np.float32) * 0.5)


def test_make_initializer_rejects_out_of_range_values():
    with pytest.raises(ValueError):
        make_initializer("w", np.array([8]), "int4")


@pytest.mark.parametrize(
    "name,per_channel,expected",
    # From the ONNX operator changelog: QuantizeLinear-10, axis in -13, 16- and 4-bit types in -21.
    [
        ("uint8", False, 10),
        ("int8", False, 10),
        ("int8", True, 13),
        ("uint8", True, 13),
        ("int16", False, 21),
        ("uint16", True, 21),
        ("int4", False, 21),
        ("uint4", True, 21),
        ("int32", False, 10),
        ("int32", True, 13),
    ],
)
def test_min_opset_follows_the_operator_changelog(name, per_channel, expected):
    assert min_opset(name, per_channel) == expected
