"""Latency statistics, interleaving, inputs, memory, environment facts and ``onnxq bench`` (onnxq.measure.bench)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.cli import main
from onnxq.errors import ConfigError, DataError, ProviderError
from onnxq.measure import bench, bench_inputs, timing
from onnxq.measure.bench import ENTRY_KEYS, BenchConfig, bench_models, model_size_bytes
from onnxq.measure.runs import make_call
from onnxq.measure.timing import add_speedups, latency_stats_ms, measure_interleaved, measurement_warnings
from onnxq.report import environment
from onnxq.runtime.session import SessionSpec, create_session

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
SAMPLE_MODELS = Path(__file__).resolve().parents[1] / "sample_models"
FAST = {"runs": 12, "warmup_runs": 2, "threads": 1}  # enough for order and sanity checks, and quick


def matmul_chain(path: Path, layers: int, width: int, batch: int | str = "N", extra_dims: int = 0) -> Path:
    """x[batch, width] through ``layers`` MatMul+Relu layers; written to ``path``."""
    rng = np.random.default_rng(layers)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        inits.append(
            numpy_helper.from_array(
                (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"w{i}"
            )
        )
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
            helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        prev = f"r{i}"
    shape = [batch, width] if not extra_dims else [batch, "T", width]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, shape)],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


# --- statistics ------------------------------------------------------------------------------------


def test_latency_stats_match_independent_computation():
    rng = np.random.default_rng(3)
    samples = list(rng.lognormal(mean=-6, sigma=0.3, size=101))  # seconds, skewed like real latencies
    stats = latency_stats_ms(samples)
    ms = sorted(s * 1e3 for s in samples)
    # 101 samples: the linear-interpolation percentiles p50 and p90 fall exactly on order statistics
    assert stats["p50"] == pytest.approx(ms[50], rel=1e-12)
    assert stats["p90"] == pytest.approx(ms[90], rel=1e-12)
    assert stats["min"] == ms[0] and stats["max"] == ms[-1]
    assert stats["mean"] == pytest.approx(statistics.fmean(ms), rel=1e-12)
    assert stats["std"] == pytest.approx(statistics.stdev(ms), rel=1e-9)  # sample std, ddof=1
    assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p95"] <= stats["p99"] <= stats["max"]


def test_one_run_has_zero_std():
    assert latency_stats_ms([0.002])["std"] == 0.0


def test_measurement_warnings_state_the_cv_threshold():
    (warning,) = measurement_warnings(cv=0.2, runs=100)
    assert "0.20 > 0.15" in warning
    assert measurement_warnings(cv=0.1, runs=100) == []
    assert any("only 5 timed runs" in w for w in measurement_warnings(cv=0.0, runs=5))


def test_speedup_is_first_p50_over_own_p50_and_none_alone():
    group = [{"latency_ms": {"p50": 4.0}}, {"latency_ms": {"p50": 2.0}}, {"latency_ms": {"p50": 8.0}}]
    add_speedups(group)
    assert [e["speedup_vs_first"] for e in group] == [1.0, 2.0, 0.5]
    lone = [{"latency_ms": {"p50": 4.0}, "speedup_vs_first": None}]
    add_speedups(lone)
    assert lone[0]["speedup_vs_first"] is None


# --- interleaving ----------------------------------------------------------------------------------


class FakeClock:
    """A nanosecond clock that only moves when a fake model runs (by its cost) or the loop reads it (1 ns)."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        self.now += 1
        return self.now


