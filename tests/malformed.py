"""Byte-level builders of malformed data files, shared by the unit tests and the fuzz corpus.

Each builder returns the bytes of a file that numpy's own writers never produce: .npy headers of every kind
of wrong, zip archives with flags, methods, streams or sizes that lie, and a small zip that inflates to GiBs.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np

NPY_MAGIC = b"\x93NUMPY"


def npy_bytes(array: np.ndarray) -> bytes:
    """What np.save writes for ``array``."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def npy_with_header(header: str | bytes, payload: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    """A .npy file with ``header`` as its header text (padded like numpy pads it) and ``payload`` after."""
    text = header if isinstance(header, bytes) else header.encode("latin1" if version < (3, 0) else "utf-8")
    size_len = 2 if version == (1, 0) else 4
    pad = (-(len(NPY_MAGIC) + 2 + size_len + len(text) + 1)) % 64
    text += b" " * pad + b"\n"
    size = struct.pack("<H" if size_len == 2 else "<I", len(text))
    return NPY_MAGIC + bytes(version) + size + text + payload


def npy_header_text(descr: str = "<f4", shape: tuple = (8, 1, 16, 16), fortran: object = False) -> str:
    return f"{{'descr': {descr!r}, 'fortran_order': {fortran!r}, 'shape': {shape!r}, }}"


# Header texts numpy's writer never produces, each a different way for a reader to go wrong.
BAD_NPY_HEADERS = {
    "unclosed-paren": "{'descr': '<f4', 'fortran_order': False, 'shape': (8, 1, 16,",  # tokenize.TokenError
    "not-a-dict": "[1, 2, 3]",
    "missing-key": "{'descr': '<f4', 'shape': (8, 1, 16, 16)}",
    "extra-key": npy_header_text()[:-1] + "'extra': 1}",
    "bad-descr": npy_header_text(descr="<x9"),
    "object-descr": npy_header_text(descr="|O"),
    "string-descr": npy_header_text(descr="<U4"),
    "struct-descr": "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (8,), }",
    "negative-dim": npy_header_text(shape=(-8, 1, 16, 16)),
    "bool-dim": npy_header_text(shape=(True, 1, 16, 16)),
    "float-dim": npy_header_text(shape=(8.0, 1, 16, 16)),
    "list-shape": npy_header_text(shape=[8, 1, 16, 16]),
    "fortran-not-bool": npy_header_text(fortran=2),
    "huge-rank": npy_header_text(shape=(1,) * 40),
    "code": "__import__('os').system('true')",
    "deep-nesting": "(" * 200 + ")" * 200,
    "nul-bytes": "\0" * 100,
}


def huge_npy(samples: int = 10**12, payload: bytes = b"\0" * 1024) -> bytes:
    """A .npy whose header declares ``samples`` 16x16 images followed by only ``payload``."""
    return npy_with_header(npy_header_text(shape=(samples, 1, 16, 16)), payload)


def npz_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip archive with these members (name -> bytes), as np.savez would lay it out; the same bytes every
    time (a fixed timestamp)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for name, data in members.items():
            add_member(archive, name, data, compression)
    return buf.getvalue()


def add_member(archive: zipfile.ZipFile, name: str, data: bytes, compression: int = zipfile.ZIP_STORED) -> None:
    archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, compress_type=compression)


def set_zip_flags(raw: bytes, *, flag_bits: int = 0, method: int | None = None) -> bytes:
    """``raw`` with general-purpose flag bits OR-ed in and the compression method replaced, in every local
    and central header (the central directory is what readers trust)."""
    out = bytearray(raw)
    for signature, flags_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = 0
        while (at := out.find(signature, start)) >= 0:
            out[at + flags_at] |= flag_bits & 0xFF
            if method is not None:
                out[at + method_at : at + method_at + 2] = struct.pack("<H", method)
            start = at + 4
    return bytes(out)


def corrupt_deflate(raw: bytes, seed: int = 0) -> bytes:
    """A deflated archive with bytes of its first member's compressed stream scrambled."""
    out = bytearray(raw)
    at = out.find(b"PK\x03\x04")
    name_len, extra_len = struct.unpack("<HH", out[at + 26 : at + 30])
    start = at + 30 + name_len + extra_len
    size = struct.unpack("<I", out[at + 18 : at + 22])[0]
    rng = np.random.default_rng(seed)
    for pos in rng.integers(start, start + max(size, 1), 16):
        out[int(pos)] ^= 0x5A
    return bytes(out)


_ZERO_CRC: dict[tuple[bytes, int], int] = {}


def zip_bomb(total_bytes: int = 3 * 2**30, name: str = "input.npy") -> bytes:
    """A one-member .npz of about total_bytes / 1000 whose member really inflates to ``total_bytes``: an
    .npy header for float32 zeros, then one deflated block of 1 MiB of zeros repeated (after a full flush
    each block stands alone, so the repeats are a valid stream). The CRC is right, so only a size check
    before reading can refuse it."""
    chunk = 1 << 20
    samples = (total_bytes - 128) // (4 * 256)
    header = npy_with_header(npy_header_text(shape=(samples, 1, 16, 16)))
    zeros = samples * 256 * 4
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = comp.compress(header) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(bytes(chunk)) + comp.flush(zlib.Z_FULL_FLUSH)
    tail_zeros = zeros % chunk
    stream = head + block * (zeros // chunk) + comp.compress(bytes(tail_zeros)) + comp.flush()
    key = (header, zeros)
    if key not in _ZERO_CRC:
        crc, big = zlib.crc32(header), bytes(64 << 20)
        for _ in range(zeros // len(big)):
            crc = zlib.crc32(big, crc)
        _ZERO_CRC[key] = zlib.crc32(bytes(zeros % len(big)), crc)
    return one_member_zip(name.encode(), stream, len(header) + zeros, _ZERO_CRC[key])


def one_member_zip(name: bytes, stream: bytes, size: int, crc: int) -> bytes:
    """A deflated single-member zip written by hand (zipfile cannot take a precompressed stream); ZIP64
    sizes where the member passes 4 GiB."""
    big = size >= 0xFFFFFFFF
    extra = struct.pack("<HHQQ", 1, 16, size, len(stream)) if big else b""
    sizes = (0xFFFFFFFF, 0xFFFFFFFF) if big else (len(stream), size)
    version = 45 if big else 20
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", version, 0, 8, 0, 0, crc, *sizes, len(name), len(extra))
    central = struct.pack(
        "<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", version, version, 0, 8, 0, 0, crc, *sizes, len(name), len(extra),
        0, 0, 0, 0, 0,
    )  # fmt: skip
    body = local + name + extra + stream
    directory = central + name + extra
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(directory), len(body), 0)
    return body + directory + end
