"""onnxq: an ONNX graph-rewriting quantizer and runtime benchmarker."""

__version__ = "0.1.0"
