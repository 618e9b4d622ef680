"""The prepare pass: bring a float model into the canonical form the quantizer works on, keeping its function.

In order, on a copy of the model:

1. initializers that IR < 4 models also list as graph inputs stop being inputs (they are weights);
   a literal ``-1`` batch dimension on graph inputs and outputs becomes the symbolic dimension ``N``;
2. the ai.onnx opset is upgraded to the target (13 by default) with ``onnx.version_converter``, and the
   result is checked to load in onnxruntime; models already at or above the target keep their opset;
3. Constant nodes (with those the converter adds) become initializers, and unnamed nodes get unique
   names, so that later passes can key statistics by node name;
4. shape inference, then constant folding and dead-node cleanup with onnx-graphsurgeon;
5. BatchNormalization is folded into the Conv, ConvTranspose or Gemm that feeds it; the BN statistics
   go to ``ctx.bn_stats``;
6. Identity and inference Dropout nodes are removed;
7. unused initializers and stale value_info are dropped and shapes are inferred again, so that every
   intermediate tensor has an element type.

Graph input and output names never change. With ``verify`` the input and prepared models are run in
onnxruntime on the same batch and must agree to a relative error of :data:`VERIFY_TOLERANCE`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import version_converter
from onnx_graphsurgeon.logger import G_LOGGER

from onnxq.errors import ConfigError, ModelValidationError, PassError
from onnxq.model import (
    MAX_OPSET,
    MIN_OPSET,
    default_opset,
    infer_shapes_weightless,
    iter_graphs,
    same_model,
    validate_model,
)
from onnxq.passes._fold_batchnorm import fold_batch_norms
from onnxq.passes._fold_bias_add import fold_bias_adds, fold_scale_muls
from onnxq.passes._fuse_activations import HARDSWISH_OPSET, fuse_hard_swish
from onnxq.passes._graph import (
    bypass_node,
    constants_to_initializers,
    initializers,
    prune_stale_value_info,
    prune_unused_initializers,
    sort_initializers,
    split_static_shape_slices,
    unique_name,
    use_counts,
)
from onnxq.passes._tensor_stats import run_outputs, verify_feeds
from onnxq.quantize.pipeline import PassResult, PassSpec, Phase, QuantizeContext

# Per-channel QuantizeLinear (axis attribute) needs opset 13; lower models are upgraded to it by default.
DEFAULT_TARGET_OPSET = 13
# Prepare only re-associates float arithmetic (BN folding adds one float32 rounding per weight), so the
# outputs move by a few float32 ulps; 1e-5 relative leaves two orders of magnitude of headroom.
VERIFY_TOLERANCE = 1e-5
# Folding must not blow the model up (an Expand or Tile of a constant can be huge): bigger results stay
# computed at run time.
FOLD_SIZE_LIMIT = 64 << 20
# Quantized weights stay quantized: folding DequantizeLinear would turn them back into floats.
_NEVER_FOLD = ("QuantizeLinear", "DequantizeLinear")
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class PrepareConfig:
    """What prepare does. ``target_opset`` is a floor: None means 13; models at or above it keep theirs."""

    fold_batch_norm: bool = True
    fold_constants: bool = True
    remove_identity: bool = True
    target_opset: int | None = None
    fix_batch_dim: bool = True
    fuse_activations: bool = True  # spelled-out hard-swish -> HardSwish (upgrades to opset 14 if needed)
    verify: bool = False

    def __post_init__(self) -> None:
        if self.target_opset is not None and (
            not isinstance(self.target_opset, int) or not MIN_OPSET <= self.target_opset <= MAX_OPSET
        ):
            raise ConfigError(
                f"prepare: target_opset {self.target_opset!r} is not an opset onnxq supports",
                hint=f"give an integer from {MIN_OPSET} to {MAX_OPSET}, or leave it unset for {DEFAULT_TARGET_OPSET}",
            )


def prepare_model(
    model: onnx.ModelProto, config: PrepareConfig | None = None, ctx: QuantizeContext | None = None
) -> PassResult:
    """Return a PassResult with a prepared copy of ``model`` (never mutated) and counts of each rewrite.

    Raises PassError when the opset upgrade fails, when the result does not load, or (with verify) when
    its outputs differ from the input model's by more than :data:`VERIFY_TOLERANCE`.
    """
    config = config or PrepareConfig()
    work = onnx.ModelProto()
    work.CopyFrom(model)
    details: dict[str, Any] = {"initializer_inputs_removed": _drop_initializer_inputs(work)}
    if config.fix_batch_dim:
        details["batch_dims_fixed"] = _fix_batch_dims(work.graph)
    details["opset_from"], details["opset_to"] = _upgrade_opset(work, config.target_opset)
    details["constants_to_initializers"] = constants_to_initializers(work.graph)
    details["nodes_named"] = _name_nodes(work.graph)
    if config.fold_constants:
        _infer_shapes(work)  # folding Shape ops needs the shapes
        details["nodes_folded"], not_folded = _fold_constants(work)
        if not_folded:
            details["constant_folding_skipped"] = not_folded
    if config.fold_batch_norm:
        details["batchnorm_folded"], bn_stats, left = fold_batch_norms(work.graph)
        details["batchnorm_left"] = len(left)
        if left:
            details["batchnorm_left_reasons"] = left
        if ctx is not None:
            ctx.bn_stats.update(bn_stats)
    if config.remove_identity:
        details["identity_removed"], details["dropout_removed"] = _remove_pass_through(work.graph)
    if config.fuse_activations:
        details["hardswish_fused"] = _fuse_activations(work, details)
    if config.fold_batch_norm:  # the same kind of rewrite: a per-channel affine op into the Conv before it
        details["scale_muls_folded"], details["bias_adds_folded"] = _fold_affine(work.graph, ctx)
    details["initializers_dropped"] = prune_unused_initializers(work.graph)
    prune_stale_value_info(work.graph)
    sort_initializers(work.graph)
    _infer_shapes(work)
    _check_valid(work)
    modified = not same_model(work, model)
    if config.verify or (ctx is not None and getattr(ctx, "verify", False)):
        details["verify_max_rel_error"] = verify_outputs(model, work, ctx)
    return PassResult(model=work, modified=modified, details=details)


def _fold_affine(graph: onnx.GraphProto, ctx: QuantizeContext | None) -> tuple[int, int]:
    """Fold per-channel constant Mul and Add nodes after Convs (a Caffe Scale layer, a separate bias), in
    either order, until none is left; the BatchNorm statistics of a folded Conv follow its output."""
    muls = adds = 0
    for _ in range(8):  # each round folds one Mul and one Add per Conv; chains are short
        scaled = fold_scale_muls(graph)
        shifted = fold_bias_adds(graph)
        muls, adds = muls + len(scaled), adds + len(shifted)
        if ctx is not None:
            _follow_bn_stats(graph, ctx, scaled, shifted)
        if not scaled and not shifted:
            break
    return muls, adds


def _follow_bn_stats(graph: onnx.GraphProto, ctx: QuantizeContext, scaled: dict, shifted: dict) -> None:
    """A folded ``* c`` then ``+ d`` moves the pre-activation's statistics: mean * c + d, std * |c|."""
    outputs = {n.name: n.output[0] for n in graph.node}
    for name, entry in list(ctx.bn_stats.items()):
        c, d = scaled.get(name, 1.0), shifted.get(name, 0.0)
        ctx.bn_stats[name] = dataclasses.replace(entry, output=outputs.get(name, entry.output),
                                                 mean=(entry.mean * c + d).astype(np.float32),
                                                 std=(entry.std * np.abs(c)).astype(np.float32))  # fmt: skip


