"""One CLI behaviour: every usage error is one ``error:`` and one ``hint:`` line with exit code 2, every command
takes ``--json`` (and its stdout then parses as JSON), and counts are validated, never coerced."""

from __future__ import annotations

import json

import click
import pytest

from conftest import SAMPLE_MODELS
from onnxq import cli
from onnxq.cli import main

MLP = str(SAMPLE_MODELS / "mlp_digits.onnx")
CALIB = str(SAMPLE_MODELS / "calib.npz")
TEST = str(SAMPLE_MODELS / "test.npz")

# (id, argv, a fragment the hint must hold)
USAGE_ERRORS = [
    ("missing-argument", ["quantize"], "usage: onnxq quantize [OPTIONS] MODEL"),
    ("missing-required-option", ["quantize", MLP], "`onnxq quantize --help`"),
    ("bad-choice", ["quantize", MLP, "-o", "q.onnx", "--target", "tensorrtt"], "did you mean 'tensorrt'?"),
    ("bad-choice-case", ["eval", MLP, "--data", TEST, "--ep", "cdua"], "did you mean 'cuda'?"),
    ("bad-int", ["quantize", MLP, "-o", "q.onnx", "--batch-size", "abc"], "`onnxq quantize --help`"),
    ("zero-batch-size", ["quantize", MLP, "-o", "q.onnx", "--batch-size", "0"], "`onnxq quantize --help`"),
    ("negative-batch-size", ["quantize", MLP, "-o", "q.onnx", "--batch-size", "-1"], "`onnxq quantize --help`"),
    ("zero-runs", ["bench", MLP, "--runs", "0"], "`onnxq bench --help`"),
    ("zero-percentile", ["quantize", MLP, "-o", "q.onnx", "--percentile", "0"], "`onnxq quantize --help`"),
    ("agreement-over-100", ["eval", MLP, "--data", TEST, "--min-agreement", "101"], "`onnxq eval --help`"),
    ("unknown-option", ["quantize", MLP, "-o", "q.onnx", "--exclud-node", "x"], "did you mean --exclude-node"),
    ("unknown-command", ["evl"], "did you mean eval?"),
    ("option-without-value", ["quantize", MLP, "-o"], "`onnxq quantize --help`"),
    ("extra-argument", ["inspect", MLP, "other.onnx"], "usage: onnxq inspect [OPTIONS] MODEL"),
    ("unknown-root-option", ["--bogus"], "`onnxq --help`"),
]


@pytest.mark.parametrize("argv, fragment", [c[1:] for c in USAGE_ERRORS], ids=[c[0] for c in USAGE_ERRORS])
def test_usage_error_is_one_error_and_one_hint_line_with_exit_2(argv, fragment, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # q.onnx, if anything were written, lands here
    monkeypatch.delenv("ONNXQ_DEBUG", raising=False)
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert out == "" and "Traceback" not in err
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), lines
    assert fragment in lines[1], lines[1]
    assert not (tmp_path / "q.onnx").exists()


def test_every_command_takes_json():
    root = click.Context(cli.cli, info_name="onnxq")
    lacking = [name for name in cli.COMMANDS if "--json" not in _flags(cli.cli.get_command(root, name))]
    assert not lacking, lacking


def _flags(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in getattr(p, "opts", [])}


def test_commands_that_measure_or_summarise_take_report():
    root = click.Context(cli.cli, info_name="onnxq")
    for name in ("analyze", "bench", "eval", "quantize", "run"):
        assert "--report" in _flags(cli.cli.get_command(root, name)), name


def _json_argv(tmp_path):
    quick = ["--runs", "2", "--warmup", "0"]
    return {
        "inspect": ["inspect", MLP],
        "passes": ["passes"],
        "policy": ["policy", "--target", "tensorrt"],
        "fp16": ["fp16", MLP, "-o", str(tmp_path / "f.onnx")],
        "quantize": ["quantize", MLP, "-o", str(tmp_path / "q.onnx"), "--calib", CALIB, "--no-progress"],
        "eval": ["eval", MLP, "--data", TEST, "--reference", MLP],
        "bench": ["bench", MLP, *quick],
        "run": ["run", MLP, "--calib", CALIB, "--data", TEST, "-o", str(tmp_path / "r.onnx"), "--no-progress", *quick],
        "convert": ["convert", str(tmp_path / "qdq.onnx"), "-o", str(tmp_path / "c.onnx"), "--data", TEST],
        "lint": ["lint", str(tmp_path / "qdq.onnx"), "--target", "ort"],
        "sweep": ["sweep", str(tmp_path / "spec.json"), "-o", str(tmp_path / "sweep"), "--no-progress"],
        "analyze": ["analyze", MLP, "--calib", CALIB, "--samples", "8"],
    }


@pytest.mark.parametrize("command", ["analyze", "bench", "convert", "eval", "fp16", "inspect", "lint", "passes",
                                     "policy", "quantize", "run", "sweep"])  # fmt: skip
def test_json_output_is_one_json_document_on_stdout(command, tmp_path, capsys):
    assert sorted(_json_argv(tmp_path)) == sorted(cli.COMMANDS)  # a new command gets a case here
    if command in ("convert", "lint"):  # they read a QDQ model
        assert main(["quantize", MLP, "-o", str(tmp_path / "qdq.onnx"), "--calib", CALIB, "--no-progress"]) == 0
        capsys.readouterr()
    if command == "sweep":  # one model, one recipe, a few timed runs
        spec = {"models": [MLP], "calib": CALIB, "data": TEST, "recipes": {"default": {}},
                "bench": {"runs": 5, "warmup": 1}}  # fmt: skip
        (tmp_path / "spec.json").write_text(json.dumps(spec))
    code = main([*_json_argv(tmp_path)[command], "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert isinstance(json.loads(out), dict)  # the whole of stdout, nothing before or after


def test_usage_hints_name_the_close_option_of_each_command(capsys):
    assert main(["bench", MLP, "--io-bindings"]) == 2
    assert "did you mean --io-binding?" in capsys.readouterr().err


def test_run_takes_benchs_timing_options_with_the_same_meaning():
    root = click.Context(cli.cli, info_name="onnxq")
    bench, run = (cli.cli.get_command(root, n) for n in ("bench", "run"))
    timing = ["--warmup", "--warmup-time", "--runs", "--duration", "--io-binding", "--opt-level", "--threads"]
    for flag in timing:
        (b,) = [p for p in bench.params if flag in p.opts]
        (r,) = [p for p in run.params if flag in p.opts]
        assert (b.name, type(b.type), b.is_flag) == (r.name, type(r.type), r.is_flag), flag
