"""Small, shared helpers for rewriting ``onnx.GraphProto`` in place.

They answer the questions every rewrite asks (who produces this tensor, how many readers does it have,
is it a constant) and do the edits every rewrite needs (rename a tensor everywhere, drop what became
unused). Tensor names in ONNX are unique across a graph and the subgraphs inside it, so renaming an
input everywhere, subgraphs included, is safe.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

# Constant attributes that hold a plain numeric value; sparse and string constants stay Constant nodes.
_CONSTANT_VALUE_ATTRS = ("value", "value_float", "value_floats", "value_int", "value_ints")


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of the subgraphs inside its nodes, depth first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_nodes(sub)


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node of ``graph`` (not of its subgraphs) that produces it."""
    return {name: node for node in graph.node for name in node.output if name}


def has_subgraphs(graph: onnx.GraphProto) -> bool:
    """Whether a node of ``graph`` carries a subgraph (If, Loop, Scan): its body reads outer names."""
    kinds = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    return any(a.type in kinds for n in graph.node for a in n.attribute)


def needed_nodes(graph: onnx.GraphProto, names: set[str]) -> list[onnx.NodeProto]:
    """The nodes of ``graph`` that ``names`` depend on, in graph order (subgraph bodies' outer reads are not
    followed: callers leave graphs with subgraphs alone)."""
    needed, keep = set(names), []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    return keep[::-1]


def readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes of ``graph`` (not of its subgraphs) that read it, in graph order."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                out.setdefault(name, []).append(node)
    return out


def use_counts(graph: onnx.GraphProto) -> Counter[str]:
    """Tensor name -> how many times it is read: by node inputs (subgraphs included) and graph outputs."""
    counts: Counter[str] = Counter(name for node in iter_nodes(graph) for name in node.input if name)
    counts.update(out.name for out in graph.output)
    return counts


def initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializer name -> tensor, for ``graph`` only."""
    return {t.name: t for t in graph.initializer}


def graph_output_names(graph: onnx.GraphProto) -> set[str]:
    return {out.name for out in graph.output}


def rename_uses(graph: onnx.GraphProto, old: str, new: str) -> int:
    """Make every node reading ``old`` (subgraphs included) read ``new``; return how many inputs changed."""
    changed = 0
    for node in iter_nodes(graph):
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
                changed += 1
    return changed


def remove_nodes(graph: onnx.GraphProto, doomed: list[onnx.NodeProto]) -> None:
    """Remove ``doomed`` nodes from ``graph``, keeping the order of the others.

    Deleting by index keeps the caller's references to the remaining nodes live; rebuilding the list
    would copy every node and leave those references pointing at detached messages.
    """
    ids = {id(n) for n in doomed}
    for i in reversed(range(len(graph.node))):
        if id(graph.node[i]) in ids:
            del graph.node[i]


def constant_node_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node holds, named after its output; None for sparse or string constants."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name not in _CONSTANT_VALUE_ATTRS:
        return None
    if attr.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr.t)
    elif attr.name == "value_float":
        tensor = numpy_helper.from_array(np.array(attr.f, dtype=np.float32))
    elif attr.name == "value_floats":
        tensor = numpy_helper.from_array(np.array(list(attr.floats), dtype=np.float32))
    elif attr.name == "value_int":
        tensor = numpy_helper.from_array(np.array(attr.i, dtype=np.int64))
    else:
        tensor = numpy_helper.from_array(np.array(list(attr.ints), dtype=np.int64))
    tensor.name = node.output[0]
    return tensor


def constants_to_initializers(graph: onnx.GraphProto) -> int:
    """Replace the numeric Constant nodes of ``graph`` by initializers of the same name; return the count."""
    moved = []
    for node in graph.node:
        tensor = constant_node_tensor(node)
        if tensor is not None:
            graph.initializer.append(tensor)
            moved.append(node)
    remove_nodes(graph, moved)
    return len(moved)


def prune_unused_initializers(graph: onnx.GraphProto) -> int:
    """Drop initializers nothing reads (graph outputs count as readers); return how many were dropped."""
    used = use_counts(graph)
    kept = [t for t in graph.initializer if used[t.name] > 0]
    dropped = len(graph.initializer) - len(kept)
    if dropped:
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return dropped


def prune_stale_value_info(graph: onnx.GraphProto) -> int:
    """Drop value_info entries for tensors no node of ``graph`` produces any more; return the count."""
    produced = set(producers(graph))
    kept = [vi for vi in graph.value_info if vi.name in produced]
    dropped = len(graph.value_info) - len(kept)
    if dropped:
        del graph.value_info[:]
        graph.value_info.extend(kept)
    return dropped


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``..., the first not in ``taken``; the result joins ``taken``."""
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def node_names(graph: onnx.GraphProto) -> list[str]:
    """The name onnxq gives each node of ``graph``: its own, or for an unnamed (or duplicately named) node
    ``{op_type}_{first output}``, made unique. ``onnxq inspect`` shows these names and prepare writes them,
    so a name seen in one can be passed to ``--exclude-node`` in the other."""
    taken = {node.name for node in graph.node if node.name}  # new names avoid every existing one
    seen: set[str] = set()
    names = []
    for node in graph.node:
        name = node.name
        if not name or name in seen:
            base = f"{node.op_type}_{node.output[0]}" if node.output and node.output[0] else node.op_type
            name = unique_name(base, taken)
        seen.add(name)
        names.append(name)
    return names