def _fuse_activations(model: onnx.ModelProto, details: dict[str, Any]) -> int:
    """Fuse spelled-out hard-swish; a model below opset 14 that has some is upgraded to 14 first."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    if fuse_hard_swish(probe.graph, HARDSWISH_OPSET) == 0:
        return 0
    if (default_opset(model) or 0) < HARDSWISH_OPSET:
        _, details["opset_to"] = _upgrade_opset(model, HARDSWISH_OPSET)
        constants_to_initializers(model.graph)  # the converter may add Constant nodes
    return fuse_hard_swish(model.graph, default_opset(model) or 0)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (C++ errors carry long traces), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- 1. interface clean-up --------------------------------------------------------------------------


def _drop_initializer_inputs(model: onnx.ModelProto) -> int:
    """Stop listing initializers as graph inputs (IR < 4 requires it); raise the IR version to 4 if below."""
    inits = initializers(model.graph)
    kept = [vi for vi in model.graph.input if vi.name not in inits]
    dropped = len(model.graph.input) - len(kept)
    if dropped:
        del model.graph.input[:]
        model.graph.input.extend(kept)
    model.ir_version = max(model.ir_version, 4)  # IR 4 is the first where initializers need not be inputs
    return dropped


def _fix_batch_dims(graph: onnx.GraphProto) -> int:
    """Turn a literal -1 (or other negative) dim_value on axis 0 of graph inputs and outputs into ``N``."""
    fixed = 0
    for vi in list(graph.input) + list(graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value < 0:
            dims[0].dim_param = "N"  # setting the oneof member clears dim_value
            fixed += 1
    return fixed


# --- 2. opset upgrade -------------------------------------------------------------------------------


def _upgrade_opset(model: onnx.ModelProto, target: int | None) -> tuple[int, int]:
    """Upgrade ``model`` in place to ``target`` (a floor); return (opset before, opset after)."""
    current = default_opset(model)
    if current is None:
        raise PassError("prepare: the model imports no ai.onnx opset", hint="re-export it with an opset")
    target = DEFAULT_TARGET_OPSET if target is None else target
    if current >= target:
        return current, current
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as exc:  # the converter raises bare RuntimeErrors from C++
        raise _conversion_error(model, current, target, exc) from exc
    needed_ir = onnx.helper.find_min_ir_version_for(list(converted.opset_import), ignore_unknown=True)
    converted.ir_version = max(converted.ir_version, needed_ir)
    _check_loads(converted, f"after upgrading from opset {current} to {target}", original=model)
    model.CopyFrom(converted)
    return current, target


def _conversion_error(model: onnx.ModelProto, current: int, target: int, exc: Exception) -> PassError:
    culprit = _find_unconvertible_node(model, target)
    first_line = _first_line(exc)
    where = f"at node {culprit.name or culprit.output[0]!r} ({culprit.op_type})" if culprit else "somewhere"
    op = culprit.op_type if culprit else "one of its ops"
    return PassError(
        f"prepare: onnx.version_converter cannot upgrade the model from opset {current} to {target}: "
        f"it fails {where}: {first_line}",
        hint=f"re-export the model at opset {target} or newer (the converter has no upgrade path for {op}), "
        f"or pass a lower target_opset",
    )


def _find_unconvertible_node(model: onnx.ModelProto, target: int) -> onnx.NodeProto | None:
    """The first node whose op alone fails to convert (one try per op type), or None."""
    inits = initializers(model.graph)
    tried: set[tuple[str, str]] = set()
    for node in model.graph.node:
        if (node.domain, node.op_type) in tried:
            continue
        tried.add((node.domain, node.op_type))
        single = onnx.helper.make_model(
            onnx.helper.make_graph(
                [node],
                "single",
                [onnx.helper.make_empty_tensor_value_info(n) for n in node.input if n and n not in inits],
                [onnx.helper.make_empty_tensor_value_info(n) for n in node.output if n],
                [inits[n] for n in node.input if n in inits],
            ),
            opset_imports=list(model.opset_import),
        )
        try:
            version_converter.convert_version(single, target)
        except Exception:
            return node
    return None


def _check_loads(model: onnx.ModelProto, when: str, original: onnx.ModelProto) -> None:
    """Raise PassError if onnxruntime cannot load ``model``, saying whether the original loads."""
    try:
        _session(model)
    except Exception as exc:
        first_line = _first_line(exc)
        try:
            _session(original)
            cause = "the upgrade broke it"
        except Exception:
            cause = "the input model does not load either"
        raise PassError(
            f"prepare: {when}, onnxruntime cannot load the model ({cause}): {first_line}",
            hint="re-export the model at a newer opset, or pass a target_opset onnxruntime supports",
        ) from exc


# --- 3. names ---------------------------------------------------------------------------------------


def _name_nodes(graph: onnx.GraphProto) -> int:
    """Give every unnamed or duplicately named node a unique name; return how many were (re)named."""
    taken = {node.name for node in graph.node if node.name}  # new names avoid every existing one
    seen: set[str] = set()
    renamed = 0
    for node in graph.node:
        if not node.name or node.name in seen:
            base = f"{node.op_type}_{node.output[0]}" if node.output and node.output[0] else node.op_type
            node.name = unique_name(base, taken)
            renamed += 1
        seen.add(node.name)
    return renamed


# --- 4. shapes and folding --------------------------------------------------------------------------


def _infer_shapes(model: onnx.ModelProto) -> None:
    """Infer types and shapes in place (strict: an inconsistency is an error, not a silent gap)."""
    try:  # on a weightless copy: the weights would be serialized for nothing (and past 2 GB cannot be)
        infer_shapes_weightless(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        first_line = _first_line(exc)
        raise PassError(
            f"prepare: shape inference fails on the model: {first_line}",
            hint="check the model with `python -m onnx.checker` (full check) and re-export it",
        ) from exc


@contextlib.contextmanager
def quiet_graphsurgeon() -> Iterator[None]:
    """gs logs each folded tensor as a warning; keep only its errors while folding. The ORT sessions gs creates
    log to stderr with ORT's default logger: keep it silent (gs's errors come back as exceptions), then restore
    ORT's default (warning)."""
    import onnxruntime as ort

    old = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.ERROR
    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        G_LOGGER.severity = old
        ort.set_default_logger_severity(2)


