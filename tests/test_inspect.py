"""`onnxq inspect`: every count is checked against one computed here, independently, with plain onnx.

The expected values come from this file's own recursive graph walk (not onnxq.model.iter_graphs), with
parameter sizes taken from decoded arrays (numpy_helper.to_array), whereas onnxq reads only dims and dtype.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import json_schema_validator
from onnxq.cli import main
from onnxq.inspect.facts import inspect_file, inspect_model
from onnxq.inspect.render import render_text, report_to_json

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "models"
SCHEMA_PATH = REPO / "onnxq" / "report" / "schemas" / "inspect.schema.json"
SAMPLE_MODELS = sorted((REPO / "sample_models").glob("*.onnx"))
REAL_MODELS = [
    SHARED_MODELS / "squeezenet1.1" / "model.onnx",
    SHARED_MODELS / "ppocr_mobile_v2_cls" / "model.onnx",
]

# The task's op sets, written out here so that a change to passes/qdq_policy.py is a visible decision.
SPEC_WEIGHT_INPUTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (1,), "MatMul": (1, 0)}
SPEC_ACTIVATION_OPS = set(
    "Add Mul Concat MaxPool AveragePool GlobalAveragePool Relu Clip Sigmoid Softmax Resize Reshape "
    "Transpose Flatten Squeeze Unsqueeze Slice Split Pad Gather".split()
)
QUANT_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "ConvInteger",
    "MatMulInteger",
    "QGemm",
}


# --- independent expectations ---------------------------------------------------------------------------


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    subs = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            subs.append(attr.g)
        subs.extend(attr.graphs)
    return subs


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    if attr.name in ("value_float", "value_floats"):
        return np.array(attr.f if attr.name == "value_float" else list(attr.floats), dtype=np.float32)
    if attr.name in ("value_int", "value_ints"):
        return np.array(attr.i if attr.name == "value_int" else list(attr.ints), dtype=np.int64)
    raise NotImplementedError(attr.name)  # the test models use no other Constant form


def expected(model: onnx.ModelProto) -> dict:
    """Every count the report makes, computed from scratch with a recursive walk of the protobuf."""
    exp = {"ops": Counter(), "subgraph_nodes": 0, "init": [0, 0, 0], "const": [0, 0, 0], "by_dtype": {}}
    exp.update(quantizable=[], depthwise=0, custom=Counter())

    def walk(graph: onnx.GraphProto, depth: int, outer: set[str]) -> None:
        consts = set(outer) | {t.name for t in graph.initializer}
        for t in graph.initializer:
            add(exp["init"], numpy_helper.to_array(t))
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                consts.add(node.output[0])
                add(exp["const"], _constant_value(node))
        for node in graph.node:
            default = node.domain in ("", "ai.onnx")
            exp["ops"][node.op_type if default else f"{node.domain}:{node.op_type}"] += 1
            exp["subgraph_nodes"] += depth > 0
            if not default:
                exp["custom"][(node.domain, node.op_type)] += 1
            if default and node.op_type in SPEC_WEIGHT_INPUTS:
                check_weight(node, graph, consts)
            for sub in _subgraphs(node):
                walk(sub, depth + 1, consts)

    def add(bucket: list[int], array: np.ndarray) -> None:
        bucket[0] += 1
        bucket[1] += array.size
        bucket[2] += array.nbytes
        row = exp["by_dtype"].setdefault(array.dtype.name, [0, 0, 0])
        row[0], row[1], row[2] = row[0] + 1, row[1] + array.size, row[2] + array.nbytes

    def check_weight(node: onnx.NodeProto, graph: onnx.GraphProto, consts: set[str]) -> None:
        for i in SPEC_WEIGHT_INPUTS[node.op_type]:
            if i < len(node.input) and node.input[i] in consts:
                exp["quantizable"].append((node.op_type, i, node.input[i]))
                exp["depthwise"] += is_depthwise(node, weight_shape(node.input[i], model))
                return

    walk(model.graph, 0, set())
    return exp


def weight_shape(name: str, model: onnx.ModelProto) -> tuple[int, ...]:
    def find(graph: onnx.GraphProto):
        for t in graph.initializer:
            if t.name == name:
                return tuple(t.dims)
        for node in graph.node:
            if node.op_type == "Constant" and node.output[0] == name:
                return _constant_value(node).shape
            for sub in _subgraphs(node):
                if (found := find(sub)) is not None:
                    return found
        return None

    return find(model.graph)


def is_depthwise(node: onnx.NodeProto, w_shape: tuple[int, ...]) -> bool:
    """group == in channels == out channels, with the channel counts worked out from the weight layout."""
    if node.op_type not in ("Conv", "ConvTranspose"):
        return False
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if node.op_type == "Conv":  # W: [out, in / group, k...]
        c_out, c_in = w_shape[0], w_shape[1] * group
    else:  # ConvTranspose W: [in, out / group, k...]
        c_in, c_out = w_shape[0], w_shape[1] * group
    return group > 1 and group == c_in == c_out


def assert_report_matches(model: onnx.ModelProto, doc: dict) -> None:
    exp = expected(model)
    nodes = doc["nodes"]
    assert nodes["by_op"] == dict(exp["ops"])
    assert nodes["total"] == sum(exp["ops"].values())
    assert nodes["top_level"] == len(model.graph.node)
    assert nodes["in_subgraphs"] == exp["subgraph_nodes"]
    params = doc["parameters"]
    assert [params["initializers"][k] for k in ("tensors", "parameters", "bytes")] == exp["init"]
    assert [params["constant_nodes"][k] for k in ("tensors", "parameters", "bytes")] == exp["const"]
    assert params["count"] == exp["init"][1] + exp["const"][1]
    assert {k: [v["tensors"], v["parameters"], v["bytes"]] for k, v in params["by_dtype"].items()} == exp[
        "by_dtype"
    ]
    got_q = [(q["op_type"], q["weight_input"], q["weight"]) for q in doc["quantizable"]["weight_nodes"]]
    assert sorted(got_q) == sorted(exp["quantizable"])
    assert doc["quantizable"]["weight_node_count"] == len(exp["quantizable"])
    assert doc["quantizable"]["depthwise_count"] == exp["depthwise"]
    activations = {op: n for op, n in exp["ops"].items() if op in SPEC_ACTIVATION_OPS}
    assert doc["quantizable"]["activation_nodes_by_op"] == activations
    assert doc["quantizable"]["activation_node_count"] == sum(activations.values())
    quant = {op: n for op, n in exp["ops"].items() if op.split(":")[-1] in QUANT_OPS or "QLinear" in op}
    assert doc["quantized"] == {"is_quantized": bool(quant), "ops": quant}
    assert {(c["domain"], c["op_type"]): c["count"] for c in doc["custom_ops"]} == dict(exp["custom"])
    init_names = {t.name for t in model.graph.initializer}
    assert [v["name"] for v in doc["inputs"]] == [
        v.name for v in model.graph.input if v.name not in init_names
    ]
    assert [v["name"] for v in doc["outputs"]] == [v.name for v in model.graph.output]
    assert doc["model"]["ir_version"] == model.ir_version
    assert doc["model"]["opset_imports"] == {(o.domain or "ai.onnx"): o.version for o in model.opset_import}


# --- small models built inline ---------------------------------------------------------------------------


def _model(nodes, inputs, outputs, inits=(), opset=17, extra_opsets=(), ir=8) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="test", producer_version="1.0")
    model.ir_version = ir
    return model


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _init(name, shape, dtype=np.float32):
    return numpy_helper.from_array(np.arange(np.prod(shape), dtype=dtype).reshape(shape) % 7, name)


def if_model() -> onnx.ModelProto:
    """If whose then-branch MatMuls by an outer-scope initializer and whose else-branch holds a Constant."""
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["t"])], "then", [], [_f("t", ["N", 4])]
    )
    else_g = helper.make_graph(
        [
            helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(4, np.float32))),
            helper.make_node("Add", ["x", "c"], ["e"]),
        ],
        "else",
        [],
        [_f("e", ["N", 4])],
    )
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    node = helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)
    return _model([node], [_f("x", ["N", 4]), cond], [_f("y", ["N", 4])], [_init("W", (4, 4))])


def loop_model() -> onnx.ModelProto:
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Constant", [], ["k"], value_floats=[1.0, 2.0, 3.0]),
            helper.make_node("Add", ["acc_in", "k"], ["sum"]),
            helper.make_node("Relu", ["sum"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            _f("acc_in", [3]),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _f("acc_out", [3])],
    )
    trip = helper.make_tensor_value_info("trip", TensorProto.INT64, [])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    loop = helper.make_node("Loop", ["trip", "cond", "x"], ["y"], name="loop", body=body)
    return _model([loop], [trip, cond, _f("x", [3])], [_f("y", [3])])


def custom_op_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Gemm", ["x", "W"], ["h"], transB=1),
        helper.make_node("Swish", ["h"], ["y"], domain="com.example"),
        helper.make_node("Swish", ["y"], ["z"], domain="com.example"),
    ]
    return _model(
        nodes,
        [_f("x", ["N", 8])],
        [_f("z", ["N", 4])],
        [_init("W", (4, 8))],
        extra_opsets=[("com.example", 1)],
    )


def constant_weight_model() -> onnx.ModelProto:
    """opset 11 CNN, weights in Constant nodes: a 3x3 conv, a depthwise conv, a grouped (not depthwise) conv,
    a depthwise ConvTranspose, and a MatMul with its weight on the left."""

    def const(name, shape):
        return helper.make_node("Constant", [], [name], value=_init(name + "_t", shape))

    nodes = [
        const("w1", (16, 3, 3, 3)),
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        const("w2", (16, 1, 3, 3)),  # group 16, 16 in, 16 out: depthwise
        helper.make_node("Conv", ["a", "w2"], ["b"], group=16, pads=[1, 1, 1, 1]),
        const("w4", (8, 2, 1, 1)),  # group 8, 16 in, 8 out: grouped, not depthwise
        helper.make_node("Conv", ["b", "w4"], ["c"], group=8),
        const("w6", (16, 1, 1, 1)),  # group 8, 8 in, 16 out (channel multiplier 2): not depthwise
        helper.make_node("Conv", ["c", "w6"], ["e"], group=8),
        const("w5", (16, 1, 1, 1)),  # ConvTranspose W is [in, out / group]: 16 in, 16 out, group 16
        helper.make_node("ConvTranspose", ["e", "w5"], ["d"], group=16),
        helper.make_node("Flatten", ["d"], ["f"]),
        helper.make_node("Transpose", ["f"], ["ft"]),
        const("w3", (10, 1024)),
        helper.make_node("MatMul", ["w3", "ft"], ["y"]),
    ]
    return _model(nodes, [_f("x", [1, 3, 8, 8])], [_f("y", [10, 1])], opset=11, ir=6)


def qlinear_model() -> onnx.ModelProto:
    """QOperator form: a contrib QLinear op and MatMulInteger mark the model as quantized."""
    u8 = helper.make_tensor_value_info("xq", TensorProto.UINT8, [1, 4])
    out = helper.make_tensor_value_info("y", TensorProto.INT32, [1, 4])
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.array(128, np.uint8), "z")
    nodes = [
        helper.make_node("QLinearSigmoid", ["xq", "s", "z", "s", "z"], ["q"], domain="com.microsoft"),
        helper.make_node("MatMulInteger", ["q", "wq"], ["y"]),
    ]
    inits = [scale, zero, _init("wq", (4, 4), np.uint8)]
    return _model(nodes, [u8], [out], inits, extra_opsets=[("com.microsoft", 1)])


def qdq_model() -> onnx.ModelProto:
    """A quantized QDQ Conv: its int8 weight sits behind a DequantizeLinear, so it is not quantizable."""
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.int8), "z")
    w_scale = numpy_helper.from_array(np.full(4, 0.05, np.float32), "ws")
    w_zero = numpy_helper.from_array(np.zeros(4, np.int8), "wz")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["y"]),
    ]
    inits = [scale, zero, w_scale, w_zero, _init("wq", (4, 3, 1, 1), np.int8)]
    return _model(nodes, [_f("x", [1, 3, 4, 4])], [_f("y", [1, 4, 4, 4])], inits)


def ir3_model() -> onnx.ModelProto:
    """IR 3 lists initializers among the graph inputs; inspect must leave them out."""
    model = _model(
        [helper.make_node("Conv", ["x", "W"], ["y"])],
        [_f("x", [1, 2, 4, 4])],
        [_f("y", [1, 2, 4, 4])],
        [_init("W", (2, 2, 1, 1))],
        opset=7,
        ir=3,
    )
    model.graph.input.append(_f("W", [2, 2, 1, 1]))
    return model


INLINE = {
    "if": if_model,
    "loop": loop_model,
    "custom": custom_op_model,
    "constant_weights": constant_weight_model,
    "qdq": qdq_model,
    "qlinear": qlinear_model,
    "ir3": ir3_model,
}


@pytest.fixture(scope="module")
def schema_validator():
    return json_schema_validator(SCHEMA_PATH)


def _saved(model: onnx.ModelProto, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


# --- counts against the independent walk ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(INLINE))
def test_counts_match_independent_walk_on_inline_models(name, tmp_path, schema_validator):
    model = INLINE[name]()
    path = _saved(model, tmp_path, name)
    doc = report_to_json(inspect_file(path))
    assert_report_matches(model, doc)
    schema_validator.validate(doc)
    assert doc["model"]["file_bytes"] == path.stat().st_size
    assert doc["model"]["model_bytes"] == model.ByteSize()


@pytest.mark.parametrize("path", SAMPLE_MODELS or [None], ids=lambda p: p.name if p else "none")
def test_counts_match_independent_walk_on_sample_models(path, schema_validator):
    if path is None:
        pytest.skip("no sample_models/*.onnx built yet")
    doc = report_to_json(inspect_file(path))
    assert_report_matches(onnx.load(path), doc)
    schema_validator.validate(doc)
    assert doc["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["N", 1, 16, 16]}]


@pytest.mark.parametrize("path", REAL_MODELS, ids=lambda p: p.parent.name)
def test_counts_match_independent_walk_on_real_models(path, schema_validator):
    if not path.exists():
        pytest.skip(f"{path} absent")
    doc = report_to_json(inspect_file(path))
    assert_report_matches(onnx.load(path), doc)
    schema_validator.validate(doc)


def test_real_models_match_their_readme_facts():
    """Numbers from the models' READMEs (counted by whoever added the models, not by onnxq)."""
    squeeze, ppocr = REAL_MODELS
    if not (squeeze.exists() and ppocr.exists()):
        pytest.skip("shared models absent")
    s = report_to_json(inspect_file(squeeze))
    assert s["model"]["ir_version"] == 3 and s["model"]["opset_imports"] == {"ai.onnx": 7}
    assert s["inputs"] == [
        {"name": "data_0", "dtype": "float32", "shape": [1, 3, 224, 224]}
    ]  # 52 inits left out
    assert s["nodes"]["total"] == 66 and s["nodes"]["by_op"]["Conv"] == 26
    assert s["quantizable"]["weight_node_count"] == 26 and s["quantizable"]["depthwise_count"] == 0
    assert round(s["parameters"]["count"] / 1e6, 3) == 1.235
    assert any("opset 7" in w for w in s["warnings"])
    p = report_to_json(inspect_file(ppocr))
    assert p["nodes"]["total"] == 566 and p["nodes"]["by_op"]["Constant"] == 308
    assert p["quantizable"]["depthwise_count"] == 11
    assert p["quantizable"]["weight_node_count"] == 54  # Conv 53 + MatMul 1
    assert p["parameters"]["initializers"]["tensors"] == 0
    assert round(p["parameters"]["constant_nodes"]["parameters"] / 1e6, 3) == 0.134
    assert p["inputs"][0]["shape"] == [None, 3, "?", "?"]  # literal -1 is unknown; "?" is a dim_param
    assert any("Constant-node weights" in w for w in p["warnings"])
    assert any("per-channel" in w for w in p["warnings"])


