"""Progress reporting for long work: a bar on a terminal, a plain line every few seconds
otherwise (logs and pipes should not fill with carriage returns)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressPrinter"]


class ProgressPrinter:
    """Callable as a pipeline ``Progress``: ``(phase, done, total)``."""

    def __init__(self, stream: TextIO | None = None, interval: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if not self.tty else 0.1
        self._phase = ""
        self._started = 0.0
        self._last = 0.0
        self._drawn = False

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if phase != self._phase:
            self._end_line()
            self._phase, self._started, self._last = phase, now, 0.0
        if total and done < total and now - self._last < self.interval:
            return
        self._last = now
        if not total:
            if not self.tty:
                return
            line = f"{phase}..."
        else:
            rate = done / max(now - self._started, 1e-9)
            eta = (total - done) / rate if rate > 0 else 0
            line = f"{phase} {done}/{total} ({rate:.1f}/s, {eta:.0f} s left)"
            if self.tty:
                filled = int(30 * done / total)
                line = f"{phase:<10} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}"
                line += f"  {rate:.1f}/s  {eta:.0f} s left"
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
            self._drawn = True
        elif total:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _end_line(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def close(self) -> None:
        self._end_line()
