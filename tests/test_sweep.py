"""``onnxq sweep`` end to end on the sample models: serially, on the local process pool and on local Ray.

What is pinned: the cache (a rerun runs nothing; one recipe changed reruns only its cells, counted), failure
isolation (one failing cell is recorded with its error, the others finish), the same fidelity numbers and
quantized bytes from every executor, benchmarks alone on their node, and a worker killed mid-sweep: only its
task runs again and no finished task is lost. The Ray tests run on ``ray.init(num_cpus=2)``; they skip
without Ray, except under CI (CI=true), where Ray comes with the test extra and a skip would hide them.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import SAMPLE_MODELS
from onnxq.cli import main
from onnxq.sweep import run_sweep
from onnxq.sweep.executors import PoolExecutor

MODELS = ("mlp_digits", "resnet_digits")
RECIPES = {"minmax": {}, "pt": {"per_channel": False}}


def write_spec(folder: Path, *, models=MODELS, recipes=None, bench=None, **extra) -> Path:
    spec = {"models": [str(SAMPLE_MODELS / f"{m}.onnx") for m in models], "calib": str(SAMPLE_MODELS / "calib.npz"),
            "data": str(SAMPLE_MODELS / "test.npz"), "recipes": recipes or RECIPES,
            "bench": bench or {"runs": 5, "warmup": 1}, **extra}  # fmt: skip
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def fidelity(report: dict) -> dict[tuple, tuple]:
    """Per (model, recipe, EP, batch): what must not depend on the executor (latency may)."""
    return {(r["model"], r["recipe"], r["ep"], r["batch"]): (r["top1"], r["agreement"], r["sqnr_db"], r["cosine"],
            r["size_bytes"], r["status"]) for r in report["results"]}  # fmt: skip


def model_hashes(report: dict) -> dict[tuple, str]:
    return {(c["model"], c["recipe"]): c["quantize"]["model_sha256"] for c in report["cells"] if c["quantize"]}


def recomputed_cells(report: dict) -> set[tuple]:
    """Cells with at least one task this run executed (not from the cache)."""
    return {(c["model"], c["recipe"]) for c in report["cells"] if any(not t["cached"] for t in c["tasks"])}


def all_tasks(report: dict) -> list[dict]:
    return [t for c in report["cells"] for t in c["tasks"]]


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> dict:
    """One serial sweep of 2 models x (float + 2 recipes): the reference the other executors must match."""
    folder = tmp_path_factory.mktemp("serial")
    return run_sweep(write_spec(folder), folder / "out", progress=False).report


def test_a_serial_sweep_runs_every_cell_and_never_touches_its_inputs(serial):
    summary = serial["summary"]
    assert (summary["cells"], summary["done"], summary["failed"]) == (6, 6, 0)
    assert summary["executed"] == {"quantize": 4, "eval": 6, "bench": 6} and summary["cached"] == 0
    rows = {(r["model"], r["recipe"]): r for r in serial["results"]}
    assert rows[("resnet_digits", "minmax")]["sqnr_db"] > 25 and rows[("mlp_digits", "float")]["top1"] > 0.9
    assert rows[("resnet_digits", "minmax")]["size_ratio"] > 2  # int8 weights: smaller than the float file
    assert serial["executor"]["kind"] == "serial" and all(t["node"] for t in all_tasks(serial))


def test_inputs_are_left_byte_identical(tmp_path):
    paths = [SAMPLE_MODELS / f"{m}.onnx" for m in MODELS] + [SAMPLE_MODELS / "calib.npz", SAMPLE_MODELS / "test.npz"]
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    run_sweep(write_spec(tmp_path, models=MODELS[:1], recipes={"minmax": {}}), tmp_path / "out", progress=False)
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_a_rerun_runs_nothing_and_one_changed_recipe_reruns_only_its_cells(tmp_path):
    out = tmp_path / "out"
    first = run_sweep(write_spec(tmp_path), out, progress=False).report
    again = run_sweep(write_spec(tmp_path), out, progress=False).report
    assert again["summary"]["executed"] == {"quantize": 0, "eval": 0, "bench": 0}
    assert again["summary"]["cached"] == again["summary"]["tasks"] == 16 and fidelity(again) == fidelity(first)
    changed = run_sweep(write_spec(tmp_path, recipes={**RECIPES, "pt": {"per_channel": False, "method": "percentile"}}),
                        out, progress=False).report  # fmt: skip
    assert recomputed_cells(changed) == {(m, "pt") for m in MODELS}
    assert changed["summary"]["executed"] == {"quantize": 2, "eval": 2, "bench": 2}
    unchanged = {k: v for k, v in fidelity(changed).items() if k[1] != "pt"}
    assert unchanged == {k: v for k, v in fidelity(first).items() if k[1] != "pt"}
    renamed = run_sweep(write_spec(tmp_path, recipes={"default": {}}), out, progress=False).report
    assert renamed["summary"]["executed"]["quantize"] == 0  # keyed by content: a new name finds the same result


@pytest.mark.parametrize("workers", [1, 2])
def test_tasks_with_one_key_run_once_and_the_stored_result_is_not_rewritten(tmp_path, workers):
    # minmax ranges do not depend on the calibration batch: two recipes, one model, so one eval and one bench key
    spec = write_spec(tmp_path, models=MODELS[:1], recipes={"a": {}, "b": {"batch_size": 1}})
    executor = PoolExecutor(workers) if workers > 1 else None
    report = run_sweep(spec, tmp_path / "out", executor=executor, progress=False).report
    hashes = model_hashes(report)
    assert hashes[(MODELS[0], "a")] == hashes[(MODELS[0], "b")]
    assert report["summary"]["executed"] == {"quantize": 2, "eval": 2, "bench": 2}  # float + the one model
    assert report["summary"]["cached"] == 2 and report["summary"]["failed"] == 0
    rows = {r["recipe"]: r for r in report["results"]}
    assert rows["a"]["sqnr_db"] == rows["b"]["sqnr_db"] and rows["a"]["p50_ms"] == rows["b"]["p50_ms"]
    stored = list((tmp_path / "out" / "cache").rglob("*.json"))
    assert len(stored) == 6 and all(json.loads(p.read_text())["attempts"] == 1 for p in stored)


def test_new_calibration_data_at_the_same_path_recomputes_the_quantized_cells(tmp_path):
    import numpy as np

    calib = tmp_path / "calib.npz"
    data = dict(np.load(SAMPLE_MODELS / "calib.npz"))
    np.savez(calib, **data)
    spec = write_spec(tmp_path, models=MODELS[:1], calib=str(calib))
    run_sweep(spec, tmp_path / "out", progress=False)
    np.savez(calib, **{k: v[:100] for k, v in data.items()})  # other bytes, same name
    again = run_sweep(spec, tmp_path / "out", progress=False).report
    assert again["summary"]["executed"]["quantize"] == 2
    assert recomputed_cells(again) == {(MODELS[0], r) for r in RECIPES}


def test_a_cached_model_whose_bytes_changed_is_quantized_again(tmp_path):
    spec = write_spec(tmp_path, models=MODELS[:1], recipes={"minmax": {}})
    first = run_sweep(spec, tmp_path / "out", progress=False).report
    model = next((tmp_path / "out" / "models").glob("*.onnx"))
    model.write_bytes(model.read_bytes()[:-10])  # truncated behind the sweep's back
    again = run_sweep(spec, tmp_path / "out", progress=False).report
    assert again["summary"]["executed"]["quantize"] == 1 and model_hashes(again) == model_hashes(first)


def test_task_keys_change_with_the_onnxruntime_version(monkeypatch):
    import onnxruntime

    from onnxq.sweep.cache import task_key, versions

    before = task_key({"stage": "bench", "model": "abc"})
    monkeypatch.setattr(onnxruntime, "__version__", "0.0.1")
    versions.cache_clear()  # read once per process: one process runs one onnxruntime
    try:
        assert task_key({"stage": "bench", "model": "abc"}) != before  # latencies of another ORT are not reused
    finally:
        versions.cache_clear()


def test_one_failing_cell_is_recorded_and_the_others_finish(tmp_path, capsys):
    # a node only mlp_digits has: resnet_digits' cell of this recipe fails at quantization, nothing else does
    recipes = {"minmax": {}, "skip-fc": {"exclude_nodes": ["/net/net.1/Gemm"]}}
    spec = write_spec(tmp_path, recipes=recipes)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--no-progress"]) == 3
    report = json.loads((tmp_path / "out" / "sweep.json").read_text())
    status = {(c["model"], c["recipe"]): c["status"] for c in report["cells"]}
    assert [k for k, v in status.items() if v != "done"] == [("resnet_digits", "skip-fc")]
    cell = next(c for c in report["cells"] if (c["model"], c["recipe"]) == ("resnet_digits", "skip-fc"))
    first = cell["errors"][0]
    assert first["task"] == "quantize resnet_digits/skip-fc" and "/net/net.1/Gemm" in first["error"] and first["hint"]
    assert {e["error"] for e in cell["errors"][1:]} == {"skipped: quantize resnet_digits/skip-fc failed"}
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: 1 of 6 cells failed; first, quantize resnet_digits/skip-fc: ")
    assert err[1].startswith("hint: the failures are listed in ")
    rerun = run_sweep(spec, tmp_path / "out", progress=False).report  # failures are not cached: tried again
    assert rerun["summary"]["executed"] == {"quantize": 1, "eval": 0, "bench": 0}


def test_the_pool_gives_the_serial_numbers_and_benchmarks_alone(tmp_path, serial):
    report = run_sweep(write_spec(tmp_path), tmp_path / "out", executor=PoolExecutor(2), progress=False).report
    assert fidelity(report) == fidelity(serial) and model_hashes(report) == model_hashes(serial)
    assert report["executor"]["kind"] == "pool" and report["executor"]["nodes"][0]["slots"] == 2
    assert len({t["pid"] for t in all_tasks(report)}) >= 2  # the work was spread over the two workers
    assert_benchmarks_ran_alone(report)


def assert_benchmarks_ran_alone(report: dict) -> None:
    """No task of the sweep overlapped a benchmark on the same node (times from the workers' clocks)."""
    tasks = [t for t in all_tasks(report) if not t["cached"]]
    for b in (t for t in tasks if t["stage"] == "bench"):
        for t in tasks:
            if t is not b and t["node"] == b["node"]:
                assert t["ended"] <= b["started"] or t["started"] >= b["ended"], (b["id"], t["id"])


def run_and_kill_one_benchmark(spec: Path, out: Path, executor) -> tuple[dict, str, dict[Path, bytes]]:
    """Run the sweep in a thread; once one benchmark is stored, SIGKILL the worker running the next one.
    The report, the killed task's id, and the stored results as they were when it was killed."""
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(r=run_sweep(spec, out, executor=executor, progress=False)))
    thread.start()
    killed, stored = None, {}
    deadline = time.monotonic() + 120
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        if any((out / "cache" / "bench").glob("*.json")):
            for marker in (out / ".sweep" / "running").glob("*.json"):
                try:
                    info = json.loads(marker.read_text())
                except (OSError, ValueError):
                    continue  # it finished meanwhile
                if info["task"].startswith("bench "):
                    stored = {p: p.read_bytes() for p in (out / "cache").rglob("*.json")}
                    os.kill(info["pid"], signal.SIGKILL)
                    killed = info["task"]
                    break
        time.sleep(0.02)
    thread.join(180)
    assert killed is not None, "no benchmark was seen running"
    return outcome["r"].report, killed, stored