# --- specific behaviour -------------------------------------------------------------------------------------


def test_subgraph_nodes_and_owners_are_reported():
    doc = report_to_json(inspect_model(if_model()))
    assert doc["nodes"]["top_level"] == 1 and doc["nodes"]["in_subgraphs"] == 3
    assert doc["nodes"]["subgraph_owners"] == [
        {"graph": "main", "name": "branch", "op_type": "If", "attributes": ["else_branch", "then_branch"]}
    ]
    # The then-branch MatMul reads W from the outer graph: still a constant weight.
    (q,) = doc["quantizable"]["weight_nodes"]
    assert q["graph"] == "main/branch.then_branch" and q["weight"] == "W" and q["weight_shape"] == [4, 4]
    # Its one Constant node is a bias-like vector, not a weight: no Constant-node-weights warning.
    assert not any(w.startswith("model has Constant-node weights") for w in doc["warnings"])
    text = render_text(inspect_model(if_model()))
    assert re.search(
        r"^  main/branch\.then_branch +MatMul_\S+ +MatMul +1 +\[4, 4\] +initializer$", text, re.M
    )


def test_constant_node_weights_depthwise_and_left_matmul_weight():
    doc = report_to_json(inspect_model(constant_weight_model()))
    rows = {q["weight"]: q for q in doc["quantizable"]["weight_nodes"]}
    depthwise = {w: rows[w]["depthwise"] for w in rows}
    assert depthwise == {"w1": False, "w2": True, "w4": False, "w6": False, "w5": True, "w3": False}
    assert rows["w3"]["weight_input"] == 0 and rows["w3"]["weight_shape"] == [10, 1024]
    assert {q["weight_storage"] for q in rows.values()} == {"constant_node"}
    assert any(w.startswith("model has Constant-node weights") for w in doc["warnings"])
    assert any("opset 11 < 13" in w for w in doc["warnings"])