def all_tensor_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name defined in ``graph`` and its subgraphs: inputs, initializers, node outputs."""
    names = {vi.name for vi in graph.input} | {t.name for t in graph.initializer}
    for node in iter_nodes(graph):
        names.update(n for n in node.output if n)
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                names.update(vi.name for vi in sub.input)
                names.update(t.name for t in sub.initializer)
    return names


def set_initializer(graph: onnx.GraphProto, name: str, array: np.ndarray) -> None:
    """Replace the initializer called ``name`` by ``array`` (keeping its position), or append it."""
    tensor = numpy_helper.from_array(np.ascontiguousarray(array), name)
    for i, t in enumerate(graph.initializer):
        if t.name == name:
            graph.initializer[i].CopyFrom(tensor)
            return
    graph.initializer.append(tensor)


def bypass_node(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    """Remove a pass-through node of ``graph`` (its output 0 equals its input 0) and rewire its readers.

    Graph output names never change: when the node writes a graph output, the node producing its input
    is made to write that name instead. Returns False, leaving the graph as it was, when that is not
    possible (the input is a graph input, an initializer, or itself a graph output).
    """
    src, dst = node.input[0], node.output[0]
    outputs = graph_output_names(graph)
    if dst not in outputs:
        rename_uses(graph, dst, src)
        remove_nodes(graph, [node])
        return True
    producer = producers(graph).get(src)
    if producer is None or src in outputs:
        return False
    rename_uses(graph, src, dst)
    producer.output[list(producer.output).index(src)] = dst
    remove_nodes(graph, [node])
    return True


def sort_initializers(graph: onnx.GraphProto) -> None:
    """Order initializers by first use in node order, so that equal graphs serialize to equal bytes."""
    rank: dict[str, int] = {}
    for node in iter_nodes(graph):
        for name in node.input:
            rank.setdefault(name, len(rank))
    order = sorted(graph.initializer, key=lambda t: rank.get(t.name, len(rank)))
    if [t.name for t in order] != [t.name for t in graph.initializer]:
        copies = [onnx.TensorProto() for _ in order]
        for copy, tensor in zip(copies, order, strict=True):
            copy.CopyFrom(tensor)
        del graph.initializer[:]
        graph.initializer.extend(copies)


def split_static_shape_slices(model: onnx.ModelProto) -> int:
    """Rewrite each main-graph ``Shape`` with ``start``/``end`` whose input has a fully known shape as a
    plain ``Shape`` then a ``Slice``; return how many. onnx-graphsurgeon 0.6's constant folding
    (``fold_shapes``) ignores the two attributes and folds the whole shape, so ``Shape(x, start=1, end=2)``
    of an [2, 5, 3] tensor became [2, 5, 3] instead of [5]: a graph that computes something else, or one ORT
    refuses. After the split gs folds the Shape right and the Slice as any constant node. Call it on a model
    whose shapes are inferred (value_info): only tensors with a known static shape are folded by gs."""
    graph = model.graph
    static = {t.name for t in graph.initializer}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        t = vi.type.tensor_type
        known = vi.type.HasField("tensor_type") and t.HasField("shape")
        if known and all(d.HasField("dim_value") for d in t.shape.dim):
            static.add(vi.name)
    taken = all_tensor_names(graph) | {node.name for node in graph.node}
    nodes, count = [], 0
    for node in graph.node:
        attrs = {a.name: a.i for a in node.attribute if a.name in ("start", "end")}
        if node.op_type != "Shape" or not attrs or node.input[0] not in static:
            nodes.append(node)
            continue
        full, start, end = (unique_name(f"{node.output[0]}__{s}", taken) for s in ("full_shape", "start", "end"))
        graph.initializer.extend([numpy_helper.from_array(np.array([attrs.get("start", 0)], np.int64), start),
                                  numpy_helper.from_array(np.array([attrs.get("end", np.iinfo(np.int64).max)],
                                                                   np.int64), end)])  # fmt: skip
        shape_name = unique_name(f"{node.name}__full", taken)
        nodes.append(onnx.helper.make_node("Shape", [node.input[0]], [full], name=shape_name))
        nodes.append(onnx.helper.make_node("Slice", [full, start, end], list(node.output), name=node.name))
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
    return count
