"""Latency, throughput and memory of one or more models on one or more execution providers.

For each (EP, batch) the models are measured *interleaved*: every model gets its session, first run and
warmup one after the other, then each timed round runs every model once in turn, so slow
drifts of a shared machine (other jobs, clocks, heat) hit all models alike and their ratios survive; the
order changes each round (a balanced Latin square), so no model always takes the same slot or follows the
same model.
Speedups are the first model's p50 over each model's p50. When several models with intra-op thread pools
are interleaved, ORT's thread spinning is turned off (see :func:`spinning_hurts`) and the entries say so.

On the CUDA EP the options left open (NHWC, CUDA graphs) are chosen per model by
:mod:`onnxq.runtime.auto_options`; each entry records the provider options ORT got (``ep_options``) and why
onnxq chose those it chose (``ep_option_reasons``). ORT's and cuDNN's log lines of the first runs are sorted
as session creation's are (:mod:`onnxq.runtime.ort_log`).

Each result is a plain dict (keys in :data:`ENTRY_KEYS`) that ``onnxq.report.document`` renders. Memory:

* ``peak_rss_bytes``: the process's peak resident memory during this model's session creation, first
  run and warmup, minus its resident memory just before (Linux: the peak is reset through
  /proc/self/clear_refs, then read from VmHWM). It is what loading and running this model added, arena
  included; the timed rounds allocate (almost) nothing new. None where /proc is missing.
* ``process_peak_rss_bytes``: the process's peak resident memory over that same time (VmHWM), the
  memory already held before included. None where /proc is missing.
* ``gpu_mem_bytes``: memory in use on the GPU (nvidia-smi, device-wide) after warmup minus before
  session creation: this model's weights, arena and workspace, and for the first GPU session the CUDA
  context too; another process allocating meanwhile would be counted. None on CPU or without nvidia-smi.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxq.errors import ConfigError, CudaGraphRefused
from onnxq.measure.bench_inputs import BenchModel, disambiguate_names, for_batch, load_bench_model, make_feeds
from onnxq.measure.bench_inputs import model_size_bytes as model_size_bytes  # re-exported: bench's public API
from onnxq.measure.runs import CUDA_GRAPH_RUNS_BEFORE_REPLAY, BoundRun, PlainRun, make_call
from onnxq.measure.timing import (
    CV_WARN_THRESHOLD,
    Timings,
    add_speedups,
    latency_stats_ms,
    measure_interleaved,
    measurement_warnings,
    warm_up,
)
from onnxq.runtime.auto_options import STATIC_COPY_FIRST, after_graph_refused, choose_cuda_options
from onnxq.runtime.eps import EP_OPTIONS, EPS
from onnxq.runtime.ort_log import SortedLog, captured_native_output
from onnxq.runtime.session import RunnerSession, SessionSpec, check_available, create_session, normalize_ep
from onnxq.runtime.static_shapes import outputs_agree, shape_nodes, static_copy

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
    "process_peak_rss_bytes",
    "gpu_mem_bytes",
    "io_binding",
    "threads",
    "speedup_vs_first",
    "ep_options",
    "ep_option_reasons",
    "warnings",
    "samples_ms",
)
MAX_SAMPLES = 10_000  # per-run latencies kept in an entry (the report schema's limit)
OnOutputs = Callable[[str, int, int, list[Any]], None]  # (ep, batch, model index, outputs of the last run)


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
    cuda_nhwc: bool | None = None  # None: onnxq decides per model (onnxq.runtime.auto_options)
    cuda_graph: bool | None = None  # None: onnxq decides (on with io_binding)
    cuda_conv_algo_search: str | None = None  # None: ORT's default
    cuda_fuse_conv_bias: bool | None = None  # None: onnxq decides per model (with prefer_nhwc)
    cuda_tf32: bool | None = None  # None: ORT's default
    cv_threshold: float = CV_WARN_THRESHOLD
    seed: int = 0
    profile_runs: int = 0  # > 0: after timing, profile this many runs per model (onnxq.measure.profile)
    profile_dir: str | None = None  # where ORT's profile traces are kept; None: a temporary folder, removed

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", tuple(normalize_ep(e) for e in self.eps))
        if not self.eps:
            raise ConfigError("no execution provider to measure", hint=f"pass --ep ({', '.join(EPS)})")
        for b in self.batches:
            if b is not None and (not isinstance(b, int) or b < 1):
                raise ConfigError(f"batch sizes must be positive integers, got {b!r}", hint="e.g. --batch 1 --batch 8")
        if isinstance(self.profile_runs, bool) or not isinstance(self.profile_runs, int) or self.profile_runs < 0:
            raise ConfigError(f"profile_runs must be a whole number >= 0, got {self.profile_runs!r}",
                              hint="e.g. --profile --profile-runs 20")  # fmt: skip
        if self.runs < 1 or self.warmup_runs < 0:
            raise ConfigError(
                f"runs must be >= 1 and warmup >= 0, got runs={self.runs} warmup={self.warmup_runs}",
                hint="give --runs 1 or more and --warmup 0 or more",
            )
        for name in ("warmup_s", "duration_s"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}",
                                  hint="give a number of seconds above 0, or leave it out")  # fmt: skip
        for ep in EPS.values():
            given = [name for name in ep.own_options if EP_OPTIONS[name].given(getattr(self, name))]
            if given and ep.name not in self.eps:
                raise ConfigError(f"{ep.name} options ({', '.join(given)}) were given but {ep.name} is not among "
                                  "the EPs", hint=f"add --ep {ep.name}, or drop those options")  # fmt: skip
        if self.cuda_graph and not self.io_binding:
            raise ConfigError("--cuda-graph needs --io-binding: a CUDA graph replays fixed device buffers",
                              hint="add --io-binding")  # fmt: skip

    def session_spec(self, ep: str, *, allow_spinning: bool | None = None) -> SessionSpec:
        """The session options for ``ep``; an EP's own options (TensorRT's) go only to that EP."""
        own = {name: getattr(self, name) for name in EPS[normalize_ep(ep)].own_options}
        return SessionSpec(ep=ep, threads=self.threads, allow_spinning=allow_spinning,
                           graph_optimization_level=self.graph_optimization_level, device_id=self.device_id,
                           allow_fallback=self.allow_fallback, **own)  # fmt: skip


@dataclass
class _Prepared:
    model: BenchModel
    runner: RunnerSession
    call: PlainRun | BoundRun
    batch: int
    first_run_s: float
    peak_rss_bytes: int | None
    process_peak_rss_bytes: int | None
    gpu_mem_bytes: int | None
    option_reasons: dict[str, str] = field(default_factory=dict)  # ORT option name -> why onnxq chose it
    log_warnings: list[str] = field(default_factory=list)  # ORT/cuDNN log lines of the first runs that matter
    feeds: dict[str, np.ndarray] = field(default_factory=dict)  # what every run is fed (the profile runs too)


def bench_models(
    models: Sequence[str | os.PathLike],
    config: BenchConfig | None = None,
    *,
    on_run: Callable[[int, int], None] | None = None,
    on_outputs: OnOutputs | None = None,
    model_options: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Measure every model on every EP and batch; return one entry dict per (model, EP, batch).

    ``on_run(model_index, round)`` is called before each timed run (outside the timed window);
    ``on_outputs(ep, batch, model_index, outputs)`` after a group's timed rounds, with each model's outputs
    read back from its last run (fidelity from the measured sessions themselves). ``model_options`` gives
    each model EP options of its own (SessionSpec fields, e.g. ``{"cuda_nhwc": True}``) over the config's,
    so that one model can be measured under several option sets, interleaved.
    A model whose graph fixes batch 1 is measured at another --batch through a checked copy with a symbolic
    batch axis (:mod:`onnxq.rebatch`), written to a temporary folder that is removed at the end.
    """
    config = config or BenchConfig()
    for ep in config.eps:
        check_available(ep)  # before loading anything: a missing EP is the likeliest mistake
    loaded = [load_bench_model(path) for path in models]
    disambiguate_names(loaded)
    own = [dict(o) for o in model_options] if model_options is not None else [{} for _ in loaded]
    if len(own) != len(loaded):
        raise ConfigError(f"{len(own)} option sets for {len(loaded)} models", hint="give one per model")
    _prime_runtime()
    entries: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="onnxq-bench-") as work:
        for ep in config.eps:
            spec = config.session_spec(ep, allow_spinning=False if spinning_hurts(len(loaded), config) else None)
            for batch in config.batches:
                group_models = [for_batch(m, batch, config, Path(work)) for m in loaded]
                specs = [_with_options(spec, o) for o in own]
                group = _bench_group(group_models, specs, batch, config, on_run, on_outputs, Path(work))
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


