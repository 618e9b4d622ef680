"""CUDA EP options as data: what ORT gets, what onnxq picks when they are left open, and every refusal.

None of this needs a GPU: the provider lists, the automatic choices and the refusals are decided before
ORT makes a CUDA session. tests/test_gpu.py runs the sessions themselves.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.cli import main
from onnxq.errors import ConfigError, CudaGraphRefused
from onnxq.measure import bench
from onnxq.measure.bench import BenchConfig
from onnxq.measure.evaluate import evaluate
from onnxq.measure.runs import make_call
from onnxq.runtime import session as runtime
from onnxq.runtime.auto_options import STATIC_COPY_FIRST, after_graph_refused, choose_cuda_options, float16_convs
from onnxq.runtime.eps import EPS
from onnxq.runtime.session import RunnerSession, SessionSpec, provider_list

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def _conv_model(dtype: int = TensorProto.FLOAT, control_flow: bool = False) -> onnx.ModelProto:
    np_type = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np_type), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    if control_flow:
        branch = helper.make_graph([helper.make_node("Identity", ["y"], ["z"])], "b", [],
                                   [helper.make_tensor_value_info("z", dtype, None)])  # fmt: skip
        nodes.append(helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=branch))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", dtype, ["N", 4, 8, 8])], [w])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_cuda_options_reach_ort_under_their_own_names():
    spec = SessionSpec(ep="cuda", device_id=1, cuda_nhwc=True, cuda_graph=True, cuda_conv_algo_search="HEURISTIC",
                       cuda_tf32=False)  # fmt: skip
    assert provider_list(spec) == [
        (CUDA, {"device_id": "1", "prefer_nhwc": "1", "enable_cuda_graph": "1", "cudnn_conv_algo_search": "HEURISTIC",
                "use_tf32": "0"}),
        (CPU, {}),
    ]  # fmt: skip
    assert spec.cuda_conv_algo_search == "heuristic"  # normalized when given in any case
    assert SessionSpec(ep="cuda").ep_options() == {"device_id": "0"}  # left open: ORT's defaults, nothing passed
    assert SessionSpec(ep="cuda", cuda_nhwc=False).ep_options() == {"device_id": "0", "prefer_nhwc": "0"}


def test_cuda_options_under_tensorrt_go_nowhere_and_are_refused():
    assert provider_list(SessionSpec(ep="tensorrt"))[1] == (CUDA, {"device_id": "0"})
    with pytest.raises(ConfigError, match=r"cuda options \(cuda_graph\) were given for the 'tensorrt' EP"):
        SessionSpec(ep="tensorrt", cuda_graph=True)


@pytest.mark.parametrize("kwargs", [{"cuda_nhwc": False}, {"cuda_tf32": True}, {"cuda_conv_algo_search": "default"}])
def test_cuda_options_are_refused_on_the_cpu_ep_even_when_switched_off(kwargs):
    with pytest.raises(ConfigError, match="cuda options"):
        SessionSpec(ep="cpu", **kwargs)


def test_an_unknown_conv_algo_search_is_refused_with_the_choices():
    with pytest.raises(ConfigError) as info:
        SessionSpec(ep="cuda", cuda_conv_algo_search="fastest")
    assert "exhaustive, heuristic, default" in info.value.hint


def test_every_ep_option_has_a_flag_and_a_session_field():
    fields = set(SessionSpec.__dataclass_fields__)
    for ep in EPS.values():
        for option in ep.options:
            assert option.field in fields and option.field in BenchConfig.__dataclass_fields__
            assert option.flag.startswith("--")


def test_fp16_conv_models_get_nhwc_and_fused_bias_and_io_binding_gets_a_cuda_graph():
    spec, reasons = choose_cuda_options(SessionSpec(ep="cuda"), _conv_model(TensorProto.FLOAT16), io_binding=True)
    assert spec.cuda_nhwc is True and spec.cuda_graph is True and spec.cuda_fuse_conv_bias is True
    assert "1 Conv node(s) with float16 weights" in reasons["prefer_nhwc"]
    assert reasons["enable_cuda_graph"].startswith("auto: IO binding")
    assert reasons["fuse_conv_bias"].startswith("auto: FP16 convolutions in NHWC")
    assert spec.ep_options() == {"device_id": "0", "prefer_nhwc": "1", "enable_cuda_graph": "1",
                                 "fuse_conv_bias": "1"}  # fmt: skip


def test_fused_bias_follows_nhwc_not_just_the_weights():
    fp16 = _conv_model(TensorProto.FLOAT16)
    spec, reasons = choose_cuda_options(SessionSpec(ep="cuda", cuda_nhwc=False), fp16, io_binding=True)
    assert spec.cuda_fuse_conv_bias is False and "no FP16 Conv in NHWC" in reasons["fuse_conv_bias"]
    spec, _ = choose_cuda_options(SessionSpec(ep="cuda", cuda_fuse_conv_bias=False), fp16, io_binding=True)
    assert spec.cuda_nhwc is True and spec.cuda_fuse_conv_bias is False  # given: kept
    after = after_graph_refused(*choose_cuda_options(SessionSpec(ep="cuda"), fp16, io_binding=True), 1, "refused")
    assert after[0][0].cuda_nhwc is False and after[0][0].cuda_fuse_conv_bias is False


def test_a_model_computing_its_output_shapes_gets_the_graph_on_a_static_copy():
    """An output whose shape the graph leaves unknown (a Shape op's result) gets a CUDA graph through the
    static-shape copy; without shape arithmetic to fold, no graph."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Relu", ["x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
                               helper.make_tensor_value_info("s", TensorProto.INT64, ["k"])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    spec, reasons = choose_cuda_options(SessionSpec(ep="cuda"), model, io_binding=True)
    assert spec.cuda_graph is True and STATIC_COPY_FIRST in reasons["enable_cuda_graph"]
    model.graph.node[0].op_type = "Identity"  # the same unknown output, nothing to fold
    spec, reasons = choose_cuda_options(SessionSpec(ep="cuda"), model, io_binding=True)
    assert spec.cuda_graph is False and "does not follow from the inputs'" in reasons["enable_cuda_graph"]


def test_float32_models_keep_nchw_and_plain_runs_get_no_cuda_graph():
    spec, reasons = choose_cuda_options(SessionSpec(ep="cuda"), _conv_model(), io_binding=False)
    assert spec.cuda_nhwc is False and spec.cuda_graph is False
    assert "needs --io-binding" in reasons["enable_cuda_graph"] and "no Conv with float16" in reasons["prefer_nhwc"]


def test_control_flow_gets_no_cuda_graph_and_given_options_are_kept_without_a_reason():
    model = _conv_model(TensorProto.FLOAT16, control_flow=True)
    spec, reasons = choose_cuda_options(SessionSpec(ep="cuda", cuda_nhwc=False), model, io_binding=True)
    assert spec.cuda_nhwc is False and "prefer_nhwc" not in reasons  # the user's choice, not onnxq's
    assert spec.cuda_graph is False and "If" in reasons["enable_cuda_graph"]
    assert choose_cuda_options(SessionSpec(ep="cpu"), model, io_binding=True) == (SessionSpec(ep="cpu"), {})


def test_float16_convs_counts_constant_node_weights_too():
    model = _conv_model(TensorProto.FLOAT16)
    w = model.graph.initializer.pop()
    model.graph.node.insert(0, helper.make_node("Constant", [], ["w"], value=w))
    assert float16_convs(model) == 1 and float16_convs(_conv_model()) == 0


def test_bench_refuses_cuda_options_without_cuda_and_a_cuda_graph_without_io_binding():
    with pytest.raises(ConfigError, match="cuda is not among the EPs"):
        BenchConfig(cuda_nhwc=True)
    with pytest.raises(ConfigError, match="--cuda-graph needs --io-binding"):
        BenchConfig(eps=("cuda",), cuda_graph=True)
    assert BenchConfig(eps=("cpu", "cuda"), cuda_tf32=False).session_spec("cpu").cuda_tf32 is None


def test_a_cuda_graph_session_is_never_run_through_session_run():
    runner = RunnerSession(None, SessionSpec(ep="cuda", cuda_graph=True), [CUDA], {}, {}, 0, "", 0.0)
    with pytest.raises(ConfigError, match="needs IO binding"):
        make_call(runner, {}, io_binding=False)


def test_evaluation_refuses_a_cuda_graph_before_loading_anything(tmp_path):
    with pytest.raises(ConfigError, match="evaluation cannot use a CUDA graph"):
        evaluate(tmp_path / "absent.onnx", tmp_path / "absent.npz", ep="cpu", ep_options={"cuda_graph": True})


def test_ort_refusing_graph_capture_is_a_cuda_graph_error_with_a_hint(monkeypatch):
    import onnxruntime as ort

    def refuse(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : This session cannot use the graph capture feature as "
                           "requested by the user as all compute graph nodes have not been partitioned to the "
                           "CUDAExecutionProvider")  # fmt: skip

    monkeypatch.setattr(ort, "InferenceSession", refuse)
    with pytest.raises(CudaGraphRefused) as info:
        runtime._create(b"m", None, SessionSpec(ep="cuda", cuda_graph=True), [])
    assert "graph capture" in info.value.message and "--target cuda" in info.value.hint


def test_an_automatic_cuda_graph_that_ort_refuses_is_dropped_with_the_reason(monkeypatch):
    made = []

    def create(path, spec, probe_feeds=None):
        made.append(spec.cuda_graph)
        if spec.cuda_graph:
            raise CudaGraphRefused("onnxruntime refused a CUDA graph for this model: not all nodes on CUDA")
        return "session"

    monkeypatch.setattr(bench, "create_session", create)
    model = bench.BenchModel("m", "m.onnx", None, 0)
    auto = {"enable_cuda_graph": "auto: IO binding with fixed shapes"}
    runner, reasons = bench._session(model, SessionSpec(ep="cuda", cuda_graph=True), auto, {}, 32)
    assert runner == "session" and made == [True, False]
    assert reasons["enable_cuda_graph"] == "auto: off, ORT refused it: not all nodes on CUDA"
    with pytest.raises(CudaGraphRefused):  # asked for by the user: their error, not silently dropped
        bench._session(model, SessionSpec(ep="cuda", cuda_graph=True), {}, {}, 32)


def test_at_small_batches_a_refused_graph_is_tried_again_without_nhwc_then_dropped(monkeypatch):
    made = []

    def create(path, spec, probe_feeds=None):
        made.append((spec.cuda_nhwc, spec.cuda_graph))
        if spec.cuda_graph and (spec.cuda_nhwc or len(made) > 2):
            raise CudaGraphRefused("onnxruntime refused a CUDA graph for this model: with NHWC")
        return "session"

    monkeypatch.setattr(bench, "create_session", create)
    model = bench.BenchModel("m", "m.onnx", None, 0)
    auto = {"enable_cuda_graph": "auto: IO binding", "prefer_nhwc": "auto: 3 Conv node(s) with float16 weights"}
    spec = SessionSpec(ep="cuda", cuda_graph=True, cuda_nhwc=True)
    runner, reasons = bench._session(model, spec, auto, {}, 8)
    assert made == [(True, True), (False, True)] and reasons["prefer_nhwc"].startswith("auto: off at batch 8")
    made.clear()
    runner, reasons = bench._session(model, spec, auto, {}, 32)  # larger batches keep NHWC, drop the graph
    assert made == [(True, True), (True, False)] and reasons["prefer_nhwc"] == auto["prefer_nhwc"]


@pytest.mark.parametrize(
    "argv, says",
    [
        (["bench", "{m}", "--nhwc"], "cuda options (cuda_nhwc) were given but cuda is not among the EPs"),
        (["bench", "{m}", "--cuda-graph", "--ep", "cuda"], "--cuda-graph needs --io-binding"),
        (["eval", "{m}", "--data", "{d}", "--no-tf32"], "cuda options (cuda_tf32) were given for the 'cpu' EP"),
        (["bench", "{m}", "--conv-algo-search", "fastest"], "Invalid value for '--conv-algo-search'"),
    ],
)
def test_cli_refuses_cuda_flags_where_they_cannot_apply(tmp_path, capsys, argv, says):
    m, d = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(_conv_model(), m)
    np.savez(d, x=np.zeros((2, 3, 8, 8), np.float32))
    assert main([a.format(m=m, d=d) for a in argv]) == 2
    assert says in capsys.readouterr().err


def test_eval_and_run_offer_no_cuda_graph_flag(capsys):
    for command in ("eval", "run"):
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert "--nhwc" in text and "--tf32" in text and "--cuda-graph" not in text


def test_cpu_bench_entries_record_no_ep_options(tmp_path):
    m = tmp_path / "m.onnx"
    onnx.save(_conv_model(), m)
    (entry,) = bench.bench_models([m], BenchConfig(runs=2, warmup_runs=0, threads=1))
    assert entry["ep_options"] == {} and entry["ep_option_reasons"] == {}


def test_per_model_options_must_be_options_of_the_ep(tmp_path):
    m = tmp_path / "m.onnx"
    onnx.save(_conv_model(), m)
    with pytest.raises(ConfigError, match="not options of the cpu EP"):
        bench.bench_models([m], BenchConfig(runs=2, warmup_runs=0), model_options=[{"cuda_nhwc": True}])
    with pytest.raises(ConfigError, match="1 option sets for 2 models"):
        bench.bench_models([m, m], BenchConfig(runs=2, warmup_runs=0), model_options=[{}])


def test_cuda_graph_runs_write_into_output_buffers_allocated_once(tmp_path):
    """The mechanics of BoundRun's fixed outputs, on the CPU: a spec asking for a CUDA graph gets its outputs
    allocated before any run (shapes from the declared dims and the inputs'), bound, and every run writes
    into those same buffers; no session.run comes first (a graph would capture its temporary buffers)."""
    from types import SimpleNamespace

    from onnxq.measure.runs import BoundRun
    from onnxq.runtime.session import create_session

    m = tmp_path / "m.onnx"
    onnx.save(_conv_model(), m)
    runner = create_session(m, SessionSpec(ep="cpu", threads=1))
    runner.spec = SimpleNamespace(ep="cpu", device_id=0, cuda_graph=True)  # as a CUDA graph session would ask
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    call = make_call(runner, {"x": x}, io_binding=True)
    assert isinstance(call, BoundRun) and list(call.output_values) == ["y"]
    buffer = call.output_values["y"].data_ptr()
    call()
    call()
    assert call.output_values["y"].data_ptr() == buffer
    np.testing.assert_array_equal(call.outputs()[0], runner.session.run(None, {"x": x})[0])
    np.testing.assert_array_equal(call.output_values["y"].numpy(), call.outputs()[0])


def test_output_shapes_come_from_the_inputs_symbols_or_the_cuda_graph_is_refused(tmp_path):
    from onnxq.measure.runs import fixed_output_shapes
    from onnxq.runtime.auto_options import outputs_not_given_by_inputs
    from onnxq.runtime.session import create_session

    m = tmp_path / "m.onnx"
    onnx.save(_conv_model(), m)
    session = create_session(m, SessionSpec(ep="cpu", threads=1)).session
    x = np.zeros((5, 3, 8, 8), np.float32)
    assert fixed_output_shapes(session, {"x": x}) == {"y": ((5, 4, 8, 8), np.float32)}
    graph = helper.make_graph([helper.make_node("NonZero", ["v"], ["idx"])], "nz",
                              [helper.make_tensor_value_info("v", TensorProto.FLOAT, ["N"])],
                              [helper.make_tensor_value_info("idx", TensorProto.INT64, [1, "K"])])  # fmt: skip
    nonzero = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(nonzero, m)
    with pytest.raises(ConfigError, match="known only once the model has run"):
        fixed_output_shapes(create_session(m, SessionSpec(ep="cpu", threads=1)).session, {"v": np.ones(3, np.float32)})
    model = _conv_model()
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_param = "H_out"  # declared, not the inputs'
    assert outputs_not_given_by_inputs(model) == ["y"] and outputs_not_given_by_inputs(_conv_model()) == []
    spec, reasons = choose_cuda_options(SessionSpec(ep="cuda"), model, io_binding=True)
    assert spec.cuda_graph is False and "does not follow from the inputs'" in reasons["enable_cuda_graph"]