def _fold_constants(model: onnx.ModelProto) -> tuple[int, str | None]:
    """Fold constant subgraphs and remove dead nodes with onnx-graphsurgeon; return (nodes removed, None), or
    (0, why) when the graph is left unfolded.

    Only the graph (and local functions) come back from gs: IR version, opsets and metadata stay ours. Folding
    only saves work ORT does at load time, so a graph gs cannot represent faithfully (see
    :func:`_graphsurgeon_limit`) or on which it fails is quantized unfolded, and the summary says why.
    """
    limit = _graphsurgeon_limit(model)
    if limit:
        return 0, limit
    split = split_static_shape_slices(model)  # before gs: it folds Shape(start, end) wrong
    with quiet_graphsurgeon():
        try:
            graph = gs.import_onnx(model)
            before = len(graph.nodes) - split
            graph.fold_constants(
                error_ok=False,
                size_threshold=FOLD_SIZE_LIMIT,
                should_exclude_node=lambda node: node.op in _NEVER_FOLD,
            )
            graph.cleanup().toposort()
            exported = gs.export_onnx(graph)
        except Exception as exc:  # gs's own errors and ORT's, from the sessions it runs on constant parts
            return 0, f"onnx-graphsurgeon failed: {_first_line(exc)}"
    model.graph.CopyFrom(exported.graph)
    del model.functions[:]
    model.functions.extend(exported.functions)
    return before - len(graph.nodes), None


