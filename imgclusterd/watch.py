"""The watcher stage: filesystem events in, dirty paths and rescan requests out.

It wraps watchdog and does as little as possible on watchdog's threads: the event handler only
filters names and passes paths to ``on_paths`` (normally the debouncer's ``add``). A folder that
appeared, moved or went is passed as a path too: reconcile walks that folder and looks at what
the store knew under it (a folder moved in from outside arrives with only the files watchdog saw
in time, and one moved out with none). What needs a walk of the whole tree (the root vanishing,
lost events) becomes ``on_rescan(reason)``: reconcile walks the tree and compares it with the
store, which is the safety net for everything a watcher can miss.

Why the care:

- An exception raised in a watchdog handler kills the dispatcher thread silently, so the handler
  catches everything, logs it and asks for a rescan. :meth:`Watcher.alive` lets the daemon notice
  a dead observer (or a root that was deleted or replaced) and restart it with a rescan.
- inotify does not work on network filesystems (changes made by other machines are invisible), so
  ``mode="auto"`` polls there, with a warning.
- The inotify watch and instance limits are per user. When they run out, inotify cannot watch the
  tree: fall back to polling with a warning naming the sysctl to raise. Running out later, for one
  new directory, is reported as a warning plus a rescan (reconcile finds the files).
- An inotify queue overflow loses events; watchdog only logs it, we ask for a rescan.
- An images folder given as a symlink is watched where it points: watchdog asks inotify not to
  follow symlinks, so a watch on the link itself saw the sub-folders but none of the photos at
  the top. Paths are still reported under the configured name, and a link that is pointed
  elsewhere makes :meth:`Watcher.alive` false (restart, rescan).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from .filters import is_temporary
from .fsinfo import NETWORK_FILESYSTEMS, contains, filesystem_type, is_network_filesystem

__all__ = [
    "NETWORK_FILESYSTEMS",
    "RootMissingError",
    "Watcher",
    "filesystem_type",
    "is_network_filesystem",
    "is_temporary",
]

logger = logging.getLogger(__name__)

WatchMode = Literal["auto", "inotify", "polling"]

# Events we react to. Opens and read-only closes are left out on purpose: our own hasher reads
# every photo, and reacting to that would feed the daemon its own work.
_EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileAttribEvent, FileClosedEvent, FileDeletedEvent,
    FileMovedEvent, DirCreatedEvent, DirDeletedEvent, DirMovedEvent,
]  # fmt: skip

_LIMIT_SYSCTL = {
    errno.ENOSPC: ("fs.inotify.max_user_watches", "the inotify watch limit", 524288),
    errno.EMFILE: ("fs.inotify.max_user_instances", "the inotify instance limit", 1024),
}


class RootMissingError(FileNotFoundError):
    """The images folder does not exist (or is not a folder): nothing to watch until it returns."""

    def __init__(self, root: Path) -> None:
        super().__init__(
            errno.ENOENT, "images folder is missing or not a folder; waiting for it", str(root)
        )
        self.root = root


class Watcher:
    """Watches ``root`` recursively and reports candidate paths that changed.

    ``on_paths(paths)`` receives absolute paths that were created, modified, deleted or moved
    (both ends of a move): candidate files, and folders (reconcile walks those);
    ``on_rescan(reason)`` asks for a full reconcile. Both are called from
    watchdog's threads and must be thread-safe (the debouncer is). ``is_candidate(path)`` decides
    which files matter (e.g. by extension); temporary and hidden names, and anything under
    ``exclude`` (the output folder, should it live inside the root), are dropped before it.

    ``mode`` is what is asked for: ``"polling"``; ``"inotify"`` (used even on a network
    filesystem); ``"auto"`` (inotify, polling on a network filesystem). Either inotify mode falls
    back to polling when the inotify limits are exhausted. After :meth:`start`, :attr:`mode` says
    what actually runs and :attr:`warnings` why it differs.
    """

    def __init__(
        self,
        root: Path,
        on_paths: Callable[[set[str]], None],
        on_rescan: Callable[[str], None],
        *,
        mode: WatchMode = "auto",
        poll_interval: float = 5.0,
        is_candidate: Callable[[str], bool] = lambda path: True,
        exclude: Iterable[Path] = (),
        follow_symlinks: bool = False,
        mountinfo: Path = Path("/proc/self/mountinfo"),
    ) -> None:
        if mode not in ("auto", "inotify", "polling"):
            raise ValueError(f"watcher mode must be auto, inotify or polling (got {mode!r})")
        self.root = Path(os.path.abspath(root))
        self.requested_mode: WatchMode = mode
        self.poll_interval = poll_interval
        self.follow_symlinks = follow_symlinks
        self.warnings: list[str] = []
        self.overflows = 0  # inotify queue overflows seen (each one asked for a rescan)
        self.handler_errors = 0  # exceptions caught in the event handler
        self._mode: str | None = None
        self._on_rescan = on_rescan
        self._mountinfo = mountinfo
        self._observer: BaseObserver | None = None
        self._root_id: tuple[int, int] | None = None
        self._watched = str(self.root)  # the resolved root, set by start()
        self._lock = threading.Lock()
        self._starting = False
        self._limit_during_start: OSError | None = None
        self._handler = _Handler(
            self.root,
            on_paths,
            self._request_rescan,
            is_candidate,
            [Path(os.path.abspath(p)) for p in exclude],
            self._count_handler_error,
        )

    @property
    def mode(self) -> str | None:
        """``"inotify"`` or ``"polling"`` while running, None when stopped."""
        return self._mode

    def start(self) -> None:
        """Start watching; raise :class:`RootMissingError` if the root is not there."""
        if self._observer is not None:
            raise RuntimeError("watcher already started; stop() it first")
        self._root_id = self._identity()
        if self._root_id is None:
            raise RootMissingError(self.root)
        self._watched = os.path.realpath(self.root)
        self._handler.watched = self._watched
        if self._watched != str(self.root):
            logger.info("%s is a symlink: watching %s", self.root, self._watched)
        mode = self.requested_mode
        if mode == "auto":
            fstype = filesystem_type(self.root, self._mountinfo)
            if is_network_filesystem(fstype):
                self._warn(
                    f"{self.root} is on a network filesystem ({fstype}), where inotify misses "
                    f"changes made elsewhere: polling every {self.poll_interval:g}s instead"
                )
                mode = "polling"
        if mode != "polling" and not self._start_inotify():
            mode = "polling"
        if mode == "polling":
            self._start_observer(PollingObserver(timeout=self.poll_interval), "polling")
        logger.info("watching %s (%s)", self.root, self._mode)

    def stop(self) -> None:
        """Stop watching (idempotent); the watcher can be started again afterwards."""
        observer, self._observer = self._observer, None
        self._mode = None
        if observer is None:
            return
        try:
            observer.stop()
            if observer.is_alive():
                observer.join(timeout=10)
        except Exception:
            logger.exception("stopping the %s observer failed", type(observer).__name__)

    def alive(self) -> bool:
        """True while the observer and its emitters run and the root is the folder we watch.

        False after the root was deleted, replaced or moved away (inotify would keep following
        the moved folder), or after a watchdog thread died: the daemon then stops, restarts the
        watcher once the root is back, and rescans.
        """
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        emitters = observer.emitters
        if not emitters or not all(emitter.is_alive() for emitter in emitters):
            return False
        if os.path.realpath(self.root) != self._watched:
            logger.warning("%s now points at %s, not %s: watching it again", self.root,
                           os.path.realpath(self.root), self._watched)
            return False
        return self._identity() == self._root_id

    def __enter__(self) -> Watcher:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- private helpers -----------------------------------------------------------------------

    def _start_inotify(self) -> bool:
        """Try inotify; False (with a warning recorded) when its limits are exhausted."""
        self._limit_during_start = None
        self._starting = True
        try:
            observer = _make_inotify_observer(self._inotify_limit, self._inotify_overflow)
            self._start_observer(observer, "inotify")
        except OSError as exc:
            self._observer = self._mode = None
            if exc.errno in _LIMIT_SYSCTL:
                self._warn(_limit_message(exc.errno, self.poll_interval))
                return False
            if self._identity() is None:
                raise RootMissingError(self.root) from exc
            raise
        finally:
            self._starting = False
        if self._limit_during_start is not None:
            # Some sub-folders could not be watched: inotify would be blind there.
            self.stop()
            self._warn(_limit_message(self._limit_during_start.errno, self.poll_interval))
            return False
        return True

    def _start_observer(self, observer: BaseObserver, mode: str) -> None:
        try:
            observer.schedule(
                self._handler,
                self._watched,
                recursive=True,
                event_filter=_EVENT_FILTER,
                follow_symlink=self.follow_symlinks,
            )
            observer.start()
        except BaseException:
            observer.stop()  # also closes the inotify instance when start() failed half-way
            raise
        self._observer = observer
        self._mode = mode

    def _inotify_limit(self, path: bytes, exc: OSError) -> None:
        # Runs on watchdog's threads (or in start()): record, never raise.
        if self._starting:
            self._limit_during_start = exc
            return
        assert exc.errno is not None
        self._warn(
            f"cannot watch {os.fsdecode(path)}: {_limit_message(exc.errno, None)}; its files are "
            "found by the periodic rescan"
        )
        self._request_rescan(f"inotify limit reached at {os.fsdecode(path)}")

    def _inotify_overflow(self) -> None:
        self.overflows += 1
        self._request_rescan("inotify queue overflowed; events were lost")

    def _request_rescan(self, reason: str) -> None:
        try:
            self._on_rescan(reason)
        except Exception:
            self._count_handler_error()
            logger.exception("on_rescan(%r) failed", reason)

    def _count_handler_error(self) -> None:
        with self._lock:
            self.handler_errors += 1

    def _warn(self, message: str) -> None:
        with self._lock:
            if message in self.warnings:
                return
            self.warnings.append(message)
        logger.warning("%s", message)

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.root)
        except OSError:
            return None
        if not os.path.isdir(self.root):
            return None
        return (st.st_dev, st.st_ino)


class _Handler(FileSystemEventHandler):
    """Turns watchdog events into dirty paths. Never raises into watchdog's thread."""

    def __init__(
        self,
        root: Path,
        on_paths: Callable[[set[str]], None],
        on_rescan: Callable[[str], None],
        is_candidate: Callable[[str], bool],
        exclude: list[Path],
        on_error: Callable[[], None],
    ) -> None:
        super().__init__()
        self._root = str(root)
        self.watched = self._root  # where the events come from (the resolved root)
        self._on_paths = on_paths
        self._on_rescan = on_rescan
        self._is_candidate = is_candidate
        self._exclude = [str(p) for p in exclude]
        self._on_error = on_error
        self._errors_logged = 0

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._dispatch(event)
        except BaseException as exc:  # anything escaping kills the observer
            self._on_error()
            # Log the first few in full; a handler failing on every event must not flood the log.
            self._errors_logged += 1
            if self._errors_logged <= 5:
                logger.exception("watch event handler failed on %r", event)
            try:
                self._on_rescan(f"watch event handler failed: {type(exc).__name__}: {exc}")
            except BaseException:
                logger.exception("requesting a rescan after a handler failure failed")

    def _dispatch(self, event: FileSystemEvent) -> None:
        src = self._reported(os.fsdecode(event.src_path))
        dest = self._reported(os.fsdecode(event.dest_path)) if event.dest_path else ""
        if event.is_directory:
            self._directory_event(event, src, dest)
            return
        paths = {path for path in (src, dest) if path and self._wanted(path)}
        if paths:
            self._on_paths(paths)

    def _directory_event(self, event: FileSystemEvent, src: str, dest: str) -> None:
        # Directory events matter only as "a subtree changed wholesale": watchdog reports the
        # files of a new folder only as far as it could walk it in time, and nothing at all for a
        # folder moved out of the tree. Reconcile settles it by walking that folder (and looking
        # at the store's photos under it), not the whole tree: a new album in a library of
        # 100,000 photos cost a full rescan, ~20 s, before its photos showed.
        if src == self._root and event.event_type == "deleted":
            self._on_rescan(f"the images folder {src} disappeared")
            return
        if isinstance(event, DirMovedEvent):
            ends = {path for path in (src, dest) if self._relevant_dir(path)}
        elif isinstance(event, (DirCreatedEvent, DirDeletedEvent)):
            ends = {src} if self._relevant_dir(src) else set()
        else:
            return  # modified: a folder's own metadata, nothing a photo needs
        if ends:
            self._on_paths(ends)

    def _reported(self, path: str) -> str:
        """An event path under the resolved root, as a path under the configured root."""
        if self.watched != self._root and contains(self.watched, path):
            return self._root + path[len(self.watched):]
        return path

    def _relevant_dir(self, path: str) -> bool:
        return bool(path) and not self._hidden_or_excluded(path)

    def _wanted(self, path: str) -> bool:
        return not self._hidden_or_excluded(path) and self._is_candidate(path)

    def _hidden_or_excluded(self, path: str) -> bool:
        if not contains(self._root, path) or path == self._root:
            return True
        if any(contains(excluded, path) for excluded in self._exclude):
            return True
        relative = path[len(self._root) :].lstrip(os.sep)
        return any(is_temporary(part) for part in relative.split(os.sep))


