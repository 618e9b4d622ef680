"""Whether this machine's ORT CPU kernels compute uint8 x int8 products exactly.

On x86-64 CPUs with AVX2 (or AVX-512) but no VNNI, ONNX Runtime's integer GEMM and convolution kernels (MLAS)
multiply uint8 activations by int8 weights with ``vpmaddubsw``, which adds the products of two neighbouring
pairs into an int16 and saturates it: 255 x 127 + 255 x 127 = 64770 becomes 32767. A W8A8 model whose
definition computes 36 dB then gives 9 dB on such a machine (``resnet_digits``, measured), while the same
model with uint8 weights (zero point 128: the same grid as symmetric int8) is exact there, at some speed (the
uint8 x uint8 kernels widen to int16 first). ORT documents this as the reason for ``reduce_range``.

:func:`u8s8_saturates` asks ORT itself, once per process: a 1x1 QLinearConv of 64 channels of 255 by
weights of 127, whose exact output is 31.6 at the probe's output scale and 16 when pairs saturate. The
environment variable ``ONNXQ_CPU_U8S8`` (``exact`` or ``saturates``) overrides the probe, so that a model
can be quantized on one machine for another, and tests can take both paths on any CPU.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from onnxq.errors import ConfigError

ENV = "ONNXQ_CPU_U8S8"
CHOICES = ("exact", "saturates")
WHY = ("ORT's CPU kernels on this machine saturate uint8 x int8 products (x86 without VNNI: pairs of products "
       "add into a saturating int16)")  # fmt: skip


def u8s8_saturates() -> bool:
    """True when ORT's CPU EP on this machine saturates uint8 x int8 products (see the module docstring)."""
    given = os.environ.get(ENV)
    if given is not None:
        if given not in CHOICES:
            raise ConfigError(f"{ENV}={given!r} is not one of {', '.join(CHOICES)}",
                              hint=f"unset {ENV} to let onnxq probe this machine's kernels")  # fmt: skip
        return given == "saturates"
    return _probe()


@functools.lru_cache(maxsize=1)
def _probe() -> bool:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from onnxq.runtime.session import internal_session

    k = 64
    consts = {"sx": np.float32(1.0), "zx": np.uint8(0), "w": np.full((1, k, 1, 1), 127, np.int8),
              "sw": np.float32(1.0), "zw": np.int8(0), "sy": np.float32(65536.0), "zy": np.uint8(0)}  # fmt: skip
    node = helper.make_node("QLinearConv", ["x", "sx", "zx", "w", "sw", "zw", "sy", "zy"], ["y"])
    graph = helper.make_graph(
        [node], "u8s8_probe", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, k, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in consts.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)  # ORT 1.31 reads <= 13
    y = internal_session(model).run(None, {"x": np.full((1, k, 1, 1), 255, np.uint8)})[0]
    exact = round(255 * 127 * k / 65536.0)  # 32; pairs saturated at 32767 give 32767 * 32 / 65536 = 16
    return int(y.ravel()[0]) != exact


# ORT's integer ops and the input that holds their weight
INTEGER_OPS = {"QLinearConv": 3, "QLinearMatMul": 3, "QGemm": 3, "ConvInteger": 1, "MatMulInteger": 1,
               "DynamicQuantizeMatMul": 1, "MatMulIntegerToFloat": 1}  # fmt: skip
_EIGHT_BIT = (2, 3)  # TensorProto.UINT8, INT8


def int8_weight_products(model: Any) -> int:
    """How many nodes of ``model``'s main graph multiply 8-bit activations by int8 weights beyond 7 bits (which
    can saturate) in ORT's CPU kernels: integer ops with such a weight, and Conv/MatMul/Gemm reading a
    DequantizeLinear of such a constant and, on their other input, a DequantizeLinear of an 8-bit tensor
    (which ORT fuses into those kernels). Weights within [-64, 64] (``--reduce-range``) cannot saturate."""
    g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    wide = {t.name for t in g.initializer if t.data_type == 3 and _wide(t)}  # int8 beyond 7 bits
    made_by = {o: n for n in g.node for o in n.output}

    def dq_of(name: str, weight: bool) -> bool:
        n = made_by.get(name)
        if n is None or n.op_type != "DequantizeLinear":
            return False
        if weight:
            return n.input[0] in wide
        zp = n.input[2] if len(n.input) > 2 else ""
        return n.input[0] not in types and (not zp or types.get(zp) in _EIGHT_BIT)

    count = 0
    for n in g.node:
        if n.op_type in INTEGER_OPS and len(n.input) > INTEGER_OPS[n.op_type]:
            count += n.input[INTEGER_OPS[n.op_type]] in wide
        elif n.op_type in ("Conv", "MatMul", "Gemm") and len(n.input) > 1:
            count += dq_of(n.input[1], weight=True) and dq_of(n.input[0], weight=False)
    return count


def _wide(t: Any) -> bool:
    """Whether an int8 initializer may hold values outside [-64, 64] (True when its values are external)."""
    from onnx import numpy_helper

    if t.data_location == 1:  # TensorProto.EXTERNAL
        return True
    return bool(t.dims) and bool((abs(numpy_helper.to_array(t).astype("int16")) > 64).any())


def saturation_warning(model: Any) -> str | None:
    """The warning for running ``model`` on ORT's CPU EP here, or None when its products are exact here."""
    if not u8s8_saturates():
        return None
    n = int8_weight_products(model)
    if not n:
        return None
    return (f"{n} node(s) multiply 8-bit activations by int8 weights and {WHY}: this model's outputs here can "
            "differ from what it defines; quantize it with onnxq on this machine (uint8 weights, exact here; or "
            "--reduce-range, 7-bit int8), or measure it on a CPU with VNNI")  # fmt: skip