def assert_only_the_killed_task_ran_twice(report: dict, killed: str, stored: dict[Path, bytes]) -> None:
    assert report["summary"]["failed"] == 0 and report["summary"]["retried"] == 1
    tasks = {t["id"]: t for t in all_tasks(report)}
    assert tasks[killed]["attempts"] == 2 and len(tasks[killed]["lost"]) == 1
    assert all(t["attempts"] == 1 and not t["lost"] for i, t in tasks.items() if i != killed)
    assert sum(report["summary"]["executed"].values()) == len(tasks)  # each task completed once
    for path, content in stored.items():  # every result stored before the kill is still there, untouched
        assert path.read_bytes() == content


def kill_spec(folder: Path) -> Path:
    """One model, two recipes; each benchmark times for 1 s, long enough to be caught running."""
    return write_spec(folder, models=("resnet_digits",), bench={"duration_s": 1.0, "warmup": 1})


def test_a_pool_worker_killed_mid_sweep_loses_no_finished_task(tmp_path):
    report, killed, stored = run_and_kill_one_benchmark(kill_spec(tmp_path), tmp_path / "out", PoolExecutor(2))
    assert_only_the_killed_task_ran_twice(report, killed, stored)
    lost = next(t for t in all_tasks(report) if t["id"] == killed)["lost"][0]
    assert "killed by SIGKILL" in lost


