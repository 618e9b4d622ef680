"""The shipped sample models and data (sample_models/): valid, accurate, and shaped as the tests need.

No torch here: the models are checked with onnx and onnxruntime only, the data with numpy (and
scikit-learn, where installed, to check that every image is a real digit carrying its true label).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxq.data import open_dataset
from onnxq.model import default_opset, load_model

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
MODELS = (
    "resnet_digits.onnx",
    "mobilenetv2_digits.onnx",
    "transformer_digits.onnx",
    "mlp_digits.onnx",
    "resnet_wide_digits.onnx",
)
# Far above chance (0.10) and below every model's measured accuracy (96.75% to 99.75%, see the README):
# a wrong export, a broken weight or labels out of step with the images all fall well under it.
ACCURACY_FLOOR = 0.90


@pytest.fixture(scope="module")
def test_data() -> tuple[np.ndarray, np.ndarray]:
    with np.load(SAMPLES / "test.npz", allow_pickle=False) as npz:
        return npz["input"], npz["label"]


@pytest.fixture(scope="module")
def calib_data() -> np.ndarray:
    with np.load(SAMPLES / "calib.npz", allow_pickle=False) as npz:
        assert set(npz.files) == {"input"}, "calib.npz is unlabeled: one key, 'input'"
        return npz["input"]


def load(name: str) -> onnx.ModelProto:
    return load_model(SAMPLES / name)


def ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    found = [onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name]
    return found[0] if found else default


def dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


# --- every model -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_model_passes_full_check_with_dynamic_batch_io(name: str) -> None:
    model = load(name)
    onnx.checker.check_model(model, full_check=True)
    assert default_opset(model) == 17
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert dims(model.graph.input[0]) == ["N", 1, 16, 16]
    assert dims(model.graph.output[0]) == ["N", 10]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("name", MODELS)
def test_model_classifies_test_set_above_floor(name: str, test_data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = test_data
    sess = ort.InferenceSession(str(SAMPLES / name), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x})[0]
    assert logits.shape == (len(x), 10)
    accuracy = float((logits.argmax(axis=1) == y).mean())
    assert accuracy >= ACCURACY_FLOOR, f"{name}: accuracy {accuracy:.3f} < {ACCURACY_FLOOR}"
    # The batch dimension is truly dynamic: one image at a time gives the same logits. 1e-4 absolute on
    # logits of magnitude ~10 allows for different kernel summation orders, not for a batch-mixing bug.
    single = np.concatenate([sess.run(["logits"], {"input": x[i : i + 1]})[0] for i in range(5)])
    np.testing.assert_allclose(single, logits[:5], rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_onnxq_dataset_accepts_shipped_data(name: str) -> None:
    model = load(name)
    test = open_dataset(SAMPLES / "test.npz", model)
    calib = open_dataset(SAMPLES / "calib.npz", model)
    assert len(test) == 400 and test.labels is not None and test.labels.shape == (400,)
    assert len(calib) == 200 and calib.labels is None


# --- data --------------------------------------------------------------------------------------


def test_data_shapes_dtypes_and_range(
    test_data: tuple[np.ndarray, np.ndarray], calib_data: np.ndarray
) -> None:
    x, y = test_data
    assert x.shape == (400, 1, 16, 16) and x.dtype == np.float32
    assert y.shape == (400,) and y.dtype == np.int64
    assert calib_data.shape == (200, 1, 16, 16) and calib_data.dtype == np.float32
    for arr in (x, calib_data):
        assert np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0
        assert arr.max() > 0.9  # scaled to [0, 1], not left at 0..16 or squashed
    # Stratified: 400 of 1797 images keeps each class at 400/1797 of its 174..183 images, i.e. 38.7..40.7.
    counts = np.bincount(y, minlength=10)
    assert counts.min() >= 38 and counts.max() <= 42, counts


def test_calib_and_test_are_disjoint(
    test_data: tuple[np.ndarray, np.ndarray], calib_data: np.ndarray
) -> None:
    test_rows = {row.tobytes() for row in test_data[0].reshape(400, -1)}
    calib_rows = {row.tobytes() for row in calib_data.reshape(200, -1)}
    assert len(test_rows) == 400 and len(calib_rows) == 200  # no duplicates inside either set
    assert not test_rows & calib_rows


def bilinear_x2_matrix(n: int) -> np.ndarray:
    """[2n, n] matrix of 2x bilinear upsampling with half-pixel centres, clamped at the edges."""
    out = np.zeros((2 * n, n))
    for o in range(2 * n):
        src = max((o + 0.5) / 2 - 0.5, 0.0)
        i0 = int(np.floor(src))
        i1 = min(i0 + 1, n - 1)
        out[o, i0] += 1 - (src - i0)
        out[o, i1] += src - i0
    return out


def test_images_are_upsampled_digits_with_true_labels(
    test_data: tuple[np.ndarray, np.ndarray], calib_data: np.ndarray
) -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    up = bilinear_x2_matrix(8)
    # Independent numpy re-implementation of the build's preprocessing: /16, then bilinear 8x8 -> 16x16.
    reference = np.einsum("oi,nij,pj->nop", up, digits.images / 16.0, up).reshape(len(digits.images), -1)
    for images, labels in ((test_data[0], test_data[1]), (calib_data, None)):
        flat = images.reshape(len(images), -1).astype(np.float64)
        dist = (flat**2).sum(1)[:, None] - 2 * flat @ reference.T + (reference**2).sum(1)[None, :]
        nearest = dist.argmin(axis=1)
        # float32 storage rounds each value by <= 6e-8; 1e-5 absolute per pixel leaves room for that and
        # for torch's different summation order, while any other digit differs by far more.
        np.testing.assert_allclose(flat, reference[nearest], rtol=0, atol=1e-5)
        if labels is not None:
            np.testing.assert_array_equal(labels, digits.target[nearest])


# --- structure the quantizer tests rely on -----------------------------------------------------


def test_mobilenet_keeps_batchnorm_and_has_depthwise_convs() -> None:
    model = load("mobilenetv2_digits.onnx")
    inits = initializers(model)
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert len(bns) >= 10
    for bn in bns:
        assert all(name in inits for name in bn.input[1:5]), f"{bn.name}: scale/bias/mean/var not constants"
        assert attr(bn, "training_mode", 0) == 0
    depthwise = [n for n in model.graph.node if n.op_type == "Conv" and attr(n, "group", 1) > 1]
    assert len(depthwise) >= 3
    for conv in depthwise:
        weight = inits[conv.input[1]]
        # Depthwise: one 3x3 filter per channel, group == channels == output channels.
        assert weight.shape[1] == 1 and weight.shape[0] == attr(conv, "group") and weight.shape[2:] == (3, 3)
    assert ops(model)["Add"] >= 2  # residual Adds where shapes match


def test_mobilenet_relu6_is_clip_0_6() -> None:
    model = load("mobilenetv2_digits.onnx")
    constants = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for n in model.graph.node
        if n.op_type == "Constant"
    }
    constants.update(initializers(model))
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    assert clips
    for clip in clips:
        assert float(constants[clip.input[1]]) == 0.0 and float(constants[clip.input[2]]) == 6.0


def test_transformer_has_hand_written_attention() -> None:
    counts = ops(load("transformer_digits.onnx"))
    assert counts["MatMul"] >= 4 and counts["Softmax"] >= 1 and counts["LayerNormalization"] >= 2
    assert not {"Attention", "MultiHeadAttention"} & set(counts)


def test_resnet_has_residual_add_pooling_and_gemm_head() -> None:
    model = load("resnet_digits.onnx")
    counts = ops(model)
    assert counts["Add"] >= 1 and counts["Gemm"] == 1 and counts["Conv"] >= 4
    assert counts["MaxPool"] + counts["GlobalAveragePool"] >= 1
    assert model.graph.node[-1].op_type == "Gemm"


def test_mlp_is_flatten_then_gemms() -> None:
    counts = ops(load("mlp_digits.onnx"))
    assert counts["Gemm"] == 3 and counts["Conv"] == 0
    assert counts["Flatten"] + counts["Reshape"] == 1


def conv_and_gemm_multiply_adds(model: onnx.ModelProto) -> int:
    """Multiply-adds of one image through the Conv and Gemm nodes, from the graph's own shapes (batch 1)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(fixed)
    shapes = {v.name: dims(v) for v in [*inferred.graph.value_info, *inferred.graph.output]}
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":  # every output value: in_channels/group * kh * kw products
            _, c_in_per_group, kh, kw = weights[node.input[1]]
            total += int(np.prod(shapes[node.output[0]])) * c_in_per_group * kh * kw
        elif node.op_type == "Gemm":
            total += int(np.prod(weights[node.input[1]]))
    return total


def test_demo_model_does_enough_work_for_int8_within_the_size_budget() -> None:
    """The README's demo: tens of millions of multiply-adds per image (the small models do under 2 million,
    where Q/DQ overhead and timer noise swamp any int8 gain), in a file under 2.5 MB."""
    model = load("resnet_wide_digits.onnx")
    macs = conv_and_gemm_multiply_adds(model)
    assert macs >= 40_000_000, macs
    assert max(conv_and_gemm_multiply_adds(load(name)) for name in MODELS[:4]) < 2_000_000
    assert (SAMPLES / "resnet_wide_digits.onnx").stat().st_size < 2_500_000
    counts = ops(model)
    assert counts["Add"] >= 2 and counts["MaxPool"] == 0 and counts["BatchNormalization"] == 0