def _graphsurgeon_limit(model: onnx.ModelProto) -> str | None:
    """Why gs cannot round-trip ``model``, or None: it drops type attributes (Optional's ``type``...) and cannot
    export sequence, optional or map values (``unhashable type: 'TypeProto'``), in any graph or subgraph."""
    for graph in iter_graphs(model.graph):
        for node in graph.node:
            if any(a.type in (onnx.AttributeProto.TYPE_PROTO, onnx.AttributeProto.TYPE_PROTOS) for a in node.attribute):
                return f"onnx-graphsurgeon drops the type attribute of {node.op_type} node {node.name!r}"
        for vi in (*graph.input, *graph.output, *graph.value_info):
            kind = vi.type.WhichOneof("value")
            if kind not in (None, "tensor_type"):
                return f"onnx-graphsurgeon cannot represent the {kind[:-5]} value {vi.name!r}"
    return None


# --- 6. pass-through nodes --------------------------------------------------------------------------


def _remove_pass_through(graph: onnx.GraphProto) -> tuple[int, int]:
    """Remove Identity and inference Dropout nodes of the main graph; return (identities, dropouts)."""
    removed = {"Identity": 0, "Dropout": 0}
    for node in list(graph.node):
        if node.domain not in _DEFAULT_DOMAINS or node.op_type not in removed:
            continue
        if node.op_type == "Dropout" and not _is_inference_dropout(node, graph):
            continue
        if bypass_node(graph, node):
            removed[node.op_type] += 1
    return removed["Identity"], removed["Dropout"]


