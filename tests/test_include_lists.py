"""``--include-node`` / ``--include-op-type``: only the named nodes are quantized, exclusion wins, and a name the
model does not have is an error with the close match."""

from __future__ import annotations

import onnx
import pytest

from conftest import SAMPLE_MODELS
from onnxq.cli import main
from onnxq.passes._graph import node_names
from onnxq.quantize.recipe import QuantizeRecipe

RESNET = SAMPLE_MODELS / "resnet_digits.onnx"
CALIB = str(SAMPLE_MODELS / "calib.npz")


def _names_by_op(path) -> dict[str, list[str]]:
    """The input model's node names (as `onnxq inspect` shows them) per op type."""
    graph = onnx.load(path).graph
    out: dict[str, list[str]] = {}
    for name, node in zip(node_names(graph), graph.node, strict=True):
        out.setdefault(node.op_type, []).append(name)
    return out


def _weight_quantized(path) -> dict[str, bool]:
    """Conv/Gemm node name -> whether its weight (input 1) comes from a DequantizeLinear in the written model."""
    graph = onnx.load(path).graph
    producers = {o: n for n in graph.node for o in n.output}
    return {
        n.name: producers.get(n.input[1]) is not None and producers[n.input[1]].op_type == "DequantizeLinear"
        for n in graph.node
        if n.op_type in ("Conv", "Gemm")
    }


def _quantize(tmp_path, *flags) -> tuple[int, object]:
    out = tmp_path / "q.onnx"
    return main(["quantize", str(RESNET), "-o", str(out), "--calib", CALIB, "--no-progress", *flags]), out


def test_include_nodes_quantize_exactly_the_named_nodes(tmp_path, capsys):
    convs = _names_by_op(RESNET)["Conv"]
    chosen = convs[1:3]
    code, out = _quantize(tmp_path, *[a for name in chosen for a in ("--include-node", name)])
    assert code == 0, capsys.readouterr().err
    assert {name for name, q in _weight_quantized(out).items() if q} == set(chosen)
    # the Relus were not named: they stay in the graph as float nodes, none folded away
    relus = [n for n in onnx.load(out).graph.node if n.op_type == "Relu"]
    assert len(relus) == len(_names_by_op(RESNET)["Relu"])


def test_include_op_type_with_an_exclusion_the_exclusion_wins(tmp_path, capsys):
    convs = _names_by_op(RESNET)["Conv"]
    code, out = _quantize(tmp_path, "--include-op-type", "Conv", "--exclude-node", convs[0])
    assert code == 0, capsys.readouterr().err
    quantized = _weight_quantized(out)
    assert {name for name, q in quantized.items() if q} == set(convs[1:])  # the Gemm is not a Conv: float
    assert not any(q for name, q in quantized.items() if name not in convs)


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--include-node", "/stem/stem.0/Convv"], "did you mean"),
        (["--include-op-type", "conv"], "did you mean Conv?"),
    ],
)
def test_unknown_include_names_are_errors_with_the_close_match(tmp_path, capsys, flags, fragment):
    code, out = _quantize(tmp_path, *flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert err[0].startswith(f"error: {flags[0]} ") and fragment in err[1]


def test_recipes_carry_the_include_lists_into_the_qdq_config():
    recipe = QuantizeRecipe.from_dict({"include-op-types": ["Conv"], "include_nodes": ["a"]})
    qdq = recipe.qdq()
    assert qdq.include_op_types == ("Conv",) and qdq.include_nodes == ("a",)
    node = onnx.helper.make_node("Gemm", ["x", "w"], ["y"], name="b")
    assert qdq.left_out(node) == "not in the include lists (--include-node/--include-op-type)"
    assert QuantizeRecipe.from_dict({"include_nodes": ["b"], "exclude_nodes": ["b"]}).qdq().left_out(node) == (
        "excluded by name"
    )
