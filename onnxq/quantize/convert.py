"""``onnxq convert``: a QDQ model from any tool rewritten as ORT's QOperator ops, checked against itself.

The conversion is :func:`onnxq.passes.qoperator.convert_to_qoperator`; this module loads and validates the
input, runs both models in ONNX Runtime on the same inputs (the user's data, or seeded random inputs when
none is given) and writes the converted model only when its outputs match the QDQ model's: bit-exact where
ORT's own QDQ fusion runs the same integer kernel, else within ``min_sqnr`` dB. They differ where ORT leaves
a QDQ group in float that the conversion makes integer: on ORT's own s8s8 QDQ output of squeezenet, ORT 1.32
runs 16 of its 26 Conv nodes as DequantizeLinear -> float Conv -> QuantizeLinear, and 1 of 32,000 output
values then differs by one step of the output's grid.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxq.errors import DataError, NothingToQuantizeError, QuantizationError

DEFAULT_MIN_SQNR_DB = 40.0  # a differing element is a step of the output's grid; 40 dB is ~1% noise power
RANDOM_SAMPLES = 8


@dataclass
class ConvertSummary:
    """What ``convert`` did and what its check measured, for the CLI's summary and ``--json``."""

    input_path: str
    output_path: str
    format: str
    size_before: int
    size_after: int
    nodes_converted: int
    converted: dict[str, int]
    kept_qdq: dict[str, str]
    check: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def convert(
    model_path: str | Path,
    output_path: str | Path,
    *,
    data: Any = None,
    samples: int = 32,
    min_sqnr: float = DEFAULT_MIN_SQNR_DB,
    keep_op_types: tuple[str, ...] = (),
) -> ConvertSummary:
    """Convert the QDQ model at ``model_path`` to QOperator form, check it on ``data``, write ``output_path``."""
    from onnxq.model import check_output_path, load_model, lower_ir_version_for_ort, save_model
    from onnxq.passes.qoperator import QOperatorConfig, compare_formats, convert_to_qoperator
    from onnxq.quantize.driver import check_quantized_model

    check_output_path(output_path, model_path, inputs=[("the data", data)])
    cfg = QOperatorConfig(keep_op_types=tuple(keep_op_types))
    model = load_model(model_path)
    _refuse_float_model(model, model_path)
    lower_ir_version_for_ort(model)
    _check_ort_runs(model, model_path)
    result = convert_to_qoperator(model, cfg)
    if not result.modified:
        reasons = sorted(set(result.details["kept_qdq"].values()))[:3]
        raise NothingToQuantizeError(
            f"{model_path}: no DQ -> op -> Q group has a QOperator form here",
            hint="why: " + "; ".join(reasons) if reasons else "the model has no DQ -> op -> Q group",
        )
    check_quantized_model(result.model, model_path)
    feeds, source = _check_feeds(model, data, samples)
    stats = compare_formats(model, result.model, feeds)
    check = _verdict(stats, min_sqnr, source, _saturation_hint(result.model))
    save_model(result.model, output_path, input_path=model_path)
    d = result.details
    return ConvertSummary(
        input_path=str(model_path), output_path=str(output_path), format="qoperator",
        size_before=Path(model_path).stat().st_size, size_after=Path(output_path).stat().st_size,
        nodes_converted=d["nodes_converted"], converted=d["converted"], kept_qdq=d["kept_qdq"], check=check,
    )  # fmt: skip


def _refuse_float_model(model: Any, where: Any) -> None:
    ops = {n.op_type for n in model.graph.node}
    if not ops & {"QuantizeLinear", "DequantizeLinear"}:
        raise NothingToQuantizeError(
            f"{where} has no QuantizeLinear/DequantizeLinear nodes: it is not a QDQ model",
            hint="quantize the float model first: onnxq quantize MODEL -o OUT --calib DATA --format qoperator",
        )


