"""Sessions per EP, provider options, and the check of which EP ran each node (onnxq.runtime.session)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.errors import ConfigError, ProviderError
from onnxq.runtime import placement as ep_assignment
from onnxq.runtime import session as runtime
from onnxq.runtime.placement import PlacedNode, assess_placement, describe_split, missing_library, parse_profile_events
from onnxq.runtime.session import SessionSpec, check_available, create_session, provider_list, session_options

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def mlp_model(hidden: int = 8) -> onnx.ModelProto:
    """x[N,4] -> MatMul -> Add -> Relu -> MatMul: four named nodes, dynamic batch."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, hidden)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((hidden, 3)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu1"),
        helper.make_node("MatMul", ["h2", "w2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_cpu_session_runs_the_model_and_records_every_node_on_cpu():
    model = mlp_model()
    runner = create_session(model.SerializeToString(), SessionSpec(ep="cpu", threads=1))
    assert runner.providers == [CPU]
    has_record = hasattr(ort.InferenceSession, "get_provider_graph_assignment_info")  # ORT 1.31 has it
    assert runner.assignment_source == ("assignment-info" if has_record else "profiler")
    # optimizations may fuse MatMul+Add, but the record counts the graph's nodes as partitioned: all on CPU
    assert set(runner.ep_nodes) == {CPU} and 1 <= runner.ep_nodes[CPU] <= 4
    assert runner.fallback_nodes == {} and runner.warnings == []
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    (y,) = runner.session.run(None, {"x": x})
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    expected = np.maximum(x @ w["w1"] + w["b1"], 0) @ w["w2"]
    np.testing.assert_allclose(
        y, expected, rtol=1e-5, atol=1e-5
    )  # float32 MLP, 4..8-term sums: 1e-5 is ample


def test_cpu_sessions_keep_ort_load_warnings_off_stderr(capfd):
    # an unused initializer makes ORT warn at load ("Removing initializer ... It is not used by any node"):
    # onnxq's own error and hint lines must be all that eval and bench write to stderr
    model = mlp_model()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "unused"))
    capfd.readouterr()
    create_session(model.SerializeToString(), SessionSpec(ep="cpu", threads=1))
    assert "onnxruntime" not in capfd.readouterr().err
    ort.InferenceSession(model.SerializeToString(), providers=[CPU])
    assert "unused" in capfd.readouterr().err, "ORT's default session does warn about it"


