"""Where onnxq writes: every output and report path is checked before any work (its folder exists and can be
written, it is no input under any spelling or link), and a write that fails later is still a clean error.

An unwritable folder is simulated by making the temporary-file creation beside it fail, as a read-only
folder does for a user other than root (the tests run as root on CI, where permission bits do not stop
writes); one test uses a real read-only folder where the user is not root.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import SAMPLE_MODELS, make_tiny_model
from onnxq import model_files
from onnxq.cli import main
from onnxq.errors import ConfigError, ModelLoadError, OutputPathError
from onnxq.model import load_model, save_model
from onnxq.report.document import build_report, write_report

MODEL = SAMPLE_MODELS / "mlp_digits.onnx"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A model, 4 calibration samples, 4 labelled test samples and a recipe, in tmp_path."""
    x = np.load(SAMPLE_MODELS / "test.npz")
    paths = {"model": tmp_path / "m.onnx", "calib": tmp_path / "calib.npz", "data": tmp_path / "test.npz"}
    paths["model"].write_bytes(MODEL.read_bytes())
    np.savez(paths["calib"], input=x["input"][:4])
    np.savez(paths["data"], input=x["input"][:4], label=x["label"][:4])
    paths["recipe"] = tmp_path / "recipe.json"
    paths["recipe"].write_text('{"method": "minmax"}')
    return paths


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def commands(f: dict[str, Path], out: Path, report: Path) -> dict[str, list]:
    quick = ["--runs", "2", "--warmup", "1"]
    return {
        "quantize": ["quantize", f["model"], "-o", out, "--calib", f["calib"], "--no-progress"],
        "fp16": ["fp16", f["model"], "-o", out],
        "run-output": ["run", f["model"], "-o", out, "--calib", f["calib"], "--data", f["data"], *quick],
        "run-report": ["run", f["model"], "-o", f["model"].with_name("q.onnx"), "--calib", f["calib"], "--data",
                       f["data"], "--report", report, *quick],  # fmt: skip
        "eval": ["eval", f["model"], "--data", f["data"], "--report", report],
        "bench": ["bench", f["model"], "--runs", "2", "--warmup", "1", "--report", report],
    }


@pytest.mark.parametrize("command", ["quantize", "fp16", "run-output", "run-report", "eval", "bench"])
def test_an_unwritable_output_folder_fails_before_any_work(files, tmp_path, capsys, monkeypatch, command):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_open = model_files.open_temp_beside

    def open_temp_beside(final: Path):
        if final.parent == locked:
            raise PermissionError(13, "Permission denied")
        return real_open(final)

    monkeypatch.setattr(model_files, "open_temp_beside", open_temp_beside)
    before = digests(tmp_path)
    code, out, err = run_cli(commands(files, locked / "q.onnx", locked / "r.json")[command], capsys)
    what = "output model" if command in ("quantize", "fp16", "run-output") else "report"
    assert code == 2 and err.startswith(f"error: cannot write the {what}")
    assert "is not writable" in err and out == ""  # nothing ran: no summary, no table
    assert digests(tmp_path) == before and list(locked.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_real_read_only_folder_is_refused_for_the_report(files, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    code, _, err = run_cli(["eval", files["model"], "--data", files["data"], "--report", locked / "r.json"], capsys)
    assert code == 2 and "is not writable" in err


def test_a_report_write_that_fails_late_is_an_output_error(tmp_path, monkeypatch):
    def fail(final, payload):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_files, "write_temp_file", fail)
    with pytest.raises(OutputPathError, match="No space left on device"):
        write_report(tmp_path / "r.json", build_report(environment={}))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "case",
    ["quantize-calib", "quantize-calib-link", "quantize-recipe", "run-data", "run-report-is-output",
     "eval-report-is-model", "bench-report-is-model"],
)  # fmt: skip
def test_an_output_that_is_an_input_is_refused(files, tmp_path, capsys, case):
    f = files
    link = tmp_path / "alias.npz"
    link.symlink_to(f["calib"])
    as_json = tmp_path / "model.json"  # load_model does not care about the suffix; a report would overwrite it
    as_json.write_bytes(MODEL.read_bytes())
    quantize = ["quantize", f["model"], "--calib", f["calib"], "--no-progress"]
    argv = {
        "quantize-calib": [*quantize, "-o", f["calib"]],
        "quantize-calib-link": [*quantize, "-o", link],
        "quantize-recipe": [*quantize, "--recipe", f["recipe"], "-o", f["recipe"]],
        "run-data": ["run", f["model"], "--calib", f["calib"], "--data", f["data"], "-o", f["data"]],
        "run-report-is-output": ["run", f["model"], "--calib", f["calib"], "--data", f["data"],
                                 "-o", tmp_path / "q.json", "--report", tmp_path / "q.json"],  # fmt: skip
        "eval-report-is-model": ["eval", as_json, "--data", f["data"], "--report", as_json],
        "bench-report-is-model": ["bench", as_json, "--runs", "2", "--report", as_json],
    }[case]
    before = digests(tmp_path)
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and err.startswith("error: the ") and "onnxq never overwrites its inputs" in err.splitlines()[0]
    assert out == "" and digests(tmp_path) == before


