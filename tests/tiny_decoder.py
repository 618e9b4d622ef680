"""A tiny LLaMA-shaped decoder built with onnx.helper, for the weight-only tests (no download, no torch).

input_ids [batch, seq] (+ each layer's past key/value [batch, past, d], optional) -> Gather(embeddings) ->
``layers`` x (RMSNorm -> q/k/v MatMul -> causal single-head attention -> o MatMul -> residual; RMSNorm ->
gate/up MatMul -> SiLU(gate) * up -> down MatMul -> residual) -> RMSNorm -> lm_head MatMul -> logits.
Random weights with a few outlier input channels (as real LLM activations have), seeded.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_decoder(*, vocab: int = 256, d: int = 64, ff: int = 160, layers: int = 2, seed: int = 0,
                 with_past: bool = False) -> onnx.ModelProto:  # fmt: skip
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def ints(name: str, value: list[int]) -> str:
        inits.append(numpy_helper.from_array(np.array(value, np.int64), name))
        return name

    def node(op: str, ins: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, ins, [out], name=f"/{out}/{op}", **attrs))
        return out

    def norm(x: str, p: str) -> str:
        sq = node("Mul", [x, x], f"{p}_sq")
        ms = node("ReduceMean", [sq, ints(f"{p}_axes", [-1])], f"{p}_ms", keepdims=1)
        r = node("Sqrt", [node("Add", [ms, const(f"{p}_eps", np.array(1e-5))], f"{p}_mse")], f"{p}_rms")
        gamma = const(f"{p}_gamma", 1 + 0.1 * rng.normal(size=d))
        return node("Mul", [node("Div", [x, r], f"{p}_n"), gamma], f"{p}_out")

    def linear(x: str, k: int, n: int, p: str) -> str:
        return node("MatMul", [x, const(f"{p}_W", rng.normal(size=(k, n)) / np.sqrt(k))], p)

    table = rng.normal(size=(vocab, d)) * 0.5
    table[:, :3] *= 8  # outlier channels
    h = node("Gather", [const("embed", table), "input_ids"], "embedded")
    causal = const("causal", np.triu(np.full((512, 512), -1e9), 1))
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])]
    for i in range(layers):
        p = f"layers.{i}"
        x = norm(h, f"{p}.in_norm")
        q, k, v = (linear(x, d, d, f"{p}.{n}_proj") for n in "qkv")
        if with_past:
            inputs += [helper.make_tensor_value_info(f"past_key_values.{i}.{n}", TensorProto.FLOAT,
                                                     ["batch", "past", d]) for n in ("key", "value")]  # fmt: skip
            k = node("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=1)
            v = node("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=1)
            outputs += [helper.make_tensor_value_info(f"present.{i}.{n}", TensorProto.FLOAT, ["batch", "total", d])
                        for n in ("key", "value")]
        s = node("Mul", [node("MatMul", [q, node("Transpose", [k], f"{p}.kT", perm=[0, 2, 1])], f"{p}.qk"),
                         const(f"{p}.inv_sqrt_d", np.array(d**-0.5))], f"{p}.scores")  # fmt: skip
        seq = node("Shape", [q], f"{p}.qshape", start=1, end=2)
        zero, one = ints(f"{p}.zero", [0]), ints(f"{p}.one", [1])
        past = node("Sub", [node("Shape", [k], f"{p}.kshape", start=1, end=2), seq], f"{p}.past_len")
        rows = node("Slice", [causal, past, node("Add", [past, seq], f"{p}.rows_end"), zero], f"{p}.mask_rows")
        mask = node("Slice", [rows, zero, node("Shape", [k], f"{p}.klen", start=1, end=2), one], f"{p}.mask")
        attn = node("MatMul", [node("Softmax", [node("Add", [s, mask], f"{p}.masked")], f"{p}.probs", axis=-1), v],
                    f"{p}.attn")  # fmt: skip
        h = node("Add", [h, linear(attn, d, d, f"{p}.o_proj")], f"{p}.res1")
        x = norm(h, f"{p}.post_norm")
        gate, up = linear(x, d, ff, f"{p}.gate_proj"), linear(x, d, ff, f"{p}.up_proj")
        act = node("Mul", [node("Mul", [gate, node("Sigmoid", [gate], f"{p}.sig")], f"{p}.silu"), up], f"{p}.act")
        h = node("Add", [h, linear(act, ff, d, f"{p}.down_proj")], f"{p}.res2")
    node("MatMul", [norm(h, "final_norm"), const("lm_head_W", table.T * 0.3)], "logits")
    graph = helper.make_graph(nodes, "tiny_decoder", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model
