"""Dynamic quantization and int8 embedding tables, checked against numpy and against the float model; and the
transformer encoder they are for (paraphrase-MiniLM-L3, when ../shared/tools has fetched it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLE_MODELS, SHARED_MODELS
from onnxq.cli import main
from onnxq.errors import ConfigError
from onnxq.quantize.recipe import QuantizeRecipe

MINILM = Path.home() / ".cache" / "onnxq-models" / "paraphrase_minilm_l3" / "model.onnx"
SENTENCES = SHARED_MODELS / "paraphrase_minilm_l3" / "sentences_padded.npz"


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.square(ref).sum() / np.square(ref - got).sum()))


@pytest.mark.parametrize("name, op", [("transformer_digits", "MatMul"), ("mlp_digits", "Gemm")])
def test_dynamic_quantization_needs_no_data_and_keeps_accuracy(name, op, tmp_path, capsys):
    src, out = SAMPLE_MODELS / f"{name}.onnx", tmp_path / "dyn.onnx"
    assert main(["quantize", str(src), "-o", str(out), "--dynamic", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["op_counts"][op] > 0 and summary["calib_samples"] == 0
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "QuantizeLinear" not in ops
    data = np.load(SAMPLE_MODELS / "test.npz")
    ref = ort.InferenceSession(str(src)).run(None, {"input": data["input"]})[0]
    got = ort.InferenceSession(str(out)).run(None, {"input": data["input"]})[0]
    assert (got.argmax(1) == data["label"]).mean() >= (ref.argmax(1) == data["label"]).mean() - 0.01
    assert _sqnr(ref, got) > 25  # int8 weights and run-time uint8 activations: 30-40 dB here


def _matmul_model(w: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w.shape[1]])],
        [numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_dynamic_matmul_equals_the_integer_arithmetic_done_in_numpy(tmp_path):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 6)) * np.array([0.01, 0.1, 1, 3, 10, 0.5])).astype(np.float32)  # uneven columns
    src, out = tmp_path / "mm.onnx", tmp_path / "dyn.onnx"
    onnx.save(_matmul_model(w), src)
    assert main(["quantize", str(src), "-o", str(out), "--dynamic"]) == 0
    x = rng.standard_normal((5, 16)).astype(np.float32)
    got = ort.InferenceSession(str(out)).run(None, {"x": x})[0]
    # independent reference: ONNX's DynamicQuantizeLinear (uint8, asymmetric, range including 0) and symmetric
    # per-column int8 weights, accumulated exactly in int32
    lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
    xs = np.float32((hi - lo) / 255)
    xz = np.clip(np.rint(-lo / xs), 0, 255)
    xq = np.clip(np.rint(x / xs) + xz, 0, 255)
    ws = np.abs(w).max(axis=0) / 127
    wq = np.clip(np.rint(w / ws), -127, 127)
    want = ((xq - xz) @ wq) * (xs * ws)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_embedding_tables_become_int8_rows_with_one_scale_each(tmp_path):
    rng = np.random.default_rng(1)
    table = (rng.standard_normal((2000, 64)) * rng.uniform(0.01, 5, (2000, 1))).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
         helper.make_node("MatMul", ["e", "w"], ["y"], name="mm")], "emb",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 8])],
        [numpy_helper.from_array(table, "table"),
         numpy_helper.from_array(rng.standard_normal((64, 8)).astype(np.float32), "w")],
    )  # fmt: skip
    src = tmp_path / "emb.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), src)
    ids = rng.integers(0, 2000, (3, 7)).astype(np.int64)
    for flags in (["--dynamic"], ["--calib-samples", "4"]):
        out = tmp_path / "q.onnx"
        calib = [] if flags == ["--dynamic"] else ["--calib", str(_write_ids(tmp_path, rng))]
        assert main(["quantize", str(src), "-o", str(out), *flags, *calib]) == 0
        q = onnx.load(out)
        tables = [t for t in q.graph.initializer if t.dims == [2000, 64]]
        dynamic = flags == ["--dynamic"]  # ORT's GatherBlockQuantized: uint8 + 128, one scale per block (the row)
        assert len(tables) == 1 and tables[0].data_type == (TensorProto.UINT8 if dynamic else TensorProto.INT8)
        assert dynamic == any(n.op_type == "GatherBlockQuantized" for n in q.graph.node)
        assert out.stat().st_size < 0.3 * src.stat().st_size
        rows = _expose(q, "e").run(["e"], {"ids": ids})[0]
        scale = np.abs(table).max(axis=1) / 127
        err = np.abs(rows - table[ids]) / scale[ids][..., None]
        assert err.max() <= 0.5 + 1e-3  # round to nearest: half a step of the row's own scale at most
    assert main(["quantize", str(src), "-o", str(tmp_path / "f.onnx"), "--dynamic", "--float-embeddings"]) == 0
    assert any(
        t.dims == [2000, 64] and t.data_type == TensorProto.FLOAT
        for t in onnx.load(tmp_path / "f.onnx").graph.initializer
    )


def test_dynamic_embedding_rows_of_several_blocks_have_a_scale_per_block(tmp_path):
    rng = np.random.default_rng(2)
    table = rng.standard_normal((1200, 96)).astype(np.float32)  # 96 = 3 blocks of 32
    table[:, 64:] *= 20.0  # the last block of every row is 20x the others
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["e"], name="embed")], "emb",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 96])],
                              [numpy_helper.from_array(table, "table")])  # fmt: skip
    src, out = tmp_path / "emb.onnx", tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), src)
    assert main(["quantize", str(src), "-o", str(out), "--dynamic"]) == 0
    ids = rng.integers(0, 1200, 50).astype(np.int64)
    rows = ort.InferenceSession(str(out)).run(None, {"ids": ids})[0]
    scale = np.abs(table.reshape(1200, 3, 32)).max(axis=2) / 127  # independently: per block of 32
    err = np.abs(rows - table[ids]) / np.repeat(scale[ids], 32, axis=1)
    assert err.max() <= 0.5 + 1e-3  # half a step of its own block's scale: the small blocks keep their precision


def _write_ids(tmp_path: Path, rng) -> Path:
    np.save(tmp_path / "ids.npy", rng.integers(0, 2000, (8, 7)).astype(np.int64))
    return tmp_path / "ids.npy"


def _expose(model: onnx.ModelProto, name: str) -> ort.InferenceSession:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.add().name = name
    return ort.InferenceSession(m.SerializeToString())


@pytest.mark.parametrize("flags, named", [
    ({"target": "tensorrt"}, "--target tensorrt contradicts --dynamic"),
    ({"weight_type": "int4"}, "--weight-type int4 contradicts --dynamic"),
    ({"activation_type": "int8"}, "--activation-type int8 contradicts --dynamic"),
])  # fmt: skip
def test_flags_that_contradict_dynamic_are_errors(flags, named):
    with pytest.raises(ConfigError, match=named):
        QuantizeRecipe(dynamic=True, **flags)


def _minilm_embeddings(path: Path, rows: range) -> np.ndarray:
    d = np.load(SENTENCES)
    ids, mask, lens = d["input_ids"], d["attention_mask"], d["attention_mask"].sum(1)
    sess = ort.InferenceSession(str(path))
    feeds = [{"input_ids": ids[i : i + 1, : lens[i]], "attention_mask": mask[i : i + 1, : lens[i]]} for i in rows]
    return np.concatenate([sess.run(["461"], f)[0] for f in feeds])


def _neighbours(e: np.ndarray) -> np.ndarray:
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = e @ e.T
    np.fill_diagonal(s, -2)
    return s.argmax(1)


@pytest.mark.slow
def test_minilm_static_from_sentence_feeds_and_dynamic_keep_the_neighbours(tmp_path):
    if not MINILM.exists() or not SENTENCES.exists():
        pytest.skip("paraphrase-MiniLM-L3 is not fetched (../shared/tools/get-paraphrase-minilm)")
    d = np.load(SENTENCES)
    lens = d["attention_mask"].sum(1)
    (tmp_path / "feeds").mkdir()
    for i in range(100):  # calibration: one feed per sentence, cut to its length
        np.savez(tmp_path / "feeds" / f"{i:03d}.npz", input_ids=d["input_ids"][i : i + 1, : lens[i]],
                 attention_mask=d["attention_mask"][i : i + 1, : lens[i]])  # fmt: skip
    held_out = range(100, 286)
    ref = _minilm_embeddings(MINILM, held_out)
    for flags, agreement, sqnr in ((["--calib", str(tmp_path / "feeds")], 0.93, 18), (["--dynamic"], 0.92, 20)):
        out = tmp_path / "q.onnx"
        assert main(["quantize", str(MINILM), "-o", str(out), "--no-progress", *flags]) == 0
        got = _minilm_embeddings(out, held_out)
        # measured: static 96.2% / 20.3 dB, dynamic 94.6% / 23.6 dB (bench/results/transformers.md)
        assert (_neighbours(got) == _neighbours(ref)).mean() >= agreement and _sqnr(ref, got) >= sqnr, flags
        assert out.stat().st_size <= 0.3 * MINILM.stat().st_size  # the embedding tables are int8 too
