"""Passes and the pipeline that runs them.

A pass is a named graph -> graph rewrite with a typed, frozen config. ``run(model, ctx)`` returns a
:class:`PassResult` holding a *new* model (the input is never mutated), whether anything changed, and a
short record of what it did, which goes into the quantization summary and report. Calibration data
and statistics travel beside the model in a :class:`PassContext`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import onnx


@dataclass
class PassContext:
    """What flows beside the model: data, statistics gathered by earlier passes, options."""

    calib: Any = None  # an onnxq.data.Dataset, or None for data-free passes
    batch_size: int = 1
    stats: dict[str, Any] = field(default_factory=dict)  # e.g. "bn_stats", "ranges"
    verify: bool = False  # ask passes that keep the float function to check it at run time
    progress: bool = False
    log: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PassResult:
    model: onnx.ModelProto
    modified: bool
    details: dict[str, Any] = field(default_factory=dict)  # counts and notes for the summary


class Pass(Protocol):
    name: str

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult: ...


def run_pipeline(model: onnx.ModelProto, passes: list[Pass], ctx: PassContext) -> onnx.ModelProto:
    """Run ``passes`` in order; each result and its wall time is appended to ``ctx.log``."""
    for p in passes:
        start = time.perf_counter()
        result = p.run(model, ctx)
        ctx.log.append(
            {
                "pass": p.name,
                "modified": result.modified,
                "seconds": round(time.perf_counter() - start, 4),
                **result.details,
            }
        )
        model = result.model
    return model
