"""The sweep's content cache in OUT: each finished task's result, keyed by a hash of everything it read.

A key is the SHA-256 of a canonical JSON of the task's inputs: the bytes of the model (with its external
data files), of the data (every file of a data folder, with its relative name), the recipe as a full dict
with the target's defaults filled in, the EP, batches and benchmark settings, and the onnxq, onnx and
onnxruntime versions. A quantized model's key is the hash of its own bytes, so its evaluations and benchmarks
are found again whatever recipe name produced it, and are redone when its bytes change.

Layout::

    OUT/cache/<stage>/<key>.json   one finished task: {"key", "stage", "result", "worker", "wall_s", ...}
    OUT/models/<key>.onnx          a quantized model (<key> is its quantize task's key)
    OUT/.sweep/lock                held by the sweep that runs on OUT (one at a time)
    OUT/.sweep/running/<task>.json what each worker runs now: task, host, pid, start time

Results are written atomically (temporary file beside, then rename) the moment a task reports, so a killed
sweep, driver or worker loses no finished task. Failed tasks are not cached: a rerun tries them again.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from onnxq.errors import OutputPathError

CHUNK = 1 << 20


@functools.cache
def versions() -> dict[str, str]:
    """The versions a result depends on beyond its inputs."""
    import onnx
    import onnxruntime

    from onnxq import __version__

    return {"onnxq": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def task_key(parts: dict[str, Any]) -> str:
    """The SHA-256 of ``parts`` (JSON-ready) as canonical JSON, with the versions added."""
    text = json.dumps({**parts, "versions": versions()}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ContentHashes:
    """SHA-256 of models and data sources, each computed once per sweep (files are read in chunks)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], str] = {}

    def model(self, path: Path) -> str:
        """The model file, with its external data files when it has some."""
        return self._memo("model", path, lambda: model_sha256(path))

    def data(self, path: Path | None) -> str | None:
        """A data file, or every regular file under a data folder with its relative name; None for no data."""
        if path is None:
            return None
        return self._memo("data", path, lambda: _tree_sha256(path))

    def _memo(self, kind: str, path: Path, compute: Any) -> str:
        key = (kind, str(path))
        if key not in self._seen:
            self._seen[key] = compute()
        return self._seen[key]


def model_sha256(path: Path) -> str:
    """The SHA-256 of a model file; with external data, of the file's hash and each data file's, in order."""
    from onnxq.model_files import external_data_files

    extra = [file_sha256(p) if p.is_file() else f"missing:{p.name}" for p in dict.fromkeys(external_data_files(path))]
    return _join([file_sha256(path), *extra]) if extra else file_sha256(path)


def _join(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _tree_sha256(path: Path) -> str:
    if path.is_file():
        return file_sha256(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return _join([f"{p.relative_to(path).as_posix()}:{file_sha256(p)}" for p in files])


class ResultStore:
    """Finished tasks under ``OUT/cache`` and quantized models under ``OUT/models``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.cache = out / "cache"
        self.models = out / "models"
        self.running = out / ".sweep" / "running"

    def prepare(self) -> None:
        """Create the folders; clear running markers a killed sweep left behind."""
        for folder in (self.cache, self.models, self.running):
            folder.mkdir(parents=True, exist_ok=True)
        for stale in self.running.glob("*.json"):
            stale.unlink(missing_ok=True)

    def model_path(self, key: str) -> Path:
        return self.models / f"{key}.onnx"

    def load(self, stage: str, key: str) -> dict[str, Any] | None:
        """The stored record of a finished task, or None when absent, unreadable, or (for a quantize task)
        when its model file is missing or no longer has the bytes the record names."""
        path = self.cache / stage / f"{key}.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("key") != key:
            return None
        if stage == "quantize":
            model = self.model_path(key)
            if not model.is_file() or model_sha256(model) != record["result"].get("model_sha256"):
                return None
        return record

    def store(self, stage: str, key: str, record: dict[str, Any]) -> None:
        write_json_atomic(self.cache / stage / f"{key}.json", {**record, "key": key, "stage": stage})


def write_json_atomic(path: Path, payload: Any) -> None:
    """``payload`` as JSON at ``path``, atomically (NaN and infinity refused: write them as None)."""
    write_text_atomic(path, json.dumps(payload, indent=1, allow_nan=False, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` at ``path``: a temporary file beside it (its folder created), then a rename."""
    from onnxq.model_files import unlink_quietly, write_temp_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = write_temp_file(path, text.encode("utf-8"))
    try:
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise


class OutLock:
    """An exclusive lock on OUT for one sweep at a time (``fcntl.flock``, released when the process ends)."""

    def __init__(self, out: Path) -> None:
        self.path = out / ".sweep" / "lock"
        self._fh: Any = None

    def __enter__(self) -> OutLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")  # noqa: SIM115 - held for the sweep's lifetime
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "another process"
            self._fh.close()
            raise OutputPathError(f"another sweep is running on {self.path.parent.parent} ({holder})",
                                  hint="wait for it to finish, or give another --out") from exc  # fmt: skip
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        self._fh.flush()
        return self

    def __exit__(self, *exc_info: object) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()
