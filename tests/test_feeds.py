"""Data as feeds: batch axes, batching of feeds, ONNX test-data folders, odd-axis and stateful models, and the
checks around them (exclusions that name nothing, quantized outputs that are not finite)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLE_MODELS, SHARED_MODELS
from onnxq.cli import main
from onnxq.data import FeedsDataset, InputSpec, open_dataset
from onnxq.errors import DataError
from onnxq.feeds import batch_axes, group_feeds, samples_in

STATEFUL = SAMPLE_MODELS / "stateful"


def _spec(name, shape, dtype=np.float32):
    return InputSpec(name, np.dtype(dtype), tuple(shape))


# --- batch axes ----------------------------------------------------------------------------------------


def test_batch_axis_is_the_shared_symbol_when_axis_0_is_fixed():
    specs = [_spec("x", (8, "N", 8)), _spec("state", (2, "N", 32)), _spec("sr", ())]
    assert batch_axes(specs) == {"x": 1, "state": 1, "sr": None}


def test_batch_axis_is_0_when_it_is_dynamic_even_if_other_axes_are_symbolic():
    assert batch_axes([_spec("x", (None, 3, "?", "?"))]) == {"x": 0}  # ppocr's input: H and W are symbols too
    assert batch_axes([_spec("ids", ("batch", "seq")), _spec("mask", ("batch", "seq"))]) == {"ids": 0, "mask": 0}


def test_fixed_shapes_keep_axis_0_and_fixed_operands_beside_dynamic_inputs_are_unbatched():
    assert batch_axes([_spec("x", (1, 3, 224, 224))]) == {"x": 0}
    assert batch_axes([_spec("x", ("N", 4)), _spec("shape", (2,))]) == {"x": 0, "shape": None}


def test_group_feeds_joins_along_the_batch_axis_and_splits_where_shapes_or_unbatched_values_differ():
    axes = {"x": 1, "sr": None}
    feed = lambda t, sr: {"x": np.ones((t, 1, 4), np.float32), "sr": np.array(sr, np.float32)}  # noqa: E731
    feeds = [feed(5, 1), feed(5, 1), feed(5, 1), feed(7, 1), feed(7, 2)]
    groups = list(group_feeds(feeds, [1] * 5, axes, batch_size=2))
    assert [(n, f["x"].shape) for n, f in groups] == [(2, (5, 2, 4)), (1, (5, 1, 4)), (1, (7, 1, 4)), (1, (7, 1, 4))]
    assert [float(f["sr"]) for _, f in groups] == [1, 1, 1, 2]
    assert samples_in(groups[0][1], axes) == 2


# --- test-data folders -----------------------------------------------------------------------------------


def _seq_model() -> onnx.ModelProto:
    """y = MatMul(x * s, W): x [N, T, 8] with a variable sequence length T and a scalar input s."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "s"], ["xs"], name="scale"),
            helper.make_node("MatMul", ["xs", "w"], ["y"], name="mm"),
        ],
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 8]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 4])],
        [w],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _write_set(folder: Path, tensors: dict[str, np.ndarray], kind: str = "input", named: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, value) in enumerate(tensors.items()):
        (folder / f"{kind}_{i}.pb").write_bytes(
            numpy_helper.from_array(value, name if named else "").SerializeToString()
        )


def _seq_data(tmp_path: Path, lengths=(5, 5, 9, 9, 9, 3)) -> tuple[Path, Path, list[dict]]:
    model = _seq_model()
    src = tmp_path / "seq.onnx"
    onnx.save(model, src)
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, t, 8)).astype(np.float32), "s": np.array(0.5, np.float32)} for t in lengths]
    sess = ort.InferenceSession(str(src))
    for i, feed in enumerate(feeds):
        _write_set(tmp_path / "data" / f"test_data_set_{i}", feed, named=i % 2 == 0)  # by name and by position
        _write_set(tmp_path / "data" / f"test_data_set_{i}", {"y": sess.run(None, feed)[0]}, kind="output")
    return src, tmp_path / "data", feeds


