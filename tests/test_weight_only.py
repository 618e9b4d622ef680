"""Block-wise weight-only quantization: the grid against ORT and onnx.reference, GPTQ and AWQ against RTN,
the CLI end to end on a tiny decoder, perplexity, and the real SmolLM2 when bench/build_smollm2.py built it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from tiny_decoder import tiny_decoder

from onnxq.cli import main
from onnxq.errors import ConfigError
from onnxq.measure.perplexity import windows
from onnxq.passes._blockwise import BlockFormat, block_grid, pack_nibbles, padded_blocks, rtn, unpack_nibbles
from onnxq.passes.awq import AWQConfig, output_error, search_clip
from onnxq.passes.gptq import GPTQConfig, gptq, gptq_shared, inverse_hessian_factor
from onnxq.passes.weight_only import WeightOnlyConfig, quantize_weight_only
from onnxq.quantize.pipeline import QuantizeContext
from onnxq.quantize.recipe import QuantizeRecipe

SMOLLM = Path.home() / ".cache/onnxq-models/smollm2_135m"


def _matmul(w: np.ndarray) -> onnx.ModelProto:
    k, n = w.shape
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
                          [numpy_helper.from_array(w, "W")])  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.mark.parametrize("wtype", ["int4", "uint4", "int8", "uint8"])
@pytest.mark.parametrize("k, n, block", [(96, 40, 32), (100, 24, 16), (300, 8, 256)])  # K not a multiple of the block
def test_both_forms_compute_the_numpy_dequantized_weight(wtype, k, n, block):
    rng = np.random.default_rng(k + n)
    w = rng.normal(size=(k, n)).astype(np.float32)
    x = rng.normal(size=(5, k)).astype(np.float32)
    for form in ("matmulnbits", "qdq"):
        cfg = WeightOnlyConfig(weight_type=wtype, block_size=block, format=form)
        model = quantize_weight_only(_matmul(w), cfg, QuantizeContext()).model
        want = x @ rtn(w.T, cfg.block_format).dequantize()
        so = ort.SessionOptions()  # the qdq form: ORT fuses DQ+MatMul, at accuracy level 4 unless told otherwise
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        got = sess.run(None, {"x": x})
        np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-4 * np.abs(want).max())
        if form == "qdq":
            np.testing.assert_allclose(ReferenceEvaluator(model).run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
        assert abs(float(np.mean(x @ w - want))) < np.abs(x @ w).max()  # and it is an approximation of the float


def test_symmetric_grid_hits_the_block_extreme_and_keeps_zero_blocks():
    w = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    w[3, 32:] = 0
    for bits in (4, 8):
        deq = rtn(w, BlockFormat(bits, 32, True)).dequantize().T
        idx = np.abs(w.reshape(8, 2, 32)).argmax(-1)
        ext = np.take_along_axis(w.reshape(8, 2, 32), idx[..., None], -1)
        np.testing.assert_allclose(np.take_along_axis(deq.reshape(8, 2, 32), idx[..., None], -1), ext, rtol=1e-6)
        assert (deq[3, 32:] == 0).all()
        step = (np.abs(ext[..., 0]) / (1 << (bits - 1)))[..., None]
        # half a step, except on the extreme's other side past 2**(bits-1) - 1 steps, which clips to that level
        bound = np.maximum(step / 2, np.abs(w.reshape(8, 2, 32)) - ((1 << (bits - 1)) - 1) * step)
        assert (np.abs(deq - w).reshape(8, 2, 32) <= bound + 1e-6).all()


def test_nibble_packing_round_trips_low_nibble_first():
    v = np.arange(15, dtype=np.uint8) % 16
    packed = pack_nibbles(v)
    assert packed[0] == (v[0] | v[1] << 4) and len(packed) == 8
    np.testing.assert_array_equal(unpack_nibbles(packed, 15), v)


def _layer(seed: int = 0, k: int = 256, n: int = 96, tokens: int = 2048):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(tokens, k)) @ (np.eye(k) + 0.1 * rng.normal(size=(k, k)))  # correlated inputs
    x *= rng.lognormal(sigma=1.0, size=k)  # outlier channels, as in LLM activations
    w = (rng.normal(size=(k, n)) / np.sqrt(k)).astype(np.float32)
    return w, x.T @ x / tokens


@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_output_error_is_well_below_round_to_nearest(act_order, symmetric):
    w, h = _layer()
    fmt = BlockFormat(4, 64, symmetric)
    base = output_error(w, rtn(w.T, fmt).dequantize(), h)
    bq = gptq(w, h, fmt, GPTQConfig(act_order=act_order))
    # here: under 0.5x with activation order, 0.64-0.65x without; a broken update gives RTN's error or more
    assert output_error(w, bq.dequantize(), h) < (0.5 if act_order else 0.8) * base
    assert bq.q.max() <= fmt.qmax and bq.scale.shape == (w.shape[1], fmt.n_blocks(w.shape[0]))


@pytest.mark.parametrize("act_order", [True, False])
def test_layers_sharing_an_input_get_what_gptq_gives_each(act_order):
    w, h = _layer(3, n=160)
    parts = [w[:, :96], w[:, 96:128], w[:, 128:]]  # q, k, v of one block: one Hessian
    fmt, cfg = BlockFormat(4, 64, True), GPTQConfig(act_order=act_order)
    for part, got in zip(parts, gptq_shared(parts, h, fmt, cfg), strict=True):
        alone = gptq(part, h, fmt, cfg)
        assert got.q.shape == alone.q.shape and got.scale.shape == alone.scale.shape
        # rows are independent given H: the same integers, up to BLAS summation order flipping a rare rounding tie
        assert (got.q == alone.q).mean() > 0.999
        np.testing.assert_allclose(got.dequantize(), alone.dequantize(), atol=float(alone.scale.max()) * 1.01)
        assert abs(output_error(part, got.dequantize(), h) / output_error(part, alone.dequantize(), h) - 1) < 1e-3


def _textbook_gptq(weight, h, fmt, act_order, damp=0.01):
    """GPTQ as the paper's algorithm 1 states it, in float64, one column at a time with no lazy batches: each
    column's error updates every later column at once. Returns the codes [N, K]."""
    k, n = weight.shape
    h = np.array(h, np.float64)
    w = np.array(weight, np.float64)
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    scale, zero = np.ones((n, fmt.n_blocks(k))), np.zeros((n, fmt.n_blocks(k)))
    if act_order:
        s0, z0 = block_grid(padded_blocks(np.ascontiguousarray(weight.T), fmt), fmt)
        scale, zero = s0.astype(np.float64), z0.astype(np.float64)
    damped = h + damp * np.mean(np.diag(h)) * np.eye(k)
    hp = damped[np.ix_(perm, perm)]
    u = np.linalg.cholesky(np.linalg.inv(hp)).T  # upper, U^T U = H^-1
    w, q = w[perm], np.zeros((n, k))
    for i in range(k):
        col, b = perm[i], perm[i] // fmt.block
        if not act_order and col % fmt.block == 0:
            s1, z1 = block_grid(padded_blocks(w[i : i + fmt.block].T.astype(np.float32), fmt)[:, :1], fmt)
            scale[:, b], zero[:, b] = s1[:, 0], z1[:, 0]
        q[:, col] = np.clip(np.rint(w[i] / scale[:, b]) + zero[:, b], 0, fmt.qmax)
        e = (w[i] - (q[:, col] - zero[:, b]) * scale[:, b]) / u[i, i]
        w[i + 1 :] -= u[i, i + 1 :, None] * e
    return q


