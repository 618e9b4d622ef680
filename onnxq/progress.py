"""A tiny progress bar on stderr, with no dependencies.

The bar is redrawn in place only when it is enabled and stderr is a terminal (or when ``force`` is set),
so logs and CI output never fill with carriage returns. Enabled but not on a terminal, it prints one
plain summary line when it closes. Disabled, it prints nothing.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_WIDTH = 24


class Progress:
    """Count work done (``update(n)``) towards an optional ``total``; use as a context manager."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        enabled: bool = True,
        force: bool = False,
        unit: str = "samples",
        stream: TextIO | None = None,
        min_interval: float = 0.1,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.count = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled or force
        self.live = force or (enabled and _is_tty(self.stream))
        self.min_interval = min_interval
        self._start = time.perf_counter()
        self._last_draw = float("-inf")
        self._closed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Add ``n`` units of work; redraws at most every ``min_interval`` seconds."""
        self.count += n
        if self.live:
            now = time.perf_counter()
            if now - self._last_draw >= self.min_interval or self.count == self.total:
                self._last_draw = now
                self.stream.write("\r" + self._line(now))
                self.stream.flush()

    def close(self) -> None:
        """Finish the bar (live) or print the one summary line (enabled, not a terminal); idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.live:
            self.stream.write("\r" + self._line(now) + "\n")
        else:
            self.stream.write(f"{self.label}: {self.count} {self.unit} in {now - self._start:.1f} s\n")
        self.stream.flush()

    def _line(self, now: float) -> str:
        elapsed = now - self._start
        if self.total:
            done = min(self.count / self.total, 1.0)
            filled = int(round(done * _WIDTH))
            bar = "#" * filled + "-" * (_WIDTH - filled)
            return f"{self.label} [{bar}] {self.count}/{self.total} {self.unit} {elapsed:.1f} s"
        return f"{self.label} {self.count} {self.unit} {elapsed:.1f} s"


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or file-like objects without isatty
        return False