def test_measure_interleaved_follows_the_round_orders_and_times_each_call_exactly():
    clock, order = FakeClock(), []

    def model(name: str, cost_ns: int):
        def call() -> None:
            order.append(name)
            clock.now += cost_ns

        return call

    calls = [model("A", 1000), model("B", 5000), model("C", 3000)]
    timings = measure_interleaved(calls, rounds=6, clock=clock, on_run=lambda i, r: order.append((i, r)))
    names = [x for x in order if isinstance(x, str)]
    assert names == list("ABC" "BCA" "CAB" "CBA" "ACB" "BAC")  # round_orders(3)
    assert [x for x in order if isinstance(x, tuple)] == [("ABC".index(n), k // 3) for k, n in enumerate(names)]
    # each latency = cost + the 1 ns the second clock read adds
    assert timings[0].latencies_s == [1001e-9] * 6 and timings[1].latencies_s == [5001e-9] * 6
    assert timings[2].latencies_s == [3001e-9] * 6
    # wall slots: from each run's start to the next run's start, covering the loop's whole time
    assert timings[0].wall_s == pytest.approx(6 * 1002e-9) and timings[1].wall_s == pytest.approx(6 * 5002e-9)


@pytest.mark.parametrize("n", range(1, 8))
def test_round_orders_balance_slots_and_predecessors(n):
    orders = timing.round_orders(n)
    assert len(orders) == (1 if n == 1 else n if n % 2 == 0 else 2 * n)
    assert all(sorted(row) == list(range(n)) for row in orders)
    for slot in range(n):  # every model in every slot equally often
        assert Counter(row[slot] for row in orders) == {m: len(orders) // n for m in range(n)}
    pairs = Counter((a, b) for row in orders for a, b in zip(row, row[1:], strict=False))
    if n > 1:  # every ordered pair adjacent equally often within the rounds
        assert set(pairs) == {(a, b) for a in range(n) for b in range(n) if a != b}
        assert len(set(pairs.values())) == 1


def test_duration_mode_runs_at_least_the_minimum_rounds_then_stops_on_time():
    clock = FakeClock()

    def call() -> None:
        clock.now += 10**6  # 1 ms a run

    (quick,) = measure_interleaved([call], duration_s=1e-9, clock=clock)
    assert len(quick.latencies_s) == timing.MIN_DURATION_ROUNDS
    (timed,) = measure_interleaved([call], duration_s=0.02, clock=clock)
    assert 19 <= len(timed.latencies_s) <= 21  # 20 ms of 1 ms runs, give or take the clock reads


def test_exactly_one_of_rounds_and_duration():
    with pytest.raises(ConfigError):
        measure_interleaved([lambda: None], rounds=3, duration_s=1.0)


# --- real measurements on CPU ----------------------------------------------------------------------


def test_heavier_model_measures_slower_in_the_same_interleaved_run(tmp_path):
    light = matmul_chain(tmp_path / "light.onnx", layers=1, width=32)
    heavy = matmul_chain(tmp_path / "heavy.onnx", layers=8, width=256)  # ~500x the FLOPs of light
    calls = []
    entries = bench_models([light, heavy], BenchConfig(**FAST), on_run=lambda i, r: calls.append((i, r)))
    assert calls == [(i, r) for r in range(12) for i in ((0, 1) if r % 2 == 0 else (1, 0))]  # A B, B A, ...
    a, b = entries
    assert [e["model"] for e in entries] == ["light", "heavy"]
    # 500x the work: even on a noisy shared machine the heavy p50 is far above the light one
    assert b["latency_ms"]["p50"] > 3 * a["latency_ms"]["p50"]
    assert a["speedup_vs_first"] == 1.0
    assert b["speedup_vs_first"] == pytest.approx(a["latency_ms"]["p50"] / b["latency_ms"]["p50"], rel=1e-12)
    for e in entries:
        lat = e["latency_ms"]
        assert tuple(e) == ENTRY_KEYS
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert e["runs"] == 12 and e["batch"] == 1 and e["ep"] == "cpu" and e["threads"] == 1
        assert e["throughput_per_s"] == pytest.approx(1 / (lat["mean"] / 1e3), rel=1e-12)
        # loop time per run >= time inside the run, so wall throughput can only be lower
        assert 0 < e["throughput_wall_per_s"] <= e["throughput_per_s"] * (1 + 1e-9)
        assert e["cv"] == pytest.approx(lat["std"] / lat["mean"], rel=1e-12)
        assert e["size_bytes"] == os.path.getsize(e["model_path"])
        assert isinstance(e["peak_rss_bytes"], int) and e["peak_rss_bytes"] >= 0
        assert e["gpu_mem_bytes"] is None and e["io_binding"] is False
        assert e["session_create_s"] > 0 and e["first_run_s"] > 0
    assert a["ep_nodes"] == {"CPUExecutionProvider": 2} and b["ep_nodes"] == {"CPUExecutionProvider": 16}


def test_spinning_is_turned_off_only_for_interleaved_thread_pools(tmp_path):
    assert bench.spinning_hurts(2, BenchConfig(threads=None)) and bench.spinning_hurts(
        2, BenchConfig(threads=2)
    )
    assert not bench.spinning_hurts(2, BenchConfig(threads=1)) and not bench.spinning_hurts(1, BenchConfig())
    a = matmul_chain(tmp_path / "a.onnx", layers=1, width=8)
    b = matmul_chain(tmp_path / "b.onnx", layers=1, width=8)
    entries = bench_models([a, b], BenchConfig(runs=3, warmup_runs=0, threads=2))
    assert all(any("spinning was off" in w for w in e["warnings"]) for e in entries)
    (alone,) = bench_models([a], BenchConfig(runs=3, warmup_runs=0, threads=2))
    assert not any("spinning" in w for w in alone["warnings"])


def test_peak_rss_sees_a_large_model(tmp_path):
    # 8 MatMul weights of 1024x1024 float32 = 32 MiB that the session must hold in memory
    big = matmul_chain(tmp_path / "big.onnx", layers=8, width=1024)
    (entry,) = bench_models([big], BenchConfig(runs=2, warmup_runs=0, threads=1))
    # RSS growth, not allocation: heap pages freed by earlier tests in this process are reused without
    # raising RSS, so the growth can be below 32 MiB; half of it rules out a reading that missed the weights
    assert entry["peak_rss_bytes"] >= 16 * 2**20
    assert entry["size_bytes"] >= 32 * 2**20


def test_batches_set_the_feed_and_the_throughput(tmp_path):
    model = matmul_chain(tmp_path / "m.onnx", layers=2, width=16)
    entries = bench_models([model], BenchConfig(batches=(2, 8), **FAST))
    assert [e["batch"] for e in entries] == [2, 8]
    for e in entries:
        assert e["throughput_per_s"] == pytest.approx(e["batch"] / (e["latency_ms"]["mean"] / 1e3), rel=1e-12)


def test_fixed_batch_1_is_measured_at_other_batches_through_a_checked_symbolic_copy(tmp_path):
    model = matmul_chain(tmp_path / "fixed.onnx", layers=1, width=8, batch=1)
    one, four = bench_models([model], BenchConfig(batches=(1, 4), **FAST))
    assert one["batch"] == 1 and four["batch"] == 4
    assert one["model_path"] == four["model_path"] == str(model)  # the entry names the user's file
    assert not any("symbolic batch" in w for w in one["warnings"])  # batch 1 runs the original
    (note,) = [w for w in four["warnings"] if "symbolic batch" in w]
    assert "checked on CPU against the original on 1 and 2 samples" in note
    assert four["size_bytes"] == os.path.getsize(model)


def test_a_graph_fixing_another_batch_than_1_still_refuses_other_batches(tmp_path):
    model = matmul_chain(tmp_path / "fixed3.onnx", layers=1, width=8, batch=3)
    with pytest.raises(ConfigError, match="fixes the batch size to 3"):
        bench_models([model], BenchConfig(batches=(4,), **FAST))
    (entry,) = bench_models([model], BenchConfig(**FAST))
    assert entry["batch"] == 3


def test_symbolic_dims_need_a_shape_and_the_error_names_the_dim(tmp_path):
    model = matmul_chain(tmp_path / "seq.onnx", layers=1, width=8, extra_dims=1)
    with pytest.raises(DataError, match="unknown dimension T on axis 1"):
        bench_models([model], BenchConfig(**FAST))
    (entry,) = bench_models([model], BenchConfig(shapes={"x": (1, 5, 8)}, batches=(3,), **FAST))
    assert entry["batch"] == 3  # --batch replaces axis 0 of --shape


def test_shape_is_checked_against_the_graph(tmp_path):
    model = matmul_chain(tmp_path / "seq.onnx", layers=1, width=8, extra_dims=1)
    with pytest.raises(ConfigError, match="2 dims given"):
        bench_models([model], BenchConfig(shapes={"x": (1, 8)}, **FAST))
    with pytest.raises(ConfigError, match="axis 2 is 9, but"):
        bench_models([model], BenchConfig(shapes={"x": (1, 5, 9)}, **FAST))
    with pytest.raises(ConfigError, match="does not have as inputs"):
        bench_models([model], BenchConfig(shapes={"y": (1, 5, 8)}, **FAST))


def test_data_feeds_the_first_batch_and_must_hold_enough_samples(tmp_path):
    model_path = matmul_chain(tmp_path / "m.onnx", layers=1, width=8)
    data = tmp_path / "d.npz"
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    np.savez(data, x=x)
    (entry,) = bench_models([model_path], BenchConfig(data=str(data), batches=(2,), **FAST))
    assert entry["batch"] == 2
    feeds, size = bench_inputs.make_feeds(bench_inputs.load_bench_model(model_path), 2, BenchConfig(data=str(data)))
    assert size == 2 and np.array_equal(feeds["x"], x[:2])
    with pytest.raises(DataError, match="holds 3 samples, fewer than the batch size 8"):
        bench_models([model_path], BenchConfig(data=str(data), batches=(8,), **FAST))


def test_io_binding_call_computes_the_same_outputs_as_run(tmp_path):
    model_path = matmul_chain(tmp_path / "m.onnx", layers=3, width=16)
    runner = create_session(model_path, SessionSpec(threads=1))
    x = np.random.default_rng(5).standard_normal((4, 16)).astype(np.float32)
    call = make_call(runner, {"x": x}, io_binding=True)
    call()
    (bound,) = call.outputs()
    (plain,) = runner.session.run(None, {"x": x})
    np.testing.assert_array_equal(bound, plain)  # same session, same kernels, same input: bit-identical
    (entry,) = bench_models([model_path], BenchConfig(io_binding=True, **FAST))
    assert entry["io_binding"] is True


def test_model_size_counts_external_data_once(tmp_path):
    src = onnx.load(matmul_chain(tmp_path / "m.onnx", layers=3, width=64))
    ext = tmp_path / "ext" / "m.onnx"
    ext.parent.mkdir()
    onnx.save_model(
        src,
        ext,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="m.data",
        size_threshold=0,
    )
    data = ext.parent / "m.data"
    assert data.stat().st_size >= 3 * 64 * 64 * 4
    assert model_size_bytes(ext) == ext.stat().st_size + data.stat().st_size


def test_unavailable_ep_is_refused_before_loading_models(tmp_path):
    if HAS_CUDA:
        pytest.skip("needs an onnxruntime without CUDA")
    with pytest.raises(ProviderError, match="CPUExecutionProvider"):
        bench_models([tmp_path / "does-not-exist.onnx"], BenchConfig(eps=("cuda",)))


def test_config_refuses_bad_values():
    with pytest.raises(ConfigError):
        BenchConfig(batches=(0,))
    with pytest.raises(ConfigError):
        BenchConfig(runs=0)
    with pytest.raises(ConfigError, match="tensorrt is not among the EPs"):
        BenchConfig(trt_fp16=True)
    spec = BenchConfig(eps=("cpu", "tensorrt"), trt_fp16=True).session_spec("cpu")
    assert spec.trt_fp16 is False  # TensorRT options reach only the tensorrt session


@pytest.mark.skipif(not (SAMPLE_MODELS / "resnet_digits.onnx").exists(), reason="sample models not built")
def test_sample_models_with_their_test_data():
    models = [SAMPLE_MODELS / "resnet_digits.onnx", SAMPLE_MODELS / "mlp_digits.onnx"]
    entries = bench_models(models, BenchConfig(data=str(SAMPLE_MODELS / "test.npz"), batches=(16,), **FAST))
    assert [e["batch"] for e in entries] == [16, 16]
    assert all(
        sum(e["ep_nodes"].values()) > 0 and set(e["ep_nodes"]) == {"CPUExecutionProvider"} for e in entries
    )


# --- environment -----------------------------------------------------------------------------------


def test_collect_environment_has_the_facts_and_never_fails(monkeypatch):
    env = environment.collect_environment()
    assert env["cpu_cores_logical"] == os.cpu_count()
    assert env["versions"]["onnxruntime"] == ort.__version__ and env["versions"]["onnx"] == onnx.__version__
    assert env["versions"]["numpy"] == np.__version__
    assert "CPUExecutionProvider" in env["ort_providers"]

    def hung_driver(*args, **kwargs):
        raise subprocess.TimeoutExpired("nvidia-smi", 10)

    monkeypatch.setattr(environment.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(environment.subprocess, "run", hung_driver)
    assert environment.collect_environment()["gpus"] is None


def fake_smi(stdout: str, returncode: int = 0):
    def run(*args, **kwargs):
        return subprocess.CompletedProcess(args, returncode, stdout=stdout, stderr="")

    return run


def test_nvidia_gpus_parses_name_driver_and_memory(monkeypatch):
    monkeypatch.setattr(environment.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    out = "0, NVIDIA H100 80GB HBM3, 580.159.03, 81559\n1, NVIDIA L4, 580.159.03, 23034\n"
    gpus = environment.nvidia_gpus(runner=fake_smi(out))
    assert gpus == [
        {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "driver": "580.159.03",
            "memory_total_bytes": 81559 * 2**20,
        },
        {"index": 1, "name": "NVIDIA L4", "driver": "580.159.03", "memory_total_bytes": 23034 * 2**20},
    ]
    assert environment.nvidia_gpus(runner=fake_smi("", returncode=9)) is None


def test_gpu_memory_reads_the_requested_device(monkeypatch):
    monkeypatch.setattr(environment.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    seen = []

    def smi(args, **kwargs):
        seen.append(args)
        return subprocess.CompletedProcess(args, 0, stdout="1234\n", stderr="")

    assert environment.gpu_memory_used_bytes(1, runner=smi) == 1234 * 2**20
    assert "--id=1" in seen[0]
    assert environment.gpu_memory_used_bytes(0, runner=fake_smi("[N/A]\n")) is None


def test_no_nvidia_smi_means_no_gpu_facts(monkeypatch):
    monkeypatch.setattr(environment.shutil, "which", lambda name: None)
    assert environment.nvidia_gpus() is None and environment.gpu_memory_used_bytes() is None


# --- the command line ------------------------------------------------------------------------------


def test_cli_prints_a_table_and_writes_a_json_report(tmp_path, capsys):
    light = matmul_chain(tmp_path / "light.onnx", layers=1, width=16)
    heavy = matmul_chain(tmp_path / "heavy.onnx", layers=4, width=128)
    report = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            str(light),
            str(heavy),
            "--runs",
            "10",
            "--warmup",
            "2",
            "--threads",
            "1",
            "--batch",
            "2",
            "--report",
            str(report),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["model", "ep", "batch", "p50"]
    assert lines[1].split()[:3] == ["light", "cpu", "2"] and lines[2].split()[:3] == ["heavy", "cpu", "2"]
    assert "environment:" in out
    written = json.loads(report.read_text())
    try:
        import jsonschema
    except ImportError:  # not a dependency of onnxq; the keys are checked below either way
        jsonschema = None
    if jsonschema is not None:
        from onnxq.report.document import load_schema

        jsonschema.validate(written, load_schema())
    assert all(tuple(e) == ENTRY_KEYS for e in written["bench"])
    assert [e["model"] for e in written["bench"]] == ["light", "heavy"]
    assert written["environment"]["versions"]["onnxruntime"] == ort.__version__


def test_cli_bad_ep_exits_2_with_an_error_line(tmp_path, capsys):
    model = matmul_chain(tmp_path / "m.onnx", layers=1, width=8)
    assert main(["bench", str(model), "--ep", "foo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Invalid value for '--ep': 'foo' is not one of 'cpu', 'cuda', 'tensorrt'")
    assert "hint:" in err


@pytest.mark.parametrize(
    "args",
    [
        ["--shape", "x:1,a"],
        ["--shape", "1,2"],
        ["--runs", "5", "--duration", "1"],
        ["--warmup", "1", "--warmup-time", "1"],
    ],
)
def test_cli_bad_options_exit_2(tmp_path, capsys, args):
    model = matmul_chain(tmp_path / "m.onnx", layers=1, width=8)
    assert main(["bench", str(model), *args]) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_parse_shapes():
    from onnxq.cli.bench import parse_shapes

    assert parse_shapes(("x:1,3,224,224", "ns:::2")) == {"x": (1, 3, 224, 224), "ns::": (2,)}


# --- GPU -------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="CUDAExecutionProvider is not available")
def test_cuda_bench_with_io_binding(tmp_path):
    model = matmul_chain(tmp_path / "m.onnx", layers=4, width=256)
    (entry,) = bench_models([model], BenchConfig(eps=("cuda",), io_binding=True, runs=20, warmup_runs=5))
    assert entry["ep_nodes"].get("CUDAExecutionProvider", 0) == 8
    assert entry["latency_ms"]["p50"] > 0


def test_qdq_model_on_cuda_is_reported_as_not_faster(tmp_path):
    """The CUDA EP runs QDQ as dequantize + float kernels; the bench entry must say so, not hide it."""
    from conftest import SAMPLE_MODELS
    from onnxq.measure.bench import qdq_on_ep_warnings
    from onnxq.model import load_model
    from onnxq.quantize.driver import quantize

    q = tmp_path / "q.onnx"
    quantize(SAMPLE_MODELS / "mlp_digits.onnx", q, SAMPLE_MODELS / "calib.npz")
    qdq, flt = load_model(q), load_model(SAMPLE_MODELS / "mlp_digits.onnx")
    assert any("not faster than float" in w for w in qdq_on_ep_warnings(qdq, "cuda"))
    assert qdq_on_ep_warnings(qdq, "cpu") == [] and qdq_on_ep_warnings(flt, "cuda") == []


def test_random_inputs_beyond_the_data_cap_are_refused(tmp_path, monkeypatch):
    model = matmul_chain(tmp_path / "huge.onnx", layers=1, width=8, batch=2**40)  # 32 TiB of float32 input
    with pytest.raises(DataError, match="more than the"):
        bench_models([model], BenchConfig(**FAST))
    monkeypatch.setenv("ONNXQ_MAX_DATA_BYTES", "100")
    with pytest.raises(DataError, match="would take 128 bytes"):
        bench_models([matmul_chain(tmp_path / "b4.onnx", layers=1, width=8, batch=4)], BenchConfig(**FAST))
