"""Latency, throughput and memory of one or more models on one or more execution providers.

For each (EP, batch) the models are measured *interleaved*: every model gets its session, first run and
warmup one after the other, then each timed round runs every model once in turn, so slow
drifts of a shared machine (other jobs, clocks, heat) hit all models alike and their ratios survive; the
order changes each round (a balanced Latin square), so no model always takes the same slot or follows the
same model.
Speedups are the first model's p50 over each model's p50. When several models with intra-op thread pools
are interleaved, ORT's thread spinning is turned off (see :func:`spinning_hurts`) and the entries say so.

Each result is a plain dict (keys in :data:`ENTRY_KEYS`) that ``onnxq.report.document`` renders. Memory:

* ``peak_rss_bytes``: the process's peak resident memory during this model's session creation, first
  run and warmup, minus its resident memory just before (Linux: the peak is reset through
  /proc/self/clear_refs, then read from VmHWM). It is what loading and running this model added, arena
  included; the timed rounds allocate (almost) nothing new. None where /proc is missing.
* ``gpu_mem_bytes``: memory in use on the GPU (nvidia-smi, device-wide) after warmup minus before
  session creation: this model's weights, arena and workspace, and for the first GPU session the CUDA
  context too; another process allocating meanwhile would be counted. None on CPU or without nvidia-smi.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxq.errors import ConfigError, DataError
from onnxq.measure.timing import (
    CV_WARN_THRESHOLD,
    Timings,
    add_speedups,
    latency_stats_ms,
    measure_interleaved,
    measurement_warnings,
    warm_up,
)
from onnxq.runtime.eps import EPS
from onnxq.runtime.session import RunnerSession, SessionSpec, check_available, create_session, normalize_ep

ENTRY_KEYS = (
    "model",
    "model_path",
    "ep",
    "ep_nodes",
    "batch",
    "size_bytes",
    "session_create_s",
    "first_run_s",
    "runs",
    "latency_ms",
    "cv",
    "throughput_per_s",
    "throughput_wall_per_s",
    "peak_rss_bytes",
    "gpu_mem_bytes",
    "io_binding",
    "threads",
    "speedup_vs_first",
    "warnings",
)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. ``batches`` None entries mean: the model's fixed batch, the --shape's, or 1."""

    eps: tuple[str, ...] = ("cpu",)
    batches: tuple[int | None, ...] = (None,)
    threads: int | None = None
    warmup_runs: int = 10
    warmup_s: float | None = None  # when set, warm up for this long instead of warmup_runs
    runs: int = 100
    duration_s: float | None = None  # when set, time rounds for this long instead of ``runs`` rounds
    io_binding: bool = False
    data: Any = None  # a source for onnxq.data.open_dataset; the first batch is fed on every run
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    allow_fallback: bool = False
    graph_optimization_level: str = "all"
    device_id: int = 0
    trt_fp16: bool = False
    trt_int8: bool = False
    trt_engine_cache_dir: str | None = None
    trt_workspace_bytes: int | None = None
    cv_threshold: float = CV_WARN_THRESHOLD
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", tuple(normalize_ep(e) for e in self.eps))
        if not self.eps:
            raise ConfigError("no execution provider to measure", hint=f"pass --ep ({', '.join(EPS)})")
        for b in self.batches:
            if b is not None and (not isinstance(b, int) or b < 1):
                raise ConfigError(f"batch sizes must be positive integers, got {b!r}")
        if self.runs < 1 or self.warmup_runs < 0:
            raise ConfigError(
                f"runs must be >= 1 and warmup >= 0, got runs={self.runs} warmup={self.warmup_runs}"
            )
        for name in ("warmup_s", "duration_s"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for ep in EPS.values():
            given = [name for name in ep.own_options if getattr(self, name)]
            if given and ep.name not in self.eps:
                raise ConfigError(f"{ep.name} options ({', '.join(given)}) were given but {ep.name} is not among "
                                  "the EPs", hint=f"add --ep {ep.name}, or drop those options")  # fmt: skip

    def session_spec(self, ep: str, *, allow_spinning: bool | None = None) -> SessionSpec:
        """The session options for ``ep``; an EP's own options (TensorRT's) go only to that EP."""
        own = {name: getattr(self, name) for name in EPS[normalize_ep(ep)].own_options}
        return SessionSpec(ep=ep, threads=self.threads, allow_spinning=allow_spinning,
                           graph_optimization_level=self.graph_optimization_level, device_id=self.device_id,
                           allow_fallback=self.allow_fallback, **own)  # fmt: skip


@dataclass
class _Model:
    name: str
    path: Path
    proto: Any  # onnx.ModelProto
    size_bytes: int


@dataclass
class _Prepared:
    model: _Model
    runner: RunnerSession
    call: Callable[[], Any]
    batch: int
    first_run_s: float
    peak_rss_bytes: int | None
    gpu_mem_bytes: int | None


def bench_models(
    models: Sequence[str | os.PathLike],
    config: BenchConfig | None = None,
    *,
    on_run: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Measure every model on every EP and batch; return one entry dict per (model, EP, batch).

    ``on_run(model_index, round)`` is called before each timed run (outside the timed window).
    """
    config = config or BenchConfig()
    for ep in config.eps:
        check_available(ep)  # before loading anything: a missing EP is the likeliest mistake
    loaded = [_load(path) for path in models]
    _disambiguate_names(loaded)
    _prime_runtime()
    entries: list[dict[str, Any]] = []
    for ep in config.eps:
        spec = config.session_spec(ep, allow_spinning=False if spinning_hurts(len(loaded), config) else None)
        for batch in config.batches:
            group = _bench_group(loaded, spec, batch, config, on_run)
            add_speedups(group)
            entries.extend(group)
    return entries


def run_bench(
    models: Sequence[str | os.PathLike],
    config: BenchConfig | None = None,
    *,
    on_run: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """``{"bench": [entries], "environment": {...}}``: what ``onnxq.report.document.write_report`` takes."""
    from onnxq.report.environment import collect_environment

    entries = bench_models(models, config, on_run=on_run)
    return {"bench": entries, "environment": collect_environment()}


# --- models and inputs -------------------------------------------------------------------------


def _load(path: str | os.PathLike) -> _Model:
    from onnxq.model import load_model

    path = Path(path)
    proto = load_model(path)
    return _Model(path.stem, path, proto, model_size_bytes(path))


def _disambiguate_names(models: list[_Model]) -> None:
    """Name a model by its file stem; by folder/file where that is ambiguous or just "model"."""
    stems = [m.name for m in models]
    for m in models:
        if stems.count(m.name) > 1 or m.name == "model":
            m.name = f"{m.path.resolve().parent.name}/{m.path.name}"


def _prime_runtime() -> None:
    """Create and run one trivial session, so that loading onnxruntime and creating its global environment
    are not charged to the first model's session-creation time and peak RSS."""
    from onnx import TensorProto, helper

    from onnxq.runtime.session import internal_session

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "prime",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    session = internal_session(model)
    session.run(None, {"x": np.zeros(1, np.float32)})


def model_size_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk: the .onnx file plus every external-data file it references (each counted once)."""
    import onnx

    from onnxq.model import iter_tensors

    path = Path(path)
    head = onnx.load(str(path), load_external_data=False)
    files = set()
    for tensor in iter_tensors(head):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            files.add((path.parent / location).resolve())
    return path.stat().st_size + sum(f.stat().st_size for f in files if f.is_file())


def resolve_batch(
    specs: list[Any], batch: int | None, shapes: Mapping[str, tuple[int, ...]], where: str
) -> int:
    """The batch to measure: ``batch`` if given (checked against a fixed graph batch), else the graph's
    fixed batch, else the first --shape's axis 0, else 1."""
    fixed = next((s.fixed_batch for s in specs if s.fixed_batch), None)
    if batch is not None:
        if fixed is not None and fixed != batch:
            raise ConfigError(
                f"{where} fixes the batch size to {fixed} in the graph; batch {batch} cannot run",
                hint=f"use --batch {fixed}, or re-export the model with a dynamic batch axis",
            )
        return batch
    if fixed is not None:
        return fixed
    given = next((shapes[s.name] for s in specs if s.name in shapes and len(shapes[s.name]) > 0), None)
    return int(given[0]) if given else 1


def make_feeds(model: _Model, batch: int | None, config: BenchConfig) -> tuple[dict[str, np.ndarray], int]:
    """Inputs for one batch: from ``config.data`` if given, else random with --shape dims; and the batch."""
    from onnxq.data import input_specs, open_dataset, random_feeds

    specs = input_specs(model.proto)
    unknown = sorted(set(config.shapes) - {s.name for s in specs})
    if unknown:
        raise ConfigError(
            f"--shape names {unknown}, which {model.name} does not have as inputs",
            hint=f"its inputs are {[s.name for s in specs]}",
        )
    if config.data is not None:
        dataset = open_dataset(config.data, model.proto)
        size = dataset.check_batch_size(batch)
        if len(dataset) < size:
            raise DataError(
                f"{dataset.source} holds {len(dataset)} samples, fewer than the batch size {size}",
                hint="give more samples, or a smaller --batch",
            )
        return next(dataset.batches(size)), size
    size = resolve_batch(specs, batch, config.shapes, model.name)
    shapes = {}
    for spec in specs:
        if spec.name in config.shapes:
            shapes[spec.name] = _checked_shape(spec, config.shapes[spec.name], size, model.name)
    try:
        return random_feeds(specs, size, shapes, seed=config.seed), size
    except DataError as exc:  # say which model: several may be measured at once
        raise DataError(f"{model.name}: {exc.message}", hint=exc.hint) from exc


def _checked_shape(spec: Any, shape: tuple[int, ...], batch: int, where: str) -> tuple[int, ...]:
    """``shape`` with axis 0 set to ``batch``; refused when its rank or a fixed dim contradicts the graph."""
    if len(shape) != len(spec.shape):
        raise ConfigError(
            f"--shape {spec.name}: {len(shape)} dims given, but {where} declares rank "
            f"{len(spec.shape)} {list(spec.shape)}",
            hint="give one value per dimension",
        )
    shape = (batch, *shape[1:]) if shape else shape
    for axis, (got, want) in enumerate(zip(shape, spec.shape, strict=True)):
        if isinstance(want, int) and got != want:
            raise ConfigError(
                f"--shape {spec.name}: axis {axis} is {got}, but {where} fixes it to {want}",
                hint=f"use {want} there",
            )
    return tuple(int(d) for d in shape)


# --- one (EP, batch) group ---------------------------------------------------------------------


def spinning_hurts(n_models: int, config: BenchConfig) -> bool:
    """Whether intra-op spinning must be off: several interleaved models with thread pools.

    After a run, ORT's pool threads busy-wait for the next one; interleaved, one session's spinning
    threads steal the cores the other session is running on. Measured on 2 cores, squeezenet's p50
    went from 1.8 ms alone to 3.4 ms interleaved with spinning, and from 2.1 to 2.4 ms without. One
    thread per session (--threads 1) has no pool, so ORT's default stays.
    """
    return n_models > 1 and config.threads != 1


def _bench_group(
    models: list[_Model],
    spec: SessionSpec,
    batch: int | None,
    config: BenchConfig,
    on_run: Callable[[int, int], None] | None,
) -> list[dict[str, Any]]:
    prepared = [_prepare(m, spec, batch, config) for m in models]
    timings = measure_interleaved(
        [p.call for p in prepared],
        rounds=None if config.duration_s else config.runs,
        duration_s=config.duration_s,
        on_run=on_run,
    )
    entries = [_entry(p, t, spec, config) for p, t in zip(prepared, timings, strict=True)]
    del prepared  # release the sessions before the next group builds its own
    return entries


def _prepare(model: _Model, spec: SessionSpec, batch: int | None, config: BenchConfig) -> _Prepared:
    from onnxq.report.environment import current_rss_bytes, gpu_memory_used_bytes, peak_rss_bytes, reset_peak_rss

    feeds, size = make_feeds(model, batch, config)
    on_gpu = EPS[spec.ep].gpu
    gpu_before = gpu_memory_used_bytes(spec.device_id) if on_gpu else None
    rss_before = current_rss_bytes()
    peak_reset = reset_peak_rss()
    runner = create_session(model.path, spec, probe_feeds=feeds)
    call = _make_call(runner, feeds, config.io_binding)
    start = time.perf_counter()
    call()
    first_run_s = time.perf_counter() - start
    warm_up(call, config.warmup_runs, config.warmup_s)
    peak = peak_rss_bytes() if peak_reset else None
    gpu_after = gpu_memory_used_bytes(spec.device_id) if on_gpu else None
    return _Prepared(
        model,
        runner,
        call,
        size,
        first_run_s,
        None if peak is None or rss_before is None else max(0, peak - rss_before),
        None if gpu_after is None or gpu_before is None else max(0, gpu_after - gpu_before),
    )


def _make_call(runner: RunnerSession, feeds: dict[str, np.ndarray], io_binding: bool) -> Callable[[], Any]:
    """One inference, as a closure: ``session.run`` on numpy feeds, or run_with_iobinding on device values."""
    session = runner.session
    outputs = [o.name for o in session.get_outputs()]
    if not io_binding:
        return lambda: session.run(outputs, feeds)
    import onnxruntime as ort

    device = "cuda" if EPS[runner.spec.ep].gpu else "cpu"
    device_id = runner.spec.device_id
    binding = session.io_binding()
    values = {n: ort.OrtValue.ortvalue_from_numpy(a, device, device_id) for n, a in feeds.items()}
    for name, value in values.items():
        binding.bind_ortvalue_input(name, value)
    for name in outputs:
        binding.bind_output(name, device, device_id)

    def call() -> None:
        session.run_with_iobinding(binding)

    call.inputs = values  # type: ignore[attr-defined]  # keep the device buffers alive with the closure
    call.binding = binding  # type: ignore[attr-defined]  # lets callers read the outputs back
    return call


# --- statistics and entries --------------------------------------------------------------------


def _entry(p: _Prepared, t: Timings, spec: SessionSpec, config: BenchConfig) -> dict[str, Any]:
    lat = latency_stats_ms(t.latencies_s)
    cv = lat["std"] / lat["mean"] if lat["mean"] > 0 else 0.0
    runs = len(t.latencies_s)
    warnings = [*p.runner.warnings, *measurement_warnings(cv, runs, config.cv_threshold)]
    if spec.allow_spinning is False:
        warnings.append(
            "intra-op thread spinning was off, as models were interleaved with thread pools; "
            "latencies can be a little above a lone run's (--threads 1 avoids this)"
        )
    if p.peak_rss_bytes is None:
        warnings.append("peak RSS not measured: needs Linux /proc/self/clear_refs")
    warnings += qdq_on_ep_warnings(p.model.proto, spec.ep)
    entry = {
        "model": p.model.name,
        "model_path": str(p.model.path),
        "ep": spec.ep,
        "ep_nodes": dict(p.runner.ep_nodes),
        "batch": p.batch,
        "size_bytes": p.model.size_bytes,
        "session_create_s": p.runner.create_s,
        "first_run_s": p.first_run_s,
        "runs": runs,
        "latency_ms": lat,
        "cv": cv,
        "throughput_per_s": p.batch / (lat["mean"] / 1e3),
        "throughput_wall_per_s": p.batch * runs / t.wall_s if t.wall_s > 0 else None,
        "peak_rss_bytes": p.peak_rss_bytes,
        "gpu_mem_bytes": p.gpu_mem_bytes,
        "io_binding": config.io_binding,
        "threads": config.threads,
        "speedup_vs_first": None,
        "warnings": warnings,
    }
    assert tuple(entry) == ENTRY_KEYS  # internal invariant: the report's schema
    return entry


def qdq_on_ep_warnings(model: Any, ep: str) -> list[str]:
    """Say plainly when an INT8 QDQ model runs where INT8 does not pay: ORT's CUDA EP has no fused integer
    kernels for QDQ graphs and runs DequantizeLinear followed by float kernels; and where int32 biases make
    it run DequantizeLinear on the host, name the target that keeps them float."""
    import onnx

    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    if not EPS[ep].qdq_as_float or not dqs:
        return []
    warnings = [f"INT8 QDQ on the {ep} EP ({EPS[ep].provider}) runs as DequantizeLinear + float kernels, so it is "
                "not faster than float; for INT8 speed on NVIDIA GPUs use the TensorRT EP (--ep tensorrt "
                "--trt-int8), or FP16 (onnxq fp16)"]  # fmt: skip
    int32 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT32}
    host = sum(bool(n.input) and n.input[0] in int32 for n in dqs)
    if host:
        warnings.append(f"{host} int32 bias DequantizeLinear node(s) have no {EPS[ep].provider} kernel and run on the "
                        "host each run; quantize with --target cuda, whose biases stay float, for a model with no "
                        "host-side node")  # fmt: skip
    return warnings
