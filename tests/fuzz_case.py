"""A case of the malformed-input corpus (tests/fuzz_corpus.py): the files to lay out and what to run.

The case classes live in tests/fuzz_models.py (damaged models, external data, FIFOs) and tests/fuzz_data.py
(damaged data files, output paths, recipes); each is a function ``(rng, sources) -> Case``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from malformed import npy_bytes, npz_bytes

TESTS = Path(__file__).resolve().parent
SAMPLE_MODELS = TESTS.parent / "sample_models"
COMMANDS = ("inspect", "quantize", "eval")
MODEL, CALIB, DATA, OUT = "m/model.onnx", "calib.npz", "test.npz", "out"
SAMPLES = 4  # per data file: enough to calibrate and evaluate, small enough to be fast


@dataclass(frozen=True)
class Fifo:
    """A named pipe: reading it blocks until a writer comes, which never does."""


@dataclass(frozen=True)
class Link:
    target: str  # as written into the link (relative to the link's folder, or absolute)


@dataclass(frozen=True)
class Folder:
    """An empty folder in a file's place."""


FileSpec = bytes | Fifo | Link | Folder


@dataclass
class Case:
    name: str
    klass: str
    files: dict[str, FileSpec]
    args: dict[str, list[str]] = field(default_factory=dict)  # per command: extra args, "{root}" expanded
    paths: dict[str, str] = field(default_factory=dict)  # model / calib / data / output / report overrides
    must_fail: tuple[str, ...] = ()
    hang_risk: bool = False  # a FIFO: run it in a subprocess with a timeout
    known: str = ""  # a crash this branch leaves to other work, and why

    def path(self, key: str) -> str:
        defaults = {"model": MODEL, "calib": CALIB, "data": DATA, "output": f"{OUT}/q.onnx", "report": f"{OUT}/r.json"}
        return self.paths.get(key, defaults[key])


# --- sources ---------------------------------------------------------------------------------------


class Sources:
    """The sample models (bytes) and small calibration and evaluation files, read once."""

    def __init__(self) -> None:
        self.models = {p.stem.removesuffix("_digits"): p.read_bytes() for p in sorted(SAMPLE_MODELS.glob("*.onnx"))}
        with np.load(SAMPLE_MODELS / "test.npz", allow_pickle=False) as test:
            self.x, self.labels = test["input"][:SAMPLES], test["label"][:SAMPLES]
        self.calib = npz_bytes({"input.npy": npy_bytes(self.x)})
        self.data = npz_bytes({"input.npy": npy_bytes(self.x), "label.npy": npy_bytes(self.labels)})

    def pick(self, rng: np.random.Generator) -> tuple[str, onnx.ModelProto]:
        name = sorted(self.models)[int(rng.integers(len(self.models)))]
        return name, onnx.ModelProto.FromString(self.models[name])

    def case(self, name: str, klass: str, model: FileSpec, **kw) -> Case:
        files = {MODEL: model, CALIB: self.calib, DATA: self.data, **kw.pop("files", {})}
        return Case(name, klass, files, **kw)


def choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]