@pytest.mark.parametrize("k, n, block, act_order, symmetric",
                         [(96, 40, 32, True, True), (100, 24, 16, False, False), (300, 8, 256, True, False),
                          (200, 16, 16, False, True)])  # fmt: skip
def test_gptq_gives_the_textbook_algorithms_integers(k, n, block, act_order, symmetric):
    """Lazy batches, the inner batches inside them, the triangular factor and float32 change the order of the
    arithmetic, not its result: the integers of the textbook form, bar a rare rounding tie."""
    w, h = _layer(5, k=k, n=n)
    fmt = BlockFormat(4, block, symmetric)
    got = gptq(w, h, fmt, GPTQConfig(act_order=act_order, lazy_batch=32))
    assert (got.q[:, :k] == _textbook_gptq(w, h, fmt, act_order)).mean() > 0.995


@pytest.mark.parametrize("k", [100, 1536, 2047])  # one product; a 3x3 split; a 4x4 split with uneven blocks
def test_gram_is_the_symmetric_product_of_the_inputs(k):
    from onnxq.passes._hessian import gram

    x = np.random.default_rng(k).standard_normal((300, k)).astype(np.float32)
    got, ref = gram(x), x.astype(np.float64).T @ x.astype(np.float64)
    assert got.dtype == np.float32 and np.array_equal(got, got.T)
    np.testing.assert_allclose(got, ref, atol=2e-6 * np.abs(ref).max())


