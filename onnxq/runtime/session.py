"""ONNX Runtime sessions for one execution provider (cpu, cuda, tensorrt), and proof of where nodes ran.

``create_session(model, SessionSpec(ep="cuda"))`` checks that the EP is installed, builds its provider
options, creates the session with ORT's own silent fallbacks switched off, and then reads back which EP
received each node. ORT's record comes from ``InferenceSession.get_provider_graph_assignment_info`` (with
the session option ``session.record_ep_graph_assignment_info``) where this ORT has it, else from a profiled
probe run (the ``provider`` field of the trace's node events; the trace file is deleted).

Which placements are accepted is :mod:`onnxq.runtime.placement`'s policy (shape and constant nodes on the
CPU are not fallback; compute nodes are, unless ``allow_fallback``).

A GPU session is created with ORT's native log (and cuDNN's) captured and sorted by :mod:`onnxq.runtime.ort_log`:
noise is dropped, a library that would not load is named by the placement check, anything else that ORT
warns about becomes one of the session's warnings. A CUDA graph that ORT refuses (a node off CUDA) raises
:class:`~onnxq.errors.CudaGraphRefused`.

Importing this module imports neither onnxruntime nor any GPU package; that happens in the functions.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxq.errors import ConfigError, CudaGraphRefused, ProviderError
from onnxq.runtime.eps import (
    CUDA_CONV_ALGO_SEARCH,
    EP_NAMES,
    EP_OPTIONS,
    EP_PROVIDERS,
    EPS,
    INSTALL_HINTS,
    provider_chain,
)
from onnxq.runtime.ort_log import SortedLog, captured_native_output
from onnxq.runtime.placement import (
    MEMCPY_OPS,
    PlacedNode,
    assess_placement,
    compute_fallback,
    constant_node_names,
    missing_library,
    parse_profile_events,
    placement_from_assignment,
)

OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
RECORD_ASSIGNMENT_KEY = "session.record_ep_graph_assignment_info"
SPINNING_KEY = "session.intra_op.allow_spinning"


@dataclass(frozen=True)
class SessionSpec:
    """How to build a session. ``None`` means ORT's default (threads: one per physical core)."""

    ep: str = "cpu"
    threads: int | None = None  # intra-op threads
    inter_op_threads: int | None = None
    graph_optimization_level: str = "all"
    device_id: int = 0
    trt_fp16: bool = False
    trt_int8: bool = False
    trt_engine_cache_dir: str | None = None
    trt_workspace_bytes: int | None = None
    cuda_nhwc: bool | None = None  # prefer_nhwc; None: ORT's default (off)
    cuda_graph: bool | None = None  # enable_cuda_graph (needs IO binding with fixed buffers); None: off
    cuda_conv_algo_search: str | None = None  # exhaustive | heuristic | default; None: ORT's (exhaustive)
    cuda_fuse_conv_bias: bool | None = None  # fuse_conv_bias; None: ORT's default (off)
    cuda_tf32: bool | None = None  # use_tf32; None: ORT's default (on)
    allow_fallback: bool = False
    allow_spinning: bool | None = None  # intra-op threads busy-wait for work between runs (ORT default: yes)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ep", normalize_ep(self.ep))
        if self.cuda_conv_algo_search is not None:
            algo = str(self.cuda_conv_algo_search).strip().lower()
            if algo not in CUDA_CONV_ALGO_SEARCH:
                raise ConfigError(f"unknown cuDNN convolution algorithm search {self.cuda_conv_algo_search!r}",
                                  hint=f"use one of {', '.join(CUDA_CONV_ALGO_SEARCH)}")  # fmt: skip
            object.__setattr__(self, "cuda_conv_algo_search", algo)
        for name in ("threads", "inter_op_threads", "trt_workspace_bytes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}",
                                  hint="give 1 or more, or leave it out for ORT's default")
        if self.graph_optimization_level not in OPT_LEVELS:
            raise ConfigError(
                f"unknown graph optimization level {self.graph_optimization_level!r}",
                hint=f"use one of {', '.join(OPT_LEVELS)}",
            )
        if not isinstance(self.device_id, int) or self.device_id < 0:
            raise ConfigError(f"device_id must be a non-negative integer, got {self.device_id!r}",
                              hint="give --device-id 0 for the first GPU (nvidia-smi lists them)")
        for ep in EPS.values():
            given = [name for name in ep.own_options if EP_OPTIONS[name].given(getattr(self, name))]
            if given and self.ep != ep.name:
                raise ConfigError(f"{ep.name} options ({', '.join(given)}) were given for the {self.ep!r} EP",
                                  hint=f"use them with --ep {ep.name}, or drop them")  # fmt: skip

    def ep_options(self) -> dict[str, str]:
        """The provider options ORT gets for the requested EP (ORT's names and string values)."""
        return dict(provider_chain(self)[0][1])