def test_a_model_with_no_node_left_to_run_is_no_placement_error():
    # ONNX's test_constant: ORT folds the Constant away and places no node; that is not an EP that was passed over
    value = numpy_helper.from_array(np.ones((2, 2), np.float32), "v")
    graph = helper.make_graph([helper.make_node("Constant", [], ["y"], value=value)], "const", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    runner = create_session(model.SerializeToString(), SessionSpec(ep="cpu"))
    assert runner.warnings and "no node left to run" in runner.warnings[0]
    np.testing.assert_array_equal(runner.session.run(None, {})[0], np.ones((2, 2), np.float32))


def test_without_optimizations_the_record_lists_each_graph_node():
    runner = create_session(mlp_model().SerializeToString(), SessionSpec(graph_optimization_level="disable"))
    assert runner.ep_nodes == {CPU: 4}


def test_profiler_path_is_used_without_the_assignment_api_and_leaves_no_trace_file(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "has_assignment_record", lambda session: False)  # as on ORT < 1.2x
    folder = tmp_path / "profile"
    monkeypatch.setattr(runtime.tempfile, "mkdtemp", lambda *args, **kwargs: (folder.mkdir(), str(folder))[1])
    runner = create_session(mlp_model().SerializeToString(), SessionSpec(graph_optimization_level="disable"))
    assert runner.assignment_source == "profiler"
    assert runner.ep_nodes == {CPU: 4}  # one kernel event per node of the unoptimized graph
    assert not folder.exists()


def test_parse_profile_events_reads_provider_op_and_output_types():
    events = [
        {"cat": "Session", "name": "model_loading_uri", "args": {}},
        {
            "cat": "Node",
            "name": "conv_kernel_time",
            "args": {"provider": CUDA, "op_name": "Conv", "output_type_shape": [{"float": [1, 8, 4, 4]}]},
        },
        {"cat": "Node", "name": "conv_fence_before", "args": {"provider": CUDA, "op_name": "Conv"}},
        {
            "cat": "Node",
            "name": "gather_kernel_time",
            "args": {"provider": CPU, "op_name": "Gather", "output_type_shape": [{"int64": [1]}]},
        },
    ]
    assert parse_profile_events(events) == [PlacedNode(CUDA, "Conv", False), PlacedNode(CPU, "Gather", True)]


def test_unknown_ep_is_refused_with_the_known_and_available_ones():
    with pytest.raises(ProviderError) as info:
        SessionSpec(ep="foo")
    msg = str(info.value)
    assert "'foo'" in msg and "cpu, cuda, tensorrt" in msg and CPU in msg


@pytest.mark.skipif(HAS_CUDA, reason="needs an onnxruntime without CUDA")
def test_unavailable_cuda_is_refused_listing_available_providers_and_the_install():
    with pytest.raises(ProviderError) as info:
        create_session(mlp_model().SerializeToString(), SessionSpec(ep="cuda"))
    assert CUDA in info.value.message and CPU in info.value.message
    assert "onnxq[gpu]" in info.value.hint


def test_missing_tensorrt_names_libnvinfer_in_the_hint():
    with pytest.raises(ProviderError) as info:
        check_available("tensorrt", available=[CUDA, CPU])
    assert "libnvinfer" in info.value.hint and "available: CUDAExecutionProvider, CPUExecutionProvider" in (
        info.value.message
    )
    check_available("tensorrt", available=[TRT, CUDA, CPU])  # listed: no error


def test_ep_names_accept_ort_provider_names():
    assert SessionSpec(ep="CUDAExecutionProvider").ep == "cuda"
    assert SessionSpec(ep=" TensorRT ").ep == "tensorrt"


def test_tensorrt_provider_list_and_options():
    spec = SessionSpec(
        ep="tensorrt",
        device_id=1,
        trt_fp16=True,
        trt_int8=False,
        trt_engine_cache_dir="/tmp/eng",
        trt_workspace_bytes=2**30,
    )
    assert provider_list(spec) == [
        (
            TRT,
            {
                "device_id": "1",
                "trt_fp16_enable": "True",
                "trt_int8_enable": "False",
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": "/tmp/eng",
                "trt_max_workspace_size": "1073741824",
            },
        ),
        (CUDA, {"device_id": "1"}),
        (CPU, {}),
    ]
    plain = provider_list(SessionSpec(ep="tensorrt"))[0][1]
    assert plain == {"device_id": "0", "trt_fp16_enable": "False", "trt_int8_enable": "False"}


def test_cpu_and_cuda_provider_lists():
    assert provider_list(SessionSpec(ep="cpu")) == [(CPU, {})]
    assert provider_list(SessionSpec(ep="cuda", device_id=2)) == [(CUDA, {"device_id": "2"}), (CPU, {})]


@pytest.mark.parametrize(
    "kwargs", [{"trt_fp16": True}, {"trt_engine_cache_dir": "x"}, {"trt_workspace_bytes": 1}]
)
def test_tensorrt_options_are_refused_on_other_eps(kwargs):
    with pytest.raises(ConfigError, match="tensorrt options"):
        SessionSpec(ep="cuda", **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"threads": 0}, {"inter_op_threads": -1}, {"graph_optimization_level": "max"}, {"device_id": -1}],
)
def test_bad_session_options_are_refused(kwargs):
    with pytest.raises(ConfigError):
        SessionSpec(**kwargs)


def test_session_options_carry_threads_level_and_the_assignment_record():
    so = session_options(SessionSpec(threads=3, inter_op_threads=2, graph_optimization_level="basic"))
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 2
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert so.get_session_config_entry(runtime.RECORD_ASSIGNMENT_KEY) == "1"
    no_spin = session_options(SessionSpec(allow_spinning=False))
    assert no_spin.get_session_config_entry(runtime.SPINNING_KEY) == "0"


# --- the fallback policy, on synthetic placements (no GPU here) --------------------------------------


def placed(counts: dict[tuple[str, str, bool], int]) -> list[PlacedNode]:
    return [PlacedNode(ep, op, shape) for (ep, op, shape), n in counts.items() for _ in range(n)]


def test_shape_nodes_on_cpu_are_not_fallback_under_cuda():
    nodes = placed(
        {
            (CUDA, "Conv", False): 10,
            (CPU, "Shape", True): 1,
            (CPU, "Gather", True): 2,
            (CUDA, "MemcpyToHost", False): 1,
        }
    )
    assert assess_placement(SessionSpec(ep="cuda"), nodes, [CUDA, CPU]) == []


