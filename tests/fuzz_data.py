"""Case classes of damaged inputs other than the model: data files of every broken kind (tests/malformed.py),
arrays that do not fit the model, output and report paths that are inputs or unusable, and bad recipes."""

from __future__ import annotations

import contextlib
import io
import zipfile
import zlib

import numpy as np

from fuzz_case import CALIB, OUT, Case, Fifo, FileSpec, Folder, Link, Sources, choice
from malformed import (
    BAD_NPY_HEADERS,
    add_member,
    corrupt_deflate,
    huge_npy,
    npy_bytes,
    npy_header_text,
    npy_with_header,
    npz_bytes,
    one_member_zip,
    set_zip_flags,
    zip_bomb,
)


def _data_case(src: Sources, name: str, klass: str, raw: FileSpec, suffix: str = ".npz", **kw) -> Case:
    """The valid mlp model with ``raw`` as both calibration and evaluation data."""
    path = f"bad{suffix}"
    paths = {"calib": path, "data": path}
    must = kw.pop("must_fail", ("quantize", "eval"))
    return src.case(name, klass, src.models["mlp"], files={path: raw}, paths=paths, must_fail=must, **kw)


def npz_members(rng, src: Sources) -> Case:
    x = npy_bytes(src.x)
    kind = choice(rng, ["raw-bytes", "txt", "dir-only", "duplicate", "empty-zip", "nested-name", "pickle-member"])
    members = {
        "raw-bytes": {"input": b"hello"},
        "txt": {"input.txt": x},
        "dir-only": {"input/": b""},
        "duplicate": {"input.npy": x},
        "empty-zip": {},
        "nested-name": {"../input.npy": x},
        "pickle-member": {"input.npy": b"\x80\x04K\x01."},
    }[kind]
    raw = npz_bytes(members)
    if kind == "duplicate":  # a second member of the same name, added by hand
        buf = io.BytesIO(raw)
        with zipfile.ZipFile(buf, "a") as archive, _quiet_duplicates():
            add_member(archive, "input.npy", x)
        raw = buf.getvalue()
    return _data_case(src, kind, "npz-members", raw)


