"""ONNX Runtime: the table of execution providers, the one place that creates sessions, and where nodes ran."""
