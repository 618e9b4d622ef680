"""Case classes of damaged models: truncations, byte flips, protobuf field edits (element and data types,
dims, attributes such as Conv groups, opsets, graph structure), weights of other shapes or values, swapped
ops, model paths that are no model file, external-data locations that escape, are absolute, missing or
loops, and FIFOs wherever onnxq reads a file."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fuzz_case import COMMANDS, Case, Fifo, FileSpec, Folder, Link, Sources, choice


def truncate(rng, src: Sources) -> Case:
    name, _ = src.pick(rng)
    raw = src.models[name]
    cut = int(rng.integers(1, len(raw)))
    return src.case(f"{name}@{cut}", "truncate", raw[:cut])


def byte_flip(rng, src: Sources) -> Case:
    name, _ = src.pick(rng)
    raw = bytearray(src.models[name])
    count = int(rng.integers(1, 21))
    span = min(len(raw), 4096) if rng.random() < 0.5 else len(raw)  # the graph structure, or anywhere
    for pos in rng.integers(0, span, count):
        raw[int(pos)] ^= int(rng.integers(1, 256))
    return src.case(f"{name}x{count}", "byte-flip", bytes(raw))


ELEM_TYPES = [999, 0, -5, 2**31 - 1, 8, 9, 7, 10, 11, 16, 17, 22, 40]


def elem_type(rng, src: Sources) -> Case:
    name, model = src.pick(rng)
    where = choice(rng, ["input", "output"])
    value = choice(rng, ELEM_TYPES)
    values = model.graph.input if where == "input" else model.graph.output
    values[0].type.tensor_type.elem_type = value
    return src.case(f"{name}:{where}={value}", "elem-type", model.SerializeToString())


def data_type(rng, src: Sources) -> Case:
    name, model = src.pick(rng)
    tensor = choice(rng, list(model.graph.initializer))
    value = choice(rng, [999, 0, -1, 8, 11, 16, 2, 3, 22, 7, 10])
    tensor.data_type = value
    return src.case(f"{name}:{tensor.name}={value}", "data-type", model.SerializeToString())


def tensor_dims(rng, src: Sources) -> Case:
    name, model = src.pick(rng)
    tensor = choice(rng, list(model.graph.initializer))
    dims = list(tensor.dims)
    edit = choice(rng, ["append", "drop", "zero", "huge", "negative", "empty"])
    at = int(rng.integers(len(dims))) if dims else 0
    if edit == "append":
        dims.append(int(rng.integers(1, 4)))
    elif edit == "drop" and dims:
        dims.pop()
    elif edit == "empty":
        dims = []
    elif dims:
        dims[at] = {"zero": 0, "huge": 2**40, "negative": -3}.get(edit, 1)
    del tensor.dims[:]
    tensor.dims.extend(dims)
    return src.case(f"{name}:{tensor.name}:{edit}", "tensor-dims", model.SerializeToString())


def input_dims(rng, src: Sources) -> Case:
    name, model = src.pick(rng)
    ttype = model.graph.input[0].type.tensor_type
    edit = choice(rng, ["batch", "other", "no-shape", "extra-dim", "empty-param"])
    if edit == "batch":
        value = choice(rng, [0, -1, 1, 3, 7, 2**40, 2**62])
        ttype.shape.dim[0].dim_value = value
        edit = f"batch={value}"
    elif edit == "other":
        value = choice(rng, [0, 15, 2**31, -4])
        ttype.shape.dim[int(rng.integers(1, len(ttype.shape.dim)))].dim_value = value
        edit = f"dim={value}"
    elif edit == "no-shape":
        ttype.ClearField("shape")
    elif edit == "extra-dim":
        ttype.shape.dim.add().dim_value = 1
    else:
        ttype.shape.dim[0].dim_param = ""
    return src.case(f"{name}:{edit}", "input-dims", model.SerializeToString())


# op type -> attribute edits (name, value); None removes the attribute
ATTRIBUTE_EDITS: dict[str, list[tuple[str, object]]] = {
    "Conv": [("group", 0), ("group", -1), ("group", 3), ("group", 64), ("group", 2**31 - 1), ("strides", [0, 0]),
             ("strides", [-1, 1]), ("strides", [1]), ("pads", [-1, -1, -1, -1]), ("dilations", [0, 0]),
             ("kernel_shape", [5, 5]), ("auto_pad", "BOGUS"), ("pads", [9, 9, 9, 9])],
    "Gemm": [("transB", 7), ("alpha", float("nan")), ("alpha", float("inf")), ("beta", 0.0), ("transA", 1)],
    "Flatten": [("axis", 99), ("axis", -99)],
    "Softmax": [("axis", 99)],
    "BatchNormalization": [("epsilon", -1.0), ("training_mode", 1), ("momentum", float("nan"))],
    "LayerNormalization": [("axis", 99), ("epsilon", float("nan"))],
    "MaxPool": [("kernel_shape", [0, 0]), ("strides", [0, 0])],
    "Transpose": [("perm", [0, 0, 1, 2]), ("perm", [5])],
    "ReduceMean": [("axes", [99]), ("keepdims", 7)],
    "Reshape": [("allowzero", 5)],
    "Clip": [("bogus", 1)],
    "Relu": [("bogus", 1)],
}  # fmt: skip
# How quantize is asked to run on a damaged model: flags, or a recipe (bytes) that turns on the extra passes.
QUANTIZE_VARIANTS: list[list[str] | bytes] = [
    [], [], ["--passes", "cle,bias-correction"], ["--per-tensor", "--method", "entropy"], ["--target", "tensorrt"],
    ["--weight-type", "int4", "--method", "mse"], ["--activation-type", "int16"],
    ["--avoid-float-boundaries", "--method", "percentile"],
    b'{"passes": ["adaround"], "adaround": {"iterations": 3, "samples_per_iteration": 64}}',
    b'{"passes": ["bias-correction"], "bias_correction": {"mode": "analytical"}}',
    b'{"passes": ["cle", "bias-correction"], "cle": {"relu6_to_relu": true}, "bias_correction": {"inputs": "float"}}',
]  # fmt: skip


def quantize_variant(rng) -> dict:
    """Keyword arguments for Sources.case: the quantize args, and the recipe file they name if any."""
    variant = choice(rng, QUANTIZE_VARIANTS)
    if isinstance(variant, bytes):
        return {"args": {"quantize": ["--recipe", "{root}/variant.json"]}, "files": {"variant.json": variant}}
    return {"args": {"quantize": list(variant)}}


def attribute(rng, src: Sources) -> Case:
    name, model = src.pick(rng)
    nodes = [n for n in model.graph.node if n.op_type in ATTRIBUTE_EDITS]
    node = choice(rng, nodes)
    key, value = choice(rng, ATTRIBUTE_EDITS[node.op_type])
    kept = [a for a in node.attribute if a.name != key]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(key, value)])
    variant = quantize_variant(rng)
    return src.case(f"{name}:{node.op_type}.{key}={value}", "attribute", model.SerializeToString(), **variant)


def weights(rng, src: Sources) -> Case:
    """Values that pass every structural check: NaN/Inf weights, BatchNorm variances below zero."""
    name, model = src.pick(rng)
    tensor = choice(rng, [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT])
    array = numpy_helper.to_array(tensor).copy()
    value = choice(rng, [np.nan, np.inf, -np.inf, -1.0, 0.0, 3e38])
    array.flat[int(rng.integers(array.size))] = value
    if rng.random() < 0.3:
        array[...] = value
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return src.case(f"{name}:{tensor.name}={value}", "weights", model.SerializeToString(), **quantize_variant(rng))


def structure(rng, src: Sources) -> Case:
    name, model = src.pick(rng)
    g = model.graph
    edit = choice(rng, ["drop-node", "dup-output", "dangling", "reverse", "no-outputs", "dup-input", "drop-init",
                         "opset", "ir", "dup-opset", "custom-op", "init-as-input"])  # fmt: skip
    k = int(rng.integers(len(g.node)))
    if edit == "drop-node":
        del g.node[k]
    elif edit == "dup-output":
        g.node[k].output[0] = g.node[(k + 1) % len(g.node)].output[0]
    elif edit == "dangling":
        readers = [n for n in g.node if n.input]
        readers[k % len(readers)].input[0] = "nowhere"
    elif edit == "reverse":
        nodes = list(g.node)[::-1]
        del g.node[:]
        g.node.extend(nodes)
    elif edit == "no-outputs":
        del g.output[:]
    elif edit == "dup-input":
        g.input.append(g.input[0])
    elif edit == "drop-init":
        del g.initializer[int(rng.integers(len(g.initializer)))]
    elif edit == "opset":
        model.opset_import[0].version = choice(rng, [0, 1, 6, 12, 99, 1000])
    elif edit == "ir":
        model.ir_version = choice(rng, [0, 2, 99, -1])
    elif edit == "dup-opset":
        model.opset_import.append(helper.make_opsetid("", 13))
    elif edit == "custom-op":
        g.node.append(helper.make_node("Frobnicate", [g.output[0].name], ["extra"], domain="com.example"))
        g.output.append(helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, None))
        model.opset_import.append(helper.make_opsetid("com.example", 1))
    else:
        g.input.extend([helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializer[:2]])
    return src.case(f"{name}:{edit}@{k}", "structure", model.SerializeToString())


def reshaped_weight(rng, src: Sources) -> Case:
    """An initializer replaced by consistent data of another shape: it passes every file check and reaches
    shape inference, the passes and onnxruntime."""
    name, model = src.pick(rng)
    tensor = choice(rng, [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT])
    dims = list(tensor.dims) or [1]
    edit = choice(rng, ["grow", "shrink", "add-axis", "drop-axis", "transpose", "scalar"])
    axis = int(rng.integers(len(dims)))
    if edit == "grow":
        dims[axis] += int(rng.integers(1, 4))
    elif edit == "shrink":
        dims[axis] = max(dims[axis] - int(rng.integers(1, 4)), 0)
    elif edit == "add-axis":
        dims.insert(axis, int(rng.integers(1, 3)))
    elif edit == "drop-axis" and len(dims) > 1:
        dims.pop(axis)
    elif edit == "transpose":
        dims = dims[::-1]
    elif edit == "scalar":
        dims = []
    values = np.random.default_rng(int(rng.integers(2**31))).standard_normal(dims).astype(np.float32)
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    return src.case(f"{name}:{tensor.name}:{edit}", "reshaped-weight", model.SerializeToString(),
                    **quantize_variant(rng))  # fmt: skip


# op -> ops that take the same inputs, so that the swap passes the checker more often than not
OP_SWAPS = {"Relu": ["Sigmoid", "Tanh", "Abs", "Softmax"], "Add": ["Mul", "Sub", "Div", "MatMul"],
            "Conv": ["ConvTranspose"], "Gemm": ["MatMul"], "MatMul": ["Gemm", "Add"], "Clip": ["Max", "Min"],
            "GlobalAveragePool": ["GlobalMaxPool"], "Flatten": ["Identity"], "Softmax": ["LogSoftmax"],
            "Reshape": ["Expand"], "Transpose": ["Identity"], "Erf": ["Relu"], "MaxPool": ["AveragePool"],
            "LayerNormalization": ["InstanceNormalization"], "ReduceMean": ["ReduceMax"]}  # fmt: skip


def op_swap(rng, src: Sources) -> Case:
    name, model = src.pick(rng)
    nodes = [n for n in model.graph.node if n.op_type in OP_SWAPS]
    node = choice(rng, nodes)
    old, node.op_type = node.op_type, choice(rng, OP_SWAPS[node.op_type])
    if rng.random() < 0.5:  # opset downgrade too: what prepare's opset upgrade must then convert
        model.opset_import[0].version = choice(rng, [7, 9, 10, 11, 12, 13])
    return src.case(f"{name}:{old}->{node.op_type}@{model.opset_import[0].version}", "op-swap",
                    model.SerializeToString(), **quantize_variant(rng))  # fmt: skip


def model_file(rng, src: Sources) -> Case:
    name, _ = src.pick(rng)
    kind = choice(rng, ["empty", "folder", "loop", "link-ok", "garbage", "onnx-like-garbage", "npz", "long-name",
                         "missing"])  # fmt: skip
    garbage = rng.integers(0, 256, int(rng.integers(1, 4000)), dtype=np.uint8).tobytes()
    files: dict[str, FileSpec] = {}
    paths: dict[str, str] = {}
    model: FileSpec = src.models[name]
    if kind == "empty":
        model = b""
    elif kind == "folder":
        model = Folder()
    elif kind == "loop":
        model = Link("model.onnx")
    elif kind == "link-ok":
        files["real/model.onnx"] = src.models[name]
        model = Link("../real/model.onnx")
    elif kind == "garbage":
        model = garbage
    elif kind == "onnx-like-garbage":
        model = b"\x08\x08" + garbage
    elif kind == "npz":
        model = src.calib
    elif kind == "long-name":
        paths["model"] = "m/" + "n" * 300 + ".onnx"
    else:
        paths["model"] = "m/absent.onnx"
    must = () if kind == "link-ok" else COMMANDS
    return src.case(f"{name}:{kind}", "model-file", model, files=files, paths=paths, must_fail=must)


EXTERNAL_EDITS = ["escape", "absolute", "missing", "offset", "length", "bad-offset", "empty", "nul", "folder",
                  "link-out", "loop", "self", "truncated", "ok", "dotted-ok", "fifo", "output-over-data"]  # fmt: skip
MUST_FAIL_EXTERNAL = {"escape", "absolute", "link-out", "missing", "nul", "folder", "loop", "fifo"}


def external_data(rng, src: Sources, edit: str | None = None) -> Case:
    """The model's weights in ``m/weights.bin``, then one location (or the file) edited."""
    name, model = src.pick(rng)
    blob = bytearray()
    chosen = None
    for tensor in model.graph.initializer:
        if tensor.HasField("raw_data") and len(tensor.raw_data) >= 1024:
            info = {"location": "weights.bin", "offset": str(len(blob)), "length": str(len(tensor.raw_data))}
            blob += tensor.raw_data
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in info.items():
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            chosen = chosen or tensor
    edit = edit or choice(rng, EXTERNAL_EDITS)
    files: dict[str, FileSpec] = {"m/weights.bin": bytes(blob), "outside.bin": bytes(blob)}
    entries = {e.key: e for e in chosen.external_data}
    location = entries["location"]
    if edit == "escape":
        location.value = "../outside.bin"
    elif edit == "absolute":
        location.value = "/etc/passwd"  # exists: refused for being absolute, not for being missing
    elif edit == "missing":
        location.value = "gone.bin"
    elif edit == "offset":
        entries["offset"].value = str(len(blob) + 10)
    elif edit == "length":
        entries["length"].value = str(len(blob) * 2)
    elif edit == "bad-offset":
        entries["offset"].value = choice(rng, ["-1", "abc", "1e3", " 4", "99999999999999999999999"])
    elif edit == "empty":
        location.value = ""
    elif edit == "nul":
        location.value = "weights.bin\x00.txt"
    elif edit == "folder":
        location.value = "sub"
        files["m/sub/x"] = b""
    elif edit == "link-out":
        location.value = "link.bin"
        files["m/link.bin"] = Link("../outside.bin")
    elif edit == "loop":
        location.value = "loop.bin"
        files["m/loop.bin"] = Link("loop.bin")
    elif edit == "self":
        location.value = "model.onnx"
    elif edit == "truncated":
        files["m/weights.bin"] = bytes(blob[: len(blob) // 2])
    elif edit == "dotted-ok":
        location.value = "./sub/../weights.bin"
        files["m/sub/keep"] = b""
    elif edit == "fifo":
        location.value = "pipe.bin"
        files["m/pipe.bin"] = Fifo()
    must = COMMANDS if edit in MUST_FAIL_EXTERNAL else ()
    paths = {}
    if edit == "output-over-data":  # a valid model whose quantized output would overwrite its own weights
        paths, must = {"output": "m/weights.bin"}, ("quantize",)
    return src.case(f"{name}:{edit}", "external-data", model.SerializeToString(), files=files, must_fail=must,
                    paths=paths, hang_risk=edit == "fifo")  # fmt: skip


def fifo(rng, src: Sources) -> Case:
    """A named pipe where a file is read: the model, the data, the external data or the recipe."""
    where = choice(rng, ["model", "data", "external", "recipe"])
    if where == "external":
        case = external_data(rng, src, edit="fifo")
        case.klass = "fifo"
        return case
    if where == "model":
        return src.case("model", "fifo", Fifo(), must_fail=COMMANDS, hang_risk=True)
    if where == "data":
        paths = {"calib": "pipe.npz", "data": "pipe.npz"}
        return src.case("data", "fifo", src.models["mlp"], files={"pipe.npz": Fifo()}, paths=paths,
                        must_fail=("quantize", "eval"), hang_risk=True)  # fmt: skip
    args = {"quantize": ["--recipe", "{root}/recipe.json"]}
    return src.case("recipe", "fifo", src.models["mlp"], files={"recipe.json": Fifo()}, args=args,
                    must_fail=("quantize",), hang_risk=True)  # fmt: skip
