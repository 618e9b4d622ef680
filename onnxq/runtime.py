"""ONNX Runtime sessions for one execution provider (cpu, cuda, tensorrt), and proof of where nodes ran.

``create_session(model, SessionSpec(ep="cuda"))`` checks that the EP is installed, builds its provider
options, creates the session with ORT's own silent fallbacks switched off, and then reads back which EP
received each node. ORT's record comes from ``InferenceSession.get_provider_graph_assignment_info`` (with
the session option ``session.record_ep_graph_assignment_info``) where this ORT has it, else from a profiled
probe run (the ``provider`` field of the trace's node events; the trace file is deleted).

What counts as fallback (the policy, applied by :func:`assess_placement`):

* The requested EP missing from ``session.get_providers()`` (ORT dropped it, e.g. a library failed to load)
  or receiving no node at all is a *total* fallback: always a :class:`ProviderError` naming the missing
  library when ORT said which, unless ``allow_fallback`` is set, where it becomes a warning.
* ORT puts shape computations on the CPU on purpose even under CUDA/TensorRT (``Shape``/``Size`` and the
  small integer tensors computed from them feed Reshape and friends on the host). Such *shape nodes* are
  counted in ``ep_nodes`` but are never fallback. A node is a shape node when its op is ``Shape`` or
  ``Size`` or all its outputs are integer or bool tensors (from ONNX shape inference, or the profiler's
  types); nodes whose types are unknown fall back to a list of shape-like ops.
* A *constant node* reads initializers alone, directly or through other constant nodes (for example
  the DequantizeLinear of an int32 bias, for which the CUDA EP has no kernel). On another EP it costs a
  small host step and a copy each run, not the model's compute: it is reported as a warning, not fallback.
* Any other node on another EP is *compute* fallback. It raises ProviderError (a timing for "cuda" that
  includes CPU compute and host/device copies measures something else) unless ``allow_fallback`` is set,
  in which case the real split ("212 nodes on TensorrtExecutionProvider, 3 on CPUExecutionProvider") is
  returned as a warning. TensorRT sessions list CUDA after TensorRT, as ORT recommends, so nodes TensorRT
  rejects run on CUDA, and they count as fallback from TensorRT.

Importing this module imports neither onnxruntime nor any GPU package; that happens in the functions.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxq.errors import ConfigError, ProviderError

EP_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
INSTALL_HINTS = {
    "cpu": "reinstall onnxruntime: pip install --force-reinstall onnxruntime",
    "cuda": "pip install 'onnxq[gpu]' (installs onnxruntime-gpu; uninstall the CPU-only onnxruntime first), "
    "with the CUDA and cuDNN 9 runtime libraries of that build on the library path or installed as nvidia-* "
    "pip packages (pip install 'onnxruntime-gpu[cuda,cudnn]')",
    "tensorrt": "pip install 'onnxq[gpu]' and install TensorRT so that libnvinfer (e.g. libnvinfer.so.10) "
    "is on LD_LIBRARY_PATH (pip install tensorrt, or NVIDIA's libnvinfer packages)",
}
OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
# Ops whose CPU placement under a GPU EP is shape computation when ORT gives us no output types.
SHAPE_LIKE_OPS = frozenset(
    {
        "Shape",
        "Size",
        "Gather",
        "Unsqueeze",
        "Squeeze",
        "Concat",
        "Slice",
        "Cast",
        "ConstantOfShape",
        "Range",
        "Constant",
        "Equal",
        "Where",
        "ReduceProd",
    }
)
MEMCPY_OPS = frozenset({"MemcpyToHost", "MemcpyFromHost"})
_INT_TYPES = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"})
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
    allow_fallback: bool = False
    allow_spinning: bool | None = None  # intra-op threads busy-wait for work between runs (ORT default: yes)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ep", normalize_ep(self.ep))
        for name in ("threads", "inter_op_threads", "trt_workspace_bytes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
        if self.graph_optimization_level not in OPT_LEVELS:
            raise ConfigError(
                f"unknown graph optimization level {self.graph_optimization_level!r}",
                hint=f"use one of {', '.join(OPT_LEVELS)}",
            )
        if not isinstance(self.device_id, int) or self.device_id < 0:
            raise ConfigError(f"device_id must be a non-negative integer, got {self.device_id!r}")
        trt_only = self.trt_fp16 or self.trt_int8 or self.trt_engine_cache_dir or self.trt_workspace_bytes
        if trt_only and self.ep != "tensorrt":
            raise ConfigError(
                f"TensorRT options were given for the {self.ep!r} EP",
                hint="use them with --ep tensorrt, or drop them",
            )


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


def normalize_ep(name: str) -> str:
    """``cpu``/``cuda``/``tensorrt`` (or their ORT provider names, any case) -> the short name."""
    key = str(name).strip().lower()
    for short, provider in EP_PROVIDERS.items():
        if key in (short, provider.lower()):
            return short
    raise ProviderError(
        f"unknown execution provider {name!r}; onnxq knows {', '.join(EP_PROVIDERS)} "
        f"(this onnxruntime has {', '.join(_available_providers())})",
        hint="pass --ep cpu, --ep cuda or --ep tensorrt",
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
    cpu = ("CPUExecutionProvider", {})
    cuda = ("CUDAExecutionProvider", {"device_id": str(spec.device_id)})
    if spec.ep == "cpu":
        return [cpu]
    if spec.ep == "cuda":
        return [cuda, cpu]
    return [("TensorrtExecutionProvider", tensorrt_options(spec)), cuda, cpu]


def tensorrt_options(spec: SessionSpec) -> dict[str, str]:
    """TensorRT provider options; ORT's Python binding wants booleans spelled "True"/"False"."""
    opts = {
        "device_id": str(spec.device_id),
        "trt_fp16_enable": str(spec.trt_fp16),
        "trt_int8_enable": str(spec.trt_int8),
    }
    if spec.trt_engine_cache_dir:
        opts["trt_engine_cache_enable"] = "True"
        opts["trt_engine_cache_path"] = str(Path(spec.trt_engine_cache_dir))
    if spec.trt_workspace_bytes:
        opts["trt_max_workspace_size"] = str(spec.trt_workspace_bytes)
    return opts


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
        placed = _placement_from_assignment(session, source)
        origin = "assignment-info"
    else:
        placed = _placement_from_profile(source, spec, probe_feeds)
        origin = "profiler"
    warnings = assess_placement(spec, placed, kept, log)
    ep_nodes = Counter(p.ep for p in placed if p.op_type not in MEMCPY_OPS)
    fallback = Counter(f"{p.ep}:{p.op_type}" for p in _compute_fallback(spec, placed))
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
    )