# --- one (EP, batch) group ---------------------------------------------------------------------


def spinning_hurts(n_models: int, config: BenchConfig) -> bool:
    """Whether intra-op spinning must be off: several interleaved models with thread pools.

    After a run, ORT's pool threads busy-wait for the next one; interleaved, one session's spinning
    threads steal the cores the other session is running on. Measured on 2 cores, squeezenet's p50
    went from 1.8 ms alone to 3.4 ms interleaved with spinning, and from 2.1 to 2.4 ms without. One
    thread per session (--threads 1) has no pool, so ORT's default stays.
    """
    return n_models > 1 and config.threads != 1


def _with_options(spec: SessionSpec, options: Mapping[str, Any]) -> SessionSpec:
    """``spec`` with a model's own EP options; ConfigError for a key that is no EP option of ``spec.ep``."""
    unknown = sorted(set(options) - set(EPS[spec.ep].own_options))
    if unknown:
        raise ConfigError(f"{unknown} are not options of the {spec.ep} EP",
                          hint=f"its options are {', '.join(EPS[spec.ep].own_options) or 'none'}")  # fmt: skip
    return dataclasses.replace(spec, **options)


def _bench_group(
    models: list[BenchModel],
    specs: list[SessionSpec],
    batch: int | None,
    config: BenchConfig,
    on_run: Callable[[int, int], None] | None,
    on_outputs: OnOutputs | None = None,
    work: Path | None = None,
) -> list[dict[str, Any]]:
    prepared = [_prepare(m, spec, batch, config, work) for m, spec in zip(models, specs, strict=True)]
    timings = measure_interleaved(
        [p.call for p in prepared],
        rounds=None if config.duration_s else config.runs,
        duration_s=config.duration_s,
        on_run=on_run,
    )
    entries = [_entry(p, t, config) for p, t in zip(prepared, timings, strict=True)]
    if config.profile_runs:
        for p, entry in zip(prepared, entries, strict=True):
            entry["profile"] = _profile(p, entry, config)
    if on_outputs is not None:
        for i, p in enumerate(prepared):
            on_outputs(p.runner.spec.ep, p.batch, i, p.call.outputs())
    del prepared  # release the sessions before the next group builds its own
    return entries


