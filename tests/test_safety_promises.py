"""The README's safety promises, each pinned where a one-line mistake (bench/mutants.py) would break it: nothing
is unpickled, nothing is read from outside the model's folder or from outside a data file, and the model check
refuses a quantized model whose outputs are not finite. The other promises (atomic writes, output != input, no
silent fallback) are pinned in test_model_io.py, test_output_paths.py and test_runtime.py;
bench/results/mutation.md maps each promise to its tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import make_tiny_model
from onnxq.data import open_dataset
from onnxq.errors import DataError, ModelLoadError, UnsafePathError
from onnxq.model import load_model

# --- no pickle -----------------------------------------------------------------------------------------


class _MakesADirectoryWhenUnpickled:
    """Unpickling this calls os.mkdir(path): a visible side effect, as a malicious payload would have one."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def _payload(marker: Path) -> np.ndarray:
    objects = np.empty(1, dtype=object)
    objects[0] = _MakesADirectoryWhenUnpickled(marker)
    return objects


def test_no_data_file_is_ever_unpickled(tmp_path):
    """An object array is refused before numpy's loader could run its pickle: the payload never runs."""
    model = make_tiny_model()  # input "x" [1, 1, 8, 8]
    marker = tmp_path / "unpickled"
    np.save(tmp_path / "x.npy", _payload(marker), allow_pickle=True)
    np.savez(tmp_path / "x.npz", x=_payload(marker))
    sets = tmp_path / "feeds"
    (sets / "test_data_set_0").mkdir(parents=True)
    x = numpy_helper.from_array(np.zeros((1, 1, 8, 8), np.float32), "x")
    (sets / "test_data_set_0" / "input_0.pb").write_bytes(x.SerializeToString())
    np.save(sets / "labels.npy", _payload(marker), allow_pickle=True)  # the labels of a test-data folder
    for source in (tmp_path / "x.npy", tmp_path / "x.npz", sets):
        with pytest.raises(DataError):
            open_dataset(source, model)
        assert not marker.exists(), f"{source.name}: the pickle ran"


# --- no read outside the model's folder or the data file -----------------------------------------------------


def _external_model(folder: Path, location_of) -> Path:
    """The tiny model with every raw tensor in ``weights.data`` beside it, located as ``location_of(data)``."""
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save_model(make_tiny_model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.data", size_threshold=0)  # fmt: skip
    model = onnx.load(path, load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = location_of(folder / "weights.data")
    path.write_bytes(model.SerializeToString())
    return path


def test_an_absolute_external_location_is_refused_even_inside_the_model_folder(tmp_path):
    path = _external_model(tmp_path / "m", lambda data: str(data))
    with pytest.raises(UnsafePathError, match="absolute path"):
        load_model(path)


def test_external_data_that_ends_inside_a_tensor_is_a_load_error_not_a_short_read(tmp_path):
    path = _external_model(tmp_path / "m", lambda data: data.name)
    data = tmp_path / "m" / "weights.data"
    data.write_bytes(data.read_bytes()[:-1])  # the last tensor's span now runs one byte past the file
    with pytest.raises(ModelLoadError, match="which has only"):
        load_model(path)


def test_a_data_tensor_file_with_external_data_is_refused_without_reading_it(tmp_path, monkeypatch):
    """onnx itself would read the location relative to the working folder: the file must not be followed."""
    model = make_tiny_model()
    secret = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)
    (tmp_path / "secret.bin").write_bytes(secret.tobytes())
    monkeypatch.chdir(tmp_path)  # where onnx.numpy_helper would look for a relative location
    tensor = numpy_helper.from_array(np.zeros((1, 1, 8, 8), np.float32), "x")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "secret.bin"
    assert np.array_equal(numpy_helper.to_array(tensor), secret)  # the file really is readable that way
    (tmp_path / "data" / "test_data_set_0").mkdir(parents=True)
    (tmp_path / "data" / "test_data_set_0" / "input_0.pb").write_bytes(tensor.SerializeToString())
    with pytest.raises(DataError, match="stores its data externally"):
        open_dataset(tmp_path / "data", model)


# --- the quantized model's outputs must be finite ------------------------------------------------------------


def test_the_quantized_model_check_refuses_outputs_that_are_not_finite(tmp_path):
    """A scale near float32's limit makes DequantizeLinear overflow to inf (127 * 3e38): the check must say so."""
    from onnxq.errors import QuantizationError
    from onnxq.quantize.driver import check_quantized_model
    from onnxq.quantize.pipeline import QuantizeContext

    inits = [numpy_helper.from_array(np.full(4, 127, np.int8), "q"), numpy_helper.from_array(np.float32(3e38), "s"),
             numpy_helper.from_array(np.int8(0), "z")]  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"]), helper.make_node("Add", ["x", "w"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    fc = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "f",
                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])  # fmt: skip
    calib = open_dataset({"x": np.ones((2, 4), np.float32)}, helper.make_model(fc))
    check_quantized_model(model, "m.onnx")  # without data only the checker and ORT's loading are checked
    with pytest.raises(QuantizationError, match=r"8 NaN/Inf value\(s\) in output 'y'"):
        check_quantized_model(model, "m.onnx", QuantizeContext(calib=calib, batch_size=2))