def _check_ort_runs(model: Any, where: Any) -> None:
    """The input must be a model ORT loads: the check compares against ORT's run of it."""
    from onnxq.errors import ModelValidationError
    from onnxq.runtime.session import internal_session

    try:
        internal_session(model)
    except Exception as exc:
        raise ModelValidationError(
            f"ONNX Runtime refuses the QDQ model {where}: {str(exc).splitlines()[0][:300]}",
            hint="convert takes a QDQ model that ONNX Runtime runs; check it with onnxq inspect",
        ) from exc


def _check_feeds(model: Any, data: Any, samples: int) -> tuple[list[dict[str, np.ndarray]], str]:
    """The inputs both models run on: ``samples`` of the user's data, or seeded random ones."""
    from onnxq.data import input_specs, open_dataset, random_feeds

    if data is not None:
        dataset = open_dataset(data, model, limit=samples)
        return list(dataset.batches(dataset.check_batch_size(None))), f"{len(dataset)} samples of {data}"
    try:
        feeds = [random_feeds(input_specs(model), 1, seed=seed) for seed in range(RANDOM_SAMPLES)]
    except DataError as exc:
        raise DataError(exc.message, hint="give real inputs to check the conversion on with --data DATA") from exc
    return feeds, f"{RANDOM_SAMPLES} random samples (standard normal; pass --data for real inputs)"


def _saturation_hint(converted: Any) -> str | None:
    """Why a converted model may depart here: its int8-weight integer kernels saturate on this CPU."""
    from onnxq.runtime.cpu_int8 import WHY, int8_weight_products, u8s8_saturates

    n = int8_weight_products(converted) if u8s8_saturates() else 0
    if not n:
        return None
    return (f"{WHY}, and {n} integer node(s) of the converted model have int8 weights: the QDQ model computes "
            "them unfused (exact) in part; convert on a CPU with VNNI, or quantize with uint8 weights (onnxq "
            "quantize's default here)")  # fmt: skip


def _verdict(stats: dict[str, dict[str, Any]], min_sqnr: float, source: str,
             saturation: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Bit-exact, within the tolerance, or a QuantizationError naming the output that departs (and, with
    ``saturation``, the CPU's saturating kernels as the likely cause)."""
    for name, s in stats.items():
        qdq_bad, converted_bad = s["not_finite"]
        if qdq_bad:
            raise QuantizationError(
                f"the QDQ model itself gives {qdq_bad} NaN/Inf value(s) in output {name!r} on {source}",
                hint="check its scales (zero, negative or not finite) with onnxq inspect, or give other --data",
            )
        if converted_bad:
            raise QuantizationError(
                f"the converted model gives {converted_bad} NaN/Inf value(s) in output {name!r} where the QDQ "
                f"model's are finite, on {source}",
                hint="keep the QDQ model, or leave the op types at fault in QDQ form with --keep-op-type OP",
            )
        if s["sqnr_db"] is not None and s["sqnr_db"] < min_sqnr:
            raise QuantizationError(
                f"the converted model departs from the QDQ model on output {name!r}: SQNR {s['sqnr_db']:.1f} dB "
                f"< {min_sqnr:g} dB ({s['different']} of {s['elements']} values differ, largest by "
                f"{s['max_abs_diff']:.3g}) on {source}",
                hint=saturation or "keep the QDQ model, or leave the op types that differ in QDQ form with "
                "--keep-op-type OP",
            )
    exact = all(s["different"] == 0 for s in stats.values())
    return {"inputs": source, "bit_exact": exact, "min_sqnr_db": min_sqnr, "outputs": stats}


def group_by_reason(reasons: dict[str, str], examples: int = 3) -> Iterator[tuple[str, int, list[str]]]:
    """(reason, how many nodes, a few of their names), most frequent first: the summary's and the report's
    grouping of node -> reason maps (nodes skipped, nodes kept in QDQ form)."""
    counts: dict[str, list[str]] = {}
    for node, reason in reasons.items():
        counts.setdefault(reason, []).append(node)
    for reason, nodes in sorted(counts.items(), key=lambda kv: -len(kv[1])):
        yield reason, len(nodes), nodes[:examples]