def _prepare(model: BenchModel, spec: SessionSpec, batch: int | None, config: BenchConfig,
             work: Path | None = None) -> _Prepared:  # fmt: skip
    from onnxq.report.environment import current_rss_bytes, gpu_memory_used_bytes, peak_rss_bytes, reset_peak_rss

    feeds, size = make_feeds(model, batch, config)
    spec, reasons = choose_cuda_options(spec, model.proto, io_binding=config.io_binding)
    on_gpu = EPS[spec.ep].gpu
    gpu_before = gpu_memory_used_bytes(spec.device_id) if on_gpu else None
    rss_before = current_rss_bytes()
    peak_reset = reset_peak_rss()
    runner, reasons = _session(model, spec, reasons, feeds, size, work)
    with captured_native_output() if on_gpu else nullcontext(SortedLog()) as native:  # cuDNN logs as it plans
        call = make_call(runner, feeds, config.io_binding)
        start = time.perf_counter()
        call()
        first_run_s = time.perf_counter() - start
        # a CUDA graph is captured on the third run: let the warm-up capture it, and replay it once
        warm_up(call, max(config.warmup_runs, CUDA_GRAPH_RUNS_BEFORE_REPLAY - 1) if runner.spec.cuda_graph
                else config.warmup_runs, config.warmup_s)  # fmt: skip
    peak = peak_rss_bytes() if peak_reset else None
    gpu_after = gpu_memory_used_bytes(spec.device_id) if on_gpu else None
    return _Prepared(
        model,
        runner,
        call,
        size,
        first_run_s,
        None if peak is None or rss_before is None else max(0, peak - rss_before),
        peak,
        None if gpu_after is None or gpu_before is None else max(0, gpu_after - gpu_before),
        reasons,
        native.warnings,
        feeds,
    )


def _session(model: BenchModel, spec: SessionSpec, reasons: dict[str, str], feeds: dict[str, np.ndarray],
             batch: int, work: Path | None = None) -> tuple[RunnerSession, dict[str, str]]:  # fmt: skip
    """The session for ``spec``. A CUDA graph that onnxq chose and ORT refused is tried on a static-shape copy
    where the model computes shapes at run time (:func:`_static_graph_session`), then dropped as
    :func:`~onnxq.runtime.auto_options.after_graph_refused` says; the reasons say why."""
    chosen = spec.cuda_graph and "enable_cuda_graph" in reasons
    if chosen and STATIC_COPY_FIRST in reasons["enable_cuda_graph"]:
        why = "its output shapes are known only on a static-shape copy"
    else:
        try:
            return create_session(model.path, spec, probe_feeds=feeds), reasons
        except CudaGraphRefused as exc:
            if not chosen:  # the user asked for it: their error
                raise
            why = f"ORT refused it: {exc.message.split(': ', 1)[-1]}"
    if work is not None and shape_nodes(model.proto):
        made, why = _static_graph_session(model, spec, reasons, feeds, work, why)
        if made is not None:
            return made
    candidates = after_graph_refused(spec, reasons, batch, why)
    for candidate, candidate_reasons in candidates[:-1]:
        try:
            return create_session(model.path, candidate, probe_feeds=feeds), candidate_reasons
        except CudaGraphRefused:
            continue
    last, last_reasons = candidates[-1]
    return create_session(model.path, last, probe_feeds=feeds), last_reasons