@dataclass
class RunnerSession:
    """An ORT session plus the record of where its nodes run."""

    session: Any  # onnxruntime.InferenceSession
    spec: SessionSpec
    providers: list[str]  # what ORT kept, in order
    ep_nodes: dict[str, int]  # provider name -> nodes assigned (Memcpy nodes left out)
    fallback_nodes: dict[str, int]  # "Provider:OpType" -> compute nodes off the requested EP
    memcpy_nodes: int
    assignment_source: str  # "assignment-info" or "profiler"
    create_s: float
    warnings: list[str] = field(default_factory=list)
    log_dropped: dict[str, int] = field(default_factory=dict)  # ORT log lines kept out of the output, by reason


def normalize_ep(name: str) -> str:
    """``cpu``/``cuda``/``tensorrt`` (or their ORT provider names, any case) -> the short name."""
    key = str(name).strip().lower()
    for short, provider in EP_PROVIDERS.items():
        if key in (short, provider.lower()):
            return short
    raise ProviderError(
        f"unknown execution provider {name!r}; onnxq knows {', '.join(EP_PROVIDERS)} "
        f"(this onnxruntime has {', '.join(_available_providers())})",
        hint=f"pass --ep with one of {', '.join(EP_NAMES)}",
    )


def _available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def check_available(ep: str, available: list[str] | None = None) -> None:
    """Raise ProviderError unless ``ep``'s provider is in ``available`` (default: this onnxruntime's)."""
    ep = normalize_ep(ep)
    available = _available_providers() if available is None else list(available)
    if EP_PROVIDERS[ep] not in available:
        raise ProviderError(
            f"execution provider {ep!r} ({EP_PROVIDERS[ep]}) is not available in this onnxruntime; "
            f"available: {', '.join(available) or 'none'}",
            hint=INSTALL_HINTS[ep],
        )


def provider_list(spec: SessionSpec) -> list[tuple[str, dict[str, str]]]:
    """The (provider, options) list handed to ORT, highest priority first; option values are strings."""
    return provider_chain(spec)


