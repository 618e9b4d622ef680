"""AdaRound's numpy core: layer geometry against onnxruntime, closed-form gradients, schedule."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from test_adaround import _run, _single_node_model

from onnxq.passes import _adaround_opt as opt
from onnxq.passes._adaround_ops import (
    gather_rows,
    geometry_of,
    matrix_to_weight,
    output_shape,
    positions_per_sample,
    weight_to_matrix,
)
from onnxq.passes.qdq import QDQConfig, weight_qparams

RNG = np.random.default_rng(1234)


def _f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# --- layer geometry: rows x weight matrix reproduce onnxruntime's output --------------------------

GEOMETRIES = {
    "conv2d_grouped_strided_padded_dilated": (
        "Conv",
        (2, 4, 9, 11),
        (6, 2, 3, 2),
        dict(group=2, strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2]),
    ),
    "conv2d_depthwise_same_upper": (
        "Conv",
        (2, 6, 9, 9),
        (12, 1, 3, 3),
        dict(group=6, auto_pad="SAME_UPPER", strides=[2, 2]),
    ),
    "conv2d_same_lower": ("Conv", (2, 6, 10, 9), (12, 3, 3, 3), dict(group=2, auto_pad="SAME_LOWER", strides=[2, 2])),
    "conv1d_depthwise_strided_padded": ("Conv", (2, 6, 9), (6, 1, 3), dict(group=6, strides=[2], pads=[1, 1])),
    "conv2d_pointwise": ("Conv", (2, 3, 8, 8), (5, 3, 1, 1), {}),
    "convtranspose2d_grouped": (
        "ConvTranspose",
        (2, 4, 5, 6),
        (4, 3, 3, 2),
        dict(group=2, strides=[2, 3], pads=[1, 0, 0, 1], output_padding=[1, 0], dilations=[1, 2]),
    ),
    "convtranspose1d_pads_past_kernel": ("ConvTranspose", (2, 4, 7), (4, 2, 4), dict(strides=[2], pads=[3, 4])),
    "matmul_3d_input": ("MatMul", (2, 5, 7), (7, 3), {}),
    "gemm_transb_alpha": ("Gemm", (4, 7), (3, 7), dict(transB=1, alpha=0.5)),
    "gemm": ("Gemm", (4, 7), (7, 3), {}),
}


@pytest.mark.parametrize("case", sorted(GEOMETRIES))
def test_rows_times_weight_matrix_reproduce_onnxruntime(case):
    op, x_shape, w_shape, attrs = GEOMETRIES[case]
    x, w = _f32(*x_shape), _f32(*w_shape)
    model = _single_node_model(op, x_shape, w, attrs, opset=17)
    geom = geometry_of(model.graph.node[0], w.shape)
    assert not isinstance(geom, str), geom
    wm = weight_to_matrix(geom, w)
    assert np.array_equal(matrix_to_weight(geom, wm, w.shape), w)  # a permutation: gradients map back
    rows = gather_rows(geom, x, np.arange(x.shape[0] * positions_per_sample(geom, x.shape)))
    out = geom.alpha * np.matmul(rows, wm.transpose(0, 2, 1))  # [groups, R, out_per_group]
    flat = out.transpose(1, 0, 2).reshape(out.shape[1], -1)
    shape = output_shape(geom, x.shape, flat.shape[1])
    if geom.is_conv:  # rows are sample-major over the output positions, channels last
        got = np.moveaxis(flat.reshape(shape[0], *shape[2:], shape[1]), -1, 1)
    else:
        got = flat.reshape(shape)
    want = _run(model, x)
    # float32 sums of at most 36 products of N(0,1) values in a different order: 1e-5 absolute is ~20 ulps
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_sampled_rows_are_the_matching_rows_of_the_full_im2col():
    op, x_shape, w_shape, attrs = GEOMETRIES["conv2d_grouped_strided_padded_dilated"]
    model = _single_node_model(op, x_shape, _f32(*w_shape), attrs, opset=17)
    geom = geometry_of(model.graph.node[0], w_shape)
    x = _f32(*x_shape)
    full = gather_rows(geom, x, np.arange(x.shape[0] * positions_per_sample(geom, x.shape)))
    picked = np.array([0, 7, 31, 60, 99])
    np.testing.assert_array_equal(gather_rows(geom, x, picked), full[:, picked])


def test_unsupported_layers_give_a_reason():
    gemm = helper.make_node("Gemm", ["a", "w"], ["y"], transA=1)
    assert "transA" in geometry_of(gemm, (3, 4))
    assert "rank 3" in geometry_of(helper.make_node("MatMul", ["a", "w"], ["y"]), (2, 3, 4))
    assert "not supported" in geometry_of(helper.make_node("LSTM", ["a", "w"], ["y"]), (2, 3, 4))


# --- the optimisation ------------------------------------------------------------------------------


def _problem(case: str, dtype=np.float64, rows: int = 64) -> opt.LayerProblem:
    op, x_shape, w_shape, attrs = GEOMETRIES[case]
    w = _f32(*w_shape)
    node = helper.make_node(op, ["x", "w"], ["y"], **attrs)
    geom = geometry_of(node, w.shape)
    x = RNG.standard_normal((geom.groups if geom.is_conv else 1, rows, weight_to_matrix(geom, w).shape[2]))
    t = geom.alpha * np.matmul(x, weight_to_matrix(geom, w.astype(np.float64)).transpose(0, 2, 1))
    qp = weight_qparams(w, node, 1, QDQConfig(weight_type="int4", per_channel=True))
    shape = [1] * w.ndim
    shape[qp.axis] = -1
    return opt.LayerProblem(
        geom, w, qp.scale.reshape(shape), qp.zero_point.reshape(shape), -8, 7, x.astype(dtype), t.astype(dtype)
    )


@pytest.mark.parametrize(
    "case", ["conv2d_grouped_strided_padded_dilated", "convtranspose2d_grouped", "gemm_transb_alpha"]
)
@pytest.mark.parametrize("beta", [None, 2.0, 6.0])
def test_closed_form_gradient_matches_finite_differences(case, beta):
    p = _problem(case)
    rng = np.random.default_rng(0)
    # V in [-1.5, 1.5] keeps h inside (0, 1), away from the rectifier's kinks, where the loss is smooth
    v = rng.uniform(-1.5, 1.5, size=p.w.shape)
    v[np.abs(v) < 0.05] = 0.3  # h = 0.5 (V = 0) is a kink of |2h - 1|^beta for beta < 2 only; stay clear
    rows = slice(0, p.x.shape[1])
    _, grad = opt.loss_and_grad(p, v, rows, beta, lam=0.05)
    eps = 1e-6
    for flat in rng.choice(v.size, size=12, replace=False):
        idx = np.unravel_index(flat, v.shape)
        hi, lo = v.copy(), v.copy()
        hi[idx] += eps
        lo[idx] -= eps
        numeric = (opt.loss_and_grad(p, hi, rows, beta, 0.05)[0] - opt.loss_and_grad(p, lo, rows, beta, 0.05)[0]) / (
            2 * eps
        )
        # float64 central differences: truncation ~eps^2 and cancellation ~1e-16 * |L| / eps, both far
        # below 1e-6 relative to the gradient's scale
        assert numeric == pytest.approx(grad[idx], rel=1e-6, abs=1e-8), (idx, numeric, grad[idx])


def test_beta_schedule_warm_start_then_cosine_from_start_to_end():
    assert opt.beta_at(0, 100, 0.2, (20, 2)) is None
    assert opt.beta_at(19, 100, 0.2, (20, 2)) is None
    assert opt.beta_at(20, 100, 0.2, (20, 2)) == pytest.approx(20)
    assert opt.beta_at(60, 100, 0.2, (20, 2)) == pytest.approx(11)  # halfway: the cosine's midpoint
    assert opt.beta_at(99, 100, 0.2, (20, 2)) == pytest.approx(2, abs=0.01)


def test_initial_v_starts_the_soft_weight_at_the_float_weight():
    p = _problem("conv2d_grouped_strided_padded_dilated", dtype=np.float32)
    h, _ = opt.rectified_sigmoid(opt.initial_v(p.rest))
    w_soft, _ = opt.soft_weight(p, h)
    # float32: log/exp round trip of rest in [0, 1) then * scale; 1e-5 of the largest scale is ~100 ulps
    np.testing.assert_allclose(w_soft, p.w, rtol=0, atol=1e-5 * float(p.scale.max()))


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
@pytest.mark.parametrize("group", [0, -1, 3])
def test_a_group_that_does_not_split_the_weight_gives_a_reason(op, group):
    node = helper.make_node(op, ["x", "w"], ["y"], group=group)
    assert f"group {group}" in geometry_of(node, (8, 2, 3, 3))  # 8 channels: no 0, -1 or 3 groups


def test_an_empty_weight_gives_a_reason():
    assert "is empty" in geometry_of(helper.make_node("Conv", ["x", "w"], ["y"]), (0, 2, 3, 3))
    assert "is empty" in geometry_of(helper.make_node("MatMul", ["x", "w"], ["y"]), (4, 0))
