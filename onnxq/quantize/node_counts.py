"""What the quantize summary's node counts count: nodes of the input model, named as ``onnxq inspect`` names them.

Prepare rewrites the graph before the QDQ plan is made: BatchNormalization folds into the Conv before it,
Dropout and Identity go, an opset upgrade spells an opset-1 Softmax on a 4-D tensor as Flatten -> Softmax ->
Reshape (squeezenet1.1), spelled-out hard-swish becomes one HardSwish. So the graph that gets Q/DQ is not the
input's, and counting its nodes gave squeezenet "67 nodes quantized (..., Flatten 1, Reshape 1)" for a model
of 66 nodes with neither op. Here a quantized node is the input model's when the input has a node of that name
and op type (prepare keeps the names); the other quantized nodes are ones prepare's rewrites made, and input
nodes that are not in the prepared graph were removed or rewritten by prepare. A folded activation (a Relu
whose range the Q after its producer carries) counts as quantized: the output graph no longer runs it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import onnx


@dataclass(frozen=True)
class NodeCounts:
    """Op type -> count, for the summary and its JSON."""

    in_model: int  # nodes of the input model's main graph
    quantized: dict[str, int]  # input nodes quantized, folded activations included
    folded: dict[str, int]  # of those, activations folded into their producer's range
    made_by_prepare: dict[str, int]  # quantized nodes that prepare's rewrites made
    removed_by_prepare: dict[str, int]  # input nodes not in the graph prepare handed on

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def count_nodes(model: onnx.ModelProto, plan: Any) -> NodeCounts:
    """The counts of the input ``model`` against ``plan`` (a :class:`~onnxq.passes.qdq.QDQPlan` of the
    prepared graph)."""
    from onnxq.passes._graph import node_names

    names = dict(zip(node_names(model.graph), (n.op_type for n in model.graph.node), strict=True))
    quantized = [*plan.nodes, *plan.folded]
    own = [n for n in quantized if names.get(n) == plan.graph_nodes[n]]
    made = [n for n in quantized if names.get(n) != plan.graph_nodes[n]]
    gone = [n for n, op in names.items() if plan.graph_nodes.get(n) != op]
    return NodeCounts(
        in_model=len(names),
        quantized=_by_op(own, plan.graph_nodes),
        folded=_by_op([n for n in own if n in plan.folded], plan.graph_nodes),
        made_by_prepare=_by_op(made, plan.graph_nodes),
        removed_by_prepare=_by_op(gone, names),
    )


def _by_op(nodes: list[str], ops: dict[str, str]) -> dict[str, int]:
    return dict(Counter(ops[n] for n in nodes).most_common())
