"""The HTML report of a real ``onnxq run``, opened in a real headless browser (tests/browser.py).

Checked as a reader would see it: no console or browser-log errors (Chromium logs an SVG attribute it refuses
as an error), a screenshot of a sane size that is not blank, no horizontal scrolling, every plot text inside
its plot, the scatter's point labels inside the plot area and clear of each other and of the EP legend, the
box plot's dots drawn where its legend promises them, and the quantization summary as tables. Skips, saying
why, where no Chromium-family browser is installed (``apt-get install chromium``, or ``$ONNXQ_BROWSER``).
"""

from __future__ import annotations

import pytest
from browser import find_browser, open_page, png_size

from conftest import SAMPLE_MODELS
from onnxq.cli import main

BROWSER = find_browser()
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium-family browser on PATH (apt-get install chromium, or set ONNXQ_BROWSER)"
)
WIDTH, HEIGHT = 1280, 900
# Rectangles in CSS pixels, as [left, top, right, bottom], of what the checks below compare.
MEASURE = """(() => {
  const r = el => { const b = el.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };
  const plots = [...document.querySelectorAll('svg.plot')].map(svg => ({
    title: svg.querySelector('title').textContent,
    rect: r(svg),
    texts: [...svg.querySelectorAll('text')].map(t => ({text: t.textContent, cls: t.getAttribute('class') || '',
                                                        rect: r(t)})),
    area: svg.querySelector('.plot-area') ? r(svg.querySelector('.plot-area')) : null,
    legend: svg.querySelector('.ep-legend') ? r(svg.querySelector('.ep-legend')) : null,
    dots: svg.querySelectorAll('circle.run').length,
  }));
  return {innerWidth: window.innerWidth, scrollWidth: document.documentElement.scrollWidth, plots,
          captions: [...document.querySelectorAll('h3')].map(h => h.textContent),
          pre: document.querySelectorAll('pre').length};
})()"""
SLACK_PX = 1.0  # text boxes are measured in fractional pixels; a hair over an edge is rounding, not overflow


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory):
    """A report from `onnxq run` on the sample ResNet (float and INT8 measured), loaded in the browser."""
    out = tmp_path_factory.mktemp("browser")
    report = out / "report.html"
    argv = ["run", str(SAMPLE_MODELS / "resnet_digits.onnx"), "--calib", str(SAMPLE_MODELS / "calib.npz"),
            "--data", str(SAMPLE_MODELS / "test.npz"), "-o", str(out / "q.onnx"), "--runs", "40",
            "--report", str(report), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return open_page(report, BROWSER, width=WIDTH, height=HEIGHT, measure=MEASURE)


def inside(inner: list[float], outer: list[float], slack: float = SLACK_PX) -> bool:
    return (
        inner[0] >= outer[0] - slack
        and inner[1] >= outer[1] - slack
        and inner[2] <= outer[2] + slack
        and inner[3] <= outer[3] + slack
    )


def overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] - SLACK_PX and b[0] < a[2] - SLACK_PX and a[1] < b[3] - SLACK_PX and b[1] < a[3] - SLACK_PX


def test_the_page_loads_without_console_or_log_errors(page):
    assert page.console_errors == [], page.console_errors
    assert page.log_errors == [], page.log_errors


def test_the_screenshot_has_a_sane_size_and_is_not_blank(page):
    width, height = png_size(page.png)
    assert width == WIDTH
    assert HEIGHT <= height <= 20_000, height  # the whole page: taller than one screen, not runaway
    # A blank page of this size compresses to a few KiB; tables, plots and text take far more.
    assert len(page.png) > 30_000, len(page.png)


def test_nothing_is_wider_than_the_window(page):
    assert page.layout["scrollWidth"] <= page.layout["innerWidth"], page.layout


def test_every_plot_text_lies_inside_its_plot(page):
    plots = page.layout["plots"]
    assert len(plots) == 2
    for plot in plots:
        assert plot["rect"][2] - plot["rect"][0] > 300 and plot["rect"][3] - plot["rect"][1] > 50
        outside = [t["text"] for t in plot["texts"] if not inside(t["rect"], plot["rect"])]
        assert not outside, (plot["title"], outside)


def test_scatter_labels_stay_in_the_plot_area_clear_of_each_other_and_the_legend(page):
    scatter = next(p for p in page.layout["plots"] if p["title"].startswith("Top-1 accuracy"))
    labels = [t for t in scatter["texts"] if "point-label" in t["cls"]]
    assert len(labels) == 2  # the float model and its INT8 copy
    assert scatter["area"] is not None and scatter["legend"] is not None
    for label in labels:
        assert inside(label["rect"], scatter["area"]), label
        assert not overlap(label["rect"], scatter["legend"]), label
    assert not overlap(labels[0]["rect"], labels[1]["rect"]), labels


def test_box_plot_draws_the_runs_its_legend_names(page):
    box = next(p for p in page.layout["plots"] if p["title"].startswith("Latency distribution"))
    legend = " ".join(t["text"] for t in box["texts"] if "legend" in t["cls"])
    assert "grey dots: individual runs" in legend
    assert box["dots"] == 2 * 40  # every timed run of both models (--runs 40)


def test_quantization_summary_is_tables_not_a_json_dump(page):
    assert page.layout["pre"] == 0
    assert {"Overview", "Nodes quantized, by op type", "Passes, in the order they ran"} <= set(page.layout["captions"])