def test_capture_runs_batch_about_a_thousand_tokens_unless_told(decoder):
    from onnxq.data import open_dataset
    from onnxq.passes._hessian import CAPTURE_ROWS, capture_batch_size

    model = onnx.load(decoder / "model.onnx")
    for window, want in ((256, CAPTURE_ROWS // 256), (2048, 1), (8, 16)):  # 16: all the samples there are
        ids = {"input_ids": np.zeros((16, window), np.int64)}
        dataset = open_dataset(ids, model)
        assert capture_batch_size(dataset, None) == want
        assert capture_batch_size(dataset, 3) == 3


def test_layers_solved_side_by_side_get_what_each_gets_alone():
    from onnxq.passes.gptq import gptq_stack

    fmt, cfg = BlockFormat(4, 32, False), GPTQConfig(act_order=False, lazy_batch=64)
    layers = [_layer(seed, k=160, n=48) for seed in (6, 7, 8)]
    stacked = gptq_stack([w for w, _ in layers], [h for _, h in layers], fmt, cfg)
    for (w, h), got in zip(layers, stacked, strict=True):
        alone = gptq(w, h, fmt, cfg)
        assert np.array_equal(got.q, alone.q) and np.array_equal(got.scale, alone.scale)
        assert np.array_equal(got.zero, alone.zero)


@pytest.mark.parametrize("k", [96, 300, 576])  # one block, and the recursive halves of the triangular inverse
def test_the_inverse_hessian_factor_is_the_upper_cholesky_factor_of_the_damped_inverse(k):
    _, h = _layer(4, k=k, n=8)
    u = inverse_hessian_factor(h, 0.01)
    damped = h + 0.01 * np.mean(np.diag(h)) * np.eye(k)
    assert np.array_equal(u, np.triu(u)) and (np.diag(u) > 0).all()
    np.testing.assert_allclose(u.T @ u @ damped, np.eye(k), atol=1e-8)


def test_gptq_zeroes_dead_inputs_and_survives_a_singular_hessian():
    w, h = _layer(1)
    h[:, 5] = h[5, :] = 0  # input 5 never fires
    h[7], h[:, 7] = h[8], h[:, 8]  # two identical inputs: singular
    deq = gptq(w, h, BlockFormat(4, 32, True)).dequantize()
    assert np.isfinite(deq).all() and (deq[5] == 0).all()


def test_awq_clip_search_never_raises_the_error_it_minimises():
    w, h = _layer(2)
    fmt = BlockFormat(4, 64, True)
    ratio = search_clip(w, h, fmt, AWQConfig())
    assert ratio.min() < 1  # some blocks are clipped...
    assert output_error(w, rtn(w.T, fmt, ratio).dequantize(), h) < output_error(w, rtn(w.T, fmt).dequantize(), h)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("decoder")
    onnx.save(tiny_decoder(with_past=True), d / "model.onnx")
    rng = np.random.default_rng(1)
    np.savez(d / "calib.npz", input_ids=rng.integers(0, 256, (16, 64)))
    np.savez(d / "eval.npz", input_ids=rng.integers(0, 256, (6, 64)))
    return d


def _ppl(capsys, model: Path, d: Path) -> dict:
    capsys.readouterr()
    assert main(["eval", str(model), "--data", str(d / "eval.npz"), "--perplexity", "--reference",
                 str(d / "model.onnx"), "--json"]) == 0  # fmt: skip
    return json.loads(capsys.readouterr().out)


def test_cli_rtn_gptq_awq_on_a_decoder_with_kv_cache(decoder, capsys):
    src, before = decoder / "model.onnx", (decoder / "model.onnx").read_bytes()
    kl = {}
    for algo in ("rtn", "gptq", "awq"):
        out = decoder / f"{algo}.onnx"
        args = ["quantize", str(src), "-o", str(out), "--weight-only", "int4", "--block-size", "32", "--algorithm",
                algo, "--calib", str(decoder / "calib.npz"), "--no-progress", "--json"]  # fmt: skip
        assert main(args) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["op_counts"]["MatMul"] == 15 and summary["calib_samples"] == 16
        ops = [n.op_type for n in onnx.load(out).graph.node]
        assert ops.count("MatMulNBits") == 15 and "MatMul" in ops  # the attention products stay float
        kl[algo] = _ppl(capsys, out, decoder)["mean_kl"]
    assert kl["gptq"] < kl["rtn"] and kl["awq"] < kl["rtn"]
    assert src.read_bytes() == before


def test_perplexity_of_the_model_against_itself_is_exact(decoder, capsys):
    r = _ppl(capsys, decoder / "model.onnx", decoder)
    assert r["top1_agreement"] == 1 and abs(r["mean_kl"]) < 1e-9 and r["perplexity"] == r["reference_perplexity"]
    # every token after the first of each window is scored once; the numbers are the exp of the mean NLL
    assert r["tokens_scored"] == 6 * 63 and np.isclose(np.log(r["perplexity"]), r["nll"])


def test_sliding_windows_score_each_token_once_with_context():
    spans = windows(100, 40, 16)
    scored = [t for _, end, first in spans for t in range(first, end)]
    assert scored == list(range(1, 100))
    assert all(first - begin >= 40 - 16 for begin, _, first in spans[1:])


def test_qdq_form_is_standard_onnx(decoder, capsys):
    out = decoder / "qdq.onnx"
    assert main(["quantize", str(decoder / "model.onnx"), "-o", str(out), "--weight-only", "uint4",
                 "--weight-format", "qdq", "--block-size", "16"]) == 0  # fmt: skip
    m = onnx.load(out)
    assert all(n.domain in ("", "ai.onnx") for n in m.graph.node)
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 15 and all(a.i == 16 for n in dq for a in n.attribute if a.name == "block_size")
    assert _ppl(capsys, out, decoder)["top1_agreement"] > 0.5


@pytest.mark.parametrize("flags, named", [
    (["--weight-only", "int4", "--dynamic"], "--dynamic contradicts --weight-only"),
    (["--weight-only", "int4", "--block-size", "100"], "block_size 100"),
    (["--algorithm", "gptq"], "for --weight-only"),
    (["--weight-only", "int4", "--weight-format", "qdq", "--accuracy-level", "4"], "accuracy_level"),
    (["--weight-only", "int4", "--passes", "bias-correction"], "bias-correction"),
])  # fmt: skip
def test_contradicting_weight_only_flags_are_one_line_errors(flags, named, decoder, capsys):
    assert main(["quantize", str(decoder / "model.onnx"), "-o", str(decoder / "x.onnx"), *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and "hint:" in err and "Traceback" not in err
    assert not (decoder / "x.onnx").exists()


def test_gptq_without_data_is_a_clear_error(decoder, capsys):
    assert main(["quantize", str(decoder / "model.onnx"), "-o", str(decoder / "y.onnx"), "--weight-only", "int4",
                 "--algorithm", "awq"]) == 2  # fmt: skip
    assert "calibration data" in capsys.readouterr().err


def test_recipe_selects_the_algorithm_pass():
    r = QuantizeRecipe(weight_only="int4", algorithm="gptq")
    assert "gptq" in r.passes and r.calibration_needs_data()
    assert not QuantizeRecipe(weight_only="int4").calibration_needs_data()
    with pytest.raises(ConfigError):
        QuantizeRecipe(weight_only="int4", algorithm="gptq", passes=("awq",))


@pytest.mark.skipif(not (SMOLLM / "model.onnx").exists(), reason="run bench/build_smollm2.py to build SmolLM2")
def test_gptq_halves_the_perplexity_increase_of_rtn_on_smollm2(tmp_path, capsys):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input_ids=np.load(SMOLLM / "calib.npz")["input_ids"][:8])
    evals = tmp_path / "eval.npz"
    np.savez(evals, input_ids=np.load(SMOLLM / "eval.npz")["input_ids"][:4])
    inc = {}
    for algo in ("rtn", "gptq"):
        out = tmp_path / f"{algo}.onnx"
        assert main(["quantize", str(SMOLLM / "model.onnx"), "-o", str(out), "--weight-only", "int4", "--algorithm",
                     algo, "--calib", str(calib), "--no-progress"]) == 0  # fmt: skip
        capsys.readouterr()
        assert main(["eval", str(out), "--data", str(evals), "--perplexity", "--reference",
                     str(SMOLLM / "model.onnx"), "--json"]) == 0  # fmt: skip
        inc[algo] = json.loads(capsys.readouterr().out)["perplexity_increase"]
    assert 0 < inc["gptq"] < inc["rtn"] / 2


def _external_copy(src: Path, folder: Path) -> Path:
    """``src`` saved with every tensor of 1 KiB or more in ``model.onnx.data`` beside it."""
    folder.mkdir()
    model = onnx.load(src)
    onnx.save(model, folder / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=1024)  # fmt: skip
    return folder / "model.onnx"


@pytest.mark.parametrize("flags", [["--weight-only", "int4", "--block-size", "32"],
                                   ["--weight-only", "uint8", "--block-size", "16"],
                                   ["--weight-only", "int4", "--weight-format", "qdq", "--block-size", "32"],
                                   ["--weight-only", "int4", "--block-size", "32", "--algorithm", "gptq", "--calib"],
                                   ["--weight-only", "uint4", "--block-size", "16", "--algorithm", "gptq", "--calib",
                                    "--recipe"],
                                   ["--weight-only", "int4", "--block-size", "32", "--algorithm", "awq", "--calib"],
                                   ["--weight-only", "int4", "--weight-format", "qdq", "--block-size", "16",
                                    "--algorithm", "awq", "--calib"]])  # fmt: skip
def test_a_model_with_external_data_is_streamed_to_the_in_memory_paths_tensors(decoder, tmp_path, flags, capsys,
                                                                                 monkeypatch):  # fmt: skip
    """The streamed path (weights read, quantized and written one at a time; for GPTQ, the graph run in parts,
    here one per weight) writes the model the in-memory pass writes: the same nodes and, tensor for tensor, the
    same values; the input files are left as they were."""
    from onnx import numpy_helper

    import onnxq.quantize.layerwise as layerwise
    import onnxq.quantize.streaming as streaming

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"gptq": {"act_order": False}}))  # each block's grid taken as it is reached
    extra = {"--calib": str(decoder / "calib.npz"), "--recipe": str(recipe)}
    flags = [x for f in flags for x in ([f, extra[f]] if f in extra else [f])]
    monkeypatch.setattr(layerwise, "CHUNK_BYTES", 1)  # every weight ends a part: the cuts are exercised
    src = _external_copy(decoder / "model.onnx", tmp_path / "ext")
    before = {p.name: p.read_bytes() for p in src.parent.iterdir()}
    out = tmp_path / "streamed.onnx"
    assert main(["quantize", str(src), "-o", str(out), *flags, "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["passes"][-1]["streamed"] is True and "streamed from external data" in summary["notes"][0]
    if "gptq" in flags or "awq" in flags:
        assert summary["passes"][0]["layerwise"]["parts"] >= 15 and summary["calib_samples"] == 16
        assert summary["passes"][-1]["from_algorithm"] == 15
    if "awq" in flags:  # the scales went into the graph: folded into the norms' Muls, or Muls inserted
        entry = summary["passes"][0]
        assert entry["groups_scaled"] > 0 and entry["folded"] + entry["muls_inserted"] == entry["groups_scaled"]
    assert (tmp_path / "streamed.onnx.data").is_file()
    monkeypatch.setattr(streaming, "streams", lambda *a: False)  # the in-memory pipeline, on the same file
    ref = tmp_path / "memory.onnx"
    assert main(["quantize", str(src), "-o", str(ref), *flags, "--no-progress"]) == 0
    a, b = onnx.load(out), onnx.load(ref)
    assert [(n.op_type, list(n.input), list(n.output)) for n in a.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in b.graph.node]  # fmt: skip
    ta = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    tb = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) and ta[k].dtype == tb[k].dtype for k in ta)
    assert {p.name: p.read_bytes() for p in src.parent.iterdir()} == before
    assert _ppl(capsys, out, decoder)["top1_agreement"] > 0.5


