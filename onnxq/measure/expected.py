"""Stored outputs to compare a model with (``onnxq eval --expected``): an .npz keyed by output name, or an ONNX
test-data folder's ``output_*.pb`` files.

Each output is stacked along axis 0 over the whole data set (one row per sample, in the data's order), as a
reference model's outputs would be, and handed out batch by batch as the data is run. Names are the model's
output names; a name the model does not have is refused with the close match, a row count other than the
data's sample count too.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import numpy as np
import onnx

from onnxq.errors import DataError


class ExpectedOutputs:
    """The stored outputs of ``path`` for ``model``, checked against ``samples`` rows."""

    def __init__(self, path: str | os.PathLike, model: onnx.ModelProto, samples: int) -> None:
        self.path = Path(path)
        names = [o.name for o in model.graph.output]
        self.arrays = _check(_read(self.path, model), names, samples, self.path)

    @property
    def label(self) -> str:
        return f"{self.path} (stored outputs)"

    def batch(self, start: int, n: int) -> dict[str, np.ndarray]:
        """Rows ``start .. start + n`` of each stored output."""
        return {name: arr[start : start + n] for name, arr in self.arrays.items()}


def _read(path: Path, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnxq.data_files import read_npz
    from onnxq.feeds import is_test_data_folder, read_stored_outputs

    if path.is_dir() and is_test_data_folder(path):
        outputs = model.graph.output
        skip = [o.name for o in outputs if o.type.WhichOneof("value") != "tensor_type"]
        sets = read_stored_outputs(path, [o.name for o in outputs], skip)
        return {name: _stacked([s[name] for s in sets], name, path) for name in sets[0]}
    if path.is_file() and path.suffix == ".npz":
        return read_npz(path)
    what = "a folder without test_data_set_* or output_*.pb" if path.is_dir() else "no .npz file"
    raise DataError(
        f"--expected {path}: {what if path.exists() else 'does not exist'}",
        hint="pass an .npz keyed by output name, or an ONNX test-data folder with output_*.pb",
    )


def _stacked(parts: list[np.ndarray], name: str, path: Path) -> np.ndarray:
    if any(p.ndim == 0 for p in parts) or len({p.shape[1:] for p in parts}) > 1:
        raise DataError(
            f"{path}: the stored {name!r} outputs differ in shape beyond axis 0 from set to set, so they "
            "cannot be stacked sample by sample",
            hint="store outputs with the batch on axis 0",
        )
    return np.concatenate(parts, axis=0)


def _check(arrays: dict[str, np.ndarray], names: list[str], samples: int, path: Path) -> dict[str, np.ndarray]:
    unknown = [k for k in arrays if k not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        raise DataError(
            f"{path}: {unknown[0]!r} is not an output of the model (its outputs: {', '.join(names)})",
            hint=(f"did you mean {close[0]!r}? " if close else "") + "key the stored arrays by output name",
        )
    if not arrays:
        raise DataError(f"{path}: no stored outputs", hint=f"store one array per output: {', '.join(names)}")
    for name, arr in arrays.items():
        if arr.ndim == 0 or arr.shape[0] != samples:
            rows = "a scalar" if arr.ndim == 0 else f"{arr.shape[0]} rows"
            raise DataError(
                f"{path}: stored output {name!r} holds {rows}, for {samples} samples of data",
                hint="store one row per sample on axis 0, in the data's order",
            )
    return arrays