def has_assignment_record(session: Any) -> bool:
    """Whether this ORT records which EP got each node (get_provider_graph_assignment_info)."""
    return hasattr(session, "get_provider_graph_assignment_info")


def _new_session(source: str | bytes, spec: SessionSpec, so: Any) -> tuple[Any, str]:
    """Create the session with ORT's Python-level fallback off; GPU EPs get their native log captured."""
    if spec.ep == "cpu":
        return _create(source, so, spec, provider_list(spec)), ""
    _preload_gpu_libraries()
    captured = _Captured()
    try:
        with _captured_stderr() as captured:
            session = _create(source, so, spec, provider_list(spec))
        return session, captured.text
    except ProviderError as exc:
        lib = missing_library(exc.message + "\n" + captured.text)
        if spec.ep != "tensorrt" or not spec.allow_fallback or lib is None:
            raise ProviderError(
                f"onnxruntime could not create a {spec.ep} session: {lib} could not be loaded"
                if lib
                else exc.message,
                hint=INSTALL_HINTS[spec.ep] if lib else exc.hint,
            ) from exc
    # TensorRT failed to load and fallback is allowed: do what ORT's TensorRT EP would, run on CUDA, and let
    # the placement check report the split (the log names the library, so the warning does too).
    with _captured_stderr() as retry:
        session = _create(source, so, spec, provider_list(spec)[1:])
    return session, captured.text + retry.text


