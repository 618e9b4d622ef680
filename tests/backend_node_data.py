"""ONNX's backend node test models (``node/*/model.onnx`` with ``test_data_set_0``), cached outside the repository.

The models ship in the onnx 1.22.0 wheel under ``onnx/backend/test/data/node`` (later wheels dropped them).
:func:`node_models_root` finds the cache (``$ONNXQ_BACKEND_CACHE``, default ``~/.cache/onnxq-backend-node``) or
builds it: ``pip download`` of that wheel into a temporary folder, then the ``node`` folder extracted from the
zip. It returns None when that fails (no network, no pip), with the reason in :data:`LAST_FAILURE`, so that a
test can skip cleanly. The data is never written inside the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ONNX_VERSION = "1.22.0"
_PREFIX = "onnx/backend/test/data/node/"
_MARKER = ".complete"  # written last: a cache without it is a half-built one, rebuilt
LAST_FAILURE: str | None = None


def cache_dir() -> Path:
    """Where the extracted ``node`` folder lives (``$ONNXQ_BACKEND_CACHE`` or ``~/.cache/onnxq-backend-node``)."""
    return Path(os.environ.get("ONNXQ_BACKEND_CACHE") or Path.home() / ".cache" / "onnxq-backend-node")


def node_models_root(download: bool = True) -> Path | None:
    """The cached ``node`` folder, built on first use; None (reason in LAST_FAILURE) when it cannot be had."""
    global LAST_FAILURE
    root = cache_dir() / "node"
    if (cache_dir() / _MARKER).is_file() and root.is_dir():
        return root
    if not download:
        LAST_FAILURE = f"no backend node cache at {cache_dir()}"
        return None
    try:
        _build(cache_dir())
    except Exception as exc:  # no network, no pip, a damaged wheel, a read-only home: the tests skip
        LAST_FAILURE = f"cannot build the backend node cache at {cache_dir()}: {type(exc).__name__}: {exc}"
        return None
    LAST_FAILURE = None
    return root


def model_dirs(root: Path) -> list[Path]:
    """The test folders that hold a model.onnx and a test_data_set_0, sorted by name."""
    return sorted(p for p in root.iterdir() if (p / "model.onnx").is_file() and (p / "test_data_set_0").is_dir())


def _build(cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        wheel = _download_wheel(Path(tmp))
        staged = Path(tmp) / "node"
        _extract_node_folder(wheel, staged)
        if (cache / "node").exists():
            shutil.rmtree(cache / "node")
        staged.rename(cache / "node")
    (cache / _MARKER).write_text(f"onnx {ONNX_VERSION} backend node tests\n")


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", f"onnx=={ONNX_VERSION}", "--no-deps", "--only-binary=:all:",
           "-d", str(dest), "--quiet"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wheels = sorted(dest.glob(f"onnx-{ONNX_VERSION}-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise RuntimeError(f"pip download onnx=={ONNX_VERSION} failed: {tail[0]}")
    return wheels[0]


def _extract_node_folder(wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if not info.filename.startswith(_PREFIX) or info.is_dir():
                continue
            rel = Path(info.filename[len(_PREFIX) :])
            if rel.is_absolute() or ".." in rel.parts:
                continue  # never write outside the cache, whatever the archive says
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    if not any(dest.iterdir()):
        raise RuntimeError(f"{wheel.name} holds no {_PREFIX} folder")
