"""Placeholder: the QDQ placement table is written with passes/qdq.py. Ops it will cover:"""

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