def test_qdq_model_is_reported_quantized_with_nothing_left_to_quantize():
    doc = report_to_json(inspect_model(qdq_model()))
    assert doc["quantized"] == {"is_quantized": True, "ops": {"DequantizeLinear": 2, "QuantizeLinear": 1}}
    assert doc["quantizable"]["weight_node_count"] == 0
    assert any("already quantized" in w for w in doc["warnings"])
    # int8 tensors: zero point z (1 element), weight zero points wz (4), weight wq (4 * 3 * 1 * 1 = 12).
    assert doc["parameters"]["by_dtype"]["int8"] == {"tensors": 3, "parameters": 17, "bytes": 17}


def test_qoperator_model_is_reported_quantized():
    doc = report_to_json(inspect_model(qlinear_model()))
    assert doc["quantized"] == {
        "is_quantized": True,
        "ops": {"MatMulInteger": 1, "com.microsoft:QLinearSigmoid": 1},
    }


def test_custom_domain_ops_are_qualified_and_listed():
    doc = report_to_json(inspect_model(custom_op_model()))
    assert doc["nodes"]["by_op"] == {"com.example:Swish": 2, "Gemm": 1}
    assert doc["custom_ops"] == [{"domain": "com.example", "op_type": "Swish", "count": 2}]
    assert any("com.example" in w for w in doc["warnings"])


