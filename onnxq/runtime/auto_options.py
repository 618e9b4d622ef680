"""The CUDA EP options onnxq picks itself where the user left them open (None), and why.

* ``prefer_nhwc`` is on for a model with a Conv whose weights are float16: cuDNN's tensor-core convolution
  kernels are channels-last, and ORT then runs those Convs in NHWC with a Transpose where the layout
  changes. On the H200 (issue 16's probe, ResNet-50 FP16, IO binding) it took batch 1 from 1.41 to 1.18 ms
  and batch 256 from 26.8 to 21.9 ms. A float32 model keeps ORT's NCHW default.
* ``enable_cuda_graph`` is on with IO binding (inputs and outputs in fixed device buffers, which a captured
  graph replays) where the graph has no If/Loop/Scan and its outputs' shapes follow from the inputs' (the
  output buffers are allocated before the first run). ORT refuses a graph when a node runs off CUDA (and,
  seen on squeezenet, with some NHWC graphs); then the session is made again as :func:`after_graph_refused`
  says, and the entry says why.
* ``fuse_conv_bias`` is on with ``prefer_nhwc`` (a model with FP16 Convs): cuDNN's runtime-fused convolution
  + bias kernels. On the H200 (``bench/gpu_r50_probe.py``, ResNet-50 FP16, NHWC, CUDA graph) it took batch 32
  from 2.91 to 2.15 ms and batch 256 from 21.4 to 14.6 ms, against 5.48 and 34.9 ms for ORT's default float32
  session (torch's cuDNN FP16 channels-last with a CUDA graph: 2.39 and 14.9 ms).
* ``enable_cuda_graph`` on a model that computes shapes at run time (Shape/Size) whose output shapes the graph
  does not declare, or which ORT refuses: the session runs on a static-shape copy
  (:mod:`onnxq.runtime.static_shapes`), checked against the model first; see ``bench._session``.
* ``cudnn_conv_algo_search`` and ``use_tf32`` keep ORT's defaults (EXHAUSTIVE; TF32 on).

Each choice comes with its reason, keyed by ORT's option name, for the bench entry's ``ep_option_reasons``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from onnxq.runtime.session import SessionSpec
from onnxq.runtime.static_shapes import shape_nodes

CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})
GRAPH_OVER_NHWC_MAX_BATCH = 8
_CONV_OPS = ("Conv", "ConvTranspose")


def choose_cuda_options(spec: SessionSpec, model: Any, *, io_binding: bool) -> tuple[SessionSpec, dict[str, str]]:
    """``spec`` with the CUDA options it left open (None) decided for ``model`` (an onnx.ModelProto), and the
    reasons; options the user gave are kept as given."""
    if spec.ep != "cuda":
        return spec, {}
    changes: dict[str, bool] = {}
    reasons: dict[str, str] = {}
    if spec.cuda_nhwc is None:
        convs = float16_convs(model)
        changes["cuda_nhwc"] = convs > 0
        reasons["prefer_nhwc"] = (
            f"auto: {convs} Conv node(s) with float16 weights (cuDNN's tensor-core kernels are channels-last)"
            if convs
            else "auto: off, no Conv with float16 weights"
        )
    if spec.cuda_fuse_conv_bias is None:
        nhwc = changes.get("cuda_nhwc", spec.cuda_nhwc)
        changes["cuda_fuse_conv_bias"] = bool(nhwc and float16_convs(model))
        reasons["fuse_conv_bias"] = (
            "auto: FP16 convolutions in NHWC (cuDNN's fused conv + bias: ResNet-50 on the H200 at batch 256, "
            "21.4 -> 14.6 ms)" if changes["cuda_fuse_conv_bias"] else "auto: off, no FP16 Conv in NHWC"
        )
    if spec.cuda_graph is None:
        changes["cuda_graph"], reasons["enable_cuda_graph"] = _graph_choice(model, io_binding)
    return dataclasses.replace(spec, **changes), reasons


def _graph_choice(model: Any, io_binding: bool) -> tuple[bool, str]:
    control = sorted(CONTROL_FLOW_OPS & {n.op_type for n in model.graph.node})
    if not io_binding:
        return False, "auto: off, needs --io-binding (a CUDA graph replays fixed device buffers)"
    if control:
        return False, f"auto: off, the graph has {', '.join(control)} (a CUDA graph replays one fixed sequence)"
    unknown = outputs_not_given_by_inputs(model)
    if unknown and shape_nodes(model):
        return True, (f"auto: IO binding with fixed shapes, on a static-shape copy (the shape of output "
                      f"{unknown[0]!r} follows from the inputs' only once the shape arithmetic is folded)")
    if unknown:
        return False, (f"auto: off, the shape of output {unknown[0]!r} does not follow from the inputs' (a CUDA "
                       "graph needs its output buffers before the first run)")  # fmt: skip
    return True, "auto: IO binding with fixed shapes (one launch replays the whole run)"


STATIC_COPY_FIRST = "on a static-shape copy"  # in a graph reason: go to the copy without trying the model


def outputs_not_given_by_inputs(model: Any) -> list[str]:
    """Graph outputs whose declared shape has a dim that is neither a number nor a symbol of an input."""
    def dims(vi: Any) -> list | None:
        t = vi.type.tensor_type
        return [d.dim_value or d.dim_param or None for d in t.shape.dim] if t.HasField("shape") else None

    inits = {t.name for t in model.graph.initializer}
    symbols = {d for vi in model.graph.input if vi.name not in inits for d in (dims(vi) or []) if isinstance(d, str)}
    return [vi.name for vi in model.graph.output
            if dims(vi) is None or any(d is None or (isinstance(d, str) and d not in symbols) for d in dims(vi))]


def after_graph_refused(spec: SessionSpec, reasons: dict[str, str], batch: int, why: str
                        ) -> list[tuple[SessionSpec, dict[str, str]]]:  # fmt: skip
    """What to try, in order, after ORT refused a CUDA graph that onnxq chose: where NHWC was chosen too and
    the batch is small, the graph without NHWC (measured on the H200 at batch 1 and 8, squeezenet and a
    ResNet-50 in FP16: the graph alone 1.5-3.1x the float32 session, NHWC alone 1.0-1.3x); then NHWC
    without the graph."""
    without = (dataclasses.replace(spec, cuda_graph=False), {**reasons, "enable_cuda_graph": f"auto: off, {why}"})
    if not (spec.cuda_nhwc and "prefer_nhwc" in reasons and batch <= GRAPH_OVER_NHWC_MAX_BATCH):
        return [without]
    graph_first = {**reasons, "prefer_nhwc": f"auto: off at batch {batch}, where a CUDA graph is worth more, and "
                   f"ORT refused the graph with NHWC kernels ({why})"}  # fmt: skip
    fuse = False if "fuse_conv_bias" in reasons else spec.cuda_fuse_conv_bias  # onnxq's goes with NHWC
    if "fuse_conv_bias" in reasons:
        graph_first["fuse_conv_bias"] = "auto: off without NHWC"
    return [(dataclasses.replace(spec, cuda_nhwc=False, cuda_fuse_conv_bias=fuse), graph_first), without]


def float16_convs(model: Any) -> int:
    """Conv/ConvTranspose nodes whose weight (input 1) is a float16 initializer or Constant."""
    import onnx

    half = onnx.TensorProto.FLOAT16
    weights = {t.name for t in model.graph.initializer if t.data_type == half}
    for node in model.graph.node:
        if node.op_type == "Constant" and any(a.name == "value" and a.t.data_type == half for a in node.attribute):
            weights.update(node.output)
    return sum(n.op_type in _CONV_OPS and len(n.input) > 1 and n.input[1] in weights for n in model.graph.node)
