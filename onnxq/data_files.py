"""Reading data files safely: .npy and .npz without pickle, with caps on what a file may make onnxq allocate.

A data file is untrusted input. Only regular files are opened (a FIFO or a device would block or never
end), and never through numpy's loader: the .npy header is parsed here, its shape and dtype checked, and
the bytes it declares compared with the file (or, inside a .npz, with the zip's declared sizes) and with
the cap *before* anything is allocated or decompressed. So a truncated file, a 3 MB zip that inflates to
3 GiB or a header that declares 10**12 samples fails in milliseconds with a DataError.

Caps: :data:`DEFAULT_MAX_DATA_BYTES` (4 GiB) of array data per data source, overridable with the
environment variable ``ONNXQ_MAX_DATA_BYTES``; :data:`DEFAULT_MAX_SAMPLES` samples (axis 0) per array,
overridable with ``ONNXQ_MAX_DATA_SAMPLES``; and a compressed .npz member may not inflate more than
200-fold to more than 64 MiB (a zip bomb: genuine data that compresses so well can be saved uncompressed).
"""

from __future__ import annotations

import ast
import math
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from onnxq.errors import ConfigError, DataError

DEFAULT_MAX_DATA_BYTES = 4 * 2**30
DEFAULT_MAX_SAMPLES = 2**24
MAX_BYTES_ENV = "ONNXQ_MAX_DATA_BYTES"
MAX_SAMPLES_ENV = "ONNXQ_MAX_DATA_SAMPLES"
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
_MAX_HEADER_BYTES = 65536  # numpy writes a few hundred; its own reader refuses more than 10,000
_MAX_RANK = 32
_NUMERIC_KINDS = "biufc"  # bool, int, uint, float, complex: nothing that could hold Python objects
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
# What the zip and zlib modules raise for damaged archives (CRC, truncation, bad streams, odd fields).
_ZIP_FAILURES = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    struct.error,
    NotImplementedError,
    RuntimeError,
    OverflowError,
)
# A compressed member that inflates more than this much past this size is refused as a zip bomb before
# it is inflated; real data compresses a few-fold (deflate's own limit is about 1032:1).
_BOMB_RATIO = 200
_BOMB_MIN_BYTES = 64 * 2**20
_PY2_LONG = re.compile(r"(?<=\d)L\b")  # Python 2 wrote shapes as (10L, 3L)
_REWRITE_NPZ = "re-create it with np.savez (or np.savez_compressed)"
_REWRITE_NPY = "re-create it with np.save"


def max_data_bytes() -> int:
    """The cap on the array bytes of one data source: $ONNXQ_MAX_DATA_BYTES, else 4 GiB."""
    return _env_cap(MAX_BYTES_ENV, DEFAULT_MAX_DATA_BYTES)


def max_samples() -> int:
    """The cap on axis 0 of one data array: $ONNXQ_MAX_DATA_SAMPLES, else 2**24."""
    return _env_cap(MAX_SAMPLES_ENV, DEFAULT_MAX_SAMPLES)


def _env_cap(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(
            f"environment variable {name}={text!r:.40} is not a positive whole number", hint=f"e.g. {name}={default}"
        )
    return int(text)


@contextmanager
def open_regular_file(path: Path, what: str = "data file") -> Iterator[BinaryIO]:
    """Open ``path`` for reading, refusing anything but a regular file (checked on the open descriptor,
    with O_NONBLOCK so that opening a FIFO does not wait for a writer)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DataError(
            f"cannot open the {what} {path!s:.200}: {reason}", hint="check the path and its permissions"
        ) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise DataError(
                f"the {what} {path} is not a regular file ({_file_kind(mode)})",
                hint="pass a .npz, a .npy or a folder of .npy files stored on disk",
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def _file_kind(mode: int) -> str:
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "not a plain file")


# --- .npy headers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NpyHeader:
    """What a .npy header declares; ``offset`` is where the array data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_npy_header(fh: BinaryIO, where: str) -> NpyHeader:
    """Parse and check the header at the current position of ``fh``; DataError when it is not a plain
    numeric array (object dtypes, which would need pickle, included)."""
    magic = fh.read(8)
    if len(magic) < 8 or magic[:6] != NPY_MAGIC:
        found = "a zip archive (name it .npz)" if magic[:4] == ZIP_MAGIC else "no .npy header"
        raise DataError(f"{where}: not a .npy array: {found}", hint=_REWRITE_NPY)
    version = (magic[6], magic[7])
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise DataError(
            f"{where}: .npy format version {version[0]}.{version[1]} is not one numpy writes", hint=_REWRITE_NPY
        )
    size_format = "<H" if version == (1, 0) else "<I"
    raw_size = fh.read(struct.calcsize(size_format))
    if len(raw_size) < struct.calcsize(size_format):
        raise DataError(f"{where}: the .npy header is truncated", hint=_REWRITE_NPY)
    (length,) = struct.unpack(size_format, raw_size)
    if length > _MAX_HEADER_BYTES:
        raise DataError(
            f"{where}: the .npy header claims {length} bytes; numpy writes a few hundred", hint=_REWRITE_NPY
        )
    raw = fh.read(length)
    if len(raw) < length:
        raise DataError(f"{where}: the .npy header is truncated", hint=_REWRITE_NPY)
    fields = _header_fields(raw, version, where)
    shape, dtype, fortran = _checked_fields(fields, where)
    return NpyHeader(shape, dtype, fortran, len(magic) + len(raw_size) + length)


def _header_fields(raw: bytes, version: tuple[int, int], where: str) -> dict:
    try:
        text = raw.decode("utf-8" if version == (3, 0) else "latin1")
        if version < (3, 0):
            text = _PY2_LONG.sub("", text)
        fields = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError) as exc:
        why = {
            UnicodeDecodeError: "it is not text in the format version's encoding",
            ValueError: "it is not a Python literal, as numpy's {'descr': ..., 'shape': ...} header is",
            SyntaxError: "it is not a Python literal, as numpy's {'descr': ..., 'shape': ...} header is",
        }.get(type(exc), f"{type(exc).__name__} while parsing it")
        raise DataError(f"{where}: the .npy header is not readable: {why}", hint=_REWRITE_NPY) from exc
    if not isinstance(fields, dict) or set(fields) != {"descr", "fortran_order", "shape"}:
        raise DataError(
            f"{where}: the .npy header is not numpy's {{descr, fortran_order, shape}} dictionary", hint=_REWRITE_NPY
        )
    return fields


