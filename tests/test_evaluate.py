"""onnxq.measure (evaluate, metrics) and `onnxq eval`: accuracy and fidelity numbers checked against hand-worked
values and direct numpy formulas, streaming over batches, padding of fixed batches, and user errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.cli import main
from onnxq.errors import ConfigError, DataError
from onnxq.measure.evaluate import NonFiniteOutputError, evaluate
from onnxq.measure.metrics import OutputFidelity, TopKAccuracy

SAMPLE_MODELS = Path(__file__).resolve().parents[1] / "sample_models"
SHARED_MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"


def _save(nodes, inits, path: Path, *, classes: int, batch="N", in_name="input", out_name="logits") -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, [batch, classes])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def identity_model(path: Path, classes: int, out_name: str = "logits", **kw) -> Path:
    """logits = input: the scores are exactly the data, so expected metrics come straight from the arrays."""
    node = helper.make_node("Identity", ["input"], [out_name])
    return _save([node], {}, path, classes=classes, out_name=out_name, **kw)


def shifted_model(path: Path, shift: np.ndarray, **kw) -> Path:
    """logits = input + shift: a 'quantized' copy whose error against identity_model is known exactly."""
    return _save(
        [helper.make_node("Add", ["input", "shift"], ["logits"])],
        {"shift": shift.astype(np.float32)},
        path,
        classes=len(shift),
        **kw,
    )


# Three samples, three classes. All values are multiples of 1/4, so float32 sums are exact.
REF = np.array([[2, 1, 0.25], [0, 1, 0.75], [1, 0, -1]], dtype=np.float32)
SHIFT = np.array([0, 0, 0.5], dtype=np.float32)  # q = ref + SHIFT: every error is 0.5 on class 2


def test_fidelity_matches_hand_worked_values(tmp_path):
    ref = identity_model(tmp_path / "ref.onnx", 3)
    q = shifted_model(tmp_path / "q.onnx", SHIFT)
    result = evaluate(q, {"input": REF}, reference=ref, batch_size=2)  # 2 + 1: the sums span batches
    (out,) = result["fidelity"]["outputs"]
    # Worked by hand: sum ref^2 = (4+1+1/16) + (1+9/16) + (1+1) = 8.625; sum err^2 = 3 * 0.25 = 0.75.
    # Arithmetic here is exact in float32/float64 (quarters), so the tolerance is float64 rounding (1e-12).
    assert out["sqnr_db"] == pytest.approx(10 * np.log10(8.625 / 0.75), rel=1e-12)
    assert out["max_abs_error"] == 0.5 and out["min_atol"] == 0.5
    assert out["mean_abs_error"] == pytest.approx(1.5 / 9, rel=1e-12)
    # rtol: the worst element is 0.5 / 0.25 = 2 (sample 0, class 2); others 0.5/0.75 and 0.5/1.
    assert out["min_rtol"] == pytest.approx(2.0, rel=1e-12)
    # argmax: sample 1 flips from class 1 (1 > 0.75) to class 2 (1.25 > 1); the others keep theirs.
    assert out["top1_agreement"] == pytest.approx(2 / 3, rel=1e-12)
    qv = REF.astype(np.float64) + SHIFT
    r = REF.astype(np.float64)
    per_sample = (qv * r).sum(1) / np.sqrt((qv * qv).sum(1) * (r * r).sum(1))
    assert out["cosine"]["mean_per_sample"] == pytest.approx(per_sample.mean(), rel=1e-12)
    overall = (qv * r).sum() / np.sqrt((qv * qv).sum() * (r * r).sum())
    assert out["cosine"]["overall"] == pytest.approx(overall, rel=1e-12)
    assert result["samples"] == 3 and result["accuracy"] == {"top1": None, "top5": None, "labels_key": None}


def test_min_tolerances_are_the_tightest_that_allclose_accepts(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((37, 10)).astype(np.float32)
    w = rng.standard_normal((10, 10)).astype(np.float32)
    ref = _save(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])], {"w": w}, tmp_path / "r.onnx", classes=10
    )
    q = _save(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])],
        {"w": w + rng.normal(0, 0.01, w.shape).astype(np.float32)},
        tmp_path / "q.onnx",
        classes=10,
    )
    (out,) = evaluate(q, {"input": x}, reference=ref, batch_size=8)["fidelity"]["outputs"]
    # The model outputs themselves, from ORT directly in one batch (independent of evaluate's batching).
    qo, ro = (ort.InferenceSession(str(p)).run(None, {"input": x})[0].astype(np.float64) for p in (q, ref))
    assert np.allclose(qo, ro, rtol=0, atol=out["min_atol"])
    assert not np.allclose(qo, ro, rtol=0, atol=out["min_atol"] * (1 - 1e-9))
    assert np.allclose(qo, ro, rtol=out["min_rtol"], atol=0)
    assert not np.allclose(qo, ro, rtol=out["min_rtol"] * (1 - 1e-9), atol=0)
    # Direct numpy formulas over all data; the only difference is summation order, so rel 1e-9.
    assert out["sqnr_db"] == pytest.approx(10 * np.log10((ro**2).sum() / ((ro - qo) ** 2).sum()), rel=1e-9)
    assert out["mean_abs_error"] == pytest.approx(np.abs(qo - ro).mean(), rel=1e-9)
    assert out["top1_agreement"] == pytest.approx((qo.argmax(1) == ro.argmax(1)).mean(), rel=1e-12)


def test_min_rtol_is_none_where_an_element_differs_at_reference_zero():
    fid = OutputFidelity("y")
    ref = np.array([[1.0, 0.0]], dtype=np.float32)
    fid.update(np.array([[1.5, 0.1]], dtype=np.float32), ref, 1)
    assert fid.result()["min_rtol"] is None  # no rtol covers 0.1 vs 0 without an atol
    assert fid.result()["min_atol"] == pytest.approx(0.5)


def test_identical_outputs_give_null_sqnr_zero_errors_and_cosine_one():
    fid = OutputFidelity("y")
    a = np.array([[1.0, -2.0], [0.0, 0.0]], dtype=np.float32)  # sample 1 is all zero on both sides
    fid.update(a, a.copy(), 2)
    r = fid.result()
    assert r["sqnr_db"] is None and r["max_abs_error"] == 0 and r["min_rtol"] == 0 and r["min_atol"] == 0
    assert r["cosine"] == {"mean_per_sample": 1.0, "overall": 1.0}  # two zero vectors count as identical


def test_cosine_of_zero_against_nonzero_sample_is_zero():
    fid = OutputFidelity("y")
    fid.update(np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[3.0, 4.0], [1.0, 1.0]]), 2)
    assert fid.result()["cosine"]["mean_per_sample"] == pytest.approx(0.5)  # (0 + 1) / 2, exact


def test_topk_ties_break_toward_the_lower_class_index():
    acc = TopKAccuracy((1, 5))
    scores = np.array(
        [
            [1, 3, 3, 0, 0, 0],  # label 2 ties with class 1, which ranks first: top-1 miss, top-5 hit
            [1, 3, 3, 0, 0, 0],  # label 1: wins the tie, top-1 hit
            [5, 5, 5, 5, 5, 5],  # label 5: five lower indices rank ahead, so it is 6th: top-5 miss
            [5, 5, 5, 5, 5, 5],  # label 4: 5th, top-5 hit
        ],
        dtype=np.float32,
    )
    acc.update(scores, np.array([2, 1, 5, 4]))
    assert acc.result(1) == 1 / 4
    assert acc.result(5) == 3 / 4


def test_topk_agrees_with_argmax_and_stable_sort_on_random_scores():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 4, (500, 8)).astype(np.float32)  # few distinct values: many ties
    labels = rng.integers(0, 8, 500)
    acc = TopKAccuracy((1, 5))
    for i in range(0, 500, 64):
        acc.update(scores[i : i + 64], labels[i : i + 64])
    assert acc.result(1) == (scores.argmax(1) == labels).mean()
    top5 = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    assert acc.result(5) == (top5 == labels[:, None]).any(1).mean()


def test_top5_is_none_with_fewer_than_five_classes(tmp_path):
    model = identity_model(tmp_path / "m.onnx", 3)
    result = evaluate(model, {"input": REF, "label": np.array([0, 2, 0])})
    assert result["accuracy"] == {"top1": 2 / 3, "top5": None, "labels_key": "label"}


def test_accuracy_from_npz_labels_matches_direct_count(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((23, 7)).astype(np.float32)
    y = rng.integers(0, 7, 23)
    np.savez(tmp_path / "d.npz", input=x, target=y)
    result = evaluate(identity_model(tmp_path / "m.onnx", 7), tmp_path / "d.npz", batch_size=5)
    assert result["accuracy"]["labels_key"] == "target"
    assert result["accuracy"]["top1"] == (x.argmax(1) == y).mean()
    top5 = np.argsort(-x, axis=1, kind="stable")[:, :5]
    assert result["accuracy"]["top5"] == (top5 == y[:, None]).any(1).mean()
    assert result["samples"] == 23 and result["fidelity"] is None and result["model"] == "m"


def test_fixed_batch_model_pads_the_last_batch_and_counts_every_sample_once(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((10, 6)).astype(np.float32)
    y = rng.integers(0, 6, 10)
    shift = rng.normal(0, 0.1, 6).astype(np.float32)
    fixed = evaluate(
        shifted_model(tmp_path / "q4.onnx", shift, batch=4),
        {"input": x, "label": y},
        reference=identity_model(tmp_path / "r4.onnx", 6, batch=4),
    )
    dynamic = evaluate(
        shifted_model(tmp_path / "q.onnx", shift),
        {"input": x, "label": y},
        reference=identity_model(tmp_path / "r.onnx", 6),
        batch_size=10,
    )
    assert fixed["samples"] == 10
    assert fixed["accuracy"] == dynamic["accuracy"]
    # Same elements, different batch split: only summation order differs (rel 1e-12).
    for key in ("sqnr_db", "mean_abs_error", "max_abs_error", "min_rtol", "top1_agreement"):
        assert fixed["fidelity"]["outputs"][0][key] == pytest.approx(
            dynamic["fidelity"]["outputs"][0][key], rel=1e-12
        )


def test_sample_model_accuracy_matches_its_readme():
    model, data = SAMPLE_MODELS / "resnet_digits.onnx", SAMPLE_MODELS / "test.npz"
    if not (model.exists() and data.exists()):
        pytest.skip("sample models not built")
    result = evaluate(model, data, batch_size=64, reference=model)
    assert result["samples"] == 400
    assert result["accuracy"]["top1"] == pytest.approx(0.9975)  # 399/400, the README's ORT CPU figure
    (out,) = result["fidelity"]["outputs"]  # the model against itself: identical on one EP
    assert out["max_abs_error"] == 0 and out["top1_agreement"] == 1.0 and out["sqnr_db"] is None


def test_labels_outside_the_classes_are_a_data_error(tmp_path):
    with pytest.raises(DataError, match="label 7 of sample 2"):
        evaluate(identity_model(tmp_path / "m.onnx", 3), {"input": REF, "label": np.array([0, 1, 7])})


def test_reference_with_other_output_names_is_refused(tmp_path):
    ref = identity_model(tmp_path / "ref.onnx", 3, out_name="scores")
    with pytest.raises(ConfigError, match="no output"):
        evaluate(identity_model(tmp_path / "m.onnx", 3), {"input": REF}, reference=ref)


def test_nan_in_model_output_is_refused(tmp_path):
    model = _save([helper.make_node("Log", ["input"], ["logits"])], {}, tmp_path / "log.onnx", classes=3)
    with pytest.raises(NonFiniteOutputError, match="NaN/Inf"):
        evaluate(model, {"input": REF})  # log of the -1 in sample 2


def test_cli_eval_writes_result_and_report(tmp_path, capsys):
    ref = identity_model(tmp_path / "ref.onnx", 3)
    q = shifted_model(tmp_path / "q.onnx", SHIFT)
    np.savez(tmp_path / "d.npz", input=REF, label=np.array([0, 1, 0]))
    report = tmp_path / "r.json"
    code = main(
        [
            "eval",
            str(q),
            "--data",
            str(tmp_path / "d.npz"),
            "--reference",
            str(ref),
            "--batch",
            "2",
            "--report",
            str(report),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "top-1 66.67%" in text and "SQNR 10.61 dB" in text  # 2/3 of labels; 10 log10(11.5) = 10.607
    saved = json.loads(report.read_text())
    assert saved["schema"] == "onnxq.report/1"
    assert saved["eval"][0]["fidelity"]["outputs"][0]["max_abs_error"] == 0.5


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"input": np.array([[1, np.nan, 0]], dtype=np.float32)}, "NaN at sample 0"),
        ({"image": REF}, "no data for model input"),
        ({"input": REF[:, :2]}, "expects"),
    ],
)
def test_cli_eval_bad_data_exits_2_with_one_line_error(tmp_path, capsys, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    code = main(["eval", str(identity_model(tmp_path / "m.onnx", 3)), "--data", str(tmp_path / "bad.npz")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def _imagenet_labels(folder: Path) -> np.ndarray:
    """Class index of each real image: the first expected name in images.txt, looked up in the label list."""
    index = {}
    for line in (SHARED_MODELS / "imagenet_labels.txt").read_text().splitlines():
        i, name = line.split(",", 1)
        index[name.strip()] = int(i)
    rows = (folder / "images.txt").read_text().splitlines()
    expected = [row.split("\t")[1].split("|")[0].strip() for row in rows]
    return np.array([index[name] for name in expected])


def test_real_squeezenet_accuracy_matches_its_stored_ort_outputs(tmp_path):
    folder = SHARED_MODELS / "squeezenet1.1"
    if not (folder / "real_inputs" / "inputs.npy").exists():
        pytest.skip("shared squeezenet1.1 model not present")
    real = folder / "real_inputs"
    x = np.load(real / "inputs.npy", allow_pickle=False)
    # stored ORT outputs, [14, 1000, 1, 1] flattened to [14, 1000]
    stored = np.load(real / "outputs_fp32_ort.npy", allow_pickle=False).reshape(len(x), -1)
    labels = _imagenet_labels(real)
    np.savez(tmp_path / "d.npz", data_0=x, label=labels)
    result = evaluate(folder / "model.onnx", tmp_path / "d.npz", reference=folder / "model.onnx")
    # The expected counts come from the stored ORT outputs, independent of evaluate; exact (14 images).
    assert result["accuracy"]["top1"] == (stored.argmax(1) == labels).mean()
    top5 = np.argsort(-stored, axis=1, kind="stable")[:, :5]
    assert result["accuracy"]["top5"] == (top5 == labels[:, None]).any(1).mean()
    # [N, 1000, 1, 1] counts as class scores once the trailing ones are squeezed
    assert result["fidelity"]["outputs"][0]["top1_agreement"] == 1.0


def test_cli_eval_checks_the_report_path_before_evaluating(tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", input=np.full((1, 3), np.nan, dtype=np.float32))
    model = identity_model(tmp_path / "m.onnx", 3)
    data, report = str(tmp_path / "bad.npz"), str(tmp_path / "r.txt")
    code = main(["eval", str(model), "--data", data, "--report", report])
    err = capsys.readouterr().err
    assert code == 2 and "suffix '.txt'" in err and "NaN" not in err  # the report path failed first


def test_result_records_where_the_nodes_ran_and_the_cli_takes_allow_fallback(tmp_path, capsys):
    model = identity_model(tmp_path / "m.onnx", 3)
    result = evaluate(model, {"input": REF, "label": np.array([0, 1, 0])})
    assert result["ep_nodes"] == {"CPUExecutionProvider": 1} and result["warnings"] == []
    np.savez(tmp_path / "d.npz", input=REF, label=np.array([0, 1, 0]))
    argv = ["eval", str(model), "--data", str(tmp_path / "d.npz"), "--allow-fallback", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["ep_nodes"] == {"CPUExecutionProvider": 1}


def test_a_feed_of_zero_samples_evaluates_to_exact_agreement(tmp_path):
    # ONNX's test_split_zero_size_splits and test_triu_zero: outputs with no element must not break the metrics
    model = _save([helper.make_node("Relu", ["input"], ["logits"])], {}, tmp_path / "relu.onnx", classes=3)
    result = evaluate(model, [{"input": np.zeros((0, 3), np.float32)}], reference=model)
    assert result["samples"] == 0
    (out,) = result["fidelity"]["outputs"]
    assert out["max_abs_error"] == 0 and out["cosine"]["mean_per_sample"] is None


def test_an_input_or_output_ort_cannot_pass_as_numpy_is_refused_before_running(tmp_path, capsys):
    for dtype, name in ((TensorProto.BFLOAT16, "bfloat16"), (TensorProto.INT4, "int4")):
        graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=dtype)], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info("y", dtype, [2])])  # fmt: skip
        path = tmp_path / f"{name}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), path)
        np.savez(tmp_path / "d.npz", x=np.ones(2, np.float32))
        assert main(["eval", str(path), "--data", str(tmp_path / "d.npz")]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0].endswith(f"output 'y' holds {name}, which onnxruntime's Python API cannot pass as a numpy array")
        assert err[1].startswith("hint:") and len(err) == 2


def test_an_ort_failure_at_run_time_prints_only_onnxqs_two_lines(tmp_path, capfd):
    # ORT logs a failing kernel at error level before raising; that line must not precede onnxq's error
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                               helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["A", "B"])])  # fmt: skip
    path = tmp_path / "reshape.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    np.savez(tmp_path / "d.npz", x=np.ones((2, 4), np.float32), shape=np.array([3, 3], np.int64))
    capfd.readouterr()
    assert main(["eval", str(path), "--data", str(tmp_path / "d.npz")]) == 2
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("error:") and "running samples" in err[0], err


def test_padding_to_an_absurd_fixed_batch_is_refused_instead_of_allocated(tmp_path):
    # np.repeat for 2**40 - 3 rows raised MemoryError (1 PiB); a batch that fits is still padded
    model = identity_model(tmp_path / "huge_batch.onnx", 3, batch=2**40)
    with pytest.raises(DataError, match="fixes the batch size to 1,099,511,627,776"):
        evaluate(model, {"input": REF, "label": np.array([0, 1, 2])})
    assert evaluate(identity_model(tmp_path / "b4.onnx", 3, batch=4), {"input": REF})["samples"] == 3
