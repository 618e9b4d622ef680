"""CLI error behaviour for bad model files: exit code 2, one ``error:`` line and a ``hint:`` line on stderr,
no traceback unless ``--debug`` (or ONNXQ_DEBUG=1), and the input file left byte-identical.

Each case runs through ``onnxq.cli.main`` with a throwaway command that only loads the model (registered
inside the test), and with the real ``inspect`` command when it exists.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import click
import onnx
import pytest

from conftest import REPO, make_tiny_model
from onnxq import cli
from onnxq.errors import ModelLoadError, ModelValidationError
from onnxq.model import load_model

LOAD_ONLY = "_load_only"
HAS_INSPECT = importlib.util.find_spec("onnxq.cli.inspect") is not None


def _load_only_module() -> types.ModuleType:
    module = types.ModuleType("_onnxq_test_load_only")

    @click.command(LOAD_ONLY)
    @click.argument("model", type=click.Path(path_type=Path))
    def load_only(model: Path) -> None:
        loaded = load_model(model)
        click.echo(f"loaded {len(loaded.graph.node)} nodes")

    @click.command("_crash")
    def crash() -> None:
        raise RuntimeError("a bug, not a user error")

    module.load_only, module.crash = load_only, crash
    return module


@pytest.fixture(params=[LOAD_ONLY, "inspect"])
def command(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The CLI command under test: the throwaway loader (registered for this test only) or inspect."""
    if request.param == "inspect" and not HAS_INSPECT:
        pytest.skip("the inspect command is not written yet")
    module = _load_only_module()
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.COMMANDS, LOAD_ONLY, (module.__name__, "load_only", "test only"))
    monkeypatch.setitem(cli.COMMANDS, "_crash", (module.__name__, "crash", "test only"))
    monkeypatch.delenv("ONNXQ_DEBUG", raising=False)
    return request.param


def _write(path: Path, raw: bytes) -> Path:
    path.write_bytes(raw)
    return path


def _edited(tmp_path: Path, edit) -> Path:
    model = make_tiny_model()
    edit(model)
    return _write(tmp_path / "m.onnx", model.SerializeToString())