def _checked_fields(fields: dict, where: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    shape, fortran = fields["shape"], fields["fortran_order"]
    if (
        not isinstance(shape, tuple)
        or len(shape) > _MAX_RANK
        or not all(type(d) is int and d >= 0 for d in shape)  # bool is an int subclass: refused too
    ):
        raise DataError(f"{where}: the .npy header's shape {shape!r:.80} is not a tuple of sizes", hint=_REWRITE_NPY)
    if not isinstance(fortran, bool):
        raise DataError(f"{where}: the .npy header's fortran_order {fortran!r:.40} is not a bool", hint=_REWRITE_NPY)
    try:
        dtype = np.lib.format.descr_to_dtype(fields["descr"])
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise DataError(
            f"{where}: the .npy header's dtype {fields['descr']!r:.80} is not valid ({str(exc)[:120]})",
            hint=_REWRITE_NPY,
        ) from exc
    if dtype.hasobject or dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.shape:
        raise DataError(f"{where}: {_not_numeric(dtype)}", hint="save plain numeric arrays with np.save / np.savez")
    return shape, dtype, fortran


def _not_numeric(dtype: np.dtype) -> str:
    """What a dtype that is not a plain number holds, in words."""
    if dtype.fields is not None:
        return f"holds records with fields {', '.join(dtype.names or ())} (a structured dtype), not plain numbers"
    if dtype.shape:
        return f"holds a sub-array dtype {dtype}, not plain numbers"
    if dtype.hasobject:
        return "holds Python objects (dtype object), which only pickle can read; onnxq never unpickles data"
    kinds = {"U": "strings", "S": "byte strings", "M": "datetimes", "m": "time deltas", "V": "raw bytes (void)"}
    return f"holds {kinds.get(dtype.kind, 'values')} ({dtype}), not numbers"


# --- arrays ------------------------------------------------------------------------------------------


class Budget:
    """The bytes still allowed for one data source; every array is charged before it is read."""

    def __init__(self, source: Path) -> None:
        self.source, self.cap, self.left, self.samples = source, max_data_bytes(), max_data_bytes(), max_samples()

    def charge(self, header: NpyHeader, where: str) -> None:
        if header.shape and header.shape[0] > self.samples:
            raise DataError(
                f"{where}: declares {header.shape[0]:,} samples (shape {header.shape}), more than the cap of "
                f"{self.samples:,}",
                hint=f"pass fewer samples, or raise the cap with {MAX_SAMPLES_ENV}=N if the data is genuine",
            )
        # Zero-length axes hold no bytes, but the other axes still say how absurd the header is.
        declared = math.prod(max(d, 1) for d in header.shape) * header.dtype.itemsize
        if max(declared, header.nbytes) > self.left:
            raise DataError(
                f"{where}: declares {header.nbytes:,} bytes ({header.dtype} {header.shape}), more than the "
                f"{self.cap:,} bytes allowed for the data of {self.source}",
                hint=f"pass fewer samples, or raise the cap with {MAX_BYTES_ENV}=BYTES if the data is genuine",
            )
        self.left -= header.nbytes


def read_array_data(fh: BinaryIO, header: NpyHeader, available: int, where: str) -> np.ndarray:
    """The array ``header`` declares, read from ``fh`` (``available`` bytes remain); refused when short."""
    if header.nbytes > available:
        raise DataError(
            f"{where}: the header declares {header.nbytes:,} bytes of {header.dtype} {header.shape}, but only "
            f"{max(available, 0):,} follow: the file is truncated",
            hint="the file may be an incomplete copy; create it again",
        )
    flat = np.empty(math.prod(header.shape), dtype=header.dtype)
    view = memoryview(flat.view(np.uint8))  # bytes, whatever the dtype's byte order
    got = 0
    while got < flat.nbytes:
        n = fh.readinto(view[got:])
        if not n:
            raise DataError(f"{where}: the array data ends early: the file is truncated", hint=_REWRITE_NPY)
        got += n
    if header.fortran_order:
        return flat.reshape(header.shape[::-1]).transpose()
    return flat.reshape(header.shape)


def read_npy(path: Path, budget: Budget | None = None) -> np.ndarray:
    """One .npy file, checked against the cap and the file's size before its data is read."""
    budget = budget or Budget(path)
    with open_regular_file(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        header = read_npy_header(fh, str(path))
        budget.charge(header, str(path))
        try:
            return read_array_data(fh, header, size - header.offset, str(path))
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}", hint="check the file") from exc


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a .npz, keyed like np.load (the member name without .npy); members that are not
    plain .npy arrays, encrypted or unusually compressed members, and anything over the cap are refused."""
    budget = Budget(path)
    with open_regular_file(path) as fh:
        if fh.read(6) == NPY_MAGIC:
            raise DataError(f"{path}: is a .npy file, not a .npz archive", hint="rename it to .npy")
        fh.seek(0)
        try:
            with zipfile.ZipFile(fh) as archive:
                members = _checked_members(archive, path)
                return {key: _read_member(archive, info, path, budget) for key, info in members.items()}
        except _ZIP_FAILURES as exc:
            raise DataError(
                f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})", hint=_REWRITE_NPZ
            ) from exc


def _checked_members(archive: zipfile.ZipFile, path: Path) -> dict[str, zipfile.ZipInfo]:
    """{key: member}, refusing what np.savez never writes, before any member is decompressed."""
    members: dict[str, zipfile.ZipInfo] = {}
    declared = 0
    for info in archive.infolist():
        if info.is_dir():
            continue
        where = f"{path}: member {info.filename!r:.120}"
        if not info.filename.endswith(".npy"):
            raise DataError(f"{where} is not a .npy array", hint=f"a .npz holds only .npy arrays; {_REWRITE_NPZ}")
        if info.flag_bits & 0x1:
            raise DataError(f"{where} is encrypted", hint=f"onnxq reads no password-protected archives; {_REWRITE_NPZ}")
        if info.compress_type not in _ZIP_METHODS:
            raise DataError(
                f"{where} uses zip compression method {info.compress_type}, not stored or deflate", hint=_REWRITE_NPZ
            )
        if info.file_size > _BOMB_MIN_BYTES and info.file_size > _BOMB_RATIO * max(info.compress_size, 1):
            raise DataError(
                f"{where} inflates {info.file_size / max(info.compress_size, 1):,.0f}-fold, from "
                f"{info.compress_size:,} to {info.file_size:,} bytes: a zip bomb, or data too uniform to calibrate on",
                hint="if the data is genuine, save it uncompressed with np.savez",
            )
        key = info.filename[: -len(".npy")]
        if key in members:
            raise DataError(f"{where} appears twice in the archive", hint=_REWRITE_NPZ)
        members[key] = info
        declared += info.file_size
    if declared > max_data_bytes() + len(members) * (_MAX_HEADER_BYTES + 12):  # each member has a header too
        raise DataError(
            f"{path}: its members would expand to {declared:,} bytes, more than the {max_data_bytes():,} bytes "
            "allowed for one data file",
            hint=f"pass fewer samples, or raise the cap with {MAX_BYTES_ENV}=BYTES if the data is genuine",
        )
    return members


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, budget: Budget) -> np.ndarray:
    where = f"{path}: member {info.filename!r:.120}"
    # zipfile never inflates more than the declared file_size, and checks the CRC at its end.
    with archive.open(info) as member:
        header = read_npy_header(member, where)
        budget.charge(header, where)
        return read_array_data(member, header, info.file_size - header.offset, where)


def list_npy_files(folder: Path) -> list[Path]:
    """The .npy files of a data folder, sorted by name; DataError when the folder cannot be listed."""
    try:
        return sorted(p for p in folder.iterdir() if p.suffix == ".npy")
    except OSError as exc:
        raise DataError(
            f"cannot list the data folder {folder}: {exc.strerror or exc}", hint="check its permissions"
        ) from exc
