"""What a report shows, checked against the data it came from: the quantization summary as tables (the same in
Markdown and HTML), memory columns named for what they measure, plot axes from zero or marked as zoomed with
one tick format each, the box plot's legend promising only what is drawn, and scatter labels kept in the plot.
"""

from __future__ import annotations

import re
from collections import Counter
from html import unescape

import pytest
from test_report import bench_entry, eval_entry

from conftest import SAMPLE_MODELS
from onnxq.measure.bench import MAX_SAMPLES, samples_ms
from onnxq.quantize.driver import quantize
from onnxq.quantize.recipe import QuantizeRecipe
from onnxq.report.document import build_report, render
from onnxq.report.quantize_tables import quantize_tables
from onnxq.report.svg import (
    LABEL_CHAR_PX,
    Scale,
    accuracy_latency_plot,
    accuracy_scale,
    latency_plot,
    zero_based_scale,
)
from onnxq.report.tables import bench_table

CALIB = SAMPLE_MODELS / "calib.npz"


@pytest.fixture(scope="module")
def transformer_summary(tmp_path_factory) -> dict:
    """A real summary with nodes left in float (the transformer's bias Adds and more)."""
    out = tmp_path_factory.mktemp("q") / "t.onnx"
    return quantize(SAMPLE_MODELS / "transformer_digits.onnx", out, CALIB).to_dict()


