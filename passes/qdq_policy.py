"""Which ops the quantizer covers (the per-target QDQ placement table grows here, keeping these names).

``WEIGHT_OPS`` have a weight input that gets quantized (per tensor or per channel); ``ACTIVATION_OPS`` only
see quantized activations (Q/DQ around their inputs or outputs). Both are ai.onnx (default domain) op types.
"""

WEIGHT_OPS: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")

ACTIVATION_OPS: tuple[str, ...] = (
    "Add",
    "Mul",
    "Concat",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Relu",
    "Clip",
    "Sigmoid",
    "Softmax",
    "Resize",
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Split",
    "Pad",
    "Gather",
)
