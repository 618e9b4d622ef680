"""``onnxq bench --profile``: ORT's per-node profile, summarised per op type and EP, lists ops the model has."""

from __future__ import annotations

import json

import onnx
import pytest

from conftest import SAMPLE_MODELS
from onnxq.cli import main
from onnxq.measure.profile import summarize_profile

RESNET = SAMPLE_MODELS / "resnet_digits.onnx"


def _bench(capsys, *flags) -> dict:
    code = main(["bench", str(RESNET), "--runs", "3", "--warmup", "1", "--profile", "--profile-runs", "2", *flags])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out) if "--json" in flags else {"text": out}


def test_profile_lists_the_models_own_ops_without_graph_optimizations(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the traces' temporary folder is made, and removed, here
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    doc = _bench(capsys, "--opt-level", "disable", "--json")
    (entry,) = doc["bench"]
    profile = entry["profile"]
    ops = {n.op_type for n in onnx.load(RESNET).graph.node}
    assert profile["top_ops"] and {o["op_type"] for o in profile["top_ops"]} <= ops
    assert sum(o["nodes"] for o in profile["top_ops"]) <= len(onnx.load(RESNET).graph.node)
    assert set(profile["by_ep"]) == {"CPUExecutionProvider"} and profile["runs"] == 2
    if profile["op_types"] == len(profile["top_ops"]):
        assert sum(o["share"] for o in profile["top_ops"]) == pytest.approx(1.0)
    assert profile["file"] is None and not list(tmp_path.glob("onnxq-profile-*"))


def test_profile_traces_are_kept_beside_the_report(capsys, tmp_path):
    report = tmp_path / "bench.json"
    text = _bench(capsys, "--report", str(report))["text"]
    trace = tmp_path / "bench.profiles" / "resnet_digits.cpu.batch1.json"
    assert trace.is_file() and isinstance(json.loads(trace.read_text()), list)
    assert "profile: resnet_digits on cpu, batch 1" in text and f"ORT's trace: {trace}" in text
    assert json.loads(report.read_text())["bench"][0]["profile"]["file"] == str(trace)


def test_summary_leaves_out_the_first_run_and_sums_per_op_and_ep():
    def node(name, op, ts, dur, ep="CPUExecutionProvider"):
        args = {"op_name": op, "provider": ep}
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": args}

    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 50},
        node("a", "Conv", 1, 1000),  # the first run: left out
        {"cat": "Session", "name": "model_run", "ts": 100, "dur": 50},
        node("a", "Conv", 101, 30),
        node("b", "Conv", 102, 10),
        node("c", "Relu", 103, 10),
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 50},
        node("a", "Conv", 201, 30),
        node("b", "Conv", 202, 10),
        node("c", "Relu", 203, 10),
    ]
    prof = summarize_profile(events, runs=2)
    assert prof["kernel_ms_per_run"] == pytest.approx(0.05)
    conv, relu = prof["top_ops"]
    assert (conv["op_type"], conv["nodes"], conv["share"]) == ("Conv", 2, pytest.approx(0.8))
    assert (relu["op_type"], relu["ms_per_run"]) == ("Relu", pytest.approx(0.01))