@contextlib.contextmanager
def _quiet_duplicates():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def npy_header(rng, src: Sources) -> Case:
    kind = choice(rng, sorted(BAD_NPY_HEADERS) + ["version-9", "header-length", "truncated-header", "short-data"])
    payload = src.x.tobytes()
    if kind == "version-9":
        raw = npy_with_header(npy_header_text(shape=src.x.shape), payload, version=(1, 0))
        raw = raw[:6] + bytes([9, 9]) + raw[8:]
    elif kind == "header-length":
        raw = npy_bytes(src.x)
        raw = raw[:8] + b"\xff\xff" + raw[10:]
    elif kind == "truncated-header":
        raw = npy_bytes(src.x)[: int(rng.integers(1, 60))]
    elif kind == "short-data":
        raw = npy_bytes(src.x)[: -int(rng.integers(1, 1000))]
    else:
        raw = npy_with_header(BAD_NPY_HEADERS[kind], payload)
    as_npz = rng.random() < 0.5
    if as_npz:
        raw = npz_bytes({"input.npy": raw}, choice(rng, [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    return _data_case(src, f"{kind}{'@npz' if as_npz else ''}", "npy-header", raw, ".npz" if as_npz else ".npy")


def zip_container(rng, src: Sources) -> Case:
    good = npz_bytes({"input.npy": npy_bytes(src.x)}, zipfile.ZIP_DEFLATED)
    kind = choice(rng, ["encrypted", "method", "deflate", "truncated", "crc", "garbage", "zeroed-directory"])
    if kind == "encrypted":
        raw = set_zip_flags(good, flag_bits=0x1)
    elif kind == "method":
        method = choice(rng, [99, 1, 6, 12, 14, 95])
        raw, kind = set_zip_flags(good, method=method), f"method-{method}"
    elif kind == "deflate":
        raw = corrupt_deflate(good, seed=int(rng.integers(1000)))
    elif kind == "truncated":
        raw = good[: int(rng.integers(1, len(good)))]
    elif kind == "crc":
        stored = bytearray(npz_bytes({"input.npy": npy_bytes(src.x)}))
        stored[200] ^= 0xFF  # inside the stored member's data
        raw = bytes(stored)
    elif kind == "garbage":
        raw = b"PK\x03\x04" + rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    else:
        at = good.find(b"PK\x01\x02")
        raw = good[:at] + bytes(len(good) - at)
    return _data_case(src, kind, "zip-container", raw)


def huge_data(rng, src: Sources) -> Case:
    kind = choice(rng, ["trillion", "over-sample-cap", "wide-dims", "bomb", "bomb-declared", "bomb-lying"])
    if kind == "trillion":
        raw = huge_npy(10**12)
    elif kind == "over-sample-cap":
        raw = huge_npy(2**24 + 1, payload=b"")
    elif kind == "wide-dims":
        raw = npy_with_header(npy_header_text(shape=(4, 1, 2**31, 2**31)))
    elif kind == "bomb":
        raw = zip_bomb(3 * 2**30)
    elif kind == "bomb-declared":  # the zip claims 8 GiB for a small stream
        raw = one_member_zip(b"input.npy", zlib_stream(npy_bytes(src.x)), 2**33, 0)
    else:  # the zip claims the true small size, the stream goes on for GiBs: only the declared part is read
        head = npy_bytes(src.x)
        stream = zlib_stream(head + bytes(64 << 20))
        raw = one_member_zip(b"input.npy", stream, len(head), zlib.crc32(head))
    as_npz = kind.startswith("bomb") or rng.random() < 0.5
    if not kind.startswith("bomb") and as_npz:
        raw = npz_bytes({"input.npy": raw})
    must = () if kind == "bomb-lying" else ("quantize", "eval")
    return _data_case(src, kind, "huge-data", raw, ".npz" if as_npz else ".npy", must_fail=must)


def zlib_stream(data: bytes) -> bytes:
    """A raw deflate stream of ``data``, as a zip member holds it."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    return comp.compress(data) + comp.flush()


def data_kind(rng, src: Sources) -> Case:
    kind = choice(rng, ["npy-as-npz", "npz-as-npy", "txt", "empty-folder", "folder-bad-file", "folder-scalar",
                         "folder-mixed", "folder-subdir", "loop", "folder-as-npz", "fifo", "missing", "empty-file"])
    x = npy_bytes(src.x)
    files: dict[str, FileSpec] = {}
    path, spec = "bad.npz", None
    if kind == "npy-as-npz":
        spec = x
    elif kind == "npz-as-npy":
        path, spec = "bad.npy", src.calib
    elif kind == "txt":
        path, spec = "bad.txt", x
    elif kind.startswith("folder-") and kind != "folder-as-npz":
        path = "parts"
        files["parts/a.npy"] = x
        files["parts/b.npy"] = {
            "folder-bad-file": b"\x93NUMPY garbage",
            "folder-scalar": npy_bytes(np.float32(1.0)),
            "folder-mixed": npy_bytes(src.x[:, :, :8]),
            "folder-subdir": Folder(),
        }[kind]
    elif kind == "empty-folder":
        path, spec = "parts", Folder()
    elif kind == "loop":
        spec = Link("bad.npz")
    elif kind == "folder-as-npz":
        spec = Folder()
    elif kind == "fifo":
        spec = Fifo()
    elif kind == "empty-file":
        spec = b""
    else:
        path = "absent.npz"
    if spec is not None:
        files[path] = spec
    paths = {"calib": path, "data": path}
    return src.case(kind, "data-kind", src.models["mlp"], files=files, paths=paths, must_fail=("quantize", "eval"),
                    hang_risk=kind == "fifo")  # fmt: skip


def data_values(rng, src: Sources) -> Case:
    """Well-formed files whose arrays do not fit the model."""
    x, labels = src.x, src.labels
    kind = choice(rng, ["int32", "uint8", "float64", "complex", "bool", "nan", "inf", "shape", "rank", "extra-key",
                         "missing-key", "labels-float", "labels-2d", "labels-range", "labels-count", "zero-samples",
                         "big-endian", "fortran"])  # fmt: skip
    arrays = {"input": x, "label": labels}
    if kind in ("int32", "uint8", "float64", "complex", "bool"):
        arrays["input"] = x.astype(kind if kind != "complex" else np.complex64)
    elif kind in ("nan", "inf"):
        bad = x.copy()
        bad.flat[int(rng.integers(bad.size))] = np.nan if kind == "nan" else np.inf
        arrays["input"] = bad
    elif kind == "shape":
        arrays["input"] = x[:, :, :8, :8]
    elif kind == "rank":
        arrays["input"] = x[:, 0]
    elif kind == "extra-key":
        arrays["other"] = x
    elif kind == "missing-key":
        arrays = {"inputs": x}
    elif kind == "labels-float":
        arrays["label"] = labels.astype(np.float32)
    elif kind == "labels-2d":
        arrays["label"] = labels[:, None]
    elif kind == "labels-range":
        arrays["label"] = labels + 100
    elif kind == "labels-count":
        arrays["label"] = labels[:2]
    elif kind == "zero-samples":
        arrays = {"input": x[:0]}
    elif kind == "big-endian":
        arrays["input"] = x.astype(">f4")
    elif kind == "fortran":
        arrays["input"] = np.asfortranarray(x)
    raw = npz_bytes({f"{k}.npy": npy_bytes(np.asarray(v)) for k, v in arrays.items()})
    ok = kind in ("float64", "big-endian", "fortran", "labels-2d", "labels-float", "labels-range", "labels-count")
    must = () if ok else ("quantize", "eval")
    return _data_case(src, kind, "data-values", raw, must_fail=must)


# --- paths and recipes -------------------------------------------------------------------------------


def output_paths(rng, src: Sources) -> Case:
    kind = choice(rng, ["output-is-calib", "output-links-calib", "output-is-model", "report-is-model", "no-folder",
                         "output-folder", "report-suffix", "output-loop", "report-folder", "output-is-recipe"])
    name = choice(rng, ["mlp", "resnet"])
    files: dict[str, FileSpec] = {}
    paths: dict[str, str] = {}
    args: dict[str, list[str]] = {}
    must = ("quantize",)
    if kind == "output-is-calib":
        paths["output"] = CALIB
    elif kind == "output-links-calib":
        files["alias.npz"] = Link(CALIB)
        paths["output"] = "alias.npz"
    elif kind == "output-is-model":
        paths["output"] = "m/../m/model.onnx"
    elif kind == "report-is-model":  # a model named .json: the report would overwrite it
        files["m/model.json"] = src.models[name]
        paths["model"] = paths["report"] = "m/model.json"
        must = ("eval",)
    elif kind == "no-folder":
        paths["output"], paths["report"], must = "nowhere/q.onnx", "nowhere/r.json", ("quantize", "eval")
    elif kind == "output-folder":
        paths["output"] = OUT
    elif kind == "report-suffix":
        paths["report"], must = f"{OUT}/r.onnx", ("eval",)
    elif kind == "output-loop":
        files["loop.onnx"] = Link("loop.onnx")
        paths["output"] = "loop.onnx"
    elif kind == "report-folder":
        paths["report"], must = OUT, ("eval",)
    else:
        files["recipe.json"] = b'{"method": "minmax"}'
        args["quantize"] = ["--recipe", "{root}/recipe.json"]
        paths["output"] = "recipe.json"
    return src.case(kind, "output-path", src.models[name], files=files, paths=paths, args=args, must_fail=must)


RECIPES = [b"{", b"[]", b'{"bogus": 1}', b'{"per_channel": "yes"}', b'{"passes": ["nope"]}', b"\xff\xfe\x00",
           b'{"calib_samples": -5}', b'{"calib_samples": 1e400}', b'{"batch_size": 0}', b'{"method": 7}',
           b'{"adaround": {"iterations": 2}, "passes": ["adaround"]}', b'{"percentile": 150, "method": "percentile"}',
           b'{"cle": {"bogus": 1}, "passes": ["cle"]}', b"null", b'"text"', b'{"exclude_nodes": 5}']  # fmt: skip


def recipe(rng, src: Sources) -> Case:
    index = int(rng.integers(len(RECIPES) + 2))
    suffix = ".json"
    if index < len(RECIPES):
        spec: FileSpec = RECIPES[index]
    elif index == len(RECIPES):
        spec, suffix = b"a: [unclosed\n  - b: {", ".yaml"
    else:
        spec = Fifo()
    name, _ = src.pick(rng)
    path = f"recipe{suffix}"
    args = {"quantize": ["--recipe", f"{{root}}/{path}"]}
    return src.case(f"{name}:recipe#{index}", "recipe", src.models[name], files={path: spec}, args=args,
                    hang_risk=isinstance(spec, Fifo), must_fail=("quantize",) if isinstance(spec, Fifo) else ())
