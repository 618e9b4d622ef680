"""Quantization: the recipe, the targets, the pass registry and its driver, calibration and the integer types."""
