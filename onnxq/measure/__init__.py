"""Measurement: the benchmarker (latency, throughput, memory), its timing loop, the evaluator and its metrics."""
