"""Debounce: turn a stream of dirty paths into batches worth a reconcile.

A batch is *due* once the folder has been quiet for ``quiet`` seconds, or at the latest
``max_delay`` seconds after the batch's first event, so a folder that never goes quiet (a file
rewritten nonstop) is still processed regularly. A full rescan can be requested on top of paths
(after an inotify overflow, a root that came back, a failed event handler); it travels with the
batch and obeys the same timing, so a burst of rescan requests costs one rescan.

The debouncer is pure bookkeeping: it never sleeps and reads time only through ``clock`` (or an
explicit ``now``), so tests step it by hand. It is thread-safe: the watcher thread adds, the main
loop asks :meth:`Debouncer.wait_time`, sleeps exactly that long and then calls
:meth:`Debouncer.take`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Batch", "Debouncer"]

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """What :meth:`Debouncer.take` hands to reconcile.

    ``age`` is how long the batch waited since its first event (for logs and status);
    ``reasons`` says why a rescan (or a rewrite) was requested, oldest first, without repeats.
    ``rewrite``: refresh even with no path, without looking at the disk (see
    :meth:`Debouncer.request_rewrite`).
    """

    paths: set[str] = field(default_factory=set)
    rescan: bool = False
    reasons: list[str] = field(default_factory=list)
    age: float = 0.0
    rewrite: bool = False

    def __bool__(self) -> bool:
        return bool(self.paths) or self.rescan or self.rewrite


class Debouncer:
    """Collects dirty paths; see the module docstring for when a batch is due."""

    def __init__(
        self,
        quiet: float,
        max_delay: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        """``on_change`` is called (outside the lock) after every add or rescan request, so a main
        loop sleeping on an event can be woken to recompute :meth:`wait_time`."""
        if quiet < 0 or max_delay < 0:
            raise ValueError(f"quiet and max_delay must be >= 0 (got {quiet}, {max_delay})")
        self.quiet = quiet
        self.max_delay = max_delay
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._paths: set[str] = set()
        self._rescan = False
        self._rewrite = False
        self._reasons: list[str] = []
        self._first: float | None = None  # first event of the current batch
        self._last: float | None = None  # most recent event of the current batch

    def add(self, paths: Iterable[str], now: float | None = None) -> None:
        """Mark ``paths`` dirty. An empty iterable changes nothing (and starts no batch)."""
        paths = set(paths)
        if not paths:
            return
        with self._lock:
            self._touch(self._now(now))
            self._paths |= paths
        self._changed()

    def request_rescan(self, reason: str = "", now: float | None = None) -> None:
        """Ask for a full reconcile with the next batch; ``reason`` is kept for logs/status."""
        self._request("rescan", reason, now)

    def request_rewrite(self, reason: str = "", now: float | None = None) -> None:
        """Ask for a refresh that looks at no path: what the output shows changed although the
        images folder did not (new thumbnails for the explorer page). A rescan would do it too,
        but walks the whole folder: ~20 s at 100,000 photos, for one thumbnail."""
        self._request("rewrite", reason, now)

    @property
    def full_rescan(self) -> bool:
        """Whether the pending batch asks for a full rescan."""
        with self._lock:
            return self._rescan

    def __len__(self) -> int:
        """How many distinct paths are pending."""
        with self._lock:
            return len(self._paths)

    def pending(self) -> bool:
        """True when there is anything to take (due or not)."""
        with self._lock:
            return self._first is not None

    def due(self, now: float | None = None) -> bool:
        """True when the batch is non-empty and quiet long enough, or has waited max_delay."""
        return self.wait_time(now) == 0.0

    def wait_time(self, now: float | None = None) -> float | None:
        """Seconds until the batch is due (0.0 if it is due now), None when there is no batch."""
        with self._lock:
            if self._first is None or self._last is None:
                return None
            now = self._now(now)
            deadline = min(self._last + self.quiet, self._first + self.max_delay)
            return max(0.0, deadline - now)

    def take(self, now: float | None = None) -> Batch:
        """Return the pending batch (due or not: the caller decides) and start a fresh one."""
        with self._lock:
            age = 0.0 if self._first is None else max(0.0, self._now(now) - self._first)
            batch = Batch(paths=self._paths, rescan=self._rescan, reasons=self._reasons, age=age,
                          rewrite=self._rewrite)
            self._paths = set()
            self._rescan = self._rewrite = False
            self._reasons = []
            self._first = self._last = None
        if batch:
            logger.debug(
                "batch of %d path(s)%s after %.2fs",
                len(batch.paths),
                " + full rescan" if batch.rescan else " + rewrite" if batch.rewrite else "",
                batch.age,
            )  # fmt: skip
        return batch

    # -- private helpers -----------------------------------------------------------------------

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _request(self, what: Literal["rescan", "rewrite"], reason: str, now: float | None) -> None:
        with self._lock:
            self._touch(self._now(now))
            if what == "rescan":
                self._rescan = True
            else:
                self._rewrite = True
            if reason and reason not in self._reasons:
                self._reasons.append(reason)
        self._changed()

    def _touch(self, now: float) -> None:
        # Called with the lock held. The batch's clock starts at its first event; max_delay is
        # measured from there, so events arriving forever cannot postpone it.
        if self._first is None:
            self._first = now
        self._last = now if self._last is None else max(self._last, now)

    def _changed(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                # Called from the watcher thread: an exception here would kill the observer.
                logger.exception("debouncer on_change callback failed")
