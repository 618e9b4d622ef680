"""One exception hierarchy for everything a user can get wrong.

Every :class:`OnnxqError` carries a plain message (what was wrong, and where) and an optional hint (how
to fix it). The CLI prints ``error: <message>`` and ``hint: <hint>`` and exits with :attr:`exit_code`,
without a traceback unless ``--debug`` is given. Internal invariants use ``assert``; user input never does.
"""

from __future__ import annotations


class OnnxqError(Exception):
    """Base class of every user-facing error."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ModelLoadError(OnnxqError):
    """The model file is missing, unreadable, not ONNX, or truncated."""


class ModelValidationError(OnnxqError):
    """The model parses but is not a valid ONNX graph (checker, names, topology)."""


class UnsupportedModelError(OnnxqError):
    """The model uses an IR version, opset or feature onnxq does not support."""


class UnsafePathError(OnnxqError):
    """An external-data location points outside the model's folder."""


class OutputPathError(OnnxqError):
    """The output path is unusable: equal to the input, or its folder is missing or not writable."""


class DataError(OnnxqError):
    """Calibration or evaluation data is missing, misshapen, of the wrong dtype, or not finite."""


class ConfigError(OnnxqError):
    """An option, recipe or pass configuration is invalid."""


class ProviderError(OnnxqError):
    """An execution provider is unknown, unavailable, or did not receive the nodes it was asked to run."""


class CudaGraphRefused(ProviderError):
    """ORT refused to capture the session as a CUDA graph (a node off CUDA, a Memcpy, control flow)."""


class PassError(OnnxqError):
    """A pass cannot apply to this model, or its contract check failed."""


class NothingToQuantizeError(OnnxqError):
    """The model has no node the quantizer can quantize, or is already quantized."""


class QuantizationError(OnnxqError):
    """Quantization produced a model that does not work: non-finite outputs where the float model's are finite."""


class NotQuantizedError(OnnxqError):
    """The model holds no QuantizeLinear/DequantizeLinear node, so there is nothing for ``onnxq lint`` to check."""
