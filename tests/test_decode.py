"""``onnxq bench --decode``: prefill and per-token decode latency of a decoder with a KV cache
(onnxq.measure.decode). The incremental runs must compute what one run over the whole sequence computes;
models that are not decoders, and flags that do not apply, are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tiny_decoder import tiny_decoder

from conftest import SAMPLE_MODELS
from onnxq.cli import main
from onnxq.errors import DataError, ModelValidationError
from onnxq.measure.decode import DecodeConfig, _Decoder, decode_bench, decoder_layout
from onnxq.runtime.session import SessionSpec


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("decode")
    onnx.save(tiny_decoder(with_past=True), d / "model.onnx")
    np.savez(d / "tokens.npz", input_ids=np.random.default_rng(3).integers(0, 256, (4, 40)))
    return d


def test_the_last_decode_step_gives_the_logits_of_one_run_over_the_whole_sequence(decoder):
    path = decoder / "model.onnx"
    d = _Decoder(path, SessionSpec(threads=1))
    tokens = np.random.default_rng(4).integers(0, 256, 30)
    _, steps, last = d.round(tokens, 20, 10)
    assert len(steps) == 10 and all(s > 0 for s in steps)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": tokens[None, :]}
    feeds |= {i.name: np.zeros((1, 0, 64), np.float32) for i in sess.get_inputs() if i.name != "input_ids"}
    full = sess.run(["logits"], feeds)[0]
    np.testing.assert_allclose(last[0, -1], full[0, -1], rtol=1e-4, atol=1e-4)


def test_cli_decode_measures_each_model_with_real_tokens(decoder, tmp_path, capsys):
    src = decoder / "model.onnx"
    q = tmp_path / "int4.onnx"
    assert main(["quantize", str(src), "-o", str(q), "--weight-only", "int4", "--block-size", "32"]) == 0
    capsys.readouterr()
    assert main(["bench", str(src), str(q), "--decode", "--prompt-tokens", "24", "--new-tokens", "6", "--runs", "2",
                 "--threads", "1", "--data", str(decoder / "tokens.npz"), "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert [Path(e["model"]).name for e in out["decode"]] == ["model.onnx", "int4.onnx"]
    assert out["tokens"].startswith("the first 30 tokens of")
    for e in out["decode"]:
        assert e["prompt_tokens"] == 24 and e["new_tokens"] == 6 and e["rounds"] == 2
        assert 0 < e["decode_ms_per_token"]["min"] <= e["decode_ms_per_token"]["p50"] <= e["decode_ms_per_token"]["max"]
        assert e["decode_tokens_per_s"] == pytest.approx(1e3 / e["decode_ms_per_token"]["p50"])
        assert e["ep_nodes"] and e["cache_on_device"] is False
    assert out["decode"][0]["decode_speedup_vs_first"] == 1.0
    second = out["decode"][1]
    assert second["decode_speedup_vs_first"] == pytest.approx(
        out["decode"][0]["decode_ms_per_token"]["p50"] / second["decode_ms_per_token"]["p50"])


def test_human_output_names_the_prefill_and_the_decode(decoder, capsys):
    assert main(["bench", str(decoder / "model.onnx"), "--decode", "--prompt-tokens", "8", "--new-tokens", "2",
                 "--runs", "1", "--threads", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "decode ms/token" in out and "prefill of 8 tokens, then 2 decode steps" in out
    assert "10 random token ids (seed 0)" in out


@pytest.mark.parametrize("flags, says", [
    (["--batch", "2"], "--decode does not take --batch"),
    (["--io-binding"], "--decode does not take --io-binding"),
    (["--prompt-tokens", "0"], "0"),
])  # fmt: skip
def test_flags_that_do_not_apply_to_decode_are_errors(decoder, flags, says, capsys):
    assert main(["bench", str(decoder / "model.onnx"), "--decode", *flags]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_decode_flags_without_decode_are_errors(decoder, capsys):
    assert main(["bench", str(decoder / "model.onnx"), "--new-tokens", "4"]) == 2
    assert "--new-tokens apply only with --decode" in capsys.readouterr().err


def test_a_model_that_is_not_a_decoder_is_a_one_line_error(capsys):
    assert main(["bench", str(SAMPLE_MODELS / "mlp_digits.onnx"), "--decode"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("error:") and "no input_ids input" in lines[0] and lines[1].startswith("hint:")


def test_a_decoder_without_a_cache_is_refused_by_the_layout():
    with pytest.raises(ModelValidationError, match="0 cache inputs"):
        decoder_layout(tiny_decoder(with_past=False), "m")


def test_too_little_text_and_foreign_token_ids_are_data_errors(decoder, tmp_path):
    spec = SessionSpec(threads=1)
    with pytest.raises(DataError, match="holds 160 tokens, fewer than"):
        decode_bench([decoder / "model.onnx"], spec, DecodeConfig(prompt_tokens=150, new_tokens=20),
                     data=decoder / "tokens.npz")  # fmt: skip
    np.savez(tmp_path / "big.npz", input_ids=np.full((1, 40), 999))
    with pytest.raises(DataError, match="outside the model's vocabulary of 256"):
        decode_bench([decoder / "model.onnx"], spec, DecodeConfig(prompt_tokens=8, new_tokens=2),
                     data=tmp_path / "big.npz")  # fmt: skip