def test_symbolic_and_unknown_dims():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_f("x", ["batch", None, 3])], [_f("y", None)])
    doc = report_to_json(inspect_model(model))
    assert doc["inputs"][0]["shape"] == ["batch", None, 3]
    assert doc["outputs"][0]["shape"] is None  # no shape at all: rank unknown
    assert "[batch, ?, 3]" in render_text(inspect_model(model))


def test_schema_rejects_a_broken_document(schema_validator):
    """The schema is not vacuous: the documents above pass because they conform, not because anything does."""
    import jsonschema

    doc = report_to_json(inspect_model(if_model()))
    for breakage in (
        lambda d: d.pop("schema"),
        lambda d: d["inputs"][0].__setitem__("shape", [1.5]),
        lambda d: d["nodes"].__setitem__("extra", 1),
        lambda d: d["quantizable"]["weight_nodes"][0].__setitem__("weight_storage", "disk"),
    ):
        broken = json.loads(json.dumps(doc))
        breakage(broken)
        with pytest.raises(jsonschema.ValidationError):
            schema_validator.validate(broken)


def test_inspect_reads_tensor_headers_never_tensor_data(monkeypatch):
    """What makes inspect take milliseconds on a 5 MB model (about 0.03 s measured): no tensor is decoded."""
    path = REAL_MODELS[0]
    if not path.exists():
        pytest.skip("squeezenet absent")

    def never(*_, **__):
        raise AssertionError("inspect decoded a tensor's data")

    monkeypatch.setattr(onnx.numpy_helper, "to_array", never)
    text = render_text(inspect_file(path))
    assert "Conv" in text