# --- Ray ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 worker CPUs for this module's Ray tests."""
    try:
        import ray
    except ImportError:
        if os.environ.get("CI") and sys.version_info < (3, 14):  # the test extra installs Ray there
            pytest.fail("Ray is not installed, and CI installs it with the test extra: the Ray tests must run")
        pytest.skip("Ray is not installed (pip install 'onnxq[sweep]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning",
             object_store_memory=100 * 2**20)  # fmt: skip
    yield ray
    ray.shutdown()


def test_ray_gives_the_serial_numbers_and_records_its_node(tmp_path, serial, local_ray):
    from onnxq.sweep.ray_executor import RayExecutor

    report = run_sweep(write_spec(tmp_path), tmp_path / "out", executor=RayExecutor(), progress=False).report
    assert fidelity(report) == fidelity(serial) and model_hashes(report) == model_hashes(serial)
    node = local_ray.get_runtime_context().get_node_id()
    assert report["executor"]["kind"] == "ray" and [n["id"] for n in report["executor"]["nodes"]] == [node]
    assert {t["node_id"] for t in all_tasks(report)} == {node}
    assert_benchmarks_ran_alone(report)
    assert local_ray.is_initialized()  # a sweep leaves a Ray it did not start running


def test_a_ray_worker_killed_mid_sweep_loses_no_finished_task(tmp_path, local_ray):
    from onnxq.sweep.ray_executor import RayExecutor

    report, killed, stored = run_and_kill_one_benchmark(kill_spec(tmp_path), tmp_path / "out", RayExecutor())
    assert_only_the_killed_task_ran_twice(report, killed, stored)
    lost = next(t for t in all_tasks(report) if t["id"] == killed)["lost"][0]
    assert "WorkerCrashedError" in lost