def test_compute_nodes_on_cpu_under_cuda_fail_without_allow_fallback_and_warn_with_it():
    nodes = placed(
        {(CUDA, "Conv", False): 212, (CPU, "NonMaxSuppression", False): 2, (CPU, "Shape", True): 1}
    )
    with pytest.raises(ProviderError) as info:
        assess_placement(SessionSpec(ep="cuda"), nodes, [CUDA, CPU])
    assert "2 compute node(s)" in info.value.message and "NonMaxSuppression on CPUExecutionProvider x2" in (
        info.value.message
    )
    assert "--allow-fallback" in info.value.hint
    (warning,) = assess_placement(SessionSpec(ep="cuda", allow_fallback=True), nodes, [CUDA, CPU])
    assert "212 nodes on CUDAExecutionProvider, 3 on CPUExecutionProvider" in warning


def test_nodes_left_to_cuda_count_as_fallback_from_tensorrt():
    nodes = placed({(TRT, "Conv", False): 5, (CUDA, "TopK", False): 1})
    with pytest.raises(ProviderError, match="TopK on CUDAExecutionProvider"):
        assess_placement(SessionSpec(ep="tensorrt"), nodes, [TRT, CUDA, CPU])


def test_dropped_provider_is_refused_naming_the_library_from_the_log():
    log = (
        "2026-01-01 [E:onnxruntime:Default, provider_bridge_ort.cc:2167 TryGetProviderInfo_TensorRT] "
        "Failed to load library libonnxruntime_providers_tensorrt.so with error: libnvinfer.so.10: "
        "cannot open shared object file: No such file or directory\n"
    )
    nodes = placed({(CUDA, "Conv", False): 5})
    with pytest.raises(ProviderError) as info:
        assess_placement(SessionSpec(ep="tensorrt"), nodes, [CUDA, CPU], log)
    assert "libnvinfer.so.10" in info.value.message and "libnvinfer" in info.value.hint
    (warning,) = assess_placement(SessionSpec(ep="tensorrt", allow_fallback=True), nodes, [CUDA, CPU], log)
    assert "5 nodes on CUDAExecutionProvider" in warning


def test_ep_that_received_no_node_is_a_total_fallback():
    nodes = placed({(CPU, "Conv", False): 3})
    with pytest.raises(ProviderError, match="received no node"):
        assess_placement(SessionSpec(ep="cuda"), nodes, [CUDA, CPU])


@pytest.mark.parametrize(
    ("log", "lib"),
    [
        (
            "Failed to load library libonnxruntime_providers_cuda.so with error: libcudnn.so.9: "
            "cannot open shared object file: No such file or directory",
            "libcudnn.so.9",
        ),
        (
            "Failed to load library libonnxruntime_providers_tensorrt.so with error: something else",
            "libonnxruntime_providers_tensorrt.so",
        ),
        ("all good", None),
    ],
)
def test_missing_library_is_read_from_ort_logs(log, lib):
    assert missing_library(log) == lib


def test_describe_split_orders_by_count():
    assert describe_split(Counter({CPU: 3, TRT: 212})) == (
        "212 nodes on TensorrtExecutionProvider, 3 on CPUExecutionProvider"
    )


