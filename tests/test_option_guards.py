"""Options refused when the recipe is read, where a one-line mistake (bench/mutants.py) let them through with no
test failing: non-finite numbers, a calibration sample count of 0, dynamic quantization with asymmetric weights."""

from __future__ import annotations

import json

import pytest

from onnxq.errors import ConfigError
from onnxq.quantize.recipe import QuantizeRecipe


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_number_option_must_be_finite(tmp_path, value):
    """Python's json reads NaN and Infinity; no later range check would catch NaN (every comparison is False)."""
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"passes": ["adaround"], "adaround": {"learning_rate": value}}))
    assert "NaN" in path.read_text() or "Infinity" in path.read_text()
    with pytest.raises(ConfigError, match="learning_rate must be a finite number"):
        QuantizeRecipe.from_file(path)


def test_calib_samples_must_be_at_least_one():
    assert QuantizeRecipe.from_dict({"calib_samples": 1}).calib_samples == 1
    with pytest.raises(ConfigError, match="calib_samples must be at least 1, got 0"):
        QuantizeRecipe.from_dict({"calib_samples": 0})


def test_dynamic_quantization_refuses_asymmetric_weights():
    assert QuantizeRecipe(dynamic=True).dynamic
    with pytest.raises(ConfigError, match="--asymmetric-weights given contradicts --dynamic"):
        QuantizeRecipe(dynamic=True, symmetric_weights=False)
    with pytest.raises(ConfigError, match="contradicts --dynamic"):
        QuantizeRecipe(dynamic=True, symmetric_activations=True)
