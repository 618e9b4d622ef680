"""onnxq.report.document: the JSON report validates against its schema (and the schema rejects bad reports), the
Markdown and HTML show the numbers, the HTML is self-contained and escaped, and writes are atomic."""

from __future__ import annotations

import copy
import json
import os
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.errors import ConfigError, OutputPathError
from onnxq.report.document import build_report, load_schema, render, to_json, write_report
from onnxq.report.svg import Scale, accuracy_latency_plot, value_scale

jsonschema = pytest.importorskip("jsonschema")


def bench_entry(model="resnet_digits", ep="cpu", p50=1.25, size=81_510, **over):
    entry = {
        "model": model,
        "model_path": f"sample_models/{model}.onnx",
        "ep": ep,
        "ep_nodes": {"CPUExecutionProvider": 17},
        "batch": 8,
        "size_bytes": size,
        "session_create_s": 0.031,
        "first_run_s": 0.004,
        "runs": 200,
        "latency_ms": {
            "min": 1.1,
            "mean": 1.3,
            "std": 0.08,
            "p50": p50,
            "p90": 1.42,
            "p95": 1.5,
            "p99": 1.77,
            "max": 2.4,
        },
        "cv": 0.0615,
        "throughput_per_s": 6153.8,
        "peak_rss_bytes": 123_456_789,
        "gpu_mem_bytes": None,
        "io_binding": False,
        "threads": 2,
        "speedup_vs_first": 1.0,
        "warnings": ["cv above 5%"],
        "samples_ms": [1.1, 1.2, 1.25, 1.3, 2.4],
    }
    entry.update(over)
    if entry["samples_ms"] is None:  # the raw latencies are optional
        del entry["samples_ms"]
    return entry


def eval_entry(model="resnet_digits", ep="cpu", top1=0.975):
    return {
        "model": model,
        "model_path": f"sample_models/{model}.onnx",
        "ep": ep,
        "samples": 400,
        "accuracy": {"top1": top1, "top5": 1.0, "labels_key": "label"},
        "fidelity": {
            "reference": "sample_models/float.onnx",
            "outputs": [
                {
                    "name": "logits",
                    "top1_agreement": 0.9925,
                    "sqnr_db": 31.234,
                    "cosine": {"mean_per_sample": 0.999512, "overall": 0.999634},
                    "max_abs_error": 0.4321,
                    "mean_abs_error": 0.0456,
                    "min_atol": 0.4321,
                    "min_rtol": None,
                }
            ],
        },
    }


@pytest.fixture
def report():
    return build_report(
        bench=[
            bench_entry(),
            bench_entry("mlp_digits", "cpu", p50=0.5, size=4 * 81_510, speedup_vs_first=2.5, samples_ms=None),
        ],
        eval=[eval_entry(), eval_entry("mlp_digits", top1=0.9675)],
        quantize={"nodes_quantized": 9},
        environment={"python": "3.11.9", "onnxruntime": "1.31.1"},
        command=["onnxq", "bench", "a.onnx"],
        notes=["numbers from a test"],
    )


def validator():
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_json_report_validates_and_round_trips(report, tmp_path):
    out = write_report(tmp_path / "r.json", report)
    loaded = json.loads(out.read_text())
    validator().validate(loaded)
    assert loaded == report
    assert loaded["schema"] == "onnxq.report/1" and re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", loaded["created"]
    )