def test_shape_classification_uses_inferred_output_types():
    """Gather on an int64 shape tensor is a shape node; Gather on float data (an embedding) is compute."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "i"], ["d"], name="gather_shape", axis=0),
        helper.make_node("Gather", ["x", "i"], ["e"], name="gather_data", axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
        [
            helper.make_tensor_value_info("d", TensorProto.INT64, None),
            helper.make_tensor_value_info("e", TensorProto.FLOAT, None),
        ],
        [numpy_helper.from_array(np.array([0], np.int64), "i")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    types = ep_assignment._output_types_by_node(model.SerializeToString())
    assert types == {"shape": ["int64"], "gather_shape": ["int64"], "gather_data": ["float32"]}
    assert [ep_assignment._is_shape_node("Gather", types[n]) for n in ("gather_shape", "gather_data")] == [
        True,
        False,
    ]
    assert ep_assignment._is_shape_node("Gather", None) is True  # unknown types: the op list decides
    assert ep_assignment._is_shape_node("Conv", None) is False


def test_importing_runtime_does_not_import_onnxruntime():
    code = (
        "import sys, onnxq.runtime.session, onnxq.measure.bench, onnxq.report.environment; "
        "print('onnxruntime' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="CUDAExecutionProvider is not available")
def test_cuda_session_puts_compute_nodes_on_cuda():
    runner = create_session(mlp_model(64).SerializeToString(), SessionSpec(ep="cuda"))
    assert runner.providers[0] == CUDA
    assert runner.ep_nodes.get(CUDA, 0) >= 1 and runner.fallback_nodes == {}
    x = np.ones((2, 4), np.float32)
    assert runner.session.run(None, {"x": x})[0].shape == (2, 3)


# --- constant nodes: initializer-only inputs, e.g. the int32 bias DequantizeLinear the CUDA EP lacks ----------


def _bias_dq_model(bias_is_graph_input: bool = False) -> onnx.ModelProto:
    """x -> MatMul(w) -> Add(DQ(int32 bias) ) ; plus Constant -> Mul chain and a RandomNormal, all named."""
    inits = [
        numpy_helper.from_array(np.ones((4, 3), np.float32), "w"),
        numpy_helper.from_array(np.array([1, 2, 3], np.int32), "b_q"),
        numpy_helper.from_array(np.array(0.5, np.float32), "b_s"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b"], name="bias_dq"),
        helper.make_node("Constant", [], ["two"], name="two", value=numpy_helper.from_array(np.float32(2.0))),
        helper.make_node("Mul", ["b", "two"], ["b2"], name="bias_scaled"),  # constant through constants
        helper.make_node("MatMul", ["x", "w"], ["xw"], name="matmul"),
        helper.make_node("Add", ["xw", "b2"], ["y0"], name="add"),
        helper.make_node("RandomNormal", [], ["noise"], name="noise", shape=[3], dtype=TensorProto.FLOAT),
        helper.make_node("Add", ["y0", "noise"], ["y"], name="add_noise"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])]
    if bias_is_graph_input:  # IR<4 style: an initializer listed as input can be overridden at run time
        inputs.append(helper.make_tensor_value_info("b_q", TensorProto.INT32, [3]))
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_constant_nodes_are_those_fed_by_initializers_alone():
    src = _bias_dq_model().SerializeToString()
    assert ep_assignment.constant_node_names(src) == {"bias_dq", "two", "bias_scaled"}
    overridable = _bias_dq_model(bias_is_graph_input=True).SerializeToString()
    assert ep_assignment.constant_node_names(overridable) == {"two"}
    assert ep_assignment.constant_node_names(b"not a model") == set()


def test_constant_nodes_off_cuda_are_a_warning_not_fallback():
    nodes = [PlacedNode(CUDA, "MatMul", False), PlacedNode(CUDA, "Add", False)]
    nodes += [PlacedNode(CPU, "DequantizeLinear", False, True)] * 3
    (warning,) = assess_placement(SessionSpec(ep="cuda"), nodes, [CUDA, CPU])
    assert "3 constant-input node(s) ran off CUDAExecutionProvider" in warning
    assert "DequantizeLinear on CPUExecutionProvider x3" in warning
    # the same nodes, not constant, are compute fallback
    compute = [PlacedNode(p.ep, p.op_type, False) for p in nodes]
    with pytest.raises(ProviderError, match="3 compute node"):
        assess_placement(SessionSpec(ep="cuda"), compute, [CUDA, CPU])
    # with a real compute fallback too, both are reported under --allow-fallback
    mixed = [*nodes, PlacedNode(CPU, "TopK", False)]
    fallback, constant = assess_placement(SessionSpec(ep="cuda", allow_fallback=True), mixed, [CUDA, CPU])
    assert fallback.startswith("fallback: 1 compute node(s)") and "constant-input" in constant
    assert assess_placement(SessionSpec(ep="cpu"), [PlacedNode(CPU, "DequantizeLinear", False, True)], [CPU]) == []


def test_profile_events_mark_constant_nodes_by_name():
    events = [
        {"cat": "Node", "name": "bias_dq_kernel_time", "args": {"provider": CPU, "op_name": "DequantizeLinear"}},
        {"cat": "Node", "name": "matmul_kernel_time", "args": {"provider": CUDA, "op_name": "MatMul"}},
    ]
    assert parse_profile_events(events, {"bias_dq"}) == [
        PlacedNode(CPU, "DequantizeLinear", False, True),
        PlacedNode(CUDA, "MatMul", False, False),
    ]


def test_assignment_placement_marks_constant_nodes():
    """A CPU session's real assignment record, relabelled as if the compute had gone to CUDA."""
    src = _bias_dq_model().SerializeToString()
    runner = create_session(src, SessionSpec(ep="cpu"))
    if runner.assignment_source != "assignment-info":
        pytest.skip("this onnxruntime has no graph-assignment record")

    class Relabelled:  # MatMul and the Adds on CUDA, the rest left on the CPU: the mixed case
        def get_provider_graph_assignment_info(self):
            out = []
            for sg in runner.session.get_provider_graph_assignment_info():
                for n in sg.get_nodes():
                    ep = CUDA if n.op_type in ("MatMul", "Add", "Gemm") else sg.ep_name
                    out.append(type("SG", (), {"ep_name": ep, "get_nodes": lambda self, n=n: [n]})())
            return out

    placed = {(p.op_type, p.is_constant) for p in ep_assignment.placement_from_assignment(Relabelled(), src)}
    assert ("RandomNormal", False) in placed and ("Add", False) in placed  # ORT fuses MatMul+Add into Gemm
    # ORT keeps DequantizeLinear unfolded (for its QDQ fusions): exactly the CUDA EP's int32-bias case
    assert ("DequantizeLinear", True) in placed
    assert all(is_const for op, is_const in placed if op in ("DequantizeLinear", "Mul"))


