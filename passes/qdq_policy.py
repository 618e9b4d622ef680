"""Which ops the quantizer covers, derived from the placement table in passes/placement.py.

``WEIGHT_OPS`` have a weight input that gets quantized (per tensor or per channel); ``ACTIVATION_OPS`` only
see quantized activations (Q/DQ around their inputs or outputs). Both are ai.onnx (default domain) op types,
for the default ``ort`` target (``onnxq policy`` prints the full table of each target).
"""

from onnxq.passes.placement import POLICIES

WEIGHT_OPS: tuple[str, ...] = tuple(op for r in POLICIES["ort"] if r.weight_input is not None for op in r.ops)
ACTIVATION_OPS: tuple[str, ...] = tuple(op for r in POLICIES["ort"] if r.weight_input is None for op in r.ops)