def _static_graph_session(model: BenchModel, spec: SessionSpec, reasons: dict[str, str],
                          feeds: dict[str, np.ndarray], work: Path, why: str
                          ) -> tuple[tuple[RunnerSession, dict[str, str]] | None, str]:  # fmt: skip
    """The CUDA graph on a copy of ``model`` with the feeds' shapes fixed and its shape arithmetic folded
    (:mod:`onnxq.runtime.static_shapes`), checked first against the model on the same EP without a graph;
    (None, why it was not) when the copy cannot be made, differs, or is refused too."""
    from onnxq.model import save_model

    try:
        copy = static_copy(model.proto, {k: tuple(np.shape(v)) for k, v in feeds.items()})
    except ValueError as exc:
        return None, f"{why}; no static-shape copy: {exc}"
    path = save_model(copy.model, work / f"{len(list(work.iterdir()))}-static-{model.path.name}")
    plain = dataclasses.replace(spec, cuda_graph=False)
    reference = create_session(model.path, plain, probe_feeds=feeds).session.run(None, feeds)
    differs = outputs_agree(reference, create_session(path, plain, probe_feeds=feeds).session.run(None, feeds))
    if differs:
        return None, f"{why}; its static-shape copy was not used: {differs}"
    try:
        runner = create_session(path, spec, probe_feeds=feeds)
    except CudaGraphRefused as exc:
        return None, f"{why}, and on {copy.note()} too: {exc.message.split(': ', 1)[-1]}"
    return (runner, {**reasons, "enable_cuda_graph": f"auto: on, measured on {copy.note()}, checked against "
                     f"the model on {spec.ep} without a graph ({why} on the model as given)"}), why  # fmt: skip


def _profile(p: _Prepared, entry: dict[str, Any], config: BenchConfig) -> dict[str, Any]:
    """The profile of one measured model: its own profiled session, after the timed rounds (a CUDA graph is
    replayed on fixed buffers, which the profiled runs do not bind, so it is left off there)."""
    from onnxq.measure.profile import keep_trace, summarize_profile
    from onnxq.runtime.session import profiled_runs

    spec = dataclasses.replace(p.runner.spec, cuda_graph=None)
    with tempfile.TemporaryDirectory(prefix="onnxq-profile-") as folder:
        events, trace = profiled_runs(p.model.path, spec, p.feeds, config.profile_runs + 1, folder)
        summary = summarize_profile(events, config.profile_runs)
        name = f"{entry['model']}.{entry['ep']}.batch{entry['batch']}.json"
        summary["file"] = keep_trace(trace, Path(config.profile_dir) if config.profile_dir else None, name)
    return summary


# --- statistics and entries --------------------------------------------------------------------


def samples_ms(latencies_s: Sequence[float]) -> list[float]:
    """The timed runs' latencies in ms (10 ns resolution), in run order; past MAX_SAMPLES runs, every k-th run
    (k the smallest stride that keeps at most MAX_SAMPLES), so they stay individual runs spread over the time."""
    stride = -(-len(latencies_s) // MAX_SAMPLES) or 1
    return [round(float(v) * 1e3, 5) for v in list(latencies_s)[::stride]]


def _entry(p: _Prepared, t: Timings, config: BenchConfig) -> dict[str, Any]:
    spec = p.runner.spec
    lat = latency_stats_ms(t.latencies_s)
    cv = lat["std"] / lat["mean"] if lat["mean"] > 0 else 0.0
    runs = len(t.latencies_s)
    warnings = [*([p.model.note] if p.model.note else []), *p.runner.warnings, *p.log_warnings,
                *measurement_warnings(cv, runs, config.cv_threshold)]  # fmt: skip
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
        "model_path": str(p.model.shown_path or p.model.path),
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
        "process_peak_rss_bytes": p.process_peak_rss_bytes,
        "gpu_mem_bytes": p.gpu_mem_bytes,
        "io_binding": config.io_binding,
        "threads": config.threads,
        "speedup_vs_first": None,
        "ep_options": spec.ep_options(),
        "ep_option_reasons": dict(p.option_reasons),
        "warnings": warnings,
        "samples_ms": samples_ms(t.latencies_s),
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