def test_a_symlink_loop_as_model_or_output_is_a_clean_error(files, tmp_path, capsys):
    loop = tmp_path / "loop.onnx"
    loop.symlink_to(loop.name)
    code, _, err = run_cli(["quantize", loop, "-o", tmp_path / "q.onnx", "--calib", files["calib"]], capsys)
    assert code == 2 and err.startswith("error: cannot open") and "symbolic links" in err
    code, _, err = run_cli(["quantize", files["model"], "-o", loop, "--calib", files["calib"]], capsys)
    assert code == 2 and err.startswith("error: the output path") and "unusable" in err


def test_an_external_data_file_in_a_symlink_loop_is_a_load_error(tmp_path):
    path = save_model(make_tiny_model(), tmp_path / "m.onnx", external_data=True)
    data = tmp_path / "m.onnx.data"
    data.unlink()
    data.symlink_to(data.name)
    with pytest.raises(ModelLoadError, match="cannot resolve its external-data location"):
        load_model(path)


def test_a_recipe_that_is_not_a_regular_utf8_file_is_a_config_error(files, tmp_path):
    from onnxq.quantize.recipe import load_recipe_mapping

    binary = tmp_path / "r.json"
    binary.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ConfigError, match="cannot read the recipe file"):
        load_recipe_mapping(binary)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.json")
        with pytest.raises(ConfigError, match="is not a regular file"):
            load_recipe_mapping(tmp_path / "fifo.json")  # is_file() is False: it is never opened


def test_quantize_api_refuses_the_calibration_file_as_output(files):
    from onnxq.quantize.driver import quantize

    before = files["calib"].read_bytes()
    with pytest.raises(OutputPathError, match="is the calibration data"):
        quantize(files["model"], files["calib"], files["calib"])
    assert files["calib"].read_bytes() == before
    assert onnx.load(files["model"]).graph.node  # the model is untouched too


def test_an_output_over_the_input_models_external_data_is_refused(files, tmp_path, capsys):
    # the quantized model was written over weights.bin, and the input model could no longer load
    model = tmp_path / "ext" / "m.onnx"
    model.parent.mkdir()
    onnx.save(onnx.load(MODEL), model, save_as_external_data=True, location="weights.bin", size_threshold=1024)
    before = digests(model.parent)
    code, out, err = run_cli(["quantize", model, "-o", model.parent / "weights.bin", "--calib", files["calib"]], capsys)
    assert code == 2 and "is an external-data file of the input model" in err.splitlines()[0] and out == ""
    assert digests(model.parent) == before
    assert load_model(model).graph.initializer  # still loads
