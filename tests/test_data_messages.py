"""A data file that onnxq refuses says what is wrong with it: strings, records and Python objects are named as
such (only objects need pickle), and an unreadable .npy header says why."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SAMPLE_MODELS
from onnxq.cli import main

CASES = [
    ("strings", np.array(["abc", "d"]), "holds strings (<U3), not numbers"),
    ("records", np.zeros(3, dtype=[("a", "f4"), ("b", "i4")]), "holds records with fields a, b"),
    ("objects", np.array([{"a": 1}], dtype=object), "holds Python objects (dtype object)"),
]


@pytest.mark.parametrize("array, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_non_numeric_arrays_are_named_for_what_they_hold(tmp_path, capsys, array, fragment):
    np.savez(tmp_path / "d.npz", input=array)
    assert main(["eval", str(SAMPLE_MODELS / "mlp_digits.onnx"), "--data", str(tmp_path / "d.npz")]) == 2
    error = capsys.readouterr().err.splitlines()[0]
    assert fragment in error
    assert ("pickle" in error) == (array.dtype == object)  # only objects are about unpickling


def test_an_unreadable_npy_header_says_why(tmp_path, capsys):
    np.save(tmp_path / "ok.npy", np.zeros((2, 1, 16, 16), np.float32))
    raw = (tmp_path / "ok.npy").read_bytes().replace(b"'fortran_order': False", b"'fortran_order': Fals3")
    (tmp_path / "bad.npy").write_bytes(raw)
    assert main(["eval", str(SAMPLE_MODELS / "mlp_digits.onnx"), "--data", str(tmp_path / "bad.npy")]) == 2
    assert "the .npy header is not readable: it is not a Python literal" in capsys.readouterr().err
