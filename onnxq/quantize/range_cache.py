"""The calibration cache: the activation ranges of a calibration, saved as versioned JSON and loaded instead of
calibrating again (``onnxq quantize --save-ranges FILE`` / ``--load-ranges FILE``).

A cache holds, per calibrated tensor, its range (``min``, ``max``: what every observer finalizes to) and the
method that produced it (graph outputs and Softmax inputs are always minmax), plus what identifies the
calibration: the SHA-256 of the float input model (as onnxq loads it), the float-phase passes that ran
before calibration with their options (CLE and SmoothQuant change the activations), the method and its
percentile. Loading refuses a cache of another schema version, of another model or float passes, one that
lacks a tensor the plan needs (another target or node lists place Q/DQ on other tensors), and one made with
another method. Ranges go through JSON as Python floats (``repr`` round-trips float64, and every float32
exactly), so a model quantized from a loaded cache is byte-identical to one calibrated afresh on the same
data with the same recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import onnx

from onnxq import __version__
from onnxq.errors import ConfigError, DataError, OutputPathError

SCHEMA = "onnxq.ranges/1"


def range_cache_key(model: onnx.ModelProto, float_passes: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """What a cache must match: the input model's SHA-256 and the float passes run before calibration."""
    digest = hashlib.sha256(model.SerializeToString()).hexdigest()
    return {"model_sha256": digest, "float_passes": [{"pass": name, "options": opts} for name, opts in float_passes]}


def check_cache_path(path: str | os.PathLike, inputs: list[tuple[str, object]]) -> None:
    """Before any work: ``--save-ranges`` must be a writable .json file that is none of the inputs."""
    from onnxq.model_files import check_writable_folder, refuse_inputs_as_output

    out = Path(path)
    if out.suffix.lower() != ".json":
        raise ConfigError(
            f"--save-ranges {out}: a range cache is a .json file", hint=f"e.g. --save-ranges {out.stem}.json"
        )
    if out.is_dir() or not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise OutputPathError(
            f"--save-ranges {out}: a folder, or in a folder that does not exist",
            hint="give a file name in an existing folder",
        )
    refuse_inputs_as_output(out, inputs, "range cache")
    check_writable_folder(out, "range cache")


def save_range_cache(
    path: str | os.PathLike, ranges: Any, key: dict[str, Any], percentile: float | None, methods: dict[str, str]
) -> Path:
    """Write ``ranges`` (a :class:`~onnxq.quantize.calibrate.RangeTable`) with ``key``, atomically; ``methods``
    names the tensors calibrated with another method than the table's."""
    from onnxq.model_files import unlink_quietly, write_temp_file

    document = {
        "schema": SCHEMA,
        "onnxq_version": __version__,
        **key,
        "method": ranges.method,
        "percentile": percentile,
        "samples": ranges.num_samples,
        "batches": ranges.num_batches,
        "batch_size": ranges.batch_size,
        "masked": list(ranges.masked),
        "padding": ranges.padding,
        "tensors": {
            name: {"min": float(lo), "max": float(hi), "method": methods.get(name, ranges.method)}
            for name, (lo, hi) in ranges.items()
        },
    }
    out = Path(path)
    tmp = write_temp_file(out, (json.dumps(document, indent=1, allow_nan=False) + "\n").encode("utf-8"))
    try:
        os.replace(tmp, out)
    except OSError as exc:
        unlink_quietly(tmp)
        raise OutputPathError(
            f"cannot write the range cache {out}: {exc.strerror or exc}", hint="check the folder's permissions"
        ) from exc
    return out


def load_range_cache(
    path: str | os.PathLike, key: dict[str, Any], tensors: list[str], method: str, percentile: float | None
) -> Any:
    """The ranges of ``tensors`` from the cache at ``path``, as a RangeTable; ConfigError when the cache was made
    for another model, float passes, placement or method (see the module docstring)."""
    from onnxq.quantize.calibrate import RangeTable

    doc = _read(Path(path))
    _check_identity(doc, key, tensors, path)
    if doc.get("method") != method or (method == "percentile" and doc.get("percentile") != percentile):
        made = doc.get("method") if doc.get("method") != "percentile" else f"percentile {doc.get('percentile')}"
        asked = method if method != "percentile" else f"percentile {percentile}"
        raise ConfigError(
            f"--load-ranges {path} holds {made} ranges, and the recipe calibrates with {asked}",
            hint=f"pass --method {doc.get('method')} (the cache's), or calibrate again without --load-ranges",
        )
    return RangeTable(
        {t: _range(doc, t, path) for t in tensors},
        method=method,
        num_samples=int(doc["samples"]),
        num_batches=int(doc["batches"]),
        skipped={},
        batch_size=doc.get("batch_size"),
        batch_note=f"loaded from {path}",
        masked=list(doc.get("masked") or []),
        padding=str(doc.get("padding") or ""),
    )


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"--load-ranges {path}: no such file", hint="save one first with --save-ranges FILE")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"--load-ranges {path} is not a readable JSON file: {exc}", hint="pass a file written by --save-ranges"
        ) from exc
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else None
        raise DataError(
            f"--load-ranges {path}: schema {found!r}, not {SCHEMA!r}",
            hint="pass a range cache written by this version's --save-ranges, or calibrate again",
        )
    if not isinstance(doc.get("tensors"), dict) or not all(k in doc for k in ("samples", "batches", "method")):
        raise DataError(
            f"--load-ranges {path}: the cache is incomplete (tensors, samples, batches, method)",
            hint="write it again with --save-ranges",
        )
    return doc


def _check_identity(doc: dict[str, Any], key: dict[str, Any], tensors: list[str], path: Any) -> None:
    missing = [t for t in tensors if t not in doc["tensors"]]
    if doc.get("model_sha256") != key["model_sha256"]:
        names = f"; {len(missing)} of the {len(tensors)} tensors to calibrate are not in it" if missing else ""
        raise ConfigError(
            f"--load-ranges {path} was calibrated on another model (SHA-256 "
            f"{str(doc.get('model_sha256'))[:12]}..., this one {key['model_sha256'][:12]}...){names}",
            hint="save a cache for this model with --save-ranges, or pass the model it was made for",
        )
    if doc.get("float_passes") != key["float_passes"]:
        ran = ", ".join(p["pass"] for p in doc.get("float_passes") or []) or "none"
        now = ", ".join(p["pass"] for p in key["float_passes"]) or "none"
        raise ConfigError(
            f"--load-ranges {path} was calibrated after other float passes or options (then: {ran}; "
            f"now: {now}), which change the activations",
            hint="use the same --passes and pass options as when the cache was saved, or calibrate again",
        )
    if missing:
        raise ConfigError(
            f"--load-ranges {path} has no range for {len(missing)} of the {len(tensors)} tensors this "
            f"recipe quantizes, e.g. {missing[:3]}",
            hint="save the cache with the same --target and node lists (--include-*/--exclude-*), or calibrate again",
        )


def _range(doc: dict[str, Any], tensor: str, path: Any) -> tuple[float, float]:
    entry = doc["tensors"][tensor]
    try:
        lo, hi = float(entry["min"]), float(entry["max"])
    except (TypeError, KeyError, ValueError) as exc:
        raise DataError(
            f"--load-ranges {path}: tensor {tensor!r} has no numeric min and max",
            hint="write the cache again with --save-ranges",
        ) from exc
    if not lo <= hi:
        raise DataError(
            f"--load-ranges {path}: tensor {tensor!r} has min {lo} > max {hi}",
            hint="write the cache again with --save-ranges",
        )
    return lo, hi