def _create(source: str | bytes, so: Any, spec: SessionSpec, providers: list) -> Any:
    """An InferenceSession with ORT's Python-level fallback off (no silent re-creation on CPU if a run fails)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(source, so, providers=providers, enable_fallback=0)
    except Exception as exc:  # ORT raises bare RuntimeErrors (Fail, InvalidGraph, EPFail, ...)
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise ProviderError(
            f"onnxruntime could not create a {spec.ep} session: {first}",
            hint="check the model with `onnxq inspect`; --debug shows ORT's error",
        ) from exc
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
        preload()
    except Exception:  # noqa: BLE001 - best effort; create_session reports what failed to load
        pass


@dataclass
class _Captured:
    text: str = ""


@contextmanager
def _captured_stderr() -> Iterator[_Captured]:
    """Capture what native code writes to fd 2 (ORT's log), then write it back out unchanged."""
    import sys

    sys.stderr.flush()
    result = _Captured()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield result
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            result.text = tmp.read().decode("utf-8", "replace")
            if result.text:
                sys.stderr.write(result.text)
                sys.stderr.flush()


def missing_library(log: str) -> str | None:
    """The shared library ORT failed to load, as named in its log or error text, or None."""
    m = re.search(r"(lib[\w.+-]+?\.so(?:\.\d+)*): cannot open shared object file", log)
    if m:
        return m.group(1)
    m = re.search(r"Failed to load library (\S+?)(?: with error|[,:\s]|$)", log)
    if m:
        return m.group(1)
    m = re.search(r"\b(libnvinfer\S*|libcudnn\S*|libcublas\S*|libcudart\S*)", log)
    return m.group(1).rstrip(".,:;") if m else None


@dataclass(frozen=True)
class PlacedNode:
    """One node as ORT placed it; ``is_shape`` and ``is_constant`` per the module docstring's definitions."""

    ep: str
    op_type: str
    is_shape: bool
    is_constant: bool = False


def _placement_from_assignment(session: Any, source: str | bytes) -> list[PlacedNode]:
    subgraphs = session.get_provider_graph_assignment_info()
    nodes = [(sg.ep_name, n.name, n.op_type) for sg in subgraphs for n in sg.get_nodes()]
    needs_types = any(ep == "CPUExecutionProvider" for ep, _, _ in nodes) and any(
        ep != "CPUExecutionProvider" for ep, _, _ in nodes
    )
    types = _output_types_by_node(source) if needs_types else {}
    constant = constant_node_names(source) if needs_types else set()
    return [
        PlacedNode(ep, op, _is_shape_node(op, types.get(name) if name else None), bool(name) and name in constant)
        for ep, name, op in nodes
    ]


def _load_graph_only(source: str | bytes) -> Any:
    import onnx

    if isinstance(source, bytes):
        return onnx.load_model_from_string(source)
    return onnx.load(source, load_external_data=False)


# ops whose output differs run to run although they read no graph input
_NONDETERMINISTIC_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)


def constant_node_names(source: str | bytes) -> set[str]:
    """Names of the main graph's nodes computed from initializers alone (no graph input upstream).

    Initializers that are also graph inputs can be overridden at run time, so they do not count as constant.
    A model that cannot be read gives the empty set (every node then counts as compute).
    """
    try:
        graph = _load_graph_only(source).graph
    except Exception:  # a refinement only; the session already loaded the model
        return set()
    known = {t.name for t in graph.initializer} - {i.name for i in graph.input}
    known.add("")  # an omitted optional input
    names = set()
    for node in graph.node:  # topologically sorted in a valid model
        if node.op_type not in _NONDETERMINISTIC_OPS and all(i in known for i in node.input):
            known.update(node.output)
            if node.name:
                names.add(node.name)
    return names


