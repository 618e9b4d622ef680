"""The sweep's report: winners under a target, Pareto fronts, the JSON schema, the HTML page and the Markdown."""

from __future__ import annotations

import json

import pytest

from conftest import SAMPLE_MODELS, json_schema_validator
from onnxq.sweep import run_sweep
from onnxq.sweep.report import SCHEMA_PATH
from onnxq.sweep.results import mark_pareto, pick_winners, target_misses
from onnxq.sweep.spec import Target


def _row(recipe: str, p50: float | None, sqnr: float | None, *, top1=0.99, size=100, status="done", **more) -> dict:
    return {"model": "m", "ep": "cpu", "batch": 1, "recipe": recipe, "status": status, "p50_ms": p50, "sqnr_db": sqnr,
            "top1": top1, "top1_drop": more.get("drop"), "agreement": more.get("agreement", 1.0), "size_bytes": size,
            "speedup_vs_float": more.get("speedup")}  # fmt: skip


def test_the_pareto_front_holds_the_recipes_no_other_beats_on_both_latency_and_sqnr():
    rows = [_row("float", 2.0, None), _row("a", 1.0, 30.0), _row("b", 1.5, 40.0), _row("c", 1.6, 35.0),
            _row("d", 1.0, 30.0), _row("e", 0.8, 20.0), _row("x", 0.5, 50.0, status="failed")]  # fmt: skip
    mark_pareto(rows)
    assert {r["recipe"] for r in rows if r["pareto"]} == {"a", "b", "d", "e"}  # c: b is faster and closer; float and
    # a failed cell are never on it; a and d are equal, so neither dominates the other


def test_the_winner_is_the_best_by_the_objective_among_those_that_meet_every_constraint():
    rows = [_row("float", 2.0, None, top1=0.99), _row("fast", 0.5, 20.0), _row("good", 1.0, 35.0),
            _row("better", 1.2, 45.0), _row("tiny", 0.9, 33.0, size=10)]  # fmt: skip
    winner = pick_winners(rows, Target(min_sqnr_db=30))[0]
    assert (winner["recipe"], winner["value"]) == ("tiny", 0.9)  # the fastest with SQNR >= 30
    assert next(r for r in rows if r["recipe"] == "fast")["target_misses"] == ["SQNR dB 20 < 30"]
    assert pick_winners(rows, Target(min_sqnr_db=30, optimize="size"))[0]["recipe"] == "tiny"
    assert pick_winners(rows, Target(optimize="sqnr"))[0]["recipe"] == "better"
    assert pick_winners(rows, None) == []


def test_with_no_recipe_meeting_the_target_the_reason_names_what_each_missed():
    rows = [_row("a", 1.0, 20.0), _row("b", 2.0, None), _row("c", 1.0, 50.0, status="failed")]
    winner = pick_winners(rows, Target(min_sqnr_db=30, max_latency_ms=1.5))[0]
    assert winner["recipe"] is None
    assert winner["reason"] == ("no recipe meets the target: a: SQNR dB 20 < 30; "
                                "b: SQNR dB not measured, p50 ms 2 > 1.5; c: the cell failed")  # fmt: skip


def test_target_misses_checks_each_constraint_in_its_direction():
    row = _row("a", 1.0, 30.0, top1=0.95, size=1000, drop=0.02, agreement=0.97, speedup=1.4)
    assert target_misses(row, Target(min_top1=0.95, max_top1_drop=0.02, min_agreement=0.97, min_sqnr_db=30,
                                      max_latency_ms=1.0, min_speedup=1.4, max_size_bytes=1000)) == []  # fmt: skip
    assert target_misses(row, Target(max_top1_drop=0.01, min_speedup=2)) == ["top-1 drop 0.02 > 0.01",
                                                                               "speedup 1.4 < 2"]  # fmt: skip


@pytest.fixture(scope="module")
def report_and_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep_report")
    spec = {"models": [str(SAMPLE_MODELS / "resnet_digits.onnx"), {"path": str(SAMPLE_MODELS / "mlp_digits.onnx"),
            "name": "<mlp & co>"}], "calib": str(SAMPLE_MODELS / "calib.npz"), "data": str(SAMPLE_MODELS / "test.npz"),
            "recipes": {"minmax": {}, "pt": {"per_channel": False}}, "batches": [1, 4],
            "bench": {"runs": 3, "warmup": 1}, "target": {"min_sqnr_db": 25}}  # fmt: skip
    (folder / "spec.json").write_text(json.dumps(spec))
    outcome = run_sweep(folder / "spec.json", folder / "out", progress=False)
    return outcome.report, outcome.paths


def test_the_json_report_follows_its_schema_and_the_files_match(report_and_paths):
    report, paths = report_and_paths
    json_schema_validator(SCHEMA_PATH).validate(report)
    assert json.loads(paths["json"].read_text()) == report
    assert {(r["model"], r["recipe"], r["batch"]) for r in report["results"]} == {
        (m, r, b) for m in ("resnet_digits", "<mlp & co>") for r in ("float", "minmax", "pt") for b in (1, 4)
    }
    assert len(report["winners"]) == 4 and all(w["recipe"] in ("minmax", "pt") for w in report["winners"])


def test_the_html_page_is_self_contained_escaped_sortable_and_plots_each_group(report_and_paths):
    report, paths = report_and_paths
    page = paths["html"].read_text()
    assert "&lt;mlp &amp; co&gt;" in page and "<mlp & co>" not in page
    assert page.count('<svg class="plot"') == 4  # 2 models x 1 EP x 2 batches
    assert '<table class="sortable">' in page and "<script>" in page and "http://" not in page.replace(
        "http://www.w3.org", "")  # fmt: skip
    assert "Winners under the target" in page and "SQNR vs float (dB)" in page


def test_the_markdown_holds_the_winners_and_every_result_row(report_and_paths):
    report, paths = report_and_paths
    text = paths["md"].read_text()
    assert "## Winners under the target" in text and "## Results" in text
    results = text.split("## Results")[1].split("##")[0]
    assert sum(line.startswith("| ") for line in results.splitlines()) == 1 + len(report["results"])
