"""Graph passes of onnxq, installed as ``onnxq.passes``; each module holds one pass."""