def _output_types_by_node(source: str | bytes) -> dict[str, list[str]]:
    """Node name -> numpy dtype names of its outputs, from ONNX shape inference ('' where unknown)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(_load_graph_only(source))
    except Exception:  # types are a refinement; without them the op list decides
        return {}
    elem = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
    }
    out: dict[str, list[str]] = {}
    for node in inferred.graph.node:
        if node.name:
            out[node.name] = [_dtype_name(elem.get(o, 0)) for o in node.output if o]
    return out


def _dtype_name(elem_type: int) -> str:
    import onnx

    if not elem_type:
        return ""
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, ValueError, TypeError):
        return ""


def _is_shape_node(op_type: str, output_types: list[str] | None) -> bool:
    if op_type in ("Shape", "Size"):
        return True
    if output_types and all(output_types):
        return all(t in _INT_TYPES for t in output_types)
    return op_type in SHAPE_LIKE_OPS


def _placement_from_profile(
    source: str | bytes, spec: SessionSpec, feeds: dict[str, Any] | None
) -> list[PlacedNode]:
    """Run once with ORT's profiler on a separate session; read each node event's provider and types."""
    so = session_options(spec, record_assignment=False)
    so.enable_profiling = True
    folder = tempfile.mkdtemp(prefix="onnxq-profile-")
    so.profile_file_prefix = os.path.join(folder, "probe")
    session, _ = _new_session(source, spec, so)
    trace = None
    try:
        session.run(None, feeds if feeds is not None else _probe_feeds(source))
        trace = session.end_profiling()
        events = json.loads(Path(trace).read_text())
    finally:
        for f in Path(folder).iterdir():
            f.unlink()
        os.rmdir(folder)
    return parse_profile_events(events, constant_node_names(source))


def parse_profile_events(
    events: list[dict[str, Any]], constant: set[str] | frozenset = frozenset()
) -> list[PlacedNode]:
    """PlacedNodes from an ORT profiler trace (its node ``*_kernel_time`` events, one per node run).

    ``constant`` names the nodes computed from initializers alone (:func:`constant_node_names`).
    """
    placed = []
    for ev in events:
        args = ev.get("args") or {}
        if (
            ev.get("cat") != "Node"
            or not str(ev.get("name", "")).endswith("_kernel_time")
            or "provider" not in args
        ):
            continue
        types = [next(iter(t), "") for t in args.get("output_type_shape", []) if isinstance(t, dict)]
        op = args.get("op_name", "")
        name = str(ev["name"])[: -len("_kernel_time")]
        placed.append(PlacedNode(args["provider"], op, _is_shape_node(op, types or None), name in constant))
    return placed


def _probe_feeds(source: str | bytes) -> dict[str, Any]:
    import onnx

    from onnxq.data import input_specs, random_feeds

    model = (
        onnx.load_model_from_string(source)
        if isinstance(source, bytes)
        else onnx.load(source, load_external_data=False)
    )
    return random_feeds(input_specs(model))


def _compute_fallback(spec: SessionSpec, placed: list[PlacedNode]) -> list[PlacedNode]:
    want = EP_PROVIDERS[spec.ep]
    return [
        p for p in placed if p.ep != want and p.op_type not in MEMCPY_OPS and not p.is_shape and not p.is_constant
    ]


def _constant_off_ep_warning(spec: SessionSpec, placed: list[PlacedNode]) -> list[str]:
    want = EP_PROVIDERS[spec.ep]
    off = [p for p in placed if p.ep != want and p.is_constant and not p.is_shape and p.op_type not in MEMCPY_OPS]
    if not off:
        return []
    ops = ", ".join(f"{op} x{n}" for op, n in sorted(Counter(f"{p.op_type} on {p.ep}" for p in off).items()))
    return [
        f"{len(off)} constant-input node(s) ran off {want} ({ops}): they read only initializers (for example "
        "an int32 bias DequantizeLinear, which the CUDA EP has no kernel for), so ORT recomputes them on the "
        "host each run and copies the result over; the latency includes that"
    ]


def assess_placement(
    spec: SessionSpec, placed: list[PlacedNode], kept_providers: list[str], log: str = ""
) -> list[str]:
    """Apply the fallback policy of the module docstring: raise ProviderError, or return warnings."""
    want = EP_PROVIDERS[spec.ep]
    split = describe_split(Counter(p.ep for p in placed if p.op_type not in MEMCPY_OPS))
    on_ep = sum(p.ep == want for p in placed)
    if want not in kept_providers or on_ep == 0:
        lib = missing_library(log)
        why = (
            f"ORT dropped {want}" + (f" because {lib} could not be loaded" if lib else "")
            if want not in kept_providers
            else f"{want} received no node"
        )
        msg = f"{why}; the nodes ran as: {split or 'no nodes'}"
        if not spec.allow_fallback:
            raise ProviderError(
                f"the {spec.ep} EP did not run this model: {msg}",
                hint=INSTALL_HINTS[spec.ep]
                if lib or want not in kept_providers
                else "this EP supports none of the model's ops; use --allow-fallback to measure anyway",
            )
        return [f"fallback: {msg}"]
    fallback = _compute_fallback(spec, placed)
    constant_note = _constant_off_ep_warning(spec, placed)
    if not fallback:
        return constant_note
    ops = ", ".join(
        f"{op} x{n}" for op, n in sorted(Counter(f"{p.op_type} on {p.ep}" for p in fallback).items())
    )
    msg = f"{len(fallback)} compute node(s) did not run on {want} ({ops}); split: {split}"
    if not spec.allow_fallback:
        raise ProviderError(
            f"partial fallback on the {spec.ep} EP: {msg}",
            hint="measure the mixed placement with --allow-fallback, or replace those ops",
        )
    return [f"fallback: {msg}", *constant_note]


def describe_split(counts: Counter | dict[str, int]) -> str:
    """'212 nodes on TensorrtExecutionProvider, 3 on CPUExecutionProvider' (largest first)."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    parts = [f"{n} {'nodes ' if i == 0 else ''}on {ep}" for i, (ep, n) in enumerate(items)]
    return ", ".join(parts)