def test_policy_op_sets_are_the_specified_ones():
    from onnxq.passes.qdq_policy import ACTIVATION_OPS, WEIGHT_OPS

    assert set(WEIGHT_OPS) == set(SPEC_WEIGHT_INPUTS) and set(ACTIVATION_OPS) == SPEC_ACTIVATION_OPS


# --- CLI ---------------------------------------------------------------------------------------------------


def test_cli_text_lists_op_counts_in_aligned_columns(tmp_path, capsys):
    path = _saved(constant_weight_model(), tmp_path, "cw")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    # The op table runs from the "nodes:" line to the next blank line.
    op_table = out.split("\nnodes: ", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    assert dict(line.split() for line in op_table) == {
        "Constant": "6",
        "Conv": "4",
        "ConvTranspose": "1",
        "MatMul": "1",
        "Flatten": "1",
        "Transpose": "1",
    }
    assert len({len(line) for line in op_table}) == 1  # counts right-aligned in one column
    assert "quantizable: 6 weight nodes (2 depthwise)" in out


def test_cli_json_has_schema_first_and_validates(tmp_path, capsys, schema_validator):
    path = _saved(loop_model(), tmp_path, "loop")
    assert main(["inspect", "--json", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert next(iter(doc)) == "schema" and doc["schema"] == "onnxq.inspect/1"
    schema_validator.validate(doc)
    assert doc["nodes"]["by_op"] == {"Loop": 1, "Identity": 1, "Constant": 1, "Add": 1, "Relu": 1}


@pytest.mark.parametrize("content", [None, b"not a model"], ids=["missing", "garbage"])
def test_cli_bad_input_exits_2_with_one_error_line(tmp_path, capsys, content):
    path = tmp_path / "m.onnx"
    if content is not None:
        path.write_bytes(content)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err and "hint:" in err


def _unknown_dtypes_model() -> onnx.ModelProto:
    """A graph input of elem_type 999 and an initializer of data_type 999: numbers ONNX does not define."""
    model = onnx.load(SAMPLE_MODELS[0])
    model.graph.input[0].type.tensor_type.elem_type = 999
    model.graph.initializer[0].data_type = 999
    return model


def test_unknown_element_types_are_reported_not_crashed_on(tmp_path, capsys, schema_validator):
    path = _saved(_unknown_dtypes_model(), tmp_path, "dtype999")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "unknown dtype 999" in out and "element types that ONNX does not define" in out
    assert main(["inspect", "--json", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    schema_validator.validate(doc)
    assert doc["inputs"][0]["dtype"] == "unknown dtype 999"
    assert doc["parameters"]["by_dtype"]["unknown dtype 999"]["bytes"] == 0  # its size is unknown


def test_quantize_and_eval_refuse_an_input_of_unknown_element_type(tmp_path, capsys):
    path = _saved(_unknown_dtypes_model(), tmp_path, "dtype999")
    data = REPO / "sample_models" / "calib.npz"
    for argv in (["quantize", str(path), "-o", str(tmp_path / "q.onnx"), "--calib", str(data)],
                 ["eval", str(path), "--data", str(data)]):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: graph input 'input' has element type 999, which is no ONNX tensor type")
    assert not (tmp_path / "q.onnx").exists()
