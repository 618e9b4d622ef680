"""Padded positions stay out of the activation statistics: calibrating on padded batches with their attention
mask gives the ranges the same sentences give unpadded (each its own feed), which no padding can touch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.data import open_dataset
from onnxq.quantize.calibrate import collect_ranges
from onnxq.quantize.padding import drop_padding, real_positions, sequence_axes

H, VOCAB, PAD = 8, 20, 0
LOWEST = np.finfo(np.float32).min
TENSORS = ["emb", "q", "kt", "scores", "p", "y", "out"]


def encoder(symbolic: bool = True) -> onnx.ModelProto:
    """Embedding -> one masked self-attention -> projection, as BERT-style exports write it. The pad token's
    embedding row is 40x the others: any padded position that reached a range would show."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(VOCAB, H)).astype(np.float32)
    table[PAD] = 40.0
    dims = ["batch", "seq"] if symbolic else [None, None]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"], name="gather"),
        helper.make_node("MatMul", ["emb", "wq"], ["q"], name="proj_q"),
        helper.make_node("Transpose", ["emb"], ["kt"], perm=[0, 2, 1], name="t"),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Sub", ["one", "maskf"], ["inv"], name="inv"),
        helper.make_node("Mul", ["inv", "lowest"], ["bias"], name="bias"),
        helper.make_node("Unsqueeze", ["bias", "axis1"], ["bias3"], name="unsq"),
        helper.make_node("Add", ["scores", "bias3"], ["masked"], name="add_mask"),
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["p", "emb"], ["y"], name="pv"),
        helper.make_node("MatMul", ["y", "wo"], ["out"], name="proj_o"),
    ]
    inits = [numpy_helper.from_array(table, "table"),
             numpy_helper.from_array(rng.normal(size=(H, H)).astype(np.float32) / 3, "wq"),
             numpy_helper.from_array(rng.normal(size=(H, H)).astype(np.float32), "wo"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(LOWEST, np.float32), "lowest"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]  # fmt: skip
    graph = helper.make_graph(
        nodes, "enc",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, dims),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, dims)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [*dims, H])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def sentences(n: int = 12, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, size=int(rng.integers(3, 11))) for _ in range(n)]


def padded_batches(sents: list[np.ndarray], batch: int = 4) -> list[dict[str, np.ndarray]]:
    out = []
    for i in range(0, len(sents), batch):
        group = sents[i : i + batch]
        t = max(len(s) for s in group)
        ids = np.full((len(group), t), PAD, np.int64)
        mask = np.zeros((len(group), t), np.int64)
        for row, s in enumerate(group):
            ids[row, : len(s)], mask[row, : len(s)] = s, 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def one_by_one(sents: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    return [{"input_ids": s[None].astype(np.int64), "attention_mask": np.ones((1, len(s)), np.int64)} for s in sents]


@pytest.mark.parametrize("symbolic", [True, False], ids=["symbolic-seq", "fixed-by-sizes"])
def test_padded_batches_give_the_ranges_of_the_unpadded_sentences(symbolic):
    model, sents = encoder(symbolic), sentences()
    reference = collect_ranges(model, open_dataset(one_by_one(sents), model), TENSORS, "minmax")
    padded = collect_ranges(model, open_dataset(padded_batches(sents), model), TENSORS, "minmax")
    for name in TENSORS:  # the same values, up to the order of float sums in the MatMuls
        np.testing.assert_allclose(padded[name], reference[name], rtol=1e-5, atol=1e-6, err_msg=name)
    n_pad = sum(b["attention_mask"].size - b["attention_mask"].sum() for b in padded_batches(sents))
    assert padded.padding.startswith(f"{n_pad} of ") and "'attention_mask'" in padded.padding
    assert reference.padding == ""  # nothing padded: nothing left out
    assert padded["emb"][1] < 10 < 40  # the pad row (40) would set the embedding's range


def test_the_pad_rows_would_show_without_the_mask():
    # the same padded batches with the mask all ones: the pad positions are real tokens now, and count
    model, sents = encoder(), sentences()
    batches = padded_batches(sents)
    for b in batches:
        b["attention_mask"][:] = 1
    ranges = collect_ranges(model, open_dataset(batches, model), ["emb"], "minmax")
    assert ranges["emb"][1] == pytest.approx(40.0) and ranges.padding == ""


def test_sequence_axes_follow_the_symbolic_dimension():
    axes = sequence_axes(encoder(), TENSORS, "attention_mask")
    assert axes == {"emb": (1,), "q": (1,), "kt": (2,), "scores": (1, 2), "p": (1, 2), "y": (1,), "out": (1,)}
    assert set(sequence_axes(encoder(symbolic=False), TENSORS, "attention_mask").values()) == {None}
    unrelated = encoder()  # what shape inference writes after a Reshape it cannot follow: unknown, not a symbol
    unrelated.graph.value_info.append(helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["unk__7", "unk__8", H]))
    axes = sequence_axes(unrelated, TENSORS, "attention_mask")
    assert axes["emb"] is None and axes["out"] == (1,)


def test_drop_padding_by_sizes_keeps_real_queries_and_keys():
    rng = np.random.default_rng(3)
    keep = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    x = rng.normal(size=(2, 4, 5, 5)).astype(np.float32)  # [B, heads, T, T]
    expected = np.concatenate([x[0, :, :3, :3].ravel(), x[1].ravel()])
    np.testing.assert_array_equal(np.sort(drop_padding(x, keep, None)), np.sort(expected))
    hidden = rng.normal(size=(2, 5, 7)).astype(np.float32)  # [B, T, H]: rows only
    np.testing.assert_array_equal(drop_padding(hidden, keep, None), np.concatenate([hidden[0, :3], hidden[1]]))
    pooled = rng.normal(size=(2, 7)).astype(np.float32)  # no sequence axis: whole
    assert drop_padding(pooled, keep, None) is pooled
    assert drop_padding(hidden, keep, (2,)) is hidden  # an axis the model names but of another size: whole
    square_hidden = rng.normal(size=(2, 5, 5)).astype(np.float32)  # [B, T, H] with H == T: the model says rows only
    np.testing.assert_array_equal(drop_padding(square_hidden, keep, (1,)), square_hidden[keep])


def test_only_a_zero_one_mask_with_a_zero_counts_as_padding():
    assert real_positions({"attention_mask": np.ones((2, 3), np.int64)}, "attention_mask") is None
    assert real_positions({"attention_mask": np.array([[0.0, -1e9]], np.float32)}, "attention_mask") is None
    keep = real_positions({"attention_mask": np.array([[1, 0]], np.int64)}, "attention_mask")
    np.testing.assert_array_equal(keep, [[True, False]])
    assert real_positions({"x": np.zeros((1, 2))}, None) is None
