"""Reports: one dict (schema ``onnxq.report/1``) written as JSON, Markdown or a self-contained HTML page.

``build_report`` assembles benchmark entries (from :mod:`onnxq.measure.bench`), evaluation entries (from
:func:`onnxq.measure.evaluate.evaluate`) and a quantization summary into the dict that
``onnxq/report/schemas/report.schema.json`` describes. ``write_report`` picks the format from the file's suffix
and writes atomically (temporary file in the same folder, then rename), so a crash never leaves half a
report behind.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxq import __version__
from onnxq.errors import ConfigError, OutputPathError
from onnxq.report.environment import collect_environment

SCHEMA_ID = "onnxq.report/1"
SCHEMA_PATH = Path(__file__).with_name("schemas") / "report.schema.json"
FORMATS = (".json", ".md", ".html")


def build_report(
    *,
    bench: Sequence[dict] | None = None,
    eval: Sequence[dict] | None = None,  # shadows the builtin: it is the report key callers use
    quantize: dict | None = None,
    environment: dict | None = None,
    command: Sequence[str] | None = None,
    notes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The report dict: given parts plus ``schema``, ``created`` (UTC, ISO 8601) and ``onnxq_version``.

    ``environment`` defaults to :func:`onnxq.report.environment.collect_environment`; ``command`` to an empty
    argv (the CLI passes its own). Entries are copied, not validated here; the JSON schema and the tests
    pin their shape.
    """
    for name, value in (("bench", bench), ("eval", eval), ("command", command), ("notes", notes)):
        if value is not None and (isinstance(value, (str, dict)) or not isinstance(value, Sequence)):
            raise ConfigError(
                f"build_report: {name} must be a list, got {type(value).__name__}",
                hint=f"wrap a single entry in a list: {name}=[entry]",
            )
    if quantize is not None and not isinstance(quantize, dict):
        raise ConfigError(
            f"build_report: quantize must be a dict or None, got {type(quantize).__name__}",
            hint="pass the summary's to_dict()",
        )
    return {
        "schema": SCHEMA_ID,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "onnxq_version": __version__,
        "command": [str(a) for a in (command or [])],
        "environment": dict(environment) if environment is not None else collect_environment(),
        "bench": [dict(e) for e in (bench or [])],
        "eval": [dict(e) for e in (eval or [])],
        "quantize": dict(quantize) if quantize is not None else None,
        "notes": [str(n) for n in (notes or [])],
    }


def load_schema() -> dict[str, Any]:
    """The JSON schema of ``onnxq.report/1`` (JSON Schema draft 2020-12)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def to_json(report: dict[str, Any]) -> str:
    """The report as JSON text. numpy scalars and arrays become plain numbers and lists; NaN and inf are
    refused (ValueError), because JSON has no spelling for them and the schema uses null where a value is
    not finite."""
    return json.dumps(report, indent=2, allow_nan=False, default=_plain) + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"a {type(value).__name__} cannot go into a JSON report")


def render(report: dict[str, Any], suffix: str) -> str:
    """The report as text in the format named by ``suffix`` (.json, .md or .html)."""
    if suffix == ".json":
        return to_json(report)
    if report.get("kind") == "analyze" and suffix in (".md", ".html"):
        from onnxq.quantize.analyze_render import render_analysis_html, render_analysis_markdown

        return render_analysis_markdown(report) if suffix == ".md" else render_analysis_html(report)
    if suffix == ".md":
        from onnxq.report.markdown import render_markdown

        return render_markdown(report)
    if suffix == ".html":
        from onnxq.report.html import render_html

        return render_html(report)
    raise ConfigError(
        f"unknown report format {suffix!r}", hint=f"name the report file with one of {', '.join(FORMATS)}"
    )


def check_report_path(path: str | os.PathLike, *, inputs: Iterable[tuple[str, object]] = ()) -> Path:
    """Raise ConfigError for a suffix other than .json/.md/.html, OutputPathError for a missing or unwritable
    folder, a folder in the file's place, or a path that is one of ``inputs`` ((description, path) pairs); return
    the path. The CLI calls it before a long run, not only after."""
    from onnxq.model_files import check_writable_folder, refuse_inputs_as_output

    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(
            f"report file {out} has suffix {out.suffix!r}, which onnxq cannot write",
            hint=f"name it with one of {', '.join(FORMATS)}",
        )
    folder = out.parent if str(out.parent) else Path(".")
    try:
        folder_ok, is_dir = folder.is_dir(), out.is_dir()
    except OSError as exc:  # a name too long
        raise OutputPathError(
            f"the report path {out!s:.200} is unusable: {exc.strerror or exc}",
            hint="give a shorter path in a folder that exists",
        ) from exc
    if not folder_ok:
        raise OutputPathError(
            f"cannot write the report {out}: folder {folder} does not exist",
            hint=f"create it first: mkdir -p {folder}",
        )
    if is_dir:
        raise OutputPathError(f"cannot write the report {out}: it is a folder", hint="give a file name")
    refuse_inputs_as_output(out, inputs, "report")
    check_writable_folder(out, "report")
    return out


def write_report(path: str | os.PathLike, report: dict[str, Any]) -> Path:
    """Write ``report`` to ``path`` as JSON, Markdown or HTML by its suffix, atomically; return the path.

    Raises ConfigError for another suffix and OutputPathError when the folder is missing or is a file.
    """
    out = check_report_path(path)
    suffix = out.suffix.lower()
    text = render(report, suffix)  # render before touching the disk: a failure leaves nothing behind
    from onnxq.model_files import unlink_quietly, write_temp_file

    try:
        tmp = write_temp_file(out, text.encode("utf-8"))  # mode 0666 minus umask, like any new file
    except OSError as exc:
        raise OutputPathError(
            f"cannot write the report {out}: {exc.strerror or exc}",
            hint="check free disk space and the folder's permissions",
        ) from exc
    try:
        os.replace(tmp, out)
    except OSError as exc:
        unlink_quietly(tmp)
        raise OutputPathError(
            f"cannot move the report into place at {out}: {exc.strerror or exc}",
            hint="check the folder's permissions and that the path is not a folder",
        ) from exc
    except BaseException:
        unlink_quietly(tmp)
        raise
    return out
