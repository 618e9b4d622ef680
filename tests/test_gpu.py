"""On a real CUDA GPU: FP16 and INT8 QDQ models on the CUDA EP, IO binding, the CLI, and TensorRT detection.

Every test here skips where onnxruntime has no CUDAExecutionProvider (CI, the CPU-only install). They run on
the lent GPU machine (see bench/README.md). The TensorRT tests need onnxruntime-gpu's TensorRT EP; one
checks the error when libnvinfer is missing, the other a real TensorRT session when it is present.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from conftest import SAMPLE_MODELS, SHARED_MODELS
from onnxq.cli import main
from onnxq.errors import CudaGraphRefused, ProviderError
from onnxq.measure.bench import BenchConfig, bench_models
from onnxq.measure.runs import make_call
from onnxq.model import load_model, lower_ir_version_for_ort, save_model
from onnxq.passes.fp16 import convert_to_fp16
from onnxq.passes.prepare import prepare_model
from onnxq.runtime.session import SessionSpec, create_session

AVAILABLE = ort.get_available_providers()
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(CUDA not in AVAILABLE, reason="CUDAExecutionProvider is not available"),
]


def _libnvinfer_loads() -> bool:
    for name in filter(None, [ctypes.util.find_library("nvinfer"), "libnvinfer.so.10", "libnvinfer.so"]):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


HAS_TENSORRT = TRT in AVAILABLE and _libnvinfer_loads()


@pytest.fixture(scope="module")
def test_images() -> tuple[np.ndarray, np.ndarray]:
    with np.load(SAMPLE_MODELS / "test.npz", allow_pickle=False) as z:
        return z["input"][:128], z["label"][:128]


def _fp16(path: Path, out: Path) -> Path:
    result = convert_to_fp16(prepare_model(load_model(path)).model)
    lower_ir_version_for_ort(result.model)
    save_model(result.model, out)
    return out


def _run(path: Path, x: np.ndarray, ep: str) -> np.ndarray:
    runner = create_session(path, SessionSpec(ep=ep))
    return runner.session.run(None, {"input": x})[0]


def _sqnr_db(out: np.ndarray, ref: np.ndarray) -> float:
    noise = float(np.square(out.astype(np.float64) - ref).sum())
    return 10 * np.log10(float(np.square(ref.astype(np.float64)).sum()) / max(noise, 1e-30))


@pytest.mark.parametrize("name", ["resnet_digits", "mobilenetv2_digits", "transformer_digits", "mlp_digits"])
def test_fp16_model_runs_on_cuda_and_keeps_the_float_function(name, tmp_path, test_images):
    x, labels = test_images
    src = SAMPLE_MODELS / f"{name}.onnx"
    fp16 = _fp16(src, tmp_path / "m.fp16.onnx")
    model = load_model(fp16)
    assert any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    runner = create_session(fp16, SessionSpec(ep="cuda"))  # raises on any compute node off CUDA
    assert runner.ep_nodes.get(CUDA, 0) >= len(model.graph.node) // 2 and runner.fallback_nodes == {}
    out = runner.session.run(None, {"input": x})[0]
    ref = _run(src, x, "cuda")
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert _sqnr_db(out, ref) > 40.0  # fp16 rounding of weights and activations: ~50-70 dB on these models
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99
    assert (out.argmax(1) == labels).mean() >= (ref.argmax(1) == labels).mean() - 0.01


def test_float_model_on_cuda_matches_cpu(test_images):
    x, _ = test_images
    src = SAMPLE_MODELS / "resnet_digits.onnx"
    cuda, cpu = _run(src, x, "cuda"), _run(src, x, "cpu")
    np.testing.assert_allclose(cuda, cpu, rtol=1e-3, atol=1e-3 * float(np.abs(cpu).max()))


def test_io_binding_on_cuda_gives_the_plain_run_outputs(test_images):
    x, _ = test_images
    runner = create_session(SAMPLE_MODELS / "resnet_digits.onnx", SessionSpec(ep="cuda"))
    call = make_call(runner, {"input": x[:32]}, io_binding=True)
    call()
    bound = call.binding.copy_outputs_to_cpu()[0]
    assert call.binding.get_outputs()[0].device_name().lower() == "cuda"  # the output stayed on the GPU
    plain = runner.session.run(None, {"input": x[:32]})[0]
    np.testing.assert_allclose(bound, plain, rtol=1e-5, atol=1e-5)


def test_cli_bench_on_cuda_reports_placement_gpu_memory_and_the_qdq_warning(tmp_path):
    q = tmp_path / "resnet.int8.onnx"
    assert main(["quantize", str(SAMPLE_MODELS / "resnet_digits.onnx"), "-o", str(q),
                 "--calib", str(SAMPLE_MODELS / "calib.npz")]) == 0  # fmt: skip
    report = tmp_path / "bench.json"
    argv = ["bench", str(SAMPLE_MODELS / "resnet_digits.onnx"), str(q), "--ep", "cuda", "--ep", "cpu",
            "--batch", "8", "--runs", "30", "--warmup", "5", "--io-binding", "--report", str(report)]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(report.read_text())
    entries = {(Path(e["model_path"]).name, e["ep"]): e for e in data["bench"]}
    assert set(entries) == {(n, ep) for n in ("resnet_digits.onnx", q.name) for ep in ("cuda", "cpu")}
    for (_, ep), e in entries.items():
        provider = CUDA if ep == "cuda" else "CPUExecutionProvider"
        assert e["ep_nodes"].get(provider, 0) > 0 and e["io_binding"] is True
        assert e["latency_ms"]["min"] <= e["latency_ms"]["p50"] <= e["latency_ms"]["max"]
        if ep == "cuda" and shutil.which("nvidia-smi"):
            assert e["gpu_mem_bytes"] is not None
    assert any("not faster than float" in w for w in entries[(q.name, "cuda")]["warnings"])
    # the int32 bias DequantizeLinear has no CUDA kernel: it runs on the host, and the entry says so
    q_cuda = entries[(q.name, "cuda")]["warnings"]
    assert any("constant-input node(s) ran off CUDAExecutionProvider" in w for w in q_cuda)
    assert not any("constant-input" in w for w in entries[("resnet_digits.onnx", "cuda")]["warnings"])
    assert not any("not faster than float" in w for w in entries[(q.name, "cpu")]["warnings"])
    if shutil.which("nvidia-smi"):
        assert data["environment"]["gpus"], "nvidia-smi is present, so the GPU must be in the environment"
    jsonschema = pytest.importorskip("jsonschema")
    from onnxq.report.document import load_schema

    jsonschema.validate(data, load_schema())


def test_cli_eval_on_cuda_agrees_with_cpu(tmp_path, capsys):
    q = tmp_path / "mlp.int8.onnx"
    src = SAMPLE_MODELS / "mlp_digits.onnx"
    assert main(["quantize", str(src), "-o", str(q), "--calib", str(SAMPLE_MODELS / "calib.npz")]) == 0
    results = {}
    for ep in ("cuda", "cpu"):
        capsys.readouterr()
        argv = ["eval", str(q), "--data", str(SAMPLE_MODELS / "test.npz"), "--reference", str(src),
                "--ep", ep, "--json"]  # fmt: skip
        assert main(argv) == 0
        results[ep] = json.loads(capsys.readouterr().out)
    cuda, cpu = results["cuda"], results["cpu"]
    assert cuda["ep"] == "cuda" and cuda["samples"] == cpu["samples"] == 400
    assert abs(cuda["accuracy"]["top1"] - cpu["accuracy"]["top1"]) <= 0.01
    assert cuda["fidelity"]["outputs"][0]["top1_agreement"] >= 0.97


def test_bench_models_on_cuda_with_and_without_io_binding_are_both_measured(tmp_path):
    fp16 = _fp16(SAMPLE_MODELS / "resnet_digits.onnx", tmp_path / "r.fp16.onnx")
    models = [SAMPLE_MODELS / "resnet_digits.onnx", fp16]
    for io_binding in (False, True):
        cfg = BenchConfig(eps=("cuda",), batches=(32,), runs=30, warmup_runs=5, io_binding=io_binding)
        first, second = bench_models(models, cfg)
        assert first["speedup_vs_first"] in (None, 1.0)
        ratio = first["latency_ms"]["p50"] / second["latency_ms"]["p50"]
        assert second["speedup_vs_first"] == pytest.approx(ratio, rel=1e-6)
        assert second["ep_nodes"].get(CUDA, 0) > 0


@pytest.mark.skipif(TRT not in AVAILABLE or HAS_TENSORRT, reason="needs the TensorRT EP without libnvinfer")
def test_tensorrt_without_libnvinfer_is_refused_naming_the_library_or_measured_on_cuda_with_fallback(capsys):
    src = SAMPLE_MODELS / "mlp_digits.onnx"
    with pytest.raises(ProviderError) as err:
        create_session(src, SessionSpec(ep="tensorrt"))
    assert "libnvinfer" in err.value.message and "could not be loaded" in err.value.message
    assert "libnvinfer" in (err.value.hint or "")
    runner = create_session(src, SessionSpec(ep="tensorrt", allow_fallback=True))
    assert runner.providers[0] == CUDA and runner.ep_nodes.get(TRT, 0) == 0 and runner.ep_nodes.get(CUDA, 0) > 0
    (warning,) = [w for w in runner.warnings if w.startswith("fallback:")]
    assert "libnvinfer" in warning and f"nodes on {CUDA}" in warning
    capsys.readouterr()
    assert main(["bench", str(src), "--ep", "tensorrt", "--runs", "5", "--warmup", "1"]) == 2
    err_text = capsys.readouterr().err
    assert "error:" in err_text and "libnvinfer" in err_text and "Traceback" not in err_text
    assert main(["bench", str(src), "--ep", "tensorrt", "--allow-fallback", "--runs", "5", "--warmup", "1"]) == 0
    assert "libnvinfer" in capsys.readouterr().out  # the split is reported with the numbers


@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT (libnvinfer) is not installed")
def test_tensorrt_session_puts_nodes_on_tensorrt(tmp_path):
    src = SAMPLE_MODELS / "resnet_digits.onnx"
    spec = SessionSpec(ep="tensorrt", trt_fp16=True, trt_engine_cache_dir=str(tmp_path / "engines"))
    runner = create_session(src, spec)
    assert runner.ep_nodes.get(TRT, 0) > 0
    x = np.load(SAMPLE_MODELS / "test.npz", allow_pickle=False)["input"][:8]
    out = runner.session.run(None, {"input": x})[0]
    ref = _run(src, x, "cpu")
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99
    assert any((tmp_path / "engines").iterdir())  # the engine cache was written


# --- CUDA EP options, the cuda target, re-batching and quiet logs (issue 16) ---------------------------------


def _sqnr_ok(out: np.ndarray, ref: np.ndarray, db: float) -> bool:
    return _sqnr_db(out, ref) > db and (out.argmax(1) == ref.argmax(1)).mean() >= 0.99


def test_fp16_with_nhwc_and_cuda_graphs_gives_the_default_sessions_outputs(tmp_path, test_images):
    fp16 = _fp16(SAMPLE_MODELS / "resnet_digits.onnx", tmp_path / "r.fp16.onnx")
    options = [{"cuda_nhwc": False, "cuda_graph": False}, {"cuda_nhwc": True, "cuda_graph": False},
               {"cuda_nhwc": False, "cuda_graph": True}, {}]  # fmt: skip
    data = tmp_path / "x.npz"
    np.savez(data, input=test_images[0][:32])
    outputs = {}
    cfg = BenchConfig(eps=("cuda",), batches=(32,), runs=20, warmup_runs=3, io_binding=True, data=str(data))
    entries = bench_models([fp16] * 4, cfg, model_options=options,
                           on_outputs=lambda ep, b, i, outs: outputs.setdefault(i, outs[0]))  # fmt: skip
    assert [e["ep_options"].get("prefer_nhwc") for e in entries] == ["0", "1", "0", "1"]
    assert [e["ep_options"].get("enable_cuda_graph") for e in entries] == ["0", "0", "1", "1"]
    auto = entries[3]["ep_option_reasons"]
    assert "float16 weights" in auto["prefer_nhwc"] and auto["enable_cuda_graph"].startswith("auto: IO binding")
    assert entries[3]["ep_options"].get("fuse_conv_bias") == "1" and "fuse_conv_bias" in auto
    given = entries[0]["ep_option_reasons"]
    assert "prefer_nhwc" not in given and "enable_cuda_graph" not in given  # given, not chosen
    # NHWC runs other cuDNN kernels, and exhaustive search may pick others per session: fp16 rounding apart
    for i in (1, 2, 3):
        assert _sqnr_ok(outputs[i], outputs[0], 40.0), i
    assert all(set(e["ep_nodes"]) == {CUDA} for e in entries)


def test_a_captured_cuda_graph_reads_new_inputs_written_into_its_buffers(tmp_path, test_images):
    x = test_images[0]
    fp16 = _fp16(SAMPLE_MODELS / "resnet_digits.onnx", tmp_path / "r.fp16.onnx")
    runner = create_session(fp16, SessionSpec(ep="cuda", cuda_graph=True))
    call = make_call(runner, {"input": x[:16]}, io_binding=True)
    for _ in range(4):  # two regular runs, the capture, a replay
        call()
    call.inputs["input"].update_inplace(np.ascontiguousarray(x[16:32]))
    call()
    plain = create_session(fp16, SessionSpec(ep="cuda")).session.run(None, {"input": x[16:32]})[0]
    assert _sqnr_ok(call.outputs()[0], plain, 40.0)


def test_cuda_target_int8_runs_every_node_on_cuda_and_takes_a_cuda_graph(tmp_path, test_images):
    q = tmp_path / "r.cuda.int8.onnx"
    assert main(["quantize", str(SAMPLE_MODELS / "resnet_digits.onnx"), "-o", str(q), "--calib",
                 str(SAMPLE_MODELS / "calib.npz"), "--target", "cuda", "--no-progress"]) == 0  # fmt: skip
    x = test_images[0][:16]
    data = tmp_path / "x.npz"
    np.savez(data, input=x)
    outputs = {}
    cfg = BenchConfig(eps=("cuda",), batches=(16,), runs=10, warmup_runs=2, io_binding=True, data=str(data))
    (entry,) = bench_models([q], cfg, on_outputs=lambda ep, b, i, outs: outputs.setdefault(i, outs[0]))
    assert set(entry["ep_nodes"]) == {CUDA}  # no host-side node: no int32 bias DequantizeLinear
    assert not any("constant-input" in w for w in entry["warnings"])
    assert entry["ep_options"]["enable_cuda_graph"] == "1"  # chosen, and not refused by ORT
    assert any("TensorRT" in w for w in entry["warnings"])  # INT8 speed is TensorRT's
    plain = create_session(q, SessionSpec(ep="cuda", cuda_graph=False)).session.run(None, {"input": x})[0]
    # the same float kernels after the same DequantizeLinear; a TF32 algorithm choice may flip an int8 rounding
    assert _sqnr_ok(outputs[0], plain, 30.0)


def test_ort_target_int8_refuses_an_asked_for_cuda_graph_and_drops_a_chosen_one(tmp_path):
    q = tmp_path / "r.int8.onnx"
    assert main(["quantize", str(SAMPLE_MODELS / "resnet_digits.onnx"), "-o", str(q), "--calib",
                 str(SAMPLE_MODELS / "calib.npz"), "--no-progress"]) == 0  # fmt: skip
    base = {"eps": ("cuda",), "batches": (8,), "runs": 5, "warmup_runs": 1, "io_binding": True}
    with pytest.raises(CudaGraphRefused):
        bench_models([q], BenchConfig(**base, cuda_graph=True))
    (entry,) = bench_models([q], BenchConfig(**base))
    assert entry["ep_options"]["enable_cuda_graph"] == "0"
    assert entry["ep_option_reasons"]["enable_cuda_graph"].startswith("auto: off, ORT refused it")


def test_gpu_sessions_keep_ort_and_cudnn_log_lines_out_of_the_output(tmp_path, capfd):
    fp16 = _fp16(SAMPLE_MODELS / "resnet_digits.onnx", tmp_path / "r.fp16.onnx")
    capfd.readouterr()
    assert main(["bench", str(fp16), "--ep", "cuda", "--io-binding", "--batch", "64", "--runs", "5", "--warmup",
                 "2"]) == 0  # fmt: skip
    out, err = capfd.readouterr()
    for text in (out, err):
        assert "onnxruntime:" not in text.replace("onnxruntime warned", "") and "No execution plans" not in text
    assert "ep options: r.fp16 on cuda, batch 64: prefer_nhwc=1 (auto:" in out


def test_eval_on_cuda_takes_the_nhwc_flag_and_records_the_options(tmp_path, capsys):
    fp16 = _fp16(SAMPLE_MODELS / "resnet_digits.onnx", tmp_path / "r.fp16.onnx")
    argv = ["eval", str(fp16), "--data", str(SAMPLE_MODELS / "test.npz"), "--reference",
            str(SAMPLE_MODELS / "resnet_digits.onnx"), "--ep", "cuda", "--nhwc", "--json"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ep_options"]["prefer_nhwc"] == "1" and result["fidelity"]["outputs"][0]["top1_agreement"] >= 0.99


def test_a_fixed_batch_model_is_measured_at_batch_8_on_cuda(capsys):
    model = SHARED_MODELS / "squeezenet1.1" / "model.onnx"
    if not model.exists():
        pytest.skip("../shared/models is absent")
    capsys.readouterr()
    assert main(["bench", str(model), "--ep", "cuda", "--batch", "8", "--io-binding", "--runs", "10", "--warmup",
                 "3", "--json"]) == 0  # fmt: skip
    (entry,) = json.loads(capsys.readouterr().out)["bench"]
    assert entry["batch"] == 8 and any("symbolic batch axis on data_0" in w for w in entry["warnings"])
    assert set(entry["ep_nodes"]) == {CUDA} and entry["ep_options"]["enable_cuda_graph"] == "1"


MINILM = Path.home() / ".cache" / "onnxq-models" / "paraphrase_minilm_l3" / "model.onnx"


def test_a_real_export_computing_shapes_runs_as_a_cuda_graph_with_the_float_embeddings(tmp_path):
    """The MiniLM builds its masks and reshapes from Shape ops; with IO binding onnxq chooses a CUDA graph,
    which ORT refuses on the model as exported; the static-shape copy must take it, with the same outputs."""
    if not MINILM.is_file():
        pytest.skip("paraphrase-MiniLM-L3 is not fetched (../shared/tools/get-paraphrase-minilm)")
    fp16 = _fp16(MINILM, tmp_path / "minilm.fp16.onnx")
    with np.load(SHARED_MODELS / "paraphrase_minilm_l3" / "sentences_padded.npz") as z:
        feeds = {k: z[k][:8] for k in ("input_ids", "attention_mask")}
    data = tmp_path / "s.npz"
    np.savez(data, **feeds)
    outputs = {}
    cfg = BenchConfig(eps=("cuda",), batches=(8,), runs=20, warmup_runs=3, io_binding=True, data=str(data))
    (entry,) = bench_models([fp16], cfg, on_outputs=lambda ep, b, i, outs: outputs.setdefault(i, outs))
    assert entry["ep_options"]["enable_cuda_graph"] == "1", entry["ep_option_reasons"]
    assert set(entry["ep_nodes"]) == {CUDA}
    ref = ort.InferenceSession(str(MINILM), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert _sqnr_db(np.asarray(outputs[0][3], np.float32), ref[3]) > 40.0  # "461", the sentence embedding


def test_decode_on_cuda_keeps_the_cache_on_the_device_and_gives_the_full_sequence_logits(tmp_path):
    from tiny_decoder import tiny_decoder

    from onnxq.measure.decode import DecodeConfig, _Decoder, decode_bench

    path = tmp_path / "decoder.onnx"
    import onnx

    onnx.save(tiny_decoder(with_past=True), path)
    tokens = np.random.default_rng(4).integers(0, 256, 30)
    _, steps, last = _Decoder(path, SessionSpec(ep="cuda")).round(tokens, 20, 10)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": tokens[None, :]}
    feeds |= {i.name: np.zeros((1, 0, 64), np.float32) for i in sess.get_inputs() if i.name != "input_ids"}
    np.testing.assert_allclose(last[0, -1], sess.run(["logits"], feeds)[0][0, -1], rtol=1e-3, atol=1e-3)
    (entry,) = decode_bench([path], SessionSpec(ep="cuda"), DecodeConfig(prompt_tokens=16, new_tokens=4))["decode"]
    assert entry["cache_on_device"] is True and entry["ep_nodes"].get(CUDA, 0) > 0
