"""ORT's and cuDNN's native log lines, captured and sorted: noise is dropped, what matters becomes a warning.

ORT and the cuDNN frontend inside its CUDA EP write their logs straight to file descriptors 1 and 2, past
Python, in between onnxq's own lines (ORT: ``2026-... [W:onnxruntime:, file.cc:83 Func] text``, in colour
on a terminal). GPU sessions are created, and their first runs made, inside :func:`captured_native_output`;
each captured line then meets :data:`LOG_RULES` (a table ``onnxq`` can print):

* ``drop``: noise that says nothing the numbers do not (the placement check already reports where each node
  ran and how many Memcpy nodes ORT added); counted, not shown;
* ``library``: a shared library that would not load; the placement check names it in its error or warning;
* any other ORT line of warning severity or worse becomes one onnxq warning per distinct message, with
  a count (``onnxruntime warned: OP Conv(c1) running in Fallback mode. May be extremely slow. (x2)``);
  messages that differ only in a quoted name count as one, shown with its first name ("Removing initializer
  'b1'. It is not used by any node... (x54 like it)").

Lines that are not ORT's (Python's own warnings, a library's plain prints) are written back unchanged.
``ONNXQ_ORT_LOG=1`` writes everything back as it came, for debugging.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

RAW_LOG_ENV = "ONNXQ_ORT_LOG"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_QUOTED = re.compile(r"'[^']*'")
_ORT_LINE = re.compile(r"\[(?P<sev>[VIWEF]):onnxruntime:[^,\]]*,?\s*(?P<where>[^\]]*)\]\s*(?P<msg>.*)")


@dataclass(frozen=True)
class LogRule:
    pattern: str  # a regular expression searched in the line
    action: str  # drop | library
    why: str


LOG_RULES = (
    LogRule(r"No registered plugin EP device found", "drop",
            "ORT looks for a plugin build of the EP before the bundled one, which onnxq then gets"),
    LogRule(r"Some nodes were not assigned to the preferred execution providers", "drop",
            "the placement check reports where every node ran (ep_nodes, fallback warnings)"),
    LogRule(r"Rerunning with verbose output on a non-minimal build", "drop", "the same notice's second line"),
    LogRule(r"Memcpy nodes are added to the graph", "drop",
            "the placement check counts the Memcpy nodes; with a CUDA graph requested, ORT refuses the session"),
    LogRule(r"No execution plans support the graph", "drop",
            "cuDNN's frontend has no kernel for a fused convolution variant; ORT retries it unfused, and the "
            "run succeeds (a failure would be an error)"),
    LogRule(r"Failed to load library|cannot open shared object file|Please install TensorRT", "library",
            "the placement check names the library in its error, or its warning with --allow-fallback"),
)  # fmt: skip
_RULES = tuple((re.compile(r.pattern), r) for r in LOG_RULES)


@dataclass
class SortedLog:
    """What a capture held, by destination."""

    raw: str = ""
    warnings: list[str] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)  # rule.why -> lines
    passthrough: dict[int, str] = field(default_factory=dict)  # fd -> text to write back


def sort_log(texts: dict[int, str]) -> SortedLog:
    """Sort captured text per fd into dropped noise, warnings (distinct ORT messages, counted) and lines
    written back."""
    out = SortedLog(raw="".join(texts.values()))
    counts: Counter = Counter()
    first: dict[tuple[str, str], str] = {}  # (kind, message with quoted names blanked) -> the first message
    for fd, text in texts.items():
        kept = []
        for line in text.splitlines(keepends=True):
            plain = _ANSI.sub("", line).strip()
            if not plain:
                continue
            rule = next((r for rx, r in _RULES if rx.search(plain)), None)
            if rule is not None:
                if rule.action == "drop":
                    out.dropped[rule.why] += 1
                continue
            m = _ORT_LINE.search(plain)
            if m is None:
                kept.append(line)
            elif m.group("sev") in "WEF":
                msg = m.group("msg").strip()
                key = ("warned" if m.group("sev") == "W" else "logged an error", _QUOTED.sub("'…'", msg))
                counts[key] += 1
                first.setdefault(key, msg)
        if kept:
            out.passthrough[fd] = "".join(kept)
    out.warnings = [f"onnxruntime {key[0]}: {first[key]}" + ("" if n == 1 else f" (x{n})" if first[key] == key[1]
                    else f" (x{n} like it)") for key, n in counts.items()]  # fmt: skip
    return out


@contextmanager
def captured_native_output(fds: tuple[int, ...] = (1, 2)) -> Iterator[SortedLog]:
    """Redirect ``fds`` to temporary files while the block runs (native code writes there), then sort what
    came (:func:`sort_log`) into the yielded SortedLog and write the lines that are not ORT's back."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    result = SortedLog()
    saved = {fd: os.dup(fd) for fd in fds}
    files = {fd: tempfile.TemporaryFile(mode="w+b") for fd in fds}
    try:
        for fd, tmp in files.items():
            os.dup2(tmp.fileno(), fd)
        yield result
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        texts = {}
        for fd, tmp in files.items():
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
            tmp.seek(0)
            texts[fd] = tmp.read().decode("utf-8", "replace")
            tmp.close()
        sorted_log = sort_log(texts)
        result.raw, result.warnings = sorted_log.raw, sorted_log.warnings
        result.dropped, result.passthrough = sorted_log.dropped, sorted_log.passthrough
        raw = os.environ.get(RAW_LOG_ENV, "") not in ("", "0")
        for fd, text in (texts if raw else result.passthrough).items():
            if text:
                os.write(fd, text.encode())
