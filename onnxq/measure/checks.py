"""Pass/fail checks of ``onnxq eval`` for CI gates: tolerances, SQNR and top-1 agreement against a reference.

Each check runs per output that has a reference (a reference model, stored outputs, or a test-data folder's
``output_*.pb``) and gives a verdict; the evaluation passes when every verdict does, and ``onnxq eval`` then
exits 0, else 1:

* ``allclose`` (``--atol A --rtol R``): numpy's ``isclose`` per element, ``|out - ref| <= atol + rtol * |ref|``;
  given one of the two, the other is 0. The verdict carries the fraction of elements that fail and the
  element furthest beyond its tolerance (:class:`onnxq.measure.metrics.AllClose`).
* ``min_sqnr`` (``--min-sqnr DB``): 10 log10(sum ref^2 / sum (ref - out)^2) >= DB; identical outputs pass
  (SQNR +inf), an all-zero reference that the output does not match fails.
* ``min_agreement`` (``--min-agreement PCT``): top-1 agreement (argmax over the last axis) >= PCT percent, on
  the outputs that hold class scores; an evaluation with no such output is a ConfigError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from onnxq.errors import ConfigError


@dataclass(frozen=True)
class EvalChecks:
    """The checks asked for; None leaves a check out. ``min_agreement`` is a fraction in [0, 1]."""

    atol: float | None = None
    rtol: float | None = None
    min_sqnr_db: float | None = None
    min_agreement: float | None = None

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"--{name} must be a finite number >= 0, got {value}", hint=f"e.g. --{name} 1e-3")
        if self.min_sqnr_db is not None and not math.isfinite(self.min_sqnr_db):
            raise ConfigError(
                f"--min-sqnr must be a finite number of dB, got {self.min_sqnr_db}", hint="e.g. --min-sqnr 30"
            )
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise ConfigError(
                f"the minimum agreement must be a fraction in [0, 1], got {self.min_agreement}",
                hint="on the command line it is a percentage: --min-agreement 99.5",
            )

    @property
    def tolerances(self) -> tuple[float, float] | None:
        """(atol, rtol) when an allclose check is asked for, the missing one 0."""
        if self.atol is None and self.rtol is None:
            return None
        return (self.atol or 0.0, self.rtol or 0.0)

    @property
    def any(self) -> bool:
        return self.tolerances is not None or self.min_sqnr_db is not None or self.min_agreement is not None


def verdicts(checks: EvalChecks, outputs: list[dict[str, Any]], allclose: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"passed": bool, "results": [one verdict per check and output]}`` from the fidelity ``outputs`` (per
    output metrics) and the ``allclose`` results (:meth:`AllClose.result`)."""
    results = list(allclose)
    if checks.min_sqnr_db is not None:
        results += [_sqnr_verdict(o, checks.min_sqnr_db) for o in outputs]
    if checks.min_agreement is not None:
        scored = [o for o in outputs if o["top1_agreement"] is not None]
        if not scored:
            raise ConfigError(
                "--min-agreement needs an output of class scores [N, classes], and no output of the model is one",
                hint="gate on --min-sqnr or --atol/--rtol instead",
            )
        results += [
            {
                "check": "min_agreement",
                "output": o["name"],
                "threshold": checks.min_agreement,
                "value": o["top1_agreement"],
                "passed": o["top1_agreement"] >= checks.min_agreement,
            }
            for o in scored
        ]
    return {"passed": all(r["passed"] for r in results), "results": results}


def _sqnr_verdict(output: dict[str, Any], threshold: float) -> dict[str, Any]:
    identical = output["max_abs_error"] == 0
    value = output["sqnr_db"]
    passed = identical or (value is not None and value >= threshold)
    return {
        "check": "min_sqnr",
        "output": output["name"],
        "threshold_db": threshold,
        "sqnr_db": value,
        "identical": identical,
        "passed": passed,
    }


def describe_verdict(result: dict[str, Any]) -> str:
    """One line for the text output: PASS/FAIL, the check and output, and its numbers."""
    word = "PASS" if result["passed"] else "FAIL"
    name = result["output"]
    if result["check"] == "allclose":
        worst = result["worst"] or {}
        where = (
            ""
            if not worst
            else (
                f"; worst: {worst['output']:.6g} vs {worst['reference']:.6g} (|err| {worst['abs_error']:.3g} > allowed "
                f"{worst['allowed']:.3g}) at sample {worst['sample']}, position {worst['position']}"
                if result["failing"]
                else f"; closest to failing: |err| {worst['abs_error']:.3g} of {worst['allowed']:.3g}"
            )
        )
        return (
            f"{word} allclose {name!r} (atol {result['atol']:g}, rtol {result['rtol']:g}): {result['failing']:,} "
            f"of {result['elements']:,} elements fail ({100 * result['failing_fraction']:.3g}%){where}"
        )
    if result["check"] == "min_sqnr":
        value = (
            "inf (identical)"
            if result["identical"]
            else ("undefined (all-zero reference)" if result["sqnr_db"] is None else f"{result['sqnr_db']:.2f} dB")
        )
        return f"{word} min-sqnr {name!r}: {value} against {result['threshold_db']:g} dB"
    return f"{word} min-agreement {name!r}: {100 * result['value']:.2f}% against {100 * result['threshold']:.2f}%"
