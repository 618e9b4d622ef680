"""Where ONNX Runtime put each node, and whether that counts as fallback from the requested EP.

:mod:`onnxq.runtime.session` creates the sessions; this module reads ORT's record of the placement (the graph-assignment
info of ORT >= 1.31, or a profiler trace) into :class:`PlacedNode` values and applies the policy.

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

Importing this module imports neither onnxruntime nor onnx; that happens in the functions.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from onnxq.errors import ProviderError

if TYPE_CHECKING:
    from onnxq.runtime.session import SessionSpec

from onnxq.runtime.eps import EP_PROVIDERS, INSTALL_HINTS  # noqa: E402  (re-exported for the policy below)

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


def placement_from_assignment(session: Any, source: str | bytes) -> list[PlacedNode]:
    subgraphs = session.get_provider_graph_assignment_info()
    nodes = [(sg.ep_name, n.name, n.op_type) for sg in subgraphs for n in sg.get_nodes()]
    needs_types = any(ep == "CPUExecutionProvider" for ep, _, _ in nodes) and any(
        ep != "CPUExecutionProvider" for ep, _, _ in nodes
    )
    model = _read(source) if needs_types else None  # read once, for both refinements
    types = _output_types_by_node(model) if model is not None else {}
    constant = constant_node_names(model) if model is not None else set()
    return [
        PlacedNode(ep, op, _is_shape_node(op, types.get(name) if name else None), bool(name) and name in constant)
        for ep, name, op in nodes
    ]


def _read(source: Any) -> Any:
    """The model (weights stored outside it left there), or None when it cannot be read; a ModelProto is
    used as it is. What is read here only refines the placement record, so failing is not an error."""
    import onnx

    if isinstance(source, onnx.ModelProto):
        return source
    try:
        if isinstance(source, bytes):
            return onnx.load_model_from_string(source)
        return onnx.load(source, load_external_data=False)
    except Exception:  # the session already loaded the model; without this read the op lists decide
        return None


# ops whose output differs run to run although they read no graph input
_NONDETERMINISTIC_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)


def constant_node_names(source: Any) -> set[str]:
    """Names of the main graph's nodes computed from initializers alone (no graph input upstream).

    ``source`` is a path, serialized bytes or a ModelProto. Initializers that are also graph inputs can be
    overridden at run time, so they do not count as constant. A model that cannot be read gives the empty
    set (every node then counts as compute).
    """
    model = _read(source)
    if model is None:
        return set()
    graph = model.graph
    known = {t.name for t in graph.initializer} - {i.name for i in graph.input}
    known.add("")  # an omitted optional input
    names = set()
    for node in graph.node:  # topologically sorted in a valid model
        if node.op_type not in _NONDETERMINISTIC_OPS and all(i in known for i in node.input):
            known.update(node.output)
            if node.name:
                names.add(node.name)
    return names


def _output_types_by_node(source: Any) -> dict[str, list[str]]:
    """Node name -> numpy dtype names of its outputs, from ONNX shape inference ('' where unknown)."""
    import onnx

    model = _read(source)
    if model is None:
        return {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
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


def compute_fallback(spec: SessionSpec, placed: list[PlacedNode]) -> list[PlacedNode]:
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
    if want in kept_providers and all(p.op_type in MEMCPY_OPS for p in placed):
        # nothing to place (a Constant-only model that ORT folded, an Identity of an input): no EP was passed over
        return [f"the model has no node left to run after ORT's optimizations (its outputs are constants or its "
                f"inputs), so none ran on {want}"]  # fmt: skip
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
    fallback = compute_fallback(spec, placed)
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