@pytest.fixture(scope="module")
def qoperator_summary(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("q") / "r.onnx"
    recipe = QuantizeRecipe(format="qoperator", passes=("cle",))
    return quantize(SAMPLE_MODELS / "resnet_digits.onnx", out, CALIB, recipe).to_dict()


def tables(summary: dict) -> dict[str, tuple[list[str], list[list[str]]]]:
    return dict(quantize_tables(summary))


# --- the quantization section --------------------------------------------------------------------


def test_skipped_nodes_are_grouped_by_reason_with_their_counts(transformer_summary):
    skipped = transformer_summary["skipped"]
    assert skipped, "the transformer leaves some nodes in float"
    headers, rows = tables(transformer_summary)["Nodes left in float, and why"]
    assert headers == ["reason", "nodes left in float", "nodes"]
    assert {row[0]: int(row[1]) for row in rows} == Counter(skipped.values())
    for reason, _, names in rows:
        shown = [n for n in names.split(" and ")[0].split(", ")]
        assert all(skipped[n] == reason for n in shown)  # the examples are nodes skipped for that reason


def test_quantized_op_table_lists_every_op_type_and_the_total(transformer_summary):
    _, rows = tables(transformer_summary)["Nodes quantized, by op type"]
    assert rows[-1] == ["total", str(transformer_summary["nodes_quantized"])]
    assert {op: int(n) for op, n in rows[:-1]} == transformer_summary["op_counts"]
    counts = [int(n) for _, n in rows[:-1]]
    assert counts == sorted(counts, reverse=True)


def test_overview_has_the_sizes_before_and_after_and_their_ratio(transformer_summary):
    rows = dict(tables(transformer_summary)["Overview"][1])
    before, after = transformer_summary["size_before"], transformer_summary["size_after"]
    assert f"({before / after:.2f}x smaller)" in rows["size"]
    assert rows["nodes left in float"] == str(len(transformer_summary["skipped"]))
    assert "activations uint8 asymmetric" in rows["recipe"] and "per channel" in rows["recipe"]


def test_passes_table_has_a_row_per_pass_with_what_it_did(qoperator_summary):
    _, rows = tables(qoperator_summary)["Passes, in the order they ran"]
    assert [r[0] for r in rows] == [p["pass"] for p in qoperator_summary["passes"]]
    qop = next(r for r in rows if r[0] == "qoperator")
    assert qop[2] == "yes" and "Conv -> QLinearConv 6" in qop[3]
    cle = next(r for r in rows if r[0] == "cle")
    pairs = next(p for p in qoperator_summary["passes"] if p["pass"] == "cle")["pairs_equalized"]
    assert f"pairs equalized {pairs}" in cle[3]
    assert all(" 0;" not in r[3] and not r[3].endswith(" 0") for r in rows)  # zeros are left out


def test_markdown_and_html_hold_the_same_quantization_tables(transformer_summary):
    report = build_report(quantize=transformer_summary, environment={})
    md, page = render(report, ".md"), render(report, ".html")
    assert "```json" not in md and "<pre>" not in page
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", page)]
    html_rows = {tuple(unescape(c) for c in row) for row in cells if row}
    for caption, (_, rows) in quantize_tables(transformer_summary):
        assert f"### {caption}" in md and f"<h3>{caption}</h3>" in page
        for row in rows:
            assert "| " + " | ".join(row) + " |" in md, row
            assert tuple(row) in html_rows, row


# --- memory and runs in bench entries ------------------------------------------------------------


def test_memory_columns_say_what_they_measure():
    entry = bench_entry(peak_rss_bytes=4096, process_peak_rss_bytes=300 * 2**20)
    headers, rows = bench_table([entry])
    assert "peak RSS" not in headers  # the old name, which read as the process's peak
    row = dict(zip(headers, rows[0], strict=True))
    assert row["session RSS added"] == "4.0 KiB" and row["process peak RSS"] == "300.0 MiB"


def test_samples_are_every_run_up_to_the_cap_then_evenly_strided_runs():
    few = [0.001 * (i + 1) for i in range(50)]
    assert samples_ms(few) == pytest.approx([1000 * v for v in few])
    many = [1e-6 * i for i in range(2 * MAX_SAMPLES + 7)]
    kept = samples_ms(many)
    assert len(kept) <= MAX_SAMPLES and len(kept) > MAX_SAMPLES // 2
    stride = round(kept[1] / 1e-3)  # run i took i microseconds, so the kept value names the run
    assert kept == pytest.approx([1e-3 * i for i in range(0, len(many), stride)])


# --- axes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("lo, hi", [(95.0, 100.0), (99.4, 99.8), (0.0, 0.5), (0.0, 1500.0), (12.0, 13.0)])
def test_linear_tick_labels_share_one_format_and_read_back_as_the_ticks(lo, hi):
    labels = Scale(lo, hi, 0.0, 100.0).tick_labels("%")
    assert len(labels) >= 3
    decimals = {len(text.rstrip("%").partition(".")[2]) for _, text in labels}
    assert len(decimals) == 1, labels  # no "100.0%" beside "95.00%"
    for value, text in labels:
        assert float(text.rstrip("%").replace(",", "")) == pytest.approx(value, abs=1e-9)


def test_latency_axes_start_at_zero_unless_logarithmic():
    scale = zero_based_scale([0.042, 0.044], 0.0, 100.0)
    assert scale.lo == 0.0 and not scale.log and scale.hi >= 0.044
    assert scale(0.044) / scale(0.042) == pytest.approx(0.044 / 0.042)  # distances from 0 compare as ratios
    assert zero_based_scale([0.04, 2.0], 0.0, 100.0).log  # 50x apart: log, and the axis label says so


def test_accuracy_axis_is_zoomed_inside_0_to_100_and_says_where_it_starts():
    scale = accuracy_scale([99.5, 99.75], 400.0, 0.0)
    assert 99.0 <= scale.lo < 99.5 and 99.75 < scale.hi <= 100.0
    svg = accuracy_latency_plot([bench_entry()], [eval_entry(top1=0.995)])
    first_tick = accuracy_scale([99.5], 1.0, 0.0).tick_labels("%")[0][1]
    assert f"zoomed: axis from {first_tick}" in svg


# --- plots ---------------------------------------------------------------------------------------


def test_box_plot_legend_names_dots_only_where_runs_are_drawn():
    without = latency_plot([bench_entry(samples_ms=None)])
    assert 'r="1.4"' not in without and "grey dots" not in without
    runs = [1.1, 1.2, 1.25, 1.3, 2.4]
    with_runs = latency_plot([bench_entry(samples_ms=runs)])
    assert with_runs.count('class="run"') == len(runs) and "grey dots: individual runs" in with_runs
    mixed = latency_plot([bench_entry(samples_ms=runs), bench_entry(samples_ms=None)])
    assert "1 of 2 entries recorded them" in mixed


def _labels(svg: str) -> list[tuple[float, float, str]]:
    found = re.findall(r'<text x="([\d.]+)" y="([\d.]+)" text-anchor="start" font-size="11" class="point-label">'
                       r"([^<]*)</text>", svg)  # fmt: skip
    return [(float(x), float(y), unescape(t)) for x, y, t in found]


def test_scatter_labels_stay_inside_the_plot_area_and_apart():
    width, right = 960, 30
    bench = [bench_entry(f"model_with_a_long_name_{i}", p50=p, size=81_510 * (i + 1))
             for i, p in enumerate((1.0, 13.5, 14.0, 14.0))]  # fmt: skip
    evals = [eval_entry(f"model_with_a_long_name_{i}", top1=0.99) for i in range(4)]
    svg = accuracy_latency_plot(bench, evals, width=width)
    area = re.search(r'class="plot-area" x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"', svg)
    x0, y0, w, h = map(float, area.groups())
    assert x0 + w == pytest.approx(width - right)
    labels = _labels(svg)
    assert len(labels) == 4
    for x, y, text in labels:
        assert x0 <= x and x + LABEL_CHAR_PX * len(text) <= x0 + w + 0.1, text  # rightmost ones go left
        assert y0 <= y <= y0 + h, text
    for i, (xa, ya, ta) in enumerate(labels):  # same accuracy: labels moved to free lines
        for xb, yb, tb in labels[i + 1 :]:
            apart_x = xa + LABEL_CHAR_PX * len(ta) <= xb or xb + LABEL_CHAR_PX * len(tb) <= xa
            assert apart_x or abs(ya - yb) >= 13.0, (ta, tb)
    legend_y = float(re.search(r'<g class="ep-legend"><text x="[\d.]+" y="([\d.]+)"', svg).group(1))
    assert legend_y < y0  # above the plot area, so no label can sit under it
