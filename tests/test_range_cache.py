"""``--save-ranges`` / ``--load-ranges``: a loaded calibration cache gives byte for byte the model a fresh
calibration on the same data gives, for the recipe it was saved with and for others; a cache for another model,
placement or method is refused."""

from __future__ import annotations

import json

import pytest

from conftest import SAMPLE_MODELS
from onnxq.cli import main
from onnxq.quantize.range_cache import SCHEMA

RESNET = str(SAMPLE_MODELS / "resnet_digits.onnx")
MOBILENET = str(SAMPLE_MODELS / "mobilenetv2_digits.onnx")
CALIB = str(SAMPLE_MODELS / "calib.npz")


def _quantize(out, model=RESNET, *flags, calib=True) -> int:
    return main(["quantize", model, "-o", str(out), *(["--calib", CALIB] if calib else []), "--no-progress", *flags])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ranges")
    assert _quantize(folder / "fresh.onnx", RESNET, "--save-ranges", str(folder / "ranges.json")) == 0
    return folder


def test_the_cache_is_versioned_json_with_a_range_per_tensor(cache):
    doc = json.loads((cache / "ranges.json").read_text())
    assert doc["schema"] == SCHEMA and doc["method"] == "minmax" and len(doc["model_sha256"]) == 64
    assert doc["samples"] == 200 and doc["tensors"]
    assert all(t["min"] <= t["max"] and t["method"] == "minmax" for t in doc["tensors"].values())


@pytest.mark.parametrize("recipe", [[], ["--per-tensor"], ["--weight-type", "int4"], ["--passes", "bias-correction"]])
def test_loaded_ranges_give_the_bytes_of_a_fresh_calibration(cache, tmp_path, capsys, recipe):
    assert _quantize(tmp_path / "fresh.onnx", RESNET, *recipe) == 0
    assert _quantize(tmp_path / "loaded.onnx", RESNET, *recipe, "--load-ranges", str(cache / "ranges.json")) == 0
    assert (tmp_path / "loaded.onnx").read_bytes() == (tmp_path / "fresh.onnx").read_bytes()
    assert "ranges_loaded_from=" in capsys.readouterr().out


def test_loading_needs_no_calibration_data(cache, tmp_path):
    assert _quantize(tmp_path / "q.onnx", RESNET, "--load-ranges", str(cache / "ranges.json"), calib=False) == 0
    assert (tmp_path / "q.onnx").read_bytes() == (cache / "fresh.onnx").read_bytes()


def _refused(capsys, out, model, *flags) -> list[str]:
    assert _quantize(out, model, *flags) == 2
    assert not out.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("error: --load-ranges") and lines[1].startswith("hint: ")
    return lines


def test_a_cache_for_another_model_is_refused(cache, tmp_path, capsys):
    lines = _refused(capsys, tmp_path / "q.onnx", MOBILENET, "--load-ranges", str(cache / "ranges.json"))
    assert "calibrated on another model" in lines[0] and "tensors to calibrate are not in it" in lines[0]


def test_a_cache_with_another_method_is_refused(cache, tmp_path, capsys):
    lines = _refused(capsys, tmp_path / "q.onnx", RESNET, "--method", "entropy", "--load-ranges",
                     str(cache / "ranges.json"))  # fmt: skip
    assert "holds minmax ranges" in lines[0] and "--method minmax" in lines[1]


def test_a_cache_that_lacks_tensors_of_the_recipe_is_refused(tmp_path, capsys):
    partial = tmp_path / "partial.json"
    assert _quantize(tmp_path / "p.onnx", RESNET, "--include-op-type", "Gemm", "--save-ranges", str(partial)) == 0
    capsys.readouterr()
    lines = _refused(capsys, tmp_path / "q.onnx", RESNET, "--load-ranges", str(partial))
    assert "has no range for" in lines[0] and "--target" in lines[1]


def test_a_cache_after_other_float_passes_is_refused(cache, tmp_path, capsys):
    lines = _refused(capsys, tmp_path / "q.onnx", RESNET, "--passes", "cle", "--load-ranges",
                     str(cache / "ranges.json"))  # fmt: skip
    assert "other float passes" in lines[0] and "now: cle" in lines[0]


def test_a_cache_of_another_schema_is_refused(cache, tmp_path, capsys):
    doc = json.loads((cache / "ranges.json").read_text())
    doc["schema"] = "onnxq.ranges/0"
    (tmp_path / "old.json").write_text(json.dumps(doc))
    lines = _refused(capsys, tmp_path / "q.onnx", RESNET, "--load-ranges", str(tmp_path / "old.json"))
    assert "onnxq.ranges/0" in lines[0]


def test_save_ranges_is_checked_before_any_work(tmp_path, capsys):
    assert _quantize(tmp_path / "q.onnx", RESNET, "--save-ranges", str(tmp_path / "no-such" / "r.json")) == 2
    assert not (tmp_path / "q.onnx").exists() and capsys.readouterr().err.startswith("error: --save-ranges")


def test_a_cache_with_an_inverted_range_is_refused(cache, tmp_path, capsys):
    doc = json.loads((cache / "ranges.json").read_text())
    name, entry = next(iter(doc["tensors"].items()))
    entry["min"], entry["max"] = entry["max"] + 1.0, entry["min"]
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    lines = _refused(capsys, tmp_path / "q.onnx", RESNET, "--load-ranges", str(tmp_path / "bad.json"))
    assert f"tensor {name!r} has min" in lines[0] and "> max" in lines[0]
