"""Damaged model files: load_model either returns a model that passes onnx.checker or raises an OnnxqError.

Variants are generated deterministically (seeded numpy RNG) from the sample models, the shared
pretrained models and a tiny inline model: truncations, byte flips, proto edits (a node input renamed
to a tensor nothing produces, attributes of the wrong type), a zeroed header, random garbage, an empty
graph. Any other exception is a bug in onnxq.model and fails the test, naming the variant.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import SAMPLE_MODELS, SHARED_MODELS, make_tiny_model
from onnxq.errors import ModelValidationError, OnnxqError
from onnxq.model import load_model

# Per source: how many truncations and byte-flip variants. Squeezenet (5 MB) gets few, to stay fast.
RANDOM_VARIANTS = {"small": (25, 40), "large": (5, 8)}
LARGE_BYTES = 2_000_000


@dataclass(frozen=True)
class Variant:
    name: str
    make: Callable[[], bytes]
    must_fail_with: type[OnnxqError] | None = None  # proto edits are known to be invalid


def sources() -> dict[str, bytes]:
    found = {"tiny": make_tiny_model().SerializeToString()}
    for path in sorted(SAMPLE_MODELS.glob("*.onnx")):
        found[f"sample/{path.stem}"] = path.read_bytes()
    for path in sorted(SHARED_MODELS.glob("*/model.onnx")):
        found[f"shared/{path.parent.name}"] = path.read_bytes()
    return found


def random_variants(name: str, raw: bytes, rng: np.random.Generator) -> Iterator[Variant]:
    n_trunc, n_flip = RANDOM_VARIANTS["large" if len(raw) > LARGE_BYTES else "small"]
    for offset in sorted(rng.integers(1, len(raw), n_trunc)):
        yield Variant(f"{name}:truncate@{offset}", lambda o=int(offset): raw[:o])
    for i in range(n_flip):
        count = int(rng.integers(1, 21))
        # Half the flips land in the first 4 KiB, where the graph structure is, not the weights.
        span = min(len(raw), 4096) if i % 2 else len(raw)
        positions = rng.integers(0, span, count)
        values = rng.integers(0, 256, count).astype(np.uint8)
        yield Variant(f"{name}:flip{count}#{i}", lambda p=positions, v=values: _flip(raw, p, v))


def _flip(raw: bytes, positions: np.ndarray, values: np.ndarray) -> bytes:
    out = bytearray(raw)
    for pos, val in zip(positions, values, strict=True):
        out[pos] = int(val) if out[pos] != val else (int(val) + 1) % 256  # always a real change
    return bytes(out)


def proto_variants(name: str, raw: bytes, rng: np.random.Generator) -> Iterator[Variant]:
    model = onnx.load_from_string(raw)
    invalid = ModelValidationError
    with_inputs = [i for i, n in enumerate(model.graph.node) if any(n.input)]
    for k in rng.choice(with_inputs, size=min(2, len(with_inputs)), replace=False):
        yield Variant(f"{name}:missing-input@node{k}", lambda k=int(k): _missing_input(raw, k), invalid)
    for op in ("Conv", "Gemm", "Clip"):
        found = [k for k, n in enumerate(model.graph.node) if n.op_type == op]
        for k in sorted(set(found[:1] + list(rng.choice(found, size=min(2, len(found)), replace=False)))):
            yield Variant(f"{name}:bad-attr@{op}{k}", lambda k=int(k): _wrong_attribute(raw, k), invalid)
    yield Variant(f"{name}:empty-graph", lambda: _empty_graph(raw), invalid)
    yield Variant(f"{name}:zeroed-header", lambda: bytes(64) + raw[64:], None)


def _missing_input(raw: bytes, k: int) -> bytes:
    model = onnx.load_from_string(raw)
    node = model.graph.node[k]
    slot = next(i for i, name in enumerate(node.input) if name)
    node.input[slot] = f"never_produced_{k}"
    return model.SerializeToString()


def _wrong_attribute(raw: bytes, k: int) -> bytes:
    """Conv strides as FLOAT or STRING, Gemm alpha/transB of the wrong type, Clip with a STRING min."""
    model = onnx.load_from_string(raw)
    node = model.graph.node[k]
    wrong = {
        "Conv": [helper.make_attribute("strides", 1.0), helper.make_attribute("strides", "1,1")],
        "Gemm": [helper.make_attribute("alpha", "one"), helper.make_attribute("transB", 1.0)],
        "Clip": [helper.make_attribute("min", "zero")],
    }[node.op_type][k % (1 if node.op_type == "Clip" else 2)]
    kept = [a for a in node.attribute if a.name != wrong.name]
    del node.attribute[:]
    node.attribute.extend([*kept, wrong])
    return model.SerializeToString()


def _empty_graph(raw: bytes) -> bytes:
    model = onnx.load_from_string(raw)
    model.graph.CopyFrom(onnx.GraphProto(name=model.graph.name or "g"))
    return model.SerializeToString()


def all_variants() -> list[Variant]:
    rng = np.random.default_rng(20240611)
    variants: list[Variant] = []
    for name, raw in sources().items():
        variants += random_variants(name, raw, rng)
        variants += proto_variants(name, raw, rng)
    for i in range(10):
        garbage = rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes()
        # Half start like an ONNX file (field 1, ir_version), so they get past the first byte.
        variants.append(Variant(f"garbage#{i}", lambda g=garbage, i=i: (b"\x08\x08" + g) if i % 2 else g))
    return variants


def _outcome(path: Path, variant: Variant) -> str | None:
    """None when the variant was handled correctly, else what went wrong."""
    try:
        model = load_model(path)
    except OnnxqError as exc:
        if variant.must_fail_with and not isinstance(exc, variant.must_fail_with):
            return f"raised {type(exc).__name__}, expected {variant.must_fail_with.__name__}: {exc.message}"
        if str(path) not in exc.message:
            return f"{type(exc).__name__} does not name the file: {exc.message}"
        return None
    except Exception as exc:  # noqa: BLE001 - any other exception is exactly what this test looks for
        return f"unexpected {type(exc).__name__}: {exc}"
    if variant.must_fail_with:
        return f"loaded, but should raise {variant.must_fail_with.__name__}"
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001
        return f"load_model accepted a model that onnx.checker rejects: {exc}"
    return _garbage_inside(model, path.read_bytes())


def _garbage_inside(model: onnx.ModelProto, raw: bytes) -> str | None:
    """Damage that protobuf and onnx.checker both let through, which load_model must still refuse."""
    parsed, bare = onnx.ModelProto(), onnx.ModelProto()
    parsed.ParseFromString(raw)
    bare.CopyFrom(parsed)
    bare.DiscardUnknownFields()
    if bare.ByteSize() != parsed.ByteSize():  # not len(raw): flips can make valid, non-canonical encodings
        return "accepted a file with fields unknown to the ONNX schema"
    names = [n.name for n in model.graph.node] + [x for n in model.graph.node for x in [*n.input, *n.output]]
    names += [t.name for t in model.graph.initializer] + [v.name for v in model.graph.value_info]
    if any(not isinstance(name, str) for name in names):  # upb returns bytes for invalid UTF-8
        return "accepted names that are not valid UTF-8"
    return None


def test_damaged_models_load_or_raise_onnxq_errors(tmp_path):
    variants = all_variants()
    if len(sources()) == 7:  # tiny + 4 sample + 2 shared: the full corpus
        assert len(variants) >= 200
    failures = []
    for i, variant in enumerate(variants):
        path = tmp_path / f"v{i}.onnx"
        path.write_bytes(variant.make())
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        problem = _outcome(path, variant)
        if problem is None and hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problem = "the input file changed"
        if problem:
            failures.append(f"{variant.name}: {problem}")
        path.unlink()
    assert not failures, f"{len(failures)} of {len(variants)} variants mishandled:\n" + "\n".join(
        failures[:20]
    )


def test_proto_edits_really_damage_the_model():
    """The edits must produce models onnx itself rejects, or the test above would prove nothing for them."""
    raw = make_tiny_model().SerializeToString()
    for damaged in (_missing_input(raw, 2), _wrong_attribute(raw, 0), _wrong_attribute(raw, 3)):
        with pytest.raises(onnx.checker.ValidationError):
            onnx.checker.check_model(onnx.load_from_string(damaged), full_check=True)


HAS_INSPECT = importlib.util.find_spec("onnxq.cli.inspect") is not None


@pytest.mark.skipif(not HAS_INSPECT, reason="the inspect command is not written yet")
def test_inspect_on_damaged_models_exits_0_or_2(tmp_path, capsys):
    from onnxq.cli import main

    variants = all_variants()
    picked = [variants[i] for i in np.random.default_rng(7).choice(len(variants), size=30, replace=False)]
    picked += [v for v in variants if v.name.startswith("tiny:")][:10]
    failures = []
    for i, variant in enumerate(picked):
        path = tmp_path / f"v{i}.onnx"
        path.write_bytes(variant.make())
        code = main(["inspect", str(path)])
        err = capsys.readouterr().err
        if code not in (0, 2) or "Traceback" in err or (code == 2 and not err.startswith("error: ")):
            failures.append(f"{variant.name}: exit {code}: {err.strip()[:300]}")
    assert not failures, "\n".join(failures)