def test_a_test_data_folder_is_read_as_feeds_in_set_order(tmp_path):
    src, data, feeds = _seq_data(tmp_path, lengths=[2] * 12)
    dataset = open_dataset(data, onnx.load(src))
    assert isinstance(dataset, FeedsDataset) and len(dataset) == 12
    for got, want in zip(dataset.feeds, feeds, strict=True):  # test_data_set_10 after test_data_set_9
        np.testing.assert_array_equal(got["x"], want["x"])
        assert got["s"].shape == ()  # rank 0 stays rank 0
    assert dataset.references is not None and set(dataset.references[0]) == {"y"}


def test_variable_length_feeds_calibrate_in_batches_of_equal_length(tmp_path):
    src, data, _ = _seq_data(tmp_path)
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(src), "-o", str(out), "--calib", str(data), "--no-progress", "--json"]) == 0
    sess = ort.InferenceSession(str(out))
    x = np.random.default_rng(2).standard_normal((3, 11, 8)).astype(np.float32)
    assert sess.run(None, {"x": x, "s": np.array(0.5, np.float32)})[0].shape == (3, 11, 4)
    dataset = open_dataset(data, onnx.load(src))
    assert [dataset.samples_in(b) for b in dataset.batches(8)] == [2, 3, 1]  # lengths 5,5 | 9,9,9 | 3


def test_eval_uses_the_stored_outputs_as_reference(tmp_path, capsys):
    src, data, _ = _seq_data(tmp_path)
    assert main(["eval", str(src), "--data", str(data), "--json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["samples"] == 6 and "stored output_" in doc["fidelity"]["reference"]
    assert doc["fidelity"]["outputs"][0]["max_abs_error"] < 1e-5  # the same float model: ORT round-off only


def test_test_data_folder_errors_are_clean(tmp_path, capsys):
    src, data, _ = _seq_data(tmp_path)
    (data / "test_data_set_1" / "input_1.pb").rename(data / "test_data_set_1" / "input_3.pb")
    assert main(["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--calib", str(data)]) == 2
    assert "not numbered 0..1" in capsys.readouterr().err
    (data / "test_data_set_1" / "input_3.pb").write_bytes(b"\xff\xff not a tensor")
    (data / "test_data_set_1" / "input_3.pb").rename(data / "test_data_set_1" / "input_1.pb")
    assert main(["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--calib", str(data)]) == 2
    assert "not a serialized onnx.TensorProto" in capsys.readouterr().err
    assert not (tmp_path / "q.onnx").exists()


def test_a_folder_of_npz_files_is_one_feed_each_and_an_iterable_too(tmp_path):
    model = _seq_model()
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((1, t, 8)).astype(np.float32), "s": np.array(1.0, np.float32)} for t in (4, 6)]
    (tmp_path / "npz").mkdir()
    for i, f in enumerate(feeds):
        np.savez(tmp_path / "npz" / f"{i:03d}.npz", **f)
    for source in (tmp_path / "npz", iter(feeds)):
        dataset = open_dataset(source, model)
        assert isinstance(dataset, FeedsDataset) and [f["x"].shape[1] for f in dataset.feeds] == [4, 6]


@pytest.mark.parametrize("bad, message", [
    ({"x": np.ones((1, 4, 7), np.float32), "s": np.array(1.0, np.float32)}, "axis 2 is 7, not 8"),
    ({"x": np.ones((4, 8), np.float32), "s": np.array(1.0, np.float32)}, "has rank 2"),
    ({"x": np.ones((1, 4, 8), np.float32), "s": np.array(np.nan, np.float32)}, "holds NaN or Inf"),
    ({"x": np.ones((1, 4, 8), np.float32)}, "no data for model input(s) ['s']"),
])  # fmt: skip
def test_bad_feeds_are_refused_naming_the_feed(bad, message):
    with pytest.raises(DataError) as info:
        open_dataset([{"x": np.ones((1, 4, 8), np.float32), "s": np.array(1.0, np.float32)}, bad], _seq_model())
    assert message in info.value.message and "data item 1" in info.value.message


