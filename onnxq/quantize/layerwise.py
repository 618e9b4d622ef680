"""Run a model's graph in pieces over a data set, each piece holding only its own weights: for GPTQ on models
whose weights stay in external data.

:func:`plan_chunks` keeps the nodes the wanted tensors (the linear layers' inputs) depend on, in graph order,
and cuts them into chunks of about ``chunk_bytes`` of external weights (a decoder layer or a few). Each chunk
becomes a model of its own: its inputs are the tensors that earlier chunks (or the graph's inputs) produce, its
outputs the wanted tensors it makes and what later chunks read. :func:`run_chunks` runs the chunks in order over
every batch of the data: a chunk's weights are read from the external-data file, handed to ONNX Runtime from
memory (``add_external_initializers``, no serialization of the weights), and dropped when the chunk is done;
the tensors that cross a cut (an LLM's hidden state, its mask and rotary tables) are kept for every batch until
their last reader has run. Peak memory is a chunk's weights and its session, plus the crossing tensors over the
data set, not the model.

Graphs with subgraphs (If, Loop, Scan) are not cut here: their bodies read outer names that a chunk's inputs
would have to follow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxq.errors import PassError
from onnxq.model_files import _is_external
from onnxq.passes._graph import needed_nodes

CHUNK_BYTES = 64 << 20  # external weights per chunk (SmolLM2-135M: about 4 decoder layers; a 7B: one)
PLACEHOLDER = "__onnxq_layerwise__"  # the location of a chunk's weights, which ORT is given from memory


@dataclass
class Chunk:
    """Nodes run as one model: ``inputs`` come from earlier chunks or the data, ``outputs`` go to later chunks
    or are wanted (``wanted``), ``weights`` are the external initializers it reads."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    wanted: list[str] = field(default_factory=list)
    weights: list[str] = field(default_factory=list)
    weight_bytes: int = 0


def tensor_bytes(t: onnx.TensorProto) -> int:
    """The bytes of an initializer's data (external or not), from its type and dims."""
    if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return 0
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 0
    return int(np.prod(t.dims, dtype=np.int64)) * itemsize


def plan_chunks(graph: onnx.GraphProto, wanted: Iterable[str], chunk_bytes: int | None = None) -> list[Chunk]:
    """The chunks that compute ``wanted`` (tensor names), as the module docstring says (``chunk_bytes``:
    :data:`CHUNK_BYTES` unless given)."""
    wanted = list(dict.fromkeys(wanted))
    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    inits = {t.name: t for t in graph.initializer}
    nodes = needed_nodes(graph, set(wanted))
    chunks, current = [], Chunk()
    for node in nodes:
        current.nodes.append(node)
        for name in node.input:
            t = inits.get(name)
            if t is not None and _is_external(t) and name not in current.weights:  # a shared one in each reader
                current.weights.append(name)
                current.weight_bytes += tensor_bytes(t)
        if current.weight_bytes >= chunk_bytes:
            chunks.append(current)
            current = Chunk()
    if current.nodes or not chunks:
        chunks.append(current)
    _link(chunks, set(inits), set(wanted))
    return chunks


def _link(chunks: list[Chunk], inits: set[str], wanted: set[str]) -> None:
    """Each chunk's inputs (read, not made inside, not a weight), outputs (wanted, or read by a later one) and
    wanted tensors (made inside; the first chunk also lists the wanted graph inputs)."""
    made_in: dict[str, int] = {}
    for c, chunk in enumerate(chunks):
        for node in chunk.nodes:
            for name in node.input:
                if name and name not in inits and made_in.get(name, -1) != c and name not in chunk.inputs:
                    chunk.inputs.append(name)
            made_in.update((o, c) for o in node.output if o)
    read_later: set[tuple[int, str]] = {(made_in[n], n) for c in chunks for n in c.inputs if n in made_in}
    for c, chunk in enumerate(chunks):
        made = [o for node in chunk.nodes for o in node.output if o]
        chunk.wanted = [o for o in made if o in wanted]
        chunk.outputs = list(dict.fromkeys([*chunk.wanted, *(o for o in made if (c, o) in read_later)]))
    # wanted tensors that no node makes are the graph's inputs: complete before anything runs, so the first chunk's
    chunks[0].wanted[:0] = [n for n in sorted(wanted) if n not in made_in and n not in inits]