def _is_inference_dropout(node: onnx.NodeProto, graph: onnx.GraphProto) -> bool:
    """A Dropout is the identity when its mask is unread and training_mode is absent or a constant false."""
    uses = use_counts(graph)
    if len(node.output) > 1 and node.output[1] and uses[node.output[1]]:
        return False
    if len(node.input) > 2 and node.input[2]:
        flag = initializers(graph).get(node.input[2])
        return flag is not None and not bool(onnx.numpy_helper.to_array(flag))
    return True


# --- 7. checks --------------------------------------------------------------------------------------


def _check_valid(model: onnx.ModelProto) -> None:
    try:
        validate_model(model, where="the prepared model")
    except ModelValidationError as exc:
        raise PassError(
            f"prepare produced an invalid model: {exc.message}",
            hint="this is a bug in onnxq; run prepare with fold_constants=False or fold_batch_norm=False to "
            "narrow it down, and report it",
        ) from exc


def _session(model: onnx.ModelProto) -> Any:
    from onnxq.runtime.session import internal_session  # lazily: importing onnxq.passes must stay cheap

    # Compare our rewrite, not onnxruntime's: its own fusions (BN into Conv, ...) would hide our errors.
    return internal_session(model, optimization="disable")


def relative_error(reference: np.ndarray, actual: np.ndarray) -> float:
    """max|reference - actual| / max(max|reference|, tiny) over finite values; inf if shapes or NaNs differ.

    ``tiny`` is float32's smallest normal number, so an all-zero reference matched exactly gives 0.
    """
    if reference.shape != actual.shape:
        return float("inf")
    if not np.issubdtype(reference.dtype, np.floating):
        return 0.0 if np.array_equal(reference, actual) else float("inf")
    ref, act = reference.astype(np.float64), actual.astype(np.float64)
    finite = np.isfinite(ref)
    if not np.array_equal(finite, np.isfinite(act)) or not np.array_equal(ref[~finite], act[~finite]):
        return float("inf")
    if not finite.any():
        return 0.0
    scale = max(float(np.max(np.abs(ref[finite]))), float(np.finfo(np.float32).tiny))
    return float(np.max(np.abs(ref[finite] - act[finite]))) / scale


def verify_outputs(before: onnx.ModelProto, after: onnx.ModelProto, ctx: Any = None) -> dict[str, float]:
    """Run both models on ctx.calib's first batch (random data without one); return each output's relative
    error, or raise PassError when one exceeds :data:`VERIFY_TOLERANCE`."""
    feeds = verify_feeds(before, ctx)
    reference = run_outputs(before, feeds, "the input model")
    actual = run_outputs(after, feeds, "the prepared model")
    errors = {name: relative_error(value, actual[name]) for name, value in reference.items()}
    bad = {name: err for name, err in errors.items() if not err <= VERIFY_TOLERANCE}
    if bad:
        raise PassError(
            f"prepare changed the model's outputs: relative error {bad} exceeds {VERIFY_TOLERANCE:g}",
            hint="run prepare with fold_batch_norm=False or fold_constants=False to find the rewrite at "
            "fault, and report it",
        )
    return errors


def _run_prepare(model: onnx.ModelProto, ctx: QuantizeContext, cfg: PrepareConfig) -> PassResult:
    """prepare_model, then unique node names (exclusions and reports use them). The data keeps the checks it
    passed against the input model, whose inputs (names, ranks, dtypes) prepare does not change."""
    from onnxq.passes.qdq import name_nodes

    result = prepare_model(model, cfg, ctx)
    return PassResult(name_nodes(result.model), result.modified, result.details)


SPEC = PassSpec(
    name="prepare",
    phase=Phase.FLOAT,
    config=PrepareConfig,
    run=_run_prepare,
    summary="opset upgrade, Constant weights to initializers, constant folding, BatchNorm folding, cleanup",
    provides=("bn_stats",),
    optional=False,
)