# --- TensorRT that fails to load: the library is named; --allow-fallback runs on CUDA and says so ----------

TRT_LOAD_LOG = (
    "[E:onnxruntime:Default, provider_bridge_ort.cc:2430 operator()] Failed to load library "
    "/site/onnxruntime/capi/libonnxruntime_providers_tensorrt.so with error: libnvinfer.so.10: cannot open "
    "shared object file: No such file or directory\n"
)


def _fake_create(calls):
    def create(source, so, spec, providers):
        names = [p for p, _ in providers]
        calls.append(names)
        if TRT in names:  # what ORT 1.31 does: log the dlopen failure on fd 2, then raise from the binding
            os.write(2, TRT_LOAD_LOG.encode())
            raise ProviderError(
                "onnxruntime could not create a tensorrt session: RegisterTensorRTPluginsAsCustomOps "
                "Please install TensorRT libraries as mentioned in the GPU requirements page",
                hint="check the model",
            )
        return "session-on-" + names[0]

    return create


def test_tensorrt_load_failure_names_libnvinfer(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "_create", _fake_create(calls))
    with pytest.raises(ProviderError) as info:
        runtime._new_session(b"m", SessionSpec(ep="tensorrt"), None)
    assert "libnvinfer.so.10 could not be loaded" in info.value.message and "libnvinfer" in info.value.hint
    assert calls == [[TRT, CUDA, CPU]]  # no retry without --allow-fallback


def test_tensorrt_load_failure_with_allow_fallback_runs_on_cuda_and_keeps_the_log(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "_create", _fake_create(calls))
    session, log = runtime._new_session(b"m", SessionSpec(ep="tensorrt", allow_fallback=True), None)
    assert session == "session-on-" + CUDA and calls == [[TRT, CUDA, CPU], [CUDA, CPU]]
    assert "libnvinfer.so.10" in log.raw and not log.warnings  # the library line is the warning's, not ORT's
    (warning,) = assess_placement(
        SessionSpec(ep="tensorrt", allow_fallback=True), [PlacedNode(CUDA, "Conv", False)] * 4, [CUDA, CPU], log.raw
    )
    assert "because libnvinfer.so.10 could not be loaded" in warning and "4 nodes on CUDAExecutionProvider" in warning


def test_cuda_load_failure_is_not_retried_elsewhere(monkeypatch):
    def create(source, so, spec, providers):
        os.write(2, b"Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: "
                    b"cannot open shared object file\n")  # fmt: skip
        raise ProviderError("onnxruntime could not create a cuda session: x", hint="h")

    monkeypatch.setattr(runtime, "_create", create)
    with pytest.raises(ProviderError, match="libcublasLt.so.13 could not be loaded"):
        runtime._new_session(b"m", SessionSpec(ep="cuda", allow_fallback=True), None)


def test_a_model_of_a_newer_ir_than_onnxruntime_reads_gets_a_hint_saying_so():
    model = mlp_model()
    model.ir_version = 99
    with pytest.raises(ProviderError) as info:
        create_session(model.SerializeToString(), SessionSpec(ep="cpu"))
    assert "IR version" in info.value.message and "ir_version" in info.value.hint