def chunk_model(head: onnx.ModelProto, chunk: Chunk, examples: dict[str, np.ndarray],
                inits: dict[str, onnx.TensorProto]) -> onnx.ModelProto:  # fmt: skip
    """The chunk as a model: its inputs typed from ``examples`` (one batch's values, every dim left open), its
    weights as placeholders for :func:`run_chunks` to give ORT from memory. ``inits``: the head's initializers
    by name."""
    g = head.graph
    used = list(dict.fromkeys(i for node in chunk.nodes for i in node.input if i in inits))
    tensors = []
    for name in used:
        t = onnx.TensorProto()
        if _is_external(inits[name]):
            t.name, t.data_type = name, inits[name].data_type
            t.dims.extend(inits[name].dims)
            t.data_location = onnx.TensorProto.EXTERNAL
            t.external_data.add(key="location", value=PLACEHOLDER)
        else:
            t.CopyFrom(inits[name])
        tensors.append(t)
    inputs = []
    for name in chunk.inputs:
        value = examples[name]
        inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                    [None] * value.ndim))  # fmt: skip
    graph = helper.make_graph(chunk.nodes, f"{g.name or 'graph'}_chunk", inputs, [], tensors)
    for name in chunk.outputs:
        graph.output.add().name = name
    model = helper.make_model(graph, opset_imports=list(head.opset_import), ir_version=head.ir_version)
    model.functions.extend(head.functions)
    return model


def run_chunks(head: onnx.ModelProto, chunks: list[Chunk], batches: list[dict[str, np.ndarray]],
               read: Callable[[onnx.TensorProto], np.ndarray], on_value: Callable[[str, np.ndarray], None],
               on_chunk_done: Callable[[Chunk], None], tick: Callable[[], None] | None = None) -> None:  # fmt: skip
    """Run ``chunks`` in order over ``batches`` (each a full feed of the model); ``on_value(name, value)`` for
    every wanted tensor of every batch (graph inputs that are wanted included), ``on_chunk_done(chunk)`` after
    each chunk's last batch. ``read`` gives an external tensor's values."""
    from onnxq.runtime.session import internal_session

    graph_inputs = {vi.name for vi in head.graph.input}
    wanted_inputs = [n for c in chunks for n in c.wanted if n in graph_inputs]
    for feeds in batches:
        for name in wanted_inputs:
            on_value(name, feeds[name])
    store = [dict(feeds) for feeds in batches]
    last_read = {n: c for c, chunk in enumerate(chunks) for n in chunk.inputs}
    inits = {t.name: t for t in head.graph.initializer}
    for c, chunk in enumerate(chunks):
        if not chunk.nodes:  # every wanted tensor is a graph input: nothing to run, but the inputs are complete
            on_chunk_done(chunk)
            continue
        weights = {name: np.ascontiguousarray(read(inits[name])) for name in chunk.weights}
        model = chunk_model(head, chunk, store[0], inits)
        try:
            session = internal_session(model, initializers=weights)
        except Exception as exc:
            raise PassError(f"onnxruntime cannot load part {c + 1} of {len(chunks)} of the model (its nodes "
                            f"{chunk.nodes[0].name!r} to {chunk.nodes[-1].name!r}): "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
                            hint="check that the float model runs in onnxruntime; this is likely an onnxq bug "
                            "(--debug shows where)") from exc  # fmt: skip
        for values in store:
            got = session.run(chunk.outputs, {n: values[n] for n in chunk.inputs})
            for name, value in zip(chunk.outputs, got, strict=True):
                value = np.asarray(value)
                if name in chunk.wanted:
                    on_value(name, value)
                if last_read.get(name, -1) > c:
                    values[name] = value
            for name in [n for n in values if last_read.get(n, -1) <= c and n not in graph_inputs]:
                del values[name]
            if tick:
                tick()
        del session, weights
        on_chunk_done(chunk)


def describe(chunks: list[Chunk]) -> dict[str, Any]:
    """Sizes for the summary: how many parts, the largest part's weights and the most tensors that crossed a cut."""
    return {"parts": len(chunks), "largest_part_weight_bytes": max((c.weight_bytes for c in chunks), default=0),
            "most_inputs": max((len(c.inputs) for c in chunks), default=0)}  # fmt: skip