def session_options(spec: SessionSpec, *, record_assignment: bool = True) -> Any:
    """ORT SessionOptions for ``spec``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, OPT_LEVELS[spec.graph_optimization_level]
    )
    if spec.threads:
        so.intra_op_num_threads = spec.threads
    if spec.inter_op_threads:
        so.inter_op_num_threads = spec.inter_op_threads
    if spec.allow_spinning is not None:
        so.add_session_config_entry(SPINNING_KEY, "1" if spec.allow_spinning else "0")
    if record_assignment:
        so.add_session_config_entry(RECORD_ASSIGNMENT_KEY, "1")
    if not EPS[spec.ep].gpu:  # ORT's load-time warnings (unused initializers...) and the log line of an error it
        so.log_severity_level = 4  # raises anyway would precede onnxq's own lines; a GPU EP's log is kept: the
        # placement check reads the libraries it names
    return so


def create_session(
    model: str | os.PathLike | bytes,
    spec: SessionSpec | None = None,
    *,
    probe_feeds: dict[str, Any] | None = None,
) -> RunnerSession:
    """Create an ORT session on ``spec.ep`` and check that the EP really received the nodes.

    ``model`` is a path (external data beside it is resolved by ORT) or serialized bytes. ``probe_feeds``
    are used only on an ORT without the assignment record, for the profiled probe run (random inputs
    otherwise). Raises ProviderError per the fallback policy in the module docstring.
    """
    spec = spec or SessionSpec()
    check_available(spec.ep)
    source = str(model) if isinstance(model, (str, os.PathLike)) else model
    start = time.perf_counter()
    session, log = _new_session(source, spec, session_options(spec))
    create_s = time.perf_counter() - start
    kept = list(session.get_providers())
    if has_assignment_record(session):
        placed = placement_from_assignment(session, source)
        origin = "assignment-info"
    else:
        placed = _placement_from_profile(source, spec, probe_feeds)
        origin = "profiler"
    warnings = [*assess_placement(spec, placed, kept, log.raw), *log.warnings, *_cpu_int8_warning(spec, source)]
    ep_nodes = Counter(p.ep for p in placed if p.op_type not in MEMCPY_OPS)
    fallback = Counter(f"{p.ep}:{p.op_type}" for p in compute_fallback(spec, placed))
    return RunnerSession(
        session,
        spec,
        kept,
        dict(ep_nodes),
        dict(fallback),
        sum(p.op_type in MEMCPY_OPS for p in placed),
        origin,
        create_s,
        warnings,
        dict(log.dropped),
    )


def _cpu_int8_warning(spec: SessionSpec, source: str | bytes) -> list[str]:
    """On the CPU EP of a machine whose kernels saturate uint8 x int8 products, the warning for a model that
    computes such products (:mod:`onnxq.runtime.cpu_int8`); a file is read once per version of it, however
    many sessions a benchmark opens on it."""
    from onnxq.runtime.cpu_int8 import u8s8_saturates

    if spec.ep != "cpu" or not u8s8_saturates():
        return []
    if isinstance(source, bytes):
        warning = _saturation_warning(source)
    else:
        stat = os.stat(source)
        warning = _file_saturation_warning(os.path.abspath(source), stat.st_mtime_ns, stat.st_size)
    return [warning] if warning else []


@functools.lru_cache(maxsize=32)
def _file_saturation_warning(path: str, mtime_ns: int, size: int) -> str | None:
    return _saturation_warning(path)


def _saturation_warning(source: str | bytes) -> str | None:
    import onnx

    from onnxq.runtime.cpu_int8 import saturation_warning

    try:
        if isinstance(source, bytes):
            model = onnx.load_from_string(source)
        else:
            model = onnx.load(source, load_external_data=False)
    except Exception as exc:  # ORT loaded it; onnx cannot parse it again, so say that the check did not run
        return f"the uint8 x int8 saturation check could not read the model ({type(exc).__name__})"
    return saturation_warning(model)


ORT_QUIET = 4  # ORT's log severity FATAL: nothing is printed by its logger, errors are still raised


def internal_session(model: Any, *, optimization: str = "all", threads: int | None = None,
                     providers: tuple[str, ...] = ("CPUExecutionProvider",),
                     initializers: dict[str, Any] | None = None) -> Any:  # fmt: skip
    """A plain session for onnxq's own runs (calibration, checks inside passes), with ORT's load-time warnings
    silenced: ``model`` is a ModelProto, serialized bytes or a path. ORT's exceptions pass through, for the
    caller to say what it was loading. Sessions that are measured or evaluated come from :func:`create_session`.
    ``initializers``: numpy arrays for initializers the model declares without data (ORT reads them from
    memory, not copied: the caller keeps them alive while the session lives).
    """
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[optimization])
    # Warnings on graphs mid-rewrite (unused initializers, ...) are noise here, and ORT's error lines would
    # come before onnxq's own error line on stderr: every failure is raised, with the same text, anyway.
    so.log_severity_level = ORT_QUIET
    if threads:
        so.intra_op_num_threads = threads
    if initializers:
        so.add_external_initializers(list(initializers),
                                     [ort.OrtValue.ortvalue_from_numpy(v) for v in initializers.values()])
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(source, so, providers=list(providers))


# element types that ORT's Python API passes as numpy arrays; bfloat16, float8, int4, int2 and float4 it cannot
# (it refuses them, or hands float8e4m3fn back as raw uint8 bytes), and complex has no CPU kernel
NUMPY_IO_TYPES = ("FLOAT", "DOUBLE", "FLOAT16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                  "UINT64", "BOOL", "STRING")  # fmt: skip


def check_numpy_io(model: Any, where: Any) -> None:
    """Raise UnsupportedModelError when a tensor input or output of ``model`` has an element type that ORT's
    Python API cannot pass as a numpy array, before any data is read or any session made."""
    import onnx

    from onnxq.errors import UnsupportedModelError

    inits = {t.name for t in model.graph.initializer}
    ok = {getattr(onnx.TensorProto, name) for name in NUMPY_IO_TYPES}
    values = [("input", vi) for vi in model.graph.input if vi.name not in inits]
    for kind, vi in values + [("output", vi) for vi in model.graph.output]:
        elem = vi.type.tensor_type.elem_type if vi.type.WhichOneof("value") == "tensor_type" else None
        if elem and elem not in ok:
            if elem not in onnx.helper.get_all_tensor_dtypes():
                continue  # not a type at all: the data's and the session's checks name it
            dtype = onnx.helper.tensor_dtype_to_string(elem).removeprefix("TensorProto.").lower()
            raise UnsupportedModelError(
                f"{where}: {kind} {vi.name!r} holds {dtype}, which onnxruntime's Python API cannot pass as a numpy "
                "array",
                hint=f"onnxq runs models through that API: give the model a float32, float16 or integer {kind} "
                "(a Cast at the model's edge)",
            )


def has_assignment_record(session: Any) -> bool:
    """Whether this ORT records which EP got each node (get_provider_graph_assignment_info)."""
    return hasattr(session, "get_provider_graph_assignment_info")


def _new_session(source: str | bytes, spec: SessionSpec, so: Any) -> tuple[Any, SortedLog]:
    """Create the session with ORT's Python-level fallback off; GPU EPs get their native log captured and
    sorted (:mod:`onnxq.runtime.ort_log`)."""
    if not EPS[spec.ep].gpu:
        so.log_severity_level = ORT_QUIET  # a failure is raised with ORT's text; its log line would come first
        return _create(source, so, spec, provider_list(spec)), SortedLog()
    _preload_gpu_libraries()
    captured = SortedLog()
    try:
        with captured_native_output() as captured:
            session = _create(source, so, spec, provider_list(spec))
        return session, captured
    except ProviderError as exc:
        lib = missing_library(exc.message + "\n" + captured.raw)
        gpu_after = any(EPS[n].gpu for n in EPS[spec.ep].then)  # e.g. TensorRT -> CUDA
        if not gpu_after or not spec.allow_fallback or lib is None:
            if lib is None:
                raise
            raise ProviderError(f"onnxruntime could not create a {spec.ep} session: {lib} could not be loaded",
                                hint=INSTALL_HINTS[spec.ep]) from exc  # fmt: skip
    # TensorRT failed to load and fallback is allowed: do what ORT's TensorRT EP would, run on CUDA, and let
    # the placement check report the split (the log names the library, so the warning does too).
    with captured_native_output() as retry:
        session = _create(source, so, spec, provider_list(spec)[1:])
    retry.raw = captured.raw + retry.raw
    retry.warnings = [*captured.warnings, *retry.warnings]
    return session, retry


def _create(source: str | bytes, so: Any, spec: SessionSpec, providers: list) -> Any:
    """An InferenceSession with ORT's Python-level fallback off (no silent re-creation on CPU if a run fails)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(source, so, providers=providers, enable_fallback=0)
    except Exception as exc:  # ORT raises bare RuntimeErrors (Fail, InvalidGraph, EPFail, ...)
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        hint = "check the model with `onnxq inspect`; --debug shows ORT's error"
        if "Unsupported model IR version" in text:
            hint = (
                "this onnxruntime reads an older ONNX IR version than the file's: upgrade onnxruntime, or "
                "re-save the model with a lower ir_version (onnx >= 1.23 writes IR 14 by default)"
            )
        if "graph capture" in text:
            raise CudaGraphRefused(
                f"onnxruntime refused a CUDA graph for this model: {first}",
                hint="a CUDA graph needs every node on CUDAExecutionProvider (no host-side node, no Memcpy) and no "
                "If/Loop/Scan: drop --cuda-graph, or remove the host-side nodes (an INT8 QDQ model: quantize it "
                "with --target cuda, whose biases stay float)",
            ) from exc
        raise ProviderError(f"onnxruntime could not create a {spec.ep} session: {first}", hint=hint) from exc
    session.disable_fallback()
    return session


