"""The README's first command (the demo) runs as written: its `onnxq run` part, with the outputs moved into a
temporary folder and few timed runs (the timing itself is measured by bench/demo.py, not here)."""

from __future__ import annotations

import json
import re
import shlex

from conftest import REPO
from onnxq.cli import main


def readme_run_argv() -> list[str]:
    block = re.search(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)
    assert block, "README.md lost its first bash block"
    parts = [p.strip() for p in block.group(1).split("&&")]
    assert parts[:3] == ["python3.11 -m venv .venv", ". .venv/bin/activate", "pip install -e ."], parts
    return shlex.split(next(p for p in parts if p.startswith("onnxq run")))


def test_readme_demo_command_runs_and_writes_its_report(tmp_path, monkeypatch, capsys):
    argv = readme_run_argv()
    assert "sample_models/resnet_wide_digits.onnx" in argv  # the model big enough for int8 to pay off
    for flag in ("-o", "--report"):
        i = argv.index(flag) + 1
        argv[i] = str(tmp_path / argv[i].removeprefix("out/"))
    monkeypatch.chdir(REPO)  # the README's paths are relative to the repository root
    report = tmp_path / "report.json"  # a second --report wins: JSON, to read the numbers back
    assert main([*argv[1:], "--report", str(report), "--runs", "5", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "resnet_wide_digits.onnx" in out and "speedup" in out
    bench = json.loads(report.read_text())["bench"]
    assert [e["batch"] for e in bench] == [int(argv[argv.index("--batch") + 1])] * 2
    assert (tmp_path / "resnet_wide_digits.qdq.onnx").is_file()
