"""Reading data files (onnxq.data_files through onnxq.data.open_dataset): every malformed .npy or .npz is
a DataError, nothing is allocated or inflated past the caps, and a FIFO never blocks.

The files are built byte by byte in tests/malformed.py; each case below crashed (AttributeError, TokenError,
RuntimeError, zlib.error, NotImplementedError, MemoryError, TypeError) or hung before the reader existed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, make_tiny_model
from malformed import (
    BAD_NPY_HEADERS,
    corrupt_deflate,
    huge_npy,
    npy_bytes,
    npy_with_header,
    npz_bytes,
    set_zip_flags,
    zip_bomb,
)
from onnxq.data import open_dataset
from onnxq.errors import ConfigError, DataError

X = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)


@pytest.fixture
def model():
    return make_tiny_model()  # one input "x" [1, 1, 8, 8]


def write(tmp_path: Path, name: str, raw: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def refused(path: Path, model, match: str) -> DataError:
    with pytest.raises(DataError, match=match) as info:
        open_dataset(path, model)
    return info.value


def test_plain_npy_and_npz_files_read_as_numpy_writes_them(tmp_path, model):
    np.save(tmp_path / "x.npy", X)
    np.savez(tmp_path / "stored.npz", x=X)
    np.savez_compressed(tmp_path / "deflated.npz", x=X)
    for name in ("x.npy", "stored.npz", "deflated.npz"):
        np.testing.assert_array_equal(open_dataset(tmp_path / name, model).arrays["x"], X)


def test_fortran_order_and_big_endian_arrays_keep_their_values(tmp_path, model):
    np.save(tmp_path / "f.npy", np.asfortranarray(X))
    np.save(tmp_path / "be.npy", X.astype(">f4"))
    for name in ("f.npy", "be.npy"):
        np.testing.assert_array_equal(open_dataset(tmp_path / name, model).arrays["x"], X)


def test_a_folder_of_npy_files_is_concatenated_and_refuses_a_scalar_file(tmp_path, model):
    folder = tmp_path / "parts"
    folder.mkdir()
    np.save(folder / "a.npy", X[:2])
    np.save(folder / "b.npy", X[2:])
    np.testing.assert_array_equal(open_dataset(folder, model).arrays["x"], X)
    np.save(folder / "c.npy", np.float32(1.0))
    refused(folder, model, "single scalar")


def test_npz_member_that_is_not_npy_is_refused(tmp_path, model):
    # np.load hands such a member back as bytes, which crashed later with AttributeError
    path = write(tmp_path, "d.npz", npz_bytes({"x": b"hello"}))
    refused(path, model, "member 'x' is not a .npy array")


@pytest.mark.parametrize("kind", sorted(BAD_NPY_HEADERS))
def test_malformed_npy_headers_are_data_errors(tmp_path, model, kind):
    raw = npy_with_header(BAD_NPY_HEADERS[kind], X.tobytes())
    refused(write(tmp_path, "d.npy", raw), model, r"\.npy header|holds|not a \.npy")
    refused(write(tmp_path, "d.npz", npz_bytes({"x.npy": raw})), model, r"\.npy header|holds|not a \.npy")


def test_a_version_3_header_that_is_not_utf8_is_a_data_error(tmp_path, model):
    raw = npy_with_header(b"{'descr': '\xff<f4'}", version=(3, 0))
    refused(write(tmp_path, "d.npy", raw), model, "header is not readable")


def test_truncated_files_are_refused_before_allocating(tmp_path, model):
    raw = npy_bytes(X)
    for cut in (3, 9, 40, len(raw) - 1):
        refused(write(tmp_path, "d.npy", raw[:cut]), model, "truncated|not a .npy")
    refused(write(tmp_path, "d.npz", npz_bytes({"x.npy": raw})[:-30]), model, "not a readable .npz")


def test_encrypted_members_are_refused(tmp_path, model):
    raw = set_zip_flags(npz_bytes({"x.npy": npy_bytes(X)}), flag_bits=0x1)
    # onnxq's own refusal, before zipfile is asked to open the member (its RuntimeError says "encrypted" too)
    refused(write(tmp_path, "d.npz", raw), model, "member 'x.npy' is encrypted")


@pytest.mark.parametrize("method", [99, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_compression_methods_numpy_never_writes_are_refused(tmp_path, model, method):
    raw = set_zip_flags(npz_bytes({"x.npy": npy_bytes(X)}), method=method)
    refused(write(tmp_path, "d.npz", raw), model, f"compression method {method}")


def test_a_corrupt_deflate_stream_is_a_data_error(tmp_path, model):
    raw = corrupt_deflate(npz_bytes({"x.npy": npy_bytes(X)}, zipfile.ZIP_DEFLATED))
    refused(write(tmp_path, "d.npz", raw), model, "not a readable .npz")


def test_a_header_declaring_a_trillion_samples_is_refused_before_any_data_is_read(tmp_path, model, monkeypatch):
    def never(*_):
        raise AssertionError("array data was read before the header was checked against the caps")

    monkeypatch.setattr("onnxq.data_files.read_array_data", never)
    refused(write(tmp_path, "d.npy", huge_npy()), model, "1,000,000,000,000 samples")
    refused(write(tmp_path, "d.npz", npz_bytes({"x.npy": huge_npy()})), model, "samples")


def test_npy_named_npz_and_npz_named_npy_say_which_they_are(tmp_path, model):
    refused(write(tmp_path, "d.npz", npy_bytes(X)), model, "is a .npy file, not a .npz archive")
    refused(write(tmp_path, "d.npy", npz_bytes({"x.npy": npy_bytes(X)})), model, "zip archive")


def test_a_zip_bomb_is_refused_before_it_inflates(tmp_path, model, monkeypatch):
    bomb = write(tmp_path, "bomb.npz", zip_bomb(3 * 2**30))
    assert bomb.stat().st_size < 4 * 2**20  # 3 MiB on disk for 3 GiB inflated

    def never(*_, **__):
        raise AssertionError("a member was opened (and would inflate) before the archive was checked")

    monkeypatch.setattr(zipfile.ZipFile, "open", never)
    refused(bomb, model, "zip bomb")


def test_the_byte_cap_is_read_from_the_environment(tmp_path, model, monkeypatch):
    np.savez(tmp_path / "d.npz", x=X)
    np.save(tmp_path / "d.npy", X)
    monkeypatch.setenv("ONNXQ_MAX_DATA_BYTES", str(X.nbytes - 1))
    error = refused(tmp_path / "d.npz", model, "more than the")
    assert "ONNXQ_MAX_DATA_BYTES" in error.hint
    refused(tmp_path / "d.npy", model, "more than the")
    monkeypatch.setenv("ONNXQ_MAX_DATA_BYTES", str(X.nbytes))
    assert len(open_dataset(tmp_path / "d.npz", model)) == 3
    monkeypatch.setenv("ONNXQ_MAX_DATA_BYTES", "4GiB")
    with pytest.raises(ConfigError, match="ONNXQ_MAX_DATA_BYTES"):
        open_dataset(tmp_path / "d.npz", model)


def test_the_sample_cap_is_read_from_the_environment(tmp_path, model, monkeypatch):
    np.save(tmp_path / "d.npy", X)
    monkeypatch.setenv("ONNXQ_MAX_DATA_SAMPLES", "2")
    refused(tmp_path / "d.npy", model, "3 samples")


def test_a_folder_shares_one_byte_cap(tmp_path, model, monkeypatch):
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"{i}.npy", X[i : i + 1])
    monkeypatch.setenv("ONNXQ_MAX_DATA_BYTES", str(2 * X[:1].nbytes))
    refused(folder, model, "more than the")


def test_unreadable_data_paths_are_data_errors(tmp_path, model):
    loop = tmp_path / "loop.npz"
    loop.symlink_to(loop.name)
    refused(loop, model, "cannot open the data path")
    refused(tmp_path / ("n" * 300 + ".npz"), model, "cannot open the data path|does not exist")
    (tmp_path / "dir.npy").mkdir()
    folder = tmp_path / "withdir"
    folder.mkdir()
    (folder / "sub.npy").mkdir()
    refused(folder, model, "not a regular file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_as_data_is_refused_instead_of_blocking(tmp_path):
    fifo = tmp_path / "calib.npz"
    os.mkfifo(fifo)
    model = tmp_path / "m.onnx"
    model.write_bytes(make_tiny_model().SerializeToString())
    code = f"from onnxq.data import open_dataset; import onnx; open_dataset({str(fifo)!r}, onnx.load({str(model)!r}))"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail("reading a FIFO as data blocked")
    assert "is not a regular file (a FIFO)" in done.stderr