def _make_inotify_observer(
    on_limit: Callable[[bytes, OSError], None], on_overflow: Callable[[], None]
) -> BaseObserver:
    """An inotify observer that also reports exhausted limits and queue overflows.

    Built from watchdog's public pieces (``InotifyFD``, ``InotifyEmitter(inotify_fd=...)``) as
    watchdog >= 6 has them; with other versions, the stock observer (without those reports).
    """
    try:
        from watchdog.observers.inotify import InotifyEmitter
        from watchdog.observers.inotify_c import InotifyFD
    except ImportError:
        from watchdog.observers import Observer

        logger.debug("watchdog without InotifyFD: limit/overflow reports unavailable")
        return Observer()

    class ReportingInotifyFD(InotifyFD):
        def add_callback(self, path: bytes, mask: Any, callback: Any, id_: Any) -> Any:
            try:
                return super().add_callback(path, mask, callback, id_)
            except OSError as exc:
                # watchdog ignores failures below the root; we must know about exhausted limits.
                if exc.errno in _LIMIT_SYSCTL:
                    _quietly(on_limit, path, exc)
                raise

        def handle_event(self, event: Any) -> None:
            if event.is_queue_overflow:
                _quietly(on_overflow)
            super().handle_event(event)

    class ReportingInotifyObserver(BaseObserver):
        def __init__(self) -> None:
            self._inotify_fd = ReportingInotifyFD()  # raises EMFILE at the instance limit
            self._inotify_fd.start()
            super().__init__(InotifyEmitter, inotify_fd=self._inotify_fd)

        def on_thread_stop(self) -> None:
            super().on_thread_stop()
            self._inotify_fd.stop()
            if self._inotify_fd.is_alive():
                self._inotify_fd.join(timeout=10)

    return ReportingInotifyObserver()


def _quietly(function: Callable[..., None], *args: Any) -> None:
    try:
        function(*args)
    except Exception:
        logger.exception("watcher callback %r failed", function)


def _limit_message(code: int, poll_interval: float | None) -> str:
    sysctl, what, suggested = _LIMIT_SYSCTL[code]
    message = (
        f"{what} is exhausted; raise it with `sudo sysctl {sysctl}={suggested}` (persist it in "
        f"/etc/sysctl.d/90-inotify.conf)"
    )
    if poll_interval is not None:
        message += f"; polling every {poll_interval:g}s meanwhile"
    return message
