"""Shared test fixtures: where the models live, a copy helper, and a tiny valid model.

Models are never copied into the repository: sample models are built by ``sample_models/build.py``, and
the real pretrained models live in ``../shared/models`` beside the repository. Fixtures that need them
skip cleanly when they are absent.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "models"
SAMPLE_MODELS = REPO / "sample_models"


def cpu_weight_type() -> str:
    """The int8-grid weight type whose products ORT's CPU kernels compute exactly on this machine: int8, or
    uint8 with zero point 128 where they saturate uint8 x int8 (onnxq.runtime.cpu_int8)."""
    from onnxq.quantize.targets import TARGETS, default_weight_type

    return default_weight_type(TARGETS["ort"], "uint8")


def _sample_models() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SAMPLE_MODELS.glob("*.onnx"))}


def _shared_models() -> dict[str, Path]:
    return {p.parent.name: p for p in sorted(SHARED_MODELS.glob("*/model.onnx"))}


@pytest.fixture
def sample_model_paths() -> dict[str, Path]:
    """{stem: path} of every sample_models/*.onnx; skips the test when there are none yet."""
    found = _sample_models()
    if not found:
        pytest.skip(f"no sample models in {SAMPLE_MODELS} (run sample_models/build.py)")
    return found


@pytest.fixture
def shared_model_paths() -> dict[str, Path]:
    """{folder name: path} of every ../shared/models/*/model.onnx; skips the test when there are none."""
    found = _shared_models()
    if not found:
        pytest.skip(f"no shared models in {SHARED_MODELS}")
    return found


@pytest.fixture(params=sorted(_sample_models()) or ["<none>"])
def sample_model_path(request: pytest.FixtureRequest) -> Path:
    """One sample model per test instance (parametrized over all of them); skips when there are none."""
    found = _sample_models()
    if request.param not in found:
        pytest.skip(f"no sample models in {SAMPLE_MODELS}")
    return found[request.param]


@pytest.fixture(params=sorted(_shared_models()) or ["<none>"])
def shared_model_path(request: pytest.FixtureRequest) -> Path:
    """One shared pretrained model per test instance; skips when ../shared/models is absent."""
    found = _shared_models()
    if request.param not in found:
        pytest.skip(f"no shared models in {SHARED_MODELS}")
    return found[request.param]


@pytest.fixture
def copy_to_tmp(tmp_path: Path) -> Callable[..., Path]:
    """``copy_to_tmp(src, name=None)`` copies a file into this test's tmp_path and returns the copy."""

    def copy(src: Path, name: str | None = None) -> Path:
        dest = tmp_path / (name or Path(src).name)
        shutil.copyfile(src, dest)
        return dest

    return copy


def json_schema_validator(path: Path):
    """A draft 2020-12 validator for the JSON Schema at ``path``, the schema checked first; skips without jsonschema."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(Path(path).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def make_tiny_model() -> onnx.ModelProto:
    """A valid 4-node model (Conv -> Clip -> Reshape -> Gemm), x [1,1,8,8] -> y [1,4], opset 13.

    The Gemm weight (4x72 float32, 1152 bytes) is above 1 KiB and stored as float_data (not raw_data);
    the other tensors are small and raw, so external-data tests see both kinds.
    """
    rng = np.random.default_rng(0)
    conv_w = numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "conv_w")
    conv_b = numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "conv_b")
    fc_w = helper.make_tensor("fc_w", TensorProto.FLOAT, [4, 72], rng.standard_normal(288).tolist())
    shape = numpy_helper.from_array(np.array([1, 72], np.int64), "flat_shape")
    lo = numpy_helper.from_array(np.array(0.0, np.float32), "clip_lo")
    hi = numpy_helper.from_array(np.array(6.0, np.float32), "clip_hi")
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv", strides=[1, 1]),
        helper.make_node("Clip", ["c", "clip_lo", "clip_hi"], ["r"], name="relu6"),
        helper.make_node("Reshape", ["r", "flat_shape"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w"], ["y"], name="fc", transB=1, alpha=1.0),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [conv_w, conv_b, fc_w, shape, lo, hi],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def tiny_model() -> onnx.ModelProto:
    """A fresh copy of :func:`make_tiny_model` (tests may edit it)."""
    return make_tiny_model()
