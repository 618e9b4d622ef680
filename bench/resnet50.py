"""A ResNet-50 (v1.5: the stride on the 3x3 conv) with random weights, built with onnx.helper, for latency only.

The architecture and tensor shapes are torchvision's resnet50 with its BatchNormalizations folded into the
convolutions (as any exporter's optimizer or onnxq's prepare pass leaves it): 53 Conv (7x7 stem, 16
bottlenecks of 1x1-3x3-1x1, 4 projection shortcuts), MaxPool, 16 residual Add + Relu, GlobalAveragePool,
Flatten, Gemm to 1000 classes; 25.5 M parameters; input ``input`` float32 [N, 3, 224, 224], output
``logits`` [N, 1000]. The weights are He-normal, and each bottleneck's last conv is scaled by 0.2 so that
the residual sums stay within float16's range without BatchNormalization. Its outputs mean nothing: use it
for timings, never for accuracy.

    python bench/resnet50.py out.onnx
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (bottleneck width, blocks); the output width is 4x
RESIDUAL_SCALE = 0.2


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def conv(self, x: str, c_in: int, c_out: int, k: int, stride: int = 1, relu: bool = True,
             scale: float = 1.0) -> str:  # fmt: skip
        self.count += 1
        name = f"conv{self.count}"
        w = self.rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(2.0 / (c_in * k * k)) * scale
        b = self.rng.standard_normal(c_out) * 0.01
        self.inits += [numpy_helper.from_array(w.astype(np.float32), f"{name}.weight"),
                       numpy_helper.from_array(b.astype(np.float32), f"{name}.bias")]  # fmt: skip
        pad = k // 2
        self.nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [name], name=name,
                                           kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4))  # fmt: skip
        return self.relu(name) if relu else name

    def relu(self, x: str) -> str:
        self.nodes.append(helper.make_node("Relu", [x], [f"{x}_relu"], name=f"{x}_relu"))
        return f"{x}_relu"

    def bottleneck(self, x: str, c_in: int, width: int, stride: int) -> str:
        y = self.conv(x, c_in, width, 1)
        y = self.conv(y, width, width, 3, stride)
        y = self.conv(y, width, 4 * width, 1, relu=False, scale=RESIDUAL_SCALE)
        shortcut = self.conv(x, c_in, 4 * width, 1, stride, relu=False) if stride != 1 or c_in != 4 * width else x
        out = f"add{self.count}"
        self.nodes.append(helper.make_node("Add", [y, shortcut], [out], name=out))
        return self.relu(out)


def build(seed: int = 0) -> onnx.ModelProto:
    """The model described in the module docstring."""
    b = _Builder(seed)
    x = b.conv("input", 3, 64, 7, stride=2)
    b.nodes.append(helper.make_node("MaxPool", [x], ["pool"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                                    pads=[1, 1, 1, 1]))  # fmt: skip
    x, c = "pool", 64
    for stage, (width, blocks) in enumerate(STAGES):
        for i in range(blocks):
            x = b.bottleneck(x, c, width, 2 if i == 0 and stage > 0 else 1)
            c = 4 * width
    fc_w = b.rng.standard_normal((1000, c)) * np.sqrt(1.0 / c)
    b.inits += [numpy_helper.from_array(fc_w.astype(np.float32), "fc.weight"),
                numpy_helper.from_array(np.zeros(1000, np.float32), "fc.bias")]  # fmt: skip
    b.nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        b.nodes,
        "resnet50_random",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model.doc_string = "ResNet-50 v1.5 with random weights (BatchNorm folded): for latency only"
    return model


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "resnet50_random.onnx")
    onnx.save(build(), out)
    print(out)
