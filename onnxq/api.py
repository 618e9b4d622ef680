"""The public Python API in one import: quantize, the recipe, data, evaluation and benchmarking.

    from onnxq.api import QuantizeRecipe, quantize
    summary = quantize("model.onnx", "model.qdq.onnx", "calib.npz", QuantizeRecipe(target="tensorrt"))

Each name is defined in its own module (``onnxq.quantize``, ``onnxq.data``, ``onnxq.measure``); this one only
gathers them, so user code does not depend on the package's inner layout.
"""

from __future__ import annotations

from onnxq.data import Dataset, FeedsDataset, open_dataset
from onnxq.measure.bench import BenchConfig, bench_models
from onnxq.measure.evaluate import evaluate
from onnxq.quantize.driver import QuantizeSummary, quantize
from onnxq.quantize.pipeline import PassResult, PassSpec, Phase, QuantizeContext
from onnxq.quantize.recipe import QuantizeRecipe
from onnxq.quantize.registry import all_passes, register_pass

__all__ = [
    "BenchConfig",
    "Dataset",
    "FeedsDataset",
    "PassResult",
    "PassSpec",
    "Phase",
    "QuantizeContext",
    "QuantizeRecipe",
    "QuantizeSummary",
    "all_passes",
    "bench_models",
    "evaluate",
    "open_dataset",
    "quantize",
    "register_pass",
]
