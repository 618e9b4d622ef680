"""``onnxq eval`` as a CI gate: --atol/--rtol, --min-sqnr and --min-agreement exit 1 when a check fails, 0 when all
pass, with each verdict in the JSON; --expected compares against stored outputs (.npz or test-data .pb).

The model pairs are built so that the answer is known: a model against itself (identical outputs), and against
a copy with one Conv weight perturbed; stored outputs come from onnxruntime directly, one element moved by a
known amount at a known place.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from conftest import SAMPLE_MODELS
from onnxq.cli import main

RESNET = SAMPLE_MODELS / "resnet_digits.onnx"
TEST = SAMPLE_MODELS / "test.npz"


def _eval(capsys, model, *flags) -> tuple[int, dict]:
    code = main(["eval", str(model), "--data", str(TEST), *flags, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out else {}


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory):
    """resnet_digits with 0.5 added to one weight of its first Conv: its outputs move, by construction."""
    model = onnx.load(RESNET)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = next(t for t in model.graph.initializer if t.name == conv.input[1])
    w = numpy_helper.to_array(weight).copy()
    w.flat[0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(w, weight.name))
    path = tmp_path_factory.mktemp("perturbed") / "perturbed.onnx"
    onnx.save(model, path)
    return path


def _reference_logits(path=RESNET) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": np.load(TEST)["input"]})[0]


def test_identical_models_pass_atol_0_and_every_check(capsys):
    code, doc = _eval(capsys, RESNET, "--reference", str(RESNET), "--atol", "0", "--min-sqnr", "100",
                      "--min-agreement", "100")  # fmt: skip
    assert code == 0
    checks = doc["checks"]
    assert checks["passed"] and [r["check"] for r in checks["results"]] == ["allclose", "min_sqnr", "min_agreement"]
    assert checks["results"][0]["failing"] == 0 and checks["results"][0]["elements"] == 400 * 10
    assert checks["results"][1]["identical"]


def test_a_perturbed_weight_fails_the_tolerance_and_exits_1(capsys, perturbed):
    expected = np.abs(_reference_logits(perturbed) - _reference_logits())  # what each element moved, directly
    code, doc = _eval(capsys, perturbed, "--reference", str(RESNET), "--atol", "0")
    assert code == 1 and not doc["checks"]["passed"]
    (result,) = doc["checks"]["results"]
    assert result["failing"] == int((expected > 0).sum())
    assert result["failing_fraction"] == pytest.approx((expected > 0).mean())
    worst = result["worst"]
    sample, position = np.unravel_index(int(np.argmax(expected)), expected.shape)
    assert (worst["sample"], worst["position"]) == (sample, [position])
    assert worst["abs_error"] == pytest.approx(float(expected.max()), rel=1e-6)


def test_a_loose_enough_tolerance_passes_the_perturbed_model(capsys, perturbed):
    moved = float(np.abs(_reference_logits(perturbed) - _reference_logits()).max())
    assert _eval(capsys, perturbed, "--reference", str(RESNET), "--atol", str(moved * 1.01))[0] == 0
    assert _eval(capsys, perturbed, "--reference", str(RESNET), "--atol", str(moved * 0.99))[0] == 1


def test_min_sqnr_fails_above_the_measured_sqnr_and_passes_below(capsys, perturbed):
    ref, out = _reference_logits(), _reference_logits(perturbed)
    sqnr = 10 * np.log10(np.square(ref.astype(np.float64)).sum() / np.square(ref - out.astype(np.float64)).sum())
    code, doc = _eval(capsys, perturbed, "--reference", str(RESNET), "--min-sqnr", f"{sqnr + 0.5:.3f}")
    assert code == 1 and doc["checks"]["results"][0]["sqnr_db"] == pytest.approx(sqnr, abs=1e-3)
    assert _eval(capsys, perturbed, "--reference", str(RESNET), "--min-sqnr", f"{sqnr - 0.5:.3f}")[0] == 0


def test_checks_without_a_reference_are_a_usage_error(capsys):
    assert main(["eval", str(RESNET), "--data", str(TEST), "--atol", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: the checks") and err[1].startswith("hint: pass --reference")


def test_text_output_says_pass_or_fail_per_check(capsys, perturbed):
    assert main(["eval", str(perturbed), "--data", str(TEST), "--reference", str(RESNET), "--atol", "0"]) == 1
    out, err = capsys.readouterr()
    assert "FAIL allclose 'logits' (atol 0, rtol 0)" in out and "checks: FAILED" in out
    assert "1 of 1 checks failed" in err


def test_expected_npz_is_compared_element_by_element(capsys, tmp_path):
    logits = _reference_logits()
    np.savez(tmp_path / "expected.npz", logits=logits)
    code, doc = _eval(capsys, RESNET, "--expected", str(tmp_path / "expected.npz"), "--atol", "1e-5")
    assert code == 0 and doc["fidelity"]["reference"].endswith("(stored outputs)")
    moved = logits.copy()
    moved[123, 4] += 1.0  # one element off by 1 at a known place
    np.savez(tmp_path / "moved.npz", logits=moved)
    code, doc = _eval(capsys, RESNET, "--expected", str(tmp_path / "moved.npz"), "--atol", "0.5")
    (result,) = doc["checks"]["results"]
    assert code == 1 and result["failing"] == 1
    assert (result["worst"]["sample"], result["worst"]["position"]) == (123, [4])


def test_expected_test_data_folder_outputs_are_read(capsys, tmp_path):
    logits = _reference_logits()
    for i, start in enumerate(range(0, 400, 100)):  # four sets of 100 samples each, outputs only
        folder = tmp_path / "stored" / f"test_data_set_{i}"
        folder.mkdir(parents=True)
        tensor = numpy_helper.from_array(logits[start : start + 100], "logits")
        (folder / "output_0.pb").write_bytes(tensor.SerializeToString())
    code, doc = _eval(capsys, RESNET, "--expected", str(tmp_path / "stored"), "--atol", "1e-5", "--min-sqnr", "60")
    assert code == 0 and doc["checks"]["passed"]


def test_expected_outputs_of_another_model_are_refused(capsys, tmp_path):
    np.savez(tmp_path / "e.npz", logit=_reference_logits())
    assert main(["eval", str(RESNET), "--data", str(TEST), "--expected", str(tmp_path / "e.npz")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "'logit' is not an output of the model" in err[0] and "did you mean 'logits'?" in err[1]
    np.savez(tmp_path / "short.npz", logits=_reference_logits()[:10])
    assert main(["eval", str(RESNET), "--data", str(TEST), "--expected", str(tmp_path / "short.npz")]) == 2
    assert "holds 10 rows, for 400 samples" in capsys.readouterr().err
