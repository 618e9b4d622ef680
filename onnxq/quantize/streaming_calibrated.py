"""GPTQ and AWQ on a model whose weights stay in external data: the graph run in parts, layer by layer.

The graph is cut into parts of a few layers (:mod:`onnxq.quantize.layerwise`) and run part by part over the
calibration batches; while a part runs, the statistics of the linear layers' inputs it makes are gathered
(:class:`~onnxq.passes._hessian.InputStats`), and when it is done the layers that read those inputs are solved
at once: their weights read from the source's data file, quantized (GPTQ, or AWQ's scale and clipping search),
the packed blocks written to the output's data file, and the float weights dropped. Statistics come from the
float model, as in the in-memory passes, so the tensors are those the in-memory path writes. Memory holds one
part's weights and session, the statistics of the inputs it makes and the tensors that cross the cuts.

AWQ's graph edits (``1/s`` folded into the Mul that makes ``x``, or a Mul inserted) are made after the last part:
they keep the float function, and the parts still to run must see the graph as it was.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxq.quantize.streaming import _DataFile, _reader


def calibrated_linears(head: onnx.ModelProto, src: Path, cfg: Any, qdq: Any, data: _DataFile, batches: list,
                       algorithm: str, pass_cfg: Any, progress: bool
                       ) -> tuple[dict[str, str], dict[str, int], dict[str, Any]]:  # fmt: skip
    """Quantize the linear layers of ``head`` (rewritten in place) by ``algorithm`` (gptq or awq) over
    ``batches``; (skip reasons, counts per op type, the algorithm pass's details)."""
    from onnxq.passes._hessian import accumulate
    from onnxq.progress import Progress
    from onnxq.quantize.layerwise import describe, plan_chunks, run_chunks

    g = head.graph
    inits = {t.name: t for t in g.initializer}
    skipped, by_input = {}, {}
    for node in g.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in inits \
                and node.input[0] not in inits:  # fmt: skip
            reason = qdq.left_out(node)
            if reason:
                skipped[node.name or node.output[0]] = reason
            else:
                by_input.setdefault(node.input[0], []).append(node)
    chunks = plan_chunks(g, by_input)
    solver = (_GPTQ if algorithm == "gptq" else _AWQ)(g, cfg, pass_cfg, data, _reader(src), by_input, skipped)
    with Progress(f"{algorithm}: layer by layer", len(chunks) * len(batches), enabled=progress, unit="runs") as bar:
        run_chunks(head, chunks, batches, solver.read, lambda name, value: accumulate(solver.stats, name, value),
                   lambda chunk: solver.solve(chunk.wanted), tick=lambda: bar.update(1))  # fmt: skip
    details = {"pass": algorithm, "layers": sum(solver.counts.values()), **solver.finish(),
               "calib_tokens": solver.rows, "widest_input": solver.widest, "layerwise": describe(chunks)}  # fmt: skip
    new_nodes = [m for node in g.node for m in solver.replaced.get(node.output[0], [node])]
    del g.node[:]
    g.node.extend(new_nodes)
    return skipped, solver.counts, details


class _Solver:
    """The layers that read one input, quantized once that input's statistics are complete (:meth:`solve`)."""

    def __init__(self, g: onnx.GraphProto, cfg: Any, pass_cfg: Any, data: _DataFile, read: Any,
                 by_input: dict[str, list], skipped: dict[str, str]) -> None:  # fmt: skip
        from onnxq.passes.weight_only import _Writer

        self.g, self.cfg, self.pass_cfg, self.data, self.read = g, cfg, pass_cfg, data, read
        self.by_input, self.skipped = by_input, skipped
        self.inits = {t.name: t for t in g.initializer}
        self.writer, self.stats, self.replaced = _Writer(g, cfg), {}, {}
        self.counts, self.rows, self.solve_s, self.widest = {"MatMul": 0, "Gemm": 0}, 0, 0.0, 0

    def _groups(self, inputs: list[str]) -> list[tuple[str, list[onnx.NodeProto], list[np.ndarray], Any]]:
        """(input, layers, weights [K, N], statistics) of each input whose layers can be quantized."""
        from onnxq.passes.dynamic import linear_weight

        out = []
        for x in inputs:
            nodes, weights = [], []
            for node in self.by_input[x]:
                weight = linear_weight(node, self.inits, self.read)
                if isinstance(weight, str):
                    self.skipped[node.name or node.output[0]] = weight
                elif weight is not None:
                    nodes.append(node)
                    weights.append(weight)
            st = self.stats.pop(x, None)
            if nodes and st is not None:
                st.flush()
                self.rows, self.widest = max(self.rows, st.rows), max(self.widest, st.abs_sum.size)
                out.append((x, nodes, weights, st))
        return out

    def _write(self, node: onnx.NodeProto, bq: Any) -> None:
        self.replaced[node.output[0]] = self.writer.rewrite(node, bq)
        self.counts[node.op_type] += 1
        for t in self.writer.new_inits:
            self.data.put(t)
        self.g.initializer.extend(self.writer.new_inits)
        self.writer.new_inits.clear()

    def solve(self, inputs: list[str]) -> None:
        raise NotImplementedError

    def finish(self) -> dict[str, Any]:
        """Edits after the last part (the layers' nodes not yet replaced by their rewrites), and the pass's
        details."""
        raise NotImplementedError


class _GPTQ(_Solver):
    def solve(self, inputs: list[str]) -> None:
        """The groups solved side by side where shapes allow (:func:`~onnxq.passes.gptq.gptq_groups`)."""
        from onnxq.passes.gptq import GPTQConfig, gptq_groups

        self.pass_cfg = self.pass_cfg or GPTQConfig()
        groups = self._groups(inputs)
        start = time.perf_counter()
        solved = gptq_groups([(w, st.take_hessian()) for _, _, w, st in groups], self.cfg.block_format,
                             self.pass_cfg)  # fmt: skip
        self.solve_s += time.perf_counter() - start
        for (_, nodes, _, _), bqs in zip(groups, solved, strict=True):
            for node, bq in zip(nodes, bqs, strict=True):
                self._write(node, bq)

    def finish(self) -> dict[str, Any]:
        cfg = self.pass_cfg
        return {"shared_inputs": len(self.by_input), "solve_s": round(self.solve_s, 3),
                "act_order": cfg.act_order if cfg else None, "damp": cfg.damp if cfg else None}  # fmt: skip


class _AWQ(_Solver):
    def __init__(self, *args: Any) -> None:
        from onnxq.passes.awq import _Rewriter

        super().__init__(*args)
        self.checker = _Rewriter(self.g, read=self.read)  # on the graph as it was: can 1/s go into it?
        self.scales: list[tuple[str, list[str], np.ndarray]] = []  # (input, layer keys, s) to apply at the end
        self.alphas: list[float] = []

    def solve(self, inputs: list[str]) -> None:
        """Each group's scale and clipping search, as the in-memory pass does it; the layers written scaled."""
        from onnxq.passes._blockwise import rtn
        from onnxq.passes._hessian import LinearLayer
        from onnxq.passes.awq import AWQConfig, search_clip, search_scale

        cfg, fmt = self.pass_cfg or AWQConfig(), self.cfg.block_format
        self.pass_cfg = cfg
        for x, nodes, weights, st in self._groups(inputs):
            start = time.perf_counter()
            layers = [LinearLayer(n.name or n.output[0], n, x, w) for n, w in zip(nodes, weights, strict=True)]
            alpha, s = search_scale(layers, st, fmt, cfg)
            if alpha and not self.checker.can_scale(x, {la.key for la in layers}, s, cfg.insert_mul):
                alpha = 0.0  # as the in-memory pass: the group stays unscaled
            if not alpha:
                s = np.ones_like(s)
            h = st.hessian / np.outer(s, s)  # the second moment of x / s
            bqs = []
            for w0 in weights:
                w = (w0 * s[:, None]).astype(np.float32)
                bqs.append(rtn(w.T, fmt, search_clip(w, h, fmt, cfg) if cfg.clip_grid else 1.0))
            self.solve_s += time.perf_counter() - start
            for node, bq in zip(nodes, bqs, strict=True):
                self._write(node, bq)
            self.alphas.append(alpha)
            if alpha:
                self.scales.append((x, nodes, s))

    def finish(self) -> dict[str, Any]:
        """``1/s`` made part of the graph for each scaled group (folded or a Mul inserted); :meth:`solve` checked
        on the graph as it was that this can be done."""
        from onnxq.errors import PassError
        from onnxq.passes._hessian import LinearLayer
        from onnxq.passes.awq import _Rewriter

        rewriter = _Rewriter(self.g, read=self.read)
        for x, nodes, s in self.scales:
            group = [LinearLayer(n.name or n.output[0], n, x, None) for n in nodes]  # type: ignore[arg-type]
            if not rewriter.scale_input(x, group, s, self.pass_cfg.insert_mul):
                raise PassError(f"awq: the scale of the layers reading {x!r} could not be made part of the graph",
                                hint="this is an onnxq bug: rerun with --debug and report it")  # fmt: skip
            for node in nodes:  # an inserted Mul: the layer reads its output now, and so must its rewrite
                for new in self.replaced[node.output[0]]:
                    if new.input and new.input[0] == x:
                        new.input[0] = node.input[0]
        scaled = [a for a in self.alphas if a]
        return {"groups": len(self.alphas), "groups_scaled": len(scaled), "folded": rewriter.folded,
                "muls_inserted": rewriter.inserted, "mean_alpha": round(float(np.mean(scaled)), 3) if scaled else 0.0,
                "search_s": round(self.solve_s, 3)}  # fmt: skip