def _tiny_model(path, shift):
    """logits = input + shift, [N, 3]."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "shift"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(np.asarray(shift, dtype=np.float32), "shift")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_real_evaluate_output_validates(tmp_path):
    from onnxq.measure.evaluate import evaluate

    x = np.array([[2, 1, 0.25], [0, 1, 0.75], [1, 0, -1]], dtype=np.float32)
    result = evaluate(
        _tiny_model(tmp_path / "q.onnx", [0, 0, 0.5]),
        {"input": x, "label": np.array([0, 1, 2])},
        reference=_tiny_model(tmp_path / "r.onnx", [0, 0, 0]),
    )
    assert result["fidelity"]["outputs"][0]["max_abs_error"] == 0.5  # a real comparison, not an empty one
    validator().validate(json.loads(to_json(build_report(eval=[result]))))


def _broken(report, path, value=KeyError):
    """A copy of ``report`` with the item at ``path`` deleted (value KeyError) or replaced."""
    bad = copy.deepcopy(report)
    *parents, last = path
    target = bad
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return bad


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("bench", 0, "latency_ms", "p99"), KeyError),  # a latency percentile missing
        (("bench", 0, "latency_ms", "p50"), -1.0),  # negative latency
        (("bench", 0, "ep"), "gpu"),  # not an EP onnxq knows
        (("bench", 1, "batch"), 0),
        (("bench", 0, "ep_nodes", "CPUExecutionProvider"), 1.5),  # node counts are integers
        (("eval", 0, "accuracy", "top1"), 1.5),  # a fraction above 1
        (("eval", 0, "fidelity", "outputs", 0, "sqnr_db"), "inf"),  # non-finite must be null, not a string
        (("eval", 0, "fidelity", "outputs", 0, "cosine"), 0.99),  # cosine is {mean_per_sample, overall}
        (("eval", 0, "samples"), KeyError),
        (("schema",), "onnxq.report/2"),
        (("created",), "yesterday"),
        (("bench",), KeyError),
        (("surprise",), 1),  # unknown top-level key
    ],
)
def test_schema_rejects_bad_reports(report, path, value):
    v = validator()
    v.validate(report)  # the fixture itself is valid, so the failure below is due to the change
    assert not v.is_valid(_broken(report, path, value))


def test_markdown_shows_the_numbers(report, tmp_path):
    md = write_report(tmp_path / "r.md", report).read_text()
    row = next(line for line in md.splitlines() if line.startswith("| resnet_digits | cpu | 8 |"))
    # p50, p90, p99, throughput, speedup, size (81,510 B = 79.6 KiB), RSS (123,456,789 B = 117.7 MiB)
    for cell in ("1.25", "1.42", "1.77", "6,154", "1.00x", "79.6 KiB", "117.7 MiB", "CPU 17"):
        assert f" {cell} " in row, cell
    assert "| mlp_digits | cpu | 400 | 96.75% | 100.00% | label |" in md
    fid = next(
        line for line in md.splitlines() if line.startswith("| resnet_digits | sample_models/float.onnx")
    )
    for cell in ("99.25%", "31.23", "0.999512", "0.999634", "0.432", "0.0456", "none (ref is 0"):
        assert cell in fid, cell
    assert "cv above 5%" in md and "numbers from a test" in md and "| onnxruntime | 1.31.1 |" in md


def test_html_is_self_contained_with_a_plot_each_and_the_numbers(report, tmp_path):
    html = write_report(tmp_path / "r.html", report).read_text()
    assert html.count("<svg") == 2  # latency distribution; accuracy against latency and size
    assert not re.search(r"""(src|href)\s*=\s*["']?[^"'>]*http""", html, re.I)
    assert "<script" not in html.lower() and "<link" not in html.lower()
    for text in ("97.50%", "96.75%", "31.23", "6,154", "79.6 KiB", "0.999512"):
        assert text in html, text


def test_html_escapes_every_string(report):
    evil = "<img src=x onerror=alert(1)>&"
    report["bench"][0]["model"] = evil
    report["eval"][0]["model"] = evil
    report["notes"] = [evil]
    html = render(report, ".html")
    assert evil not in html and "<img" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;" in html


# a scatter marker: its tooltip (model name first), then its circle
MARKER = r'<title>([a-z_]+) · [^<]*</title><circle cx="([\d.]+)" cy="([\d.]+)" r="([\d.]+)"'


def test_scatter_marker_area_is_proportional_to_size(report):
    svg = accuracy_latency_plot(report["bench"], report["eval"])
    radii = {m.group(1): float(m.group(4)) for m in re.finditer(MARKER, svg)}
    # mlp is 4x the size of resnet in the fixture: area ratio 4, radius ratio 2 (SVG rounds to 0.1 px)
    assert radii["mlp_digits"] / radii["resnet_digits"] == pytest.approx(2.0, abs=0.02)


def test_scatter_places_points_by_latency_and_accuracy(report):
    svg = accuracy_latency_plot(report["bench"], report["eval"])
    pos = {m.group(1): (float(m.group(2)), float(m.group(3))) for m in re.finditer(MARKER, svg)}
    assert pos["mlp_digits"][0] < pos["resnet_digits"][0]  # p50 0.5 ms is left of 1.25 ms
    assert pos["mlp_digits"][1] > pos["resnet_digits"][1]  # 96.75% is below 97.5% (SVG y grows down)


def test_scales_switch_to_log_for_wide_spreads():
    assert value_scale([0.1, 50.0], 0, 100).log and not value_scale([1.0, 5.0], 0, 100).log
    s = Scale(1.0, 100.0, 0.0, 200.0, log=True)
    assert s(10.0) == pytest.approx(100.0)  # one decade of two: halfway
    assert s.ticks() == [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]


def test_unknown_suffix_and_missing_folder_are_user_errors(report, tmp_path):
    with pytest.raises(ConfigError, match="suffix"):
        write_report(tmp_path / "r.txt", report)
    with pytest.raises(OutputPathError, match="does not exist"):
        write_report(tmp_path / "missing" / "r.json", report)


def test_non_finite_numbers_are_refused_and_leave_the_old_file(report, tmp_path):
    path = write_report(tmp_path / "r.json", report)
    before = path.read_text()
    report["bench"][0]["cv"] = float("nan")
    with pytest.raises(ValueError):
        write_report(path, report)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind


def test_numpy_scalars_are_written_as_plain_numbers(tmp_path):
    rep = build_report(bench=[bench_entry(batch=np.int64(8), cv=np.float32(0.25))], environment={})
    loaded = json.loads(write_report(tmp_path / "r.json", rep).read_text())
    assert loaded["bench"][0]["batch"] == 8 and loaded["bench"][0]["cv"] == 0.25
    validator().validate(loaded)


def test_build_report_refuses_a_bare_entry():
    with pytest.raises(ConfigError, match="list"):
        build_report(eval=eval_entry())


def test_latency_plot_thins_raw_runs_but_keeps_the_extremes():
    from onnxq.report.svg import MAX_DOTS, latency_plot

    runs = [1.0 + 0.001 * i for i in range(3 * MAX_DOTS)] + [9.5]  # one slow outlier at the end
    svg = latency_plot(
        [
            bench_entry(
                samples_ms=runs,
                latency_ms={
                    "min": 1.0,
                    "mean": 1.6,
                    "std": 0.4,
                    "p50": 1.6,
                    "p90": 2.0,
                    "p95": 2.1,
                    "p99": 2.2,
                    "max": 9.5,
                },
            )
        ]
    )
    dots = re.findall(r'<circle cx="([\d.]+)" cy="[\d.]+" r="1.4"', svg)
    assert len(dots) == MAX_DOTS
    max_circle = float(re.search(r'<circle cx="([\d.]+)" cy="[\d.]+" r="3.5"', svg).group(1))
    assert max(float(x) for x in dots) == max_circle  # the outlier run is drawn, where the max is


def test_entries_from_the_real_benchmarker_validate(tmp_path):
    """Pins the schema to what onnxq.measure.bench writes, so the two cannot drift apart unnoticed."""
    from onnxq.measure.bench import BenchConfig, run_bench

    model = _tiny_model(tmp_path / "m.onnx", [0, 0, 0.5])
    out = run_bench([model], BenchConfig(runs=5, warmup_runs=1, batches=(2,)))
    report = build_report(bench=out["bench"], environment=out["environment"])
    validator().validate(json.loads(to_json(report)))
    assert report["bench"][0]["batch"] == 2 and report["bench"][0]["runs"] == 5


def test_eval_warnings_reach_markdown_and_html(report, tmp_path):
    report["eval"][0]["warnings"] = ["3 constant-input node(s) ran off CUDAExecutionProvider (<DQ>)"]
    md = write_report(tmp_path / "r.md", report).read_text()
    html = write_report(tmp_path / "r.html", report).read_text()
    label = f"{report['eval'][0]['model']} · {report['eval'][0]['ep']}"
    assert f"- {label}: 3 constant-input node(s) ran off CUDAExecutionProvider (<DQ>)" in md
    assert f"<li>{label}: 3 constant-input node(s) ran off CUDAExecutionProvider (&lt;DQ&gt;)</li>" in html


def test_written_report_has_the_permissions_of_any_new_file(report, tmp_path):
    old = os.umask(0o022)
    try:
        path = write_report(tmp_path / "r.json", report)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