@functools.cache
def _preload_gpu_libraries() -> None:
    """Load CUDA/cuDNN from pip's nvidia-* packages once, as ORT recommends (``onnxruntime.preload_dlls``).

    Without it, an onnxruntime-gpu whose CUDA libraries came as pip packages (not on LD_LIBRARY_PATH)
    cannot load its CUDA EP. Failures here are not errors: the session's placement check reports an EP
    that did not load, naming the library. Cached: it runs once per process.
    """
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        with captured_native_output():  # its notices are ORT's log lines too
            preload()
    except Exception:  # noqa: BLE001 - best effort; create_session reports what failed to load
        pass


def _placement_from_profile(
    source: str | bytes, spec: SessionSpec, feeds: dict[str, Any] | None
) -> list[PlacedNode]:
    """Run once with ORT's profiler on a separate session; read each node event's provider and types."""
    with tempfile.TemporaryDirectory(prefix="onnxq-profile-") as folder:
        events, _ = profiled_runs(source, spec, feeds if feeds is not None else _probe_feeds(source), 1, folder)
    return parse_profile_events(events, constant_node_names(source))


def profiled_runs(
    source: str | bytes | os.PathLike, spec: SessionSpec, feeds: dict[str, Any], runs: int, folder: str | os.PathLike
) -> tuple[list[dict[str, Any]], Path]:
    """Run ``feeds`` ``runs`` times through a session of ``spec`` with ORT's profiler on (a session of its own, so
    the measured ones stay unprofiled); return the trace's events and the trace file, written in ``folder``."""
    so = session_options(spec, record_assignment=False)
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(folder, "onnxq-profile")
    session, _ = _new_session(str(source) if isinstance(source, os.PathLike) else source, spec, so)
    for _ in range(runs):
        session.run(None, feeds)
    trace = Path(session.end_profiling())
    return json.loads(trace.read_text()), trace


def _probe_feeds(source: str | bytes) -> dict[str, Any]:
    import onnx

    from onnxq.data import input_specs, random_feeds

    model = (
        onnx.load_model_from_string(source)
        if isinstance(source, bytes)
        else onnx.load(source, load_external_data=False)
    )
    return random_feeds(input_specs(model))