@pytest.mark.parametrize("streamed", [False, True])
def test_fewer_calibration_tokens_than_input_channels_is_a_warning(decoder, tmp_path, capsys, streamed):
    src = _external_copy(decoder / "model.onnx", tmp_path / "ext") if streamed else decoder / "model.onnx"
    calib = tmp_path / "few.npz"
    ids = np.load(decoder / "calib.npz")["input_ids"]
    np.savez(calib, input_ids=ids[:1, :8])  # 8 tokens
    for algo in ("gptq", "awq"):
        assert main(["quantize", str(src), "-o", str(tmp_path / f"{algo}.onnx"), "--weight-only", "int4",
                     "--block-size", "16", "--algorithm", algo, "--calib", str(calib), "--json",
                     "--no-progress"]) == 0  # fmt: skip
        summary = json.loads(capsys.readouterr().out)
        entry = summary["passes"][0] if streamed else next(e for e in summary["passes"] if e["pass"] == algo)
        assert entry["calib_tokens"] == 8 and entry["widest_input"] > 8
        assert any(f"{algo}: 8 calibration tokens" in w and "rank-deficient" in w for w in summary["warnings"])
    np.savez(calib, input_ids=ids)  # enough tokens: no warning
    assert main(["quantize", str(src), "-o", str(tmp_path / "ok.onnx"), "--weight-only", "int4", "--block-size",
                 "16", "--algorithm", "gptq", "--calib", str(calib), "--json", "--no-progress"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert not any("rank-deficient" in w for w in summary["warnings"])


def test_a_streamed_run_refuses_an_unknown_node_name(decoder, tmp_path, capsys):
    src = _external_copy(decoder / "model.onnx", tmp_path / "ext")
    assert main(["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--weight-only", "int4",
                 "--exclude-node", "no_such_node"]) == 2  # fmt: skip
    assert "no_such_node" in capsys.readouterr().err and not (tmp_path / "q.onnx").exists()
    name = "/layers.0.q_proj/MatMul"
    assert main(["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--weight-only", "int4", "--exclude-node",
                 name, "--json", "--no-progress"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["passes"][0]["streamed"] and name in summary["skipped"] and summary["op_counts"]["MatMul"] == 14
    assert any(n.name == name and n.op_type == "MatMul" for n in onnx.load(tmp_path / "q.onnx").graph.node)


def test_streaming_takes_rtn_without_data_and_gptq_or_awq_with_it_on_external_weights(decoder, tmp_path):
    from onnxq.quantize.streaming import streams

    src, calib = _external_copy(decoder / "model.onnx", tmp_path / "ext"), decoder / "calib.npz"
    rtn = QuantizeRecipe(weight_only="int4", block_size=32).resolved()
    gptq = QuantizeRecipe(weight_only="int4", algorithm="gptq").resolved()
    assert streams(src, None, rtn) and streams(src, calib, gptq)
    assert not streams(decoder / "model.onnx", None, rtn)  # one file: loaded whole anyway
    assert not streams(decoder / "model.onnx", calib, gptq)
    assert not streams(src, calib, rtn)  # with data the in-memory path checks the outputs on it
    assert streams(src, calib, QuantizeRecipe(weight_only="int4", algorithm="awq").resolved())
    assert not streams(src, calib, QuantizeRecipe(weight_only="int4", algorithm="awq", passes=("cle",)).resolved())
    assert not streams(src, None, QuantizeRecipe().resolved())


def test_the_graph_run_in_parts_gives_the_whole_graphs_values(decoder, tmp_path):
    """Cut after every weight, the parts (each given its weights from memory) compute every wanted tensor as the
    whole graph does, batch by batch; a tensor that crosses several cuts is kept until its last reader."""
    from onnxq.data import open_dataset
    from onnxq.model import load_model
    from onnxq.quantize.layerwise import plan_chunks, run_chunks
    from onnxq.quantize.streaming import _reader

    src = _external_copy(decoder / "model.onnx", tmp_path / "ext")
    head = load_model(src, check=False, external_data=False)
    wanted = [n.input[0] for n in head.graph.node if n.op_type == "MatMul"]
    chunks = plan_chunks(head.graph, wanted, chunk_bytes=1)
    assert len(chunks) >= 15 and max(len(c.inputs) for c in chunks) >= 3
    external = {t.name for t in head.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    assert all(sum(any(i in external for i in n.input) for n in c.nodes) <= 1 for c in chunks)  # one reader each
    batches = list(open_dataset(decoder / "calib.npz", head).batches(4))
    got: dict[str, list] = {}
    done = []
    run_chunks(head, chunks, batches, _reader(src), lambda n, v: got.setdefault(n, []).append(v), done.append)
    assert done == chunks and set(got) == set(wanted)
    whole = onnx.load(decoder / "model.onnx")
    del whole.graph.output[:]
    for name in dict.fromkeys(wanted):
        whole.graph.output.add().name = name
    sess = ort.InferenceSession(whole.SerializeToString(), providers=["CPUExecutionProvider"])
    names = list(dict.fromkeys(wanted))
    for b, feeds in enumerate(batches):
        for name, ref in zip(names, sess.run(names, feeds), strict=True):
            np.testing.assert_allclose(got[name][b], ref, rtol=1e-5, atol=1e-6)


def test_a_layer_on_a_graph_input_is_solved_when_streamed(tmp_path, capsys):
    """Nothing to run before the layer's input is complete (it is the graph's input): it is solved all the same."""
    rng = np.random.default_rng(0)
    onnx.save(_matmul(rng.standard_normal((64, 48)).astype(np.float32)), tmp_path / "mm.onnx")
    src = _external_copy(tmp_path / "mm.onnx", tmp_path / "ext")
    np.savez(tmp_path / "x.npz", x=rng.standard_normal((128, 64)).astype(np.float32))
    assert main(["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--weight-only", "int4", "--block-size", "32",
                 "--algorithm", "gptq", "--calib", str(tmp_path / "x.npz"), "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["passes"][-1]["streamed"] and summary["passes"][0]["layers"] == 1
    assert [n.op_type for n in onnx.load(tmp_path / "q.onnx").graph.node] == ["MatMulNBits"]


def test_a_streamed_check_refuses_outputs_that_are_not_finite(tmp_path):
    from onnxq.errors import QuantizationError
    from onnxq.quantize.streaming import _check

    graph = helper.make_graph([helper.make_node("Log", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])  # fmt: skip
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    assert _check(path, path, {"x": np.ones(2, np.float32)}) > 0  # the child's peak RSS
    with pytest.raises(QuantizationError, match="gives 1 NaN/Inf value.*'y'"):
        _check(path, path, {"x": np.array([1, 0], np.float32)})


def test_a_streamed_quantized_model_is_refused_and_the_output_left_alone(decoder, tmp_path, capsys):
    src = _external_copy(decoder / "model.onnx", tmp_path / "ext")
    first = tmp_path / "q.onnx"
    assert main(["quantize", str(src), "-o", str(first), "--weight-only", "int4", "--no-progress"]) == 0
    again = tmp_path / "again.onnx"
    assert main(["quantize", str(first), "-o", str(again), "--weight-only", "int4"]) == 2
    assert "already quantized" in capsys.readouterr().err and not again.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_a_streamed_model_with_nothing_to_quantize_writes_nothing(tmp_path, capsys):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((32, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 6, 6])], [w])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "c.onnx")
    conv = _external_copy(tmp_path / "c.onnx", tmp_path / "conv")
    out = tmp_path / "w.onnx"
    for model in (conv, tmp_path / "c.onnx"):  # streamed, and in memory
        assert main(["quantize", str(model), "-o", str(out), "--weight-only", "int4"]) == 2
        assert "no MatMul/Gemm with a constant float weight" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.onnx", "conv"]  # no output, data or temporary folder
