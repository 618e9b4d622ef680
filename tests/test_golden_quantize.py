"""Refactors keep the quantizer's output byte for byte.

``tests/data/golden_quantize_hashes.json`` holds the sha256 of `onnxq quantize`'s output for three recipes on
the four sample models, squeezenet1.1 and ppocr_mobile_v2_cls, one record per environment. Calibration runs
onnxruntime and numpy, whose float results depend on their versions and the CPU, and the passes that measure
quantized models run ORT's integer kernels, which saturate uint8 x int8 products on some CPUs
(:mod:`onnxq.runtime.cpu_int8`); so a record is compared only where its environment matches (and the test
skips, saying why, elsewhere). A change that is meant to change the numbers re-records this environment's
record with ``python tests/test_golden_quantize.py --record`` and says so in its commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import numpy
import onnx
import onnxruntime
import pytest

from conftest import REPO, SAMPLE_MODELS, SHARED_MODELS
from onnxq.cli import main

GOLDEN_FILE = REPO / "tests" / "data" / "golden_quantize_hashes.json"
GOLDEN = json.loads(GOLDEN_FILE.read_text())
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


ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def _isa() -> str:
    """The instruction-set extensions that choose ORT's and numpy's kernels (a virtual CPU's model name, "AMD
    EPYC", says nothing of them: two such machines gave the transformer's recipes different bytes)."""
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())  # fmt: skip
    except (OSError, StopIteration):
        return platform.machine()
    return " ".join(f for f in ISA_FLAGS if f in flags)


def _environment() -> dict[str, str]:
    from onnxq.runtime.cpu_int8 import ENV, u8s8_saturates

    if os.environ.get(ENV):  # the record is of what this machine's kernels do, not of an override
        pytest.skip(f"{ENV} is set")
    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__,
            "cpu": _cpu(), "cpu_isa": _isa(), "cpu_u8s8": "saturates" if u8s8_saturates() else "exact"}  # fmt: skip


def _record_here() -> dict | None:
    here = _environment()
    return next((r for r in GOLDEN["records"] if r["environment"] == here), None)


def _quantize(case: str, out: Path) -> str | None:
    """The sha256 of the case's output, or None when its model is absent."""
    name, recipe = case.split("/")
    model, calib = MODELS[name]
    if not model.exists():
        return None
    args = ["quantize", str(model), "-o", str(out), "--calib", str(calib), "--no-progress", *GOLDEN["recipes"][recipe]]
    assert main(args) == 0
    return hashlib.sha256(out.read_bytes()).hexdigest()


CASES = sorted(f"{name}/{recipe}" for name in MODELS for recipe in GOLDEN["recipes"])


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_quantized_model_is_byte_identical_to_the_recorded_one(case, tmp_path):
    record = _record_here()
    if record is None:
        pytest.skip(f"no record for this environment {_environment()}: python tests/test_golden_quantize.py --record")
    if case not in record["hashes"]:
        pytest.skip(f"{case} was not recorded here (its model was absent)")
    digest = _quantize(case, tmp_path / "q.onnx")
    if digest is None:
        pytest.skip(f"{MODELS[case.split('/')[0]][0]} is absent")
    assert digest == record["hashes"][case]


def _record() -> None:
    """Replace (or add) this environment's record; the others are kept."""
    import tempfile

    here = _environment()
    with tempfile.TemporaryDirectory() as tmp:
        hashes = {case: d for case in CASES if (d := _quantize(case, Path(tmp) / "q.onnx")) is not None}
    GOLDEN["records"] = [r for r in GOLDEN["records"] if r["environment"] != here] + [
        {"environment": here, "hashes": hashes}
    ]
    GOLDEN_FILE.write_text(json.dumps(GOLDEN, indent=1) + "\n")
    print(f"recorded {len(hashes)} hashes for {here}")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/test_golden_quantize.py --record")
    _record()