def _external_outside(tmp_path: Path) -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save_model(make_tiny_model(), path, save_as_external_data=True, location="w.data", size_threshold=0)
    (tmp_path / "w.data").write_bytes((folder / "w.data").read_bytes())
    model = onnx.load(path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../w.data"
    return _write(path, model.SerializeToString())


def _unknown_op(model: onnx.ModelProto) -> None:
    model.graph.node[0].op_type = "Conv2D"


def _rename_input(model: onnx.ModelProto) -> None:
    model.graph.node[2].input[0] = "ghost_tensor"


def _duplicate_output(model: onnx.ModelProto) -> None:
    model.graph.node[1].output[0] = "f"
    model.graph.node[2].input[0] = "c"


# (id, builder of the bad file, fragment of the error line)
CASES = [
    ("missing", lambda d: d / "absent.onnx", "no such file"),
    ("folder", lambda d: d, "is a folder"),
    ("empty", lambda d: _write(d / "m.onnx", b""), "is empty"),
    ("not_onnx", lambda d: _write(d / "m.onnx", b"PK\x03\x04 a zip, not a model" * 20), "not an ONNX model"),
    ("truncated", lambda d: _write(d / "m.onnx", make_tiny_model().SerializeToString()[:700]), "truncated"),
    (
        "checker",
        lambda d: _edited(d, lambda m: setattr(m.graph.node[0], "op_type", "Conv2D")),
        "onnx.checker",
    ),
    ("ir_version", lambda d: _edited(d, lambda m: setattr(m, "ir_version", 42)), "IR version 42"),
    ("opset", lambda d: _edited(d, lambda m: setattr(m.opset_import[0], "version", 6)), "opset 6"),
    ("duplicate_name", lambda d: _edited(d, _duplicate_output), "defined twice"),
    ("missing_tensor", lambda d: _edited(d, _rename_input), "ghost_tensor"),
    ("unsafe_external", _external_outside, "outside the model's folder"),
]


def _run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_model_gives_exit_2_with_error_and_hint(tmp_path, capsys, command, case):
    _, build, fragment = case
    path = build(tmp_path)
    before = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    code, out, err = _run([command, str(path)], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: ") and fragment in lines[0]
    assert lines[1].startswith("hint: ") and len(lines) == 2
    assert "Traceback" not in err and out == ""
    if before is not None:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_good_model_exits_0(tmp_path, capsys, command):
    path = _write(tmp_path / "m.onnx", make_tiny_model().SerializeToString())
    code, out, err = _run([command, str(path)], capsys)
    assert code == 0, err
    assert out.strip() and err == ""


def test_debug_flag_and_env_show_the_exception(tmp_path, capsys, command, monkeypatch):
    path = _write(tmp_path / "m.onnx", b"")
    with pytest.raises(ModelLoadError, match="empty"):  # main re-raises: Python prints the traceback
        cli.main(["--debug", command, str(path)])
    monkeypatch.setenv("ONNXQ_DEBUG", "1")
    missing = _edited(tmp_path, _rename_input)
    with pytest.raises(ModelValidationError, match="ghost_tensor"):
        cli.main([command, str(missing)])
    monkeypatch.setenv("ONNXQ_DEBUG", "0")  # "0" means off
    assert _run([command, str(path)], capsys)[0] == 2


def test_internal_error_exits_1_without_traceback(capsys, command):
    code, _, err = _run(["_crash"], capsys)
    assert code == 1
    assert err.startswith("internal error: RuntimeError") and "--debug" in err and "Traceback" not in err


def _subprocess(args: list[str]) -> subprocess.CompletedProcess:
    """Run the real entry point in a fresh interpreter, with the throwaway loader registered."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_cli_errors import _load_only_module
        from onnxq import cli
        module = _load_only_module()
        sys.modules[module.__name__] = module
        cli.COMMANDS[{LOAD_ONLY!r}] = (module.__name__, "load_only", "test only")
        sys.exit(cli.main())
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "ONNXQ_DEBUG"}
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )


def test_process_exit_code_and_traceback_only_with_debug(tmp_path):
    path = _write(tmp_path / "m.onnx", make_tiny_model().SerializeToString()[:500])
    plain = _subprocess([LOAD_ONLY, str(path)])
    assert plain.returncode == 2
    assert plain.stderr.startswith("error: ") and "hint: " in plain.stderr and "Traceback" not in plain.stderr
    debug = _subprocess(["--debug", LOAD_ONLY, str(path)])
    assert debug.returncode == 1  # an uncaught exception
    assert "Traceback (most recent call last)" in debug.stderr and "ModelLoadError" in debug.stderr


@pytest.mark.parametrize(
    "argv",
    [["eval", "m.onnx", "--data", "d.npz", "--report", "."], ["quantize"], ["no-such-command"], ["bench", "--bogus"]],
)
def test_usage_errors_print_the_same_error_and_hint_lines(argv, capsys):
    # click printed "Usage: ..." first and "Error: ..." after it
    code = cli.main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 2
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: ") and "`onnxq" in lines[1]
    assert "--help` lists the" in lines[1]


def test_python_warnings_come_after_the_error_line(capsys, monkeypatch):
    import warnings

    module = types.ModuleType("_onnxq_test_warn")

    @click.command("_warn_then_fail")
    def warn_then_fail() -> None:
        warnings.warn("overflow encountered in cast", RuntimeWarning, stacklevel=1)
        raise ModelLoadError("bad model", hint="fix it")

    module.warn_then_fail = warn_then_fail
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.COMMANDS, "_warn_then_fail", (module.__name__, "warn_then_fail", "test only"))
    monkeypatch.delenv("ONNXQ_DEBUG", raising=False)
    code, _, err = _run(["_warn_then_fail"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and lines[:2] == ["error: bad model", "hint: fix it"]
    assert lines[2].startswith("warning: overflow encountered in cast (RuntimeWarning, test_cli_errors.py:")


@pytest.mark.parametrize("command", ["quantize", "eval", "eval-session"])
def test_onnxruntime_failures_print_no_log_line_before_the_error(tmp_path, capfd, monkeypatch, command):
    import numpy as np
    from onnx import numpy_helper

    # ORT's own logger wrote "[E:onnxruntime:...] Non-zero status code..." to fd 2 before onnxq's error line
    monkeypatch.delenv("ONNXQ_DEBUG", raising=False)
    samples = REPO / "sample_models"
    model = onnx.load(samples / "resnet_digits.onnx")
    if command == "eval-session":  # fails when the session is created
        conv = next(n for n in model.graph.node if n.op_type == "Conv")
        conv.attribute.append(onnx.helper.make_attribute("auto_pad", "BOGUS"))
    else:  # fails in the first run: a Conv weight with the wrong number of input channels
        weight = next(t for t in model.graph.initializer if len(t.dims) == 4 and t.dims[1] == 16)
        narrow = np.ones([weight.dims[0], 15, *weight.dims[2:]], np.float32)
        weight.CopyFrom(numpy_helper.from_array(narrow, weight.name))
    path = tmp_path / "broken.onnx"
    onnx.save(model, path)
    argv = {
        "quantize": ["quantize", str(path), "-o", str(tmp_path / "q.onnx"), "--calib", str(samples / "calib.npz")],
        "eval": ["eval", str(path), "--data", str(samples / "test.npz")],
        "eval-session": ["eval", str(path), "--data", str(samples / "test.npz")],
    }[command]
    assert cli.main([*argv, "--no-progress"] if command == "quantize" else argv) == 2
    assert capfd.readouterr().err.startswith("error:")
