"""Deployment targets as data: one table per target, read by the recipe, the QDQ pass, the CLI and ``onnxq policy``.

A target fixes what its runtime can fuse: the placement rules (``onnxq.passes.placement.POLICIES``), the
integer types it takes, whether zero points must be 0, and the defaults a recipe gets when it leaves an
option open. ``--target tensorrt`` alone therefore gives a TensorRT-style model (int8, symmetric, zero point
0); a flag that contradicts the target is an error that names the flag and the target.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxq.errors import ConfigError

ACTIVATION_TYPES = ("uint8", "int8", "uint16", "int16")
WEIGHT_TYPES = ("int8", "uint8", "int4", "uint4", "int16")
FORMATS = ("qdq", "qoperator")  # QDQ pairs around float ops, or ORT's integer ops (passes/qoperator.py)


@dataclass(frozen=True)
class Target:
    name: str
    summary: str
    activation_types: tuple[str, ...]  # what the target accepts
    weight_types: tuple[str, ...]
    activation_type: str  # defaults when the recipe leaves them open
    weight_type: str
    symmetric_activations: bool  # default; with ``zero_point_zero`` the only choice
    zero_point_zero: bool  # activations and weights must be symmetric (zero point 0)
    slow_symmetric_int8: bool = False  # symmetric int8 activations run slower than float here (a warning)
    int32_bias: bool = True  # biases as int32 with scale s_x * s_w; False: they stay float
    bias_as_add: bool = False  # a float bias is an Add after its Conv/Gemm (out of ORT's BiasQuantization's reach)
    formats: tuple[str, ...] = ("qdq",)  # output formats its runtime runs


# the constraints of a target that takes only int8 with zero point 0 (TensorRT's explicit quantization)
INT8_ZERO_POINT_0 = {
    "activation_types": ("int8",),
    "weight_types": ("int8",),
    "activation_type": "int8",
    "weight_type": "int8",
    "symmetric_activations": True,
    "zero_point_zero": True,
}

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="ort",
            summary="ONNX Runtime's CPU EP: asymmetric uint8 activations, int8 weights, QLinear fusions",
            activation_types=ACTIVATION_TYPES,
            weight_types=WEIGHT_TYPES,
            activation_type="uint8",
            weight_type="int8",
            symmetric_activations=False,
            zero_point_zero=False,
            slow_symmetric_int8=True,
            formats=FORMATS,
        ),
        Target(
            name="tensorrt",
            summary="TensorRT (explicit quantization): int8 symmetric, zero point 0, Q/DQ on op inputs, biases float "
            "(its ONNX parser refuses an int32 DequantizeLinear)",
            **INT8_ZERO_POINT_0,
            int32_bias=False,
        ),
        Target(
            name="cuda",
            summary="ONNX Runtime's CUDA EP: int8 symmetric, Q/DQ on Conv/Gemm/MatMul inputs, biases float (the EP "
            "has no int32 DequantizeLinear, which would run on the host); dequantize + float kernels, not faster "
            "than float (TensorRT is the INT8-speed path)",
            **INT8_ZERO_POINT_0,
            int32_bias=False,
            bias_as_add=True,
        ),
    )
}


def default_weight_type(target: Target, activation_type: str, *, reduce_range: bool = False) -> str:
    """The weight type a recipe that leaves it open gets: the target's, except on ORT's CPU EP with 8-bit
    activations on a machine whose kernels saturate uint8 x int8 products (:mod:`onnxq.runtime.cpu_int8`):
    there uint8 with zero point 128, the same grid as symmetric int8, which those kernels compute exactly;
    with ``reduce_range`` (7-bit weights, whose products cannot saturate) int8 still."""
    if target.name == "ort" and activation_type in ("uint8", "int8") and not reduce_range:
        from onnxq.runtime.cpu_int8 import u8s8_saturates

        if u8s8_saturates():
            return "uint8"
    return target.weight_type


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise ConfigError(f"unknown target {name!r}", hint=f"choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


def check_choices(
    target: Target, *, activation_type: str, weight_type: str, symmetric_activations: bool, symmetric_weights: bool
) -> None:
    """Raise ConfigError naming the option that contradicts ``target``."""
    if activation_type not in ACTIVATION_TYPES:
        raise ConfigError(
            f"unsupported activation type {activation_type!r}", hint=f"choose one of {', '.join(ACTIVATION_TYPES)}"
        )
    if weight_type not in WEIGHT_TYPES:
        raise ConfigError(f"unsupported weight type {weight_type!r}", hint=f"choose one of {', '.join(WEIGHT_TYPES)}")
    if activation_type not in target.activation_types:
        raise ConfigError(
            f"--activation-type {activation_type} contradicts --target {target.name}, which takes "
            f"{', '.join(target.activation_types)} activations",
            hint=f"drop --activation-type (the target's default is {target.activation_type})",
        )
    if weight_type not in target.weight_types:
        raise ConfigError(
            f"--weight-type {weight_type} contradicts --target {target.name}, which takes "
            f"{', '.join(target.weight_types)} weights",
            hint=f"drop --weight-type (the target's default is {target.weight_type})",
        )
    if target.zero_point_zero and not symmetric_activations:
        raise ConfigError(
            f"--asymmetric-activations contradicts --target {target.name}, whose zero points are 0",
            hint="drop --asymmetric-activations, or use --target ort",
        )
    if target.zero_point_zero and not symmetric_weights:
        raise ConfigError(
            f"--asymmetric-weights contradicts --target {target.name}, whose zero points are 0",
            hint="drop --asymmetric-weights, or use --target ort",
        )


def check_format(target: Target, fmt: str) -> None:
    """Raise ConfigError when ``fmt`` is unknown or ``target``'s runtime does not run it."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}", hint=f"choose one of {', '.join(FORMATS)}")
    if fmt not in target.formats:
        raise ConfigError(
            f"--format {fmt} contradicts --target {target.name}, which runs {', '.join(target.formats)} only "
            "(ORT's QOperator ops are CPU kernels; its CUDA and TensorRT EPs take QDQ)",
            hint="drop --format, or use --target ort",
        )


def format_targets() -> str:
    rows = [("target", "activations", "weights", "zero point", "biases", "summary")]
    for t in TARGETS.values():
        zp = "0" if t.zero_point_zero else ("0 (default)" if t.symmetric_activations else "any")
        acts = ",".join(t.activation_types) + f" (default {t.activation_type})"
        weights = ",".join(t.weight_types) + f" (default {t.weight_type})"
        rows.append((t.name, acts, weights, zp, "int32" if t.int32_bias else "float", t.summary))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=False)) + "  " + r[5] for r in rows)
