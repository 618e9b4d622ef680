"""Weight-only round-to-nearest quantization that streams the weights: memory bounded by the largest tensor.

``onnxq quantize MODEL --weight-only int4`` (RTN) on a model that keeps its weights in external data takes this
path instead of loading the whole model: the graph is read without its data, then node by node each MatMul/Gemm
weight is read from the external-data file, quantized (the same :func:`~onnxq.passes._blockwise.rtn` and the
same node rewrite as the in-memory pass, so the output is byte for byte the one the in-memory path writes), and
its packed blocks, scales and zero points are written to the output's data file at once; the float weight is
dropped before the next node. Embedding tables (Gather by token ids) are read, turned into 8-bit rows and
written the same way; every other external tensor is copied across one at a time. Peak memory is the graph plus
about three copies of the largest single tensor (the embedding table or lm_head of an LLM), not the model.

GPTQ and AWQ (with calibration data) take the same path with their layers solved by
:mod:`onnxq.quantize.streaming_calibrated`, which runs the graph in parts (:mod:`onnxq.quantize.layerwise`).

The output goes to a temporary folder beside the destination, is checked there (onnx.checker on the file, and
ORT loads it in a child process, so the session's memory is not this process's), then renamed into place with
its data file; a failure leaves the destination as it was.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.errors import NothingToQuantizeError, PassError
from onnxq.model import check_output_path, load_model
from onnxq.model_files import _is_external, _point_at_file, _read_external, commit_files, stored_tensors
from onnxq.passes._graph import has_subgraphs
from onnxq.quantize.recipe import QuantizeRecipe

MIN_EXTERNAL_BYTES = 1024  # tensors of at least this many bytes go to the data file (as save_model does)
ALIGN = 4096  # each tensor starts on a page in the data file (ORT can map it)


def streams(model_path: Any, calib: Any, recipe: QuantizeRecipe) -> bool:
    """Whether ``quantize`` takes this path: --weight-only on a model whose weights are in external data (a model
    in one file is loaded whole anyway), with no other pass, and either round-to-nearest without calibration
    data (with data, the in-memory path checks the outputs on it) or GPTQ or AWQ with it on a graph without
    subgraphs (:mod:`onnxq.quantize.streaming_calibrated`)."""
    if recipe.weight_only is None:
        return False
    rtn = recipe.algorithm == "rtn" and not recipe.passes and calib is None
    calibrated = recipe.algorithm in ("gptq", "awq") and tuple(recipe.passes) == (recipe.algorithm,) \
        and calib is not None  # fmt: skip
    if not (rtn or calibrated):
        return False
    head = load_model(model_path, check=False, external_data=False)
    if recipe.weight_format == "qdq" and _opset(head) < 21:
        return False  # prepare must upgrade the opset for DequantizeLinear's block_size: the in-memory path
    if calibrated and has_subgraphs(head.graph):
        return False
    return any(_is_external(t) for t in stored_tensors(head))


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


class _DataFile:
    """The output's external-data file, written tensor by tensor."""

    def __init__(self, path: Path) -> None:
        self.fh = open(path, "wb")  # noqa: SIM115 - closed by close(), after the last tensor
        self.location = path.name  # a name no source tensor uses; renamed by :meth:`point_at`

    def holds(self, tensor: onnx.TensorProto) -> bool:
        return _is_external(tensor) and any(e.key == "location" and e.value == self.location
                                            for e in tensor.external_data)  # fmt: skip

    def point_at(self, model: onnx.ModelProto, name: str) -> None:
        """Give every tensor in this file its final location ``name``."""
        for tensor in stored_tensors(model, sparse=False):
            for e in tensor.external_data:
                if e.key == "location" and e.value == self.location:
                    e.value = name

    def put(self, tensor: onnx.TensorProto, payload: bytes | None = None) -> None:
        """Move ``tensor``'s data (in memory, or ``payload``: its bytes read from the source) to the file and point
        the tensor at it."""
        if payload is None:
            if tensor.data_type == onnx.TensorProto.STRING:
                return
            payload = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.from_array(
                np.ascontiguousarray(numpy_helper.to_array(tensor))).raw_data  # fmt: skip
            if len(payload) < MIN_EXTERNAL_BYTES:
                return
        del tensor.external_data[:]  # a tensor copied from the source drops its old reference
        pad = -self.fh.tell() % ALIGN
        self.fh.write(b"\0" * pad)
        _point_at_file(tensor, self.location, self.fh.tell(), len(payload))
        self.fh.write(payload)

    def close(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()


def _reader(model_path: Path):
    """A tensor's values: an external float32 tensor straight from its bytes (one copy, outside the model's
    protobuf arena, which would keep every weight read until the whole model goes); others as onnx reads them."""

    def read(tensor: onnx.TensorProto) -> np.ndarray:
        if _is_external(tensor) and tensor.data_type == onnx.TensorProto.FLOAT:
            payload = _read_external(tensor, model_path)
            return np.frombuffer(payload, "<f4").reshape(tuple(tensor.dims))
        if _is_external(tensor):
            copy = onnx.TensorProto()
            copy.CopyFrom(tensor)
            del copy.external_data[:]
            copy.ClearField("data_location")
            copy.raw_data = _read_external(tensor, model_path)
            return numpy_helper.to_array(copy)
        return numpy_helper.to_array(tensor)

    return read


def stream_weight_only(model_path: Any, output_path: Any, recipe: QuantizeRecipe, calib: Any = None, *,
                       progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Quantize as the module docstring says (GPTQ or AWQ with ``calib``); return the passes' details, the timings and
    the peak RSS of this process (and of the ORT check's child process)."""
    from onnxq.quantize.calibration import check_node_lists

    start = time.perf_counter()
    src, out = Path(model_path), check_output_path(output_path, model_path)
    head = load_model(src, check=False, external_data=False)
    _check_float(head, src)
    warnings = check_node_lists(head, **recipe.node_lists())  # an unknown node name is an error here too
    batches, samples, first = _calib_batches(head, calib, recipe) if recipe.algorithm != "rtn" else (None, 0, None)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    data = None
    try:
        data = _DataFile(work / f".{out.name}.data.{os.getpid()}.{time.monotonic_ns()}.part")
        details = _rewrite(head, src, recipe, data, batches, progress)
        model_file = _write_rest(head, src, data, work, out.name)
        quantize_s = time.perf_counter() - start
        peak = _peak_rss_bytes()
        check_peak = _check(model_file, src, first)
        commit_files([(str(work / (out.name + ".data")), out.with_name(out.name + ".data"))], str(model_file), out)
    finally:
        if data is not None and not data.fh.closed:
            data.fh.close()
        shutil.rmtree(work, ignore_errors=True)
    return {"details": details[-1], "passes": details, "quantize_s": quantize_s,
            "total_s": time.perf_counter() - start, "peak_rss_bytes": peak, "check_peak_rss_bytes": check_peak,
            "warnings": warnings, "calib_samples": samples}  # fmt: skip


def _calib_batches(head: onnx.ModelProto, calib: Any, recipe: QuantizeRecipe) -> tuple[list[dict], int, dict]:
    """The calibration feeds, batched as the in-memory path batches them, the number of samples, and the feed
    of the first sample alone (what the output check runs)."""
    from onnxq.data import open_dataset
    from onnxq.passes._hessian import capture_batch_size

    dataset = open_dataset(calib, head, limit=recipe.calib_samples)
    batches = list(dataset.batches(capture_batch_size(dataset, recipe.batch_size)))
    return batches, len(dataset), next(dataset.batches(dataset.check_batch_size(None)))


def _rewrite(head: onnx.ModelProto, src: Path, recipe: QuantizeRecipe, data: _DataFile, batches: list | None,
             progress: bool) -> list[dict[str, Any]]:  # fmt: skip
    """The linear layers (RTN, or GPTQ or AWQ over ``batches``) and embedding tables rewritten, their tensors in
    ``data``; the details of the passes that ran (the weight-only pass last)."""
    from onnxq.passes._embeddings import MS, quantize_embedding_tables
    from onnxq.passes._graph import prune_unused_initializers

    cfg, qdq = recipe.weight_only_config(), recipe.qdq()
    passes = []
    if batches is not None:
        from onnxq.quantize.streaming_calibrated import calibrated_linears

        skipped, counts, entry = calibrated_linears(head, src, cfg, qdq, data, batches, recipe.algorithm,
                                                    recipe.pass_options.get(recipe.algorithm), progress)  # fmt: skip
        passes.append(entry)
    else:
        skipped, counts = _quantize_linears(head.graph, src, cfg, qdq, data)
    tables = _embeddings(head, src, cfg, qdq, quantize_embedding_tables) if cfg.embeddings else 0
    if not sum(counts.values()) and not tables:
        raise NothingToQuantizeError(f"{src} has no MatMul/Gemm with a constant float weight to quantize",
                                     hint="weight-only quantization is for linear layers (LLMs, transformers); "
                                     "for convolutions use the default static quantization with --calib")  # fmt: skip
    prune_unused_initializers(head.graph)
    if cfg.format == "matmulnbits" and sum(counts.values()) and not any(o.domain == MS for o in head.opset_import):
        head.opset_import.append(helper.make_opsetid(MS, 1))
    algorithm = recipe.algorithm if batches is not None else "rtn"
    passes.append({"pass": "weight-only", "streamed": True, "weight_type": cfg.weight_type,
                   "block_size": cfg.block_size, "format": cfg.format,
                   "accuracy_level": cfg.accuracy_level if cfg.format == "matmulnbits" else None,
                   "algorithm": algorithm, "from_algorithm": sum(counts.values()) if batches is not None else 0,
                   "matmuls_quantized": counts["MatMul"], "gemms_quantized": counts["Gemm"],
                   "skip_reasons": skipped, "embedding_tables": tables})  # fmt: skip
    return passes


def _quantize_linears(g: onnx.GraphProto, src: Path, cfg: Any, qdq: Any, data: _DataFile
                      ) -> tuple[dict[str, str], dict[str, int]]:  # fmt: skip
    """Node by node, each MatMul/Gemm weight read, quantized and written to ``data`` (the graph rewritten in
    place); (skip reasons, counts per op type)."""
    from onnxq.passes._blockwise import rtn
    from onnxq.passes.dynamic import linear_weight
    from onnxq.passes.weight_only import _Writer

    inits = {t.name: t for t in g.initializer}
    writer, read = _Writer(g, cfg), _reader(src)
    nodes, skipped, counts = [], {}, {"MatMul": 0, "Gemm": 0}
    for node in g.node:
        weight, name = None, node.input[1] if len(node.input) > 1 else ""
        if node.op_type in ("MatMul", "Gemm") and name in inits:
            weight = linear_weight(node, inits, read)
        reason = weight if isinstance(weight, str) else qdq.left_out(node)
        if reason or weight is None:
            if reason:
                skipped[node.name or node.output[0]] = reason
            nodes.append(node)
            continue
        nodes.extend(writer.rewrite(node, rtn(weight.T, cfg.block_format)))
        counts[node.op_type] += 1
        for t in writer.new_inits:
            data.put(t)
        g.initializer.extend(writer.new_inits)
        writer.new_inits.clear()
        del weight
    del g.node[:]
    g.node.extend(nodes)
    return skipped, counts


def _write_rest(head: onnx.ModelProto, src: Path, data: _DataFile, work: Path, name: str) -> Path:
    """Every tensor not yet in ``data`` copied across one at a time, the data file given its final name, and the
    model file written in ``work``; its path."""
    from onnxq.model import lower_ir_version_for_ort

    for tensor in stored_tensors(head, sparse=False):
        if data.holds(tensor):
            continue
        if _is_external(tensor):
            data.put(tensor, _read_external(tensor, src))
        else:
            data.put(tensor)  # one of less than MIN_EXTERNAL_BYTES stays inline
    data.close()
    data_name = name + ".data"
    os.replace(data.fh.name, work / data_name)
    data.point_at(head, data_name)
    lower_ir_version_for_ort(head)
    model_file = work / name
    model_file.write_bytes(head.SerializeToString())
    return model_file


def _check_float(head: onnx.ModelProto, src: Path) -> None:
    from onnxq.quantize.driver import quantized_op_counts

    already = quantized_op_counts(head)
    if already:
        found = ", ".join(f"{k} x{v}" for k, v in sorted(already.items()))
        raise NothingToQuantizeError(f"{src} is already quantized ({found})",
                                     hint="pass the float model that this one was made from")  # fmt: skip


def _embeddings(head, src: Path, cfg, qdq, quantize_tables) -> int:
    """The token-embedding tables as 8-bit rows, each read from the source as it is quantized."""
    inputs = {i.name for i in head.graph.input}

    def not_token_table(node: onnx.NodeProto) -> str | None:
        if node.input[1] not in inputs:
            return "the Gather's indices are not a graph input (token ids)"
        return qdq.left_out(node)

    return quantize_tables(head, cfg.embedding_min_elements, not_token_table, fused=cfg.format == "matmulnbits",
                           read=_reader(src))  # fmt: skip


def _peak_rss_bytes() -> int | None:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it is not inherited across fork and exec)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


_CHECK = """
import json, sys
import numpy as np
from onnxq.runtime.session import internal_session
try:
    session = internal_session(sys.argv[1])
except Exception as exc:
    print(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__); sys.exit(3)
if len(sys.argv) > 2:
    names = json.loads(sys.argv[3])
    with np.load(sys.argv[2], allow_pickle=False) as z:
        feeds = {name: z[f"f{i}"] for i, name in enumerate(names)}
    for out, value in zip(session.get_outputs(), session.run(None, feeds)):
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            print(f"{int((~np.isfinite(value)).sum())} {out.name}"); sys.exit(4)
try:
    print(next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")))
except Exception:
    print("unknown")
"""


def _check(model_file: Path, src: Path, feeds: dict[str, np.ndarray] | None = None) -> int | None:
    """onnx.checker on the written file, and ORT loads it in a child process (and, given ``feeds``, runs it on
    them: outputs that are not finite are an error, as in the in-memory path); the child's peak RSS."""
    from onnxq.errors import QuantizationError

    try:
        onnx.checker.check_model(str(model_file), full_check=True)
    except Exception as exc:
        raise PassError(f"the quantized model of {src} fails onnx.checker: {str(exc).splitlines()[0]}",
                        hint="this is an onnxq bug: rerun with --debug and report it") from exc  # fmt: skip
    args = [sys.executable, "-c", _CHECK, str(model_file)]
    if feeds:
        npz = model_file.with_name(".check_feeds.npz")
        np.savez(npz, **{f"f{i}": v for i, v in enumerate(feeds.values())})
        args += [str(npz), json.dumps(list(feeds))]
    p = subprocess.run(args, capture_output=True, text=True, check=False)
    last = (p.stdout.strip().splitlines() or [p.stderr.strip()[-300:] or f"exit code {p.returncode}"])[-1]
    if p.returncode == 4:
        bad, name = last.split(" ", 1)
        raise QuantizationError(
            f"the quantized model of {src} gives {bad} NaN/Inf value(s) in output {name!r} on the calibration "
            "data, where the float model's outputs are finite",
            hint="a scale overflowed (weights or activations near the float32 limit): leave the layers with "
            "extreme weights in float with --exclude-node, or check the float model's weights",
        )
    if p.returncode != 0:
        raise PassError(f"ONNX Runtime refuses the quantized model of {src}: {last}",
                        hint="this is an onnxq bug: rerun with --debug and report it")  # fmt: skip
    return int(last) if last.isdigit() else None
