"""The README's "Writing a pass" example, run exactly as written: it registers, runs in the float phase from the
CLI, keeps its contract, and does what it says."""

from __future__ import annotations

import re
import sys
import types

import onnx

from conftest import REPO, SAMPLE_MODELS
from onnxq.cli import main
from onnxq.quantize.registry import register_pass, unregister_pass


def _example_module() -> types.ModuleType:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- example-pass -->\s*```python\n(.*?)```\s*<!-- /example-pass -->", text, re.S)
    assert block, "README.md lost its example pass"
    module = types.ModuleType("readme_strip_doc_strings")
    sys.modules[module.__name__] = module  # dataclasses look their module up while the class is made
    exec(compile(block.group(1), "README.md:example-pass", "exec"), module.__dict__)  # noqa: S102
    return module


def test_the_readme_example_pass_runs_from_the_cli(tmp_path, capsys):
    module = _example_module()
    model = onnx.load(SAMPLE_MODELS / "mlp_digits.onnx")
    for i, node in enumerate(model.graph.node):
        node.doc_string = f"exported from line {i}"
    model.graph.doc_string = "graph doc"
    src = tmp_path / "doc.onnx"
    onnx.save(model, src)
    recipe = tmp_path / "r.json"
    recipe.write_text('{"passes": ["strip-doc-strings"], "strip_doc_strings": {"keep_graph_doc": false}}')
    register_pass(module.SPEC)
    try:
        out = tmp_path / "q.onnx"
        args = [
            "quantize",
            str(src),
            "-o",
            str(out),
            "--calib",
            str(SAMPLE_MODELS / "calib.npz"),
            "--recipe",
            str(recipe),
        ]
        assert main(args) == 0
        assert "pass strip-doc-strings: modified=True" not in capsys.readouterr().out  # modified is not printed
        assert main(["passes"]) == 0
        assert "strip-doc-strings  [float]" in capsys.readouterr().out
    finally:
        unregister_pass("strip-doc-strings")
    q = onnx.load(out)
    originals = {n.name for n in model.graph.node}
    assert not any(n.doc_string for n in q.graph.node if n.name in originals) and q.graph.doc_string == ""
    assert any(n.doc_string for n in onnx.load(src).graph.node)  # the input file is untouched
