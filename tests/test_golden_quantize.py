"""Refactors keep the quantizer's output byte for byte.

``tests/data/golden_quantize_hashes.json`` holds the sha256 of `onnxq quantize`'s output for three recipes on
the four sample models, squeezenet1.1 and ppocr_mobile_v2_cls, recorded before the pass-registry refactor.
Calibration runs onnxruntime and numpy, whose float results depend on their versions and the CPU, so the
comparison runs only where those match the recorded environment (and skips, saying why, elsewhere). A change
that is meant to change the numbers re-records the file and says so in its commit.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import numpy
import onnx
import onnxruntime
import pytest

from conftest import REPO, SAMPLE_MODELS, SHARED_MODELS
from onnxq.cli import main

GOLDEN = json.loads((REPO / "tests" / "data" / "golden_quantize_hashes.json").read_text())
MODELS = {
    "mlp_digits": (SAMPLE_MODELS / "mlp_digits.onnx", SAMPLE_MODELS / "calib.npz"),
    "resnet_digits": (SAMPLE_MODELS / "resnet_digits.onnx", SAMPLE_MODELS / "calib.npz"),
    "mobilenetv2_digits": (SAMPLE_MODELS / "mobilenetv2_digits.onnx", SAMPLE_MODELS / "calib.npz"),
    "transformer_digits": (SAMPLE_MODELS / "transformer_digits.onnx", SAMPLE_MODELS / "calib.npz"),
    "squeezenet1.1": (SHARED_MODELS / "squeezenet1.1" / "model.onnx",
                      SHARED_MODELS / "squeezenet1.1" / "real_inputs" / "inputs.npy"),
    "ppocr_mobile_v2_cls": (SHARED_MODELS / "ppocr_mobile_v2_cls" / "model.onnx",
                            SHARED_MODELS / "ppocr_mobile_v2_cls" / "real_inputs" / "input_00.npy"),
}  # fmt: skip


def _cpu() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def _environment_differs() -> str | None:
    here = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__,
            "cpu": _cpu()}  # fmt: skip
    diff = {k: (GOLDEN["environment"][k], v) for k, v in here.items() if GOLDEN["environment"][k] != v}
    return f"recorded with other versions or CPU: {diff}" if diff else None


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(GOLDEN["hashes"]))
def test_quantized_model_is_byte_identical_to_the_recorded_one(case, tmp_path):
    why = _environment_differs()
    if why:
        pytest.skip(why)
    name, recipe = case.split("/")
    model, calib = MODELS[name]
    if not model.exists():
        pytest.skip(f"{model} is absent")
    out = tmp_path / "q.onnx"
    args = ["quantize", str(model), "-o", str(out), "--calib", str(calib), "--no-progress", *GOLDEN["recipes"][recipe]]
    assert main(args) == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == GOLDEN["hashes"][case]