def test_zero_samples_and_rank_0_inputs_in_stacked_data_get_clean_answers():
    model = _seq_model()
    with pytest.raises(DataError, match="holds 0 samples"):
        open_dataset({"x": np.ones((0, 4, 8), np.float32), "s": np.array(1.0, np.float32)}, model)
    dataset = open_dataset({"x": np.ones((6, 4, 8), np.float32), "s": np.array(2.0, np.float32)}, model)
    assert len(dataset) == 6 and [float(b["s"]) for b in dataset.batches(4)] == [2.0, 2.0]


# --- the stateful LSTM, batch axis 1 ------------------------------------------------------------------------


def test_stateful_lstm_quantizes_from_a_test_data_folder_and_evaluates(tmp_path, capsys):
    model = STATEFUL / "lstm_digits.onnx"
    if not model.exists():
        pytest.skip("the stateful sample model is absent")
    out = tmp_path / "lstm.qdq.onnx"
    assert main(["quantize", str(model), "-o", str(out), "--calib", str(STATEFUL / "calib"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(STATEFUL / "test"), "--reference", str(model), "--json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["samples"] == 100 and doc["accuracy"]["labels_key"] == "labels.npy"
    assert doc["accuracy"]["top1"] >= 0.90  # float: 96% (sample_models/stateful/README.md)
    logits = next(o for o in doc["fidelity"]["outputs"] if o["name"] == "logits")
    assert logits["top1_agreement"] >= 0.95 and logits["sqnr_db"] > 25


def test_stateful_lstm_calibrates_its_feeds_in_batches_along_axis_1():
    model = STATEFUL / "lstm_digits.onnx"
    if not model.exists():
        pytest.skip("the stateful sample model is absent")
    dataset = open_dataset(STATEFUL / "calib", onnx.load(model))
    batch = next(dataset.batches(16))
    assert batch["x"].shape == (8, 16, 8) and batch["state"].shape == (2, 16, 32) and batch["scale"].shape == ()


# --- exclusions and names ---------------------------------------------------------------------------------


def test_unknown_exclusions_are_errors_and_inspect_names_round_trip(tmp_path, capsys):
    model = SHARED_MODELS / "squeezenet1.1" / "model.onnx"  # its nodes are unnamed
    if not model.exists():
        pytest.skip("../shared/models is absent")
    calib = model.parent / "real_inputs" / "inputs.npy"
    base = ["quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--calib", str(calib), "--no-progress"]
    assert main([*base, "--exclude-node", "conv1"]) == 2
    assert "'conv1' is not a node of the model" in capsys.readouterr().err
    assert main([*base, "--exclude-op-type", "Cnov"]) == 2
    assert "did you mean Conv?" in capsys.readouterr().err
    assert main(["inspect", str(model), "--json"]) == 0
    import json

    weight_nodes = json.loads(capsys.readouterr().out)["quantizable"]["weight_nodes"]
    first_conv = next(q["name"] for q in weight_nodes if q["op_type"] == "Conv")
    assert main([*base, "--exclude-node", first_conv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"][first_conv] == "excluded by name" and summary["op_counts"]["Conv"] == 25


def test_a_quantized_model_whose_scales_overflow_is_an_error_and_leaves_no_file(tmp_path, capsys):
    w = np.full((8, 16), 1e-3, np.float32)
    w[:, 1] = 1e30  # huge weights on one input feature, huge activations on another: float outputs stay finite
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="fc")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones(8, np.float32), "b")],
    )  # fmt: skip
    src = tmp_path / "huge.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), src)
    x = np.zeros((16, 16), np.float32)
    x[:, 0], x[:, 1] = 1e14, np.linspace(-1, 1, 16)
    np.save(tmp_path / "x.npy", x)
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    assert main(["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--calib", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err
    assert "bias scale of node 'fc'" in err and "overflows float32" in err and "--exclude-node fc" in err
    assert not (tmp_path / "q.onnx").exists() and hashlib.sha256(src.read_bytes()).hexdigest() == before
