"""A headless Chromium driven over the DevTools protocol on a pipe, with the standard library only.

``open_page(path)`` loads a local HTML file in a fresh headless browser and returns what a reader's browser
would show: the console messages and uncaught exceptions, the browser's own log errors (an SVG attribute it
refuses, a resource it could not load), the layout facts a script measures in the page, and a PNG
screenshot. The browser is found on PATH (Debian's ``chromium`` package, or Chrome) or at ``$ONNXQ_BROWSER``;
:func:`find_browser` returns None where there is none, and the tests skip with that reason.

The protocol runs over ``--remote-debugging-pipe``: the browser reads commands on its fd 3 and writes replies
and events on its fd 4, each a JSON object ended by a NUL byte. No websocket, playwright or selenium needed.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
TIMEOUT_S = 60.0  # one protocol reply; a loaded 2-core machine can take a while to start a browser
FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium refuses its sandbox
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
)


def find_browser() -> str | None:
    """The Chromium-family executable to use: ``$ONNXQ_BROWSER`` if set, else the first of BROWSER_NAMES on PATH."""
    if os.environ.get("ONNXQ_BROWSER"):
        return os.environ["ONNXQ_BROWSER"]
    return next((found for name in BROWSER_NAMES if (found := shutil.which(name))), None)


@dataclass
class PageResult:
    """What loading one page gave: console and log problems, measured layout, and the screenshot."""

    console_errors: list[str] = field(default_factory=list)  # console.error/warn, uncaught exceptions
    log_errors: list[str] = field(default_factory=list)  # the browser's log at level error or warning
    layout: Any = None  # what the measuring script returned (JSON-serialisable)
    png: bytes = field(default=b"", repr=False)
    version: str = ""


class DevToolsPipe:
    """One browser process and the protocol on its pipe: ``call`` sends a command and waits for its reply,
    keeping the events that arrive meanwhile in ``events``."""

    def __init__(self, executable: str, profile: Path) -> None:
        self._stderr_path = profile / "stderr.log"  # a file, not a pipe: a full pipe would stall the browser
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        keep = (to_browser_r, from_browser_w)
        with open(self._stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [executable, *FLAGS, f"--user-data-dir={profile / 'profile'}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=(*keep, 3, 4),
                preexec_fn=lambda: _as_fds_3_and_4(*keep),
            )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send ``method`` (to a page's ``session``, or to the browser) and return its result; raise on an error."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        """The first event named ``method``, from those already received or the next ones."""
        while True:
            found = next((e for e in self.events if e.get("method") == method), None)
            if found is not None:
                return found
            self.events.append(self._read_message())

    def _read_message(self) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no message from the browser in {TIMEOUT_S:.0f} s")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                stderr = self._stderr_path.read_bytes().decode(errors="replace")[-2000:]
                raise RuntimeError(f"the browser closed its pipe (exit {self.proc.poll()}): {stderr}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)


def _as_fds_3_and_4(read_end: int, write_end: int) -> None:
    """In the child, before exec: the command pipe's read end as fd 3, the reply pipe's write end as fd 4
    (moved above 10 first, so neither overwrites the other on the way)."""
    high_r, high_w = fcntl.fcntl(read_end, fcntl.F_DUPFD, 10), fcntl.fcntl(write_end, fcntl.F_DUPFD, 10)
    os.dup2(high_r, 3)
    os.dup2(high_w, 4)


@contextmanager
def browser(executable: str) -> Iterator[DevToolsPipe]:
    """A fresh headless browser with a throw-away profile, closed (and its profile removed) on exit."""
    with tempfile.TemporaryDirectory(prefix="onnxq-browser-") as profile:
        pipe = DevToolsPipe(executable, Path(profile))
        try:
            yield pipe
        finally:
            pipe.close()


def open_page(
    path: Path, executable: str, *, width: int = 1280, height: int = 900, measure: str = "null", max_height: int = 0
) -> PageResult:
    """Load ``path`` at a ``width`` x ``height`` viewport; return its problems, ``measure`` evaluated in the page
    (a JS expression whose value is returned as JSON), and a screenshot of the whole page, or of its top
    ``max_height`` pixels when that is given."""
    with browser(executable) as pipe:
        version = pipe.call("Browser.getVersion").get("product", "")
        session = _attach_to_page(pipe)
        for domain in ("Page", "Runtime", "Log"):
            pipe.call(f"{domain}.enable", session)
        pipe.call("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip
        pipe.events.clear()  # about:blank's own events
        pipe.call("Page.navigate", session, url=path.resolve().as_uri())
        pipe.wait_for("Page.loadEventFired")
        layout = pipe.call("Runtime.evaluate", session, expression=f"JSON.stringify({measure})", returnByValue=True)
        page_h = pipe.call("Page.getLayoutMetrics", session)["cssContentSize"]["height"]
        clip = {"x": 0, "y": 0, "width": width, "height": min(page_h, max_height or page_h), "scale": 1}
        shot = pipe.call("Page.captureScreenshot", session, format="png", clip=clip, captureBeyondViewport=True)
        result = PageResult(version=version, png=base64.b64decode(shot["data"]))
        result.layout = json.loads(layout["result"].get("value") or "null")
        result.console_errors, result.log_errors = _problems(pipe.events)
        return result


def _attach_to_page(pipe: DevToolsPipe) -> str:
    """The session id of the browser's first page target (about:blank), attached in flat mode."""
    targets = pipe.call("Target.getTargets")["targetInfos"]
    page = next(t for t in targets if t["type"] == "page")
    return pipe.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]


def _problems(events: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(console errors and warnings, uncaught exceptions; browser log entries at level warning or error)."""
    console, log = [], []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            console.append(params.get("exceptionDetails", {}).get("text", "exception"))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
            entry = params["entry"]
            log.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
    return console, log


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; ValueError if the bytes are not a PNG."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
