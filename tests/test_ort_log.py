"""ORT's native log lines: captured at the fd level, noise dropped, what matters turned into warnings."""

from __future__ import annotations

import os

from onnxq.runtime.ort_log import LOG_RULES, captured_native_output, sort_log
from onnxq.runtime.placement import missing_library

MEMCPY = (
    "\x1b[0;93m2026-12-02 06:12:00.123456789 [W:onnxruntime:, transformer_memcpy.cc:83 ApplyImpl] 26 Memcpy "
    "nodes are added to the graph main_graph for CUDAExecutionProvider. It might have negative impact on "
    "performance (including unable to run CUDA graph).\x1b[m\n"
)
PLUGIN = "2026-12-02 06:12:00.1 [W:onnxruntime:Default, ep_library.cc:42 Find] No registered plugin EP device found for 'CUDAExecutionProvider'\n"  # noqa: E501
FALLBACK_CONV = "2026-12-02 06:12:01.0 [W:onnxruntime:, conv.cc:378 UpdateState] OP Conv(c1) running in Fallback mode. May be extremely slow.\n"  # noqa: E501
CUDNN = "cudnn_frontend: [cudnn_frontend] Error: No execution plans support the graph.\n"
LOAD = (
    "[E:onnxruntime:Default, provider_bridge_ort.cc:2430 operator()] Failed to load library "
    "libonnxruntime_providers_tensorrt.so with error: libnvinfer.so.10: cannot open shared object file\n"
)


def test_noise_is_dropped_with_its_reason_and_warnings_are_counted_once_per_message():
    log = sort_log({2: MEMCPY + PLUGIN + FALLBACK_CONV * 3 + CUDNN * 40, 1: "a line of the user's own\n"})
    assert log.warnings == ["onnxruntime warned: OP Conv(c1) running in Fallback mode. May be extremely slow. (x3)"]
    assert sum(log.dropped.values()) == 42 and len(log.dropped) == 3  # memcpy, plugin lookup, cuDNN plans
    assert all(why in {r.why for r in LOG_RULES} for why in log.dropped)
    assert log.passthrough == {1: "a line of the user's own\n"}  # not ORT's: written back unchanged


def test_a_library_that_would_not_load_is_left_to_the_placement_check():
    log = sort_log({2: LOAD})
    assert log.warnings == [] and not log.dropped and not log.passthrough
    assert missing_library(log.raw) == "libnvinfer.so.10"  # the raw text still names it


def test_unknown_ort_errors_become_warnings_and_info_lines_are_dropped():
    log = sort_log({2: "[E:onnxruntime:, x.cc:1 F] something broke\n[I:onnxruntime:, y.cc:2 G] fyi\n"})
    assert log.warnings == ["onnxruntime logged an error: something broke"]


def test_capture_sees_native_writes_on_both_fds_and_writes_back_only_the_rest(capfd):
    with captured_native_output() as log:
        os.write(2, (MEMCPY + "Traceback-free plain line\n").encode())
        os.write(1, FALLBACK_CONV.encode())
    out, err = capfd.readouterr()
    assert "Memcpy" not in err and "plain line" in err and "Fallback" not in out
    assert len(log.warnings) == 1 and "Memcpy" in log.raw


def test_the_raw_log_is_written_back_on_request(capfd, monkeypatch):
    monkeypatch.setenv("ONNXQ_ORT_LOG", "1")
    with captured_native_output():
        os.write(2, MEMCPY.encode())
    assert "Memcpy nodes are added" in capfd.readouterr().err


def test_messages_that_differ_in_a_quoted_name_count_as_one():
    lines = "".join(f"[W:onnxruntime:, graph.cc:5809 Clean] Removing initializer 'b{i}'. It is not used by any node.\n"
                    for i in range(54))  # fmt: skip
    (warning,) = sort_log({2: lines}).warnings
    assert warning == "onnxruntime warned: Removing initializer 'b0'. It is not used by any node. (x54 like it)"
