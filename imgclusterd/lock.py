"""One daemon per images folder: an ``flock`` on a pid file in the state directory.

``flock`` is released by the kernel when the holder dies, even by SIGKILL, so a crashed daemon
never blocks its own restart (no stale-pid guessing). Two details make that hold in practice:

- The file is opened ``O_CLOEXEC``, so programs the daemon executes do not inherit the lock.
- A *forked* child shares the open file description and would keep the lock alive after the
  daemon died (a restart then fails until the child exits). An at-fork hook closes our copy of the
  descriptor in every forked child; closing, unlike ``LOCK_UN``, leaves the parent's lock intact.

The file is never unlinked: removing a lock file races with a process that has just opened it
and would then lock an inode nobody else can see.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
import weakref
from pathlib import Path

from .errors import AlreadyRunning, StoreError

__all__ = ["InstanceLock", "holder_pid"]

logger = logging.getLogger(__name__)

# Between a holder's flock() and its pid write the file is locked but empty, and a `status` probe
# holds the lock for a moment: retry for this long before believing what we see.
_SETTLE_SECONDS = 0.5
_SETTLE_STEP = 0.02

_held: weakref.WeakSet[InstanceLock] = weakref.WeakSet()


class InstanceLock:
    """An exclusive, non-blocking lock on ``path`` that records the holder's pid in it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`AlreadyRunning` naming the holder's pid."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already locked by this process")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:  # a path through a file, read-only, no permission: one line
            raise StoreError(
                f"cannot use the state folder {self.path.parent}: {exc.strerror or exc}"
            ) from exc
        try:
            deadline = time.monotonic() + _SETTLE_SECONDS
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                # Contention can be momentary (`status` probing the lock, or a holder that is
                # just exiting): only a lock still held after a short while means a live daemon.
                if time.monotonic() >= deadline:
                    raise AlreadyRunning(_read_pid(fd))
                time.sleep(_SETTLE_STEP)
            # Truncate only once we own the lock: the loser must not wipe the winner's pid.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _held.add(self)
        logger.debug("took instance lock %s", self.path)

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        fd, self._fd = self._fd, None
        _held.discard(self)
        if fd is None:
            return
        try:
            # Empty the pid first, while still holding the lock, so nobody reads a stale pid.
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as exc:
            logger.debug("releasing %s: %s", self.path, exc)
        finally:
            os.close(fd)
        logger.debug("released instance lock %s", self.path)

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"InstanceLock({str(self.path)!r}, held={self.held})"

    def _forget_in_child(self) -> None:
        # In a forked child: close our descriptor without unlocking (see the module docstring).
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def holder_pid(path: Path) -> int | None:
    """The pid of the process holding the lock at ``path``, or None if nobody holds it.

    Probes with a non-blocking shared lock on a separate descriptor, released at once. Returns 0
    in the unlikely case that the lock is held but its pid cannot be read (so test the result
    with ``is not None``).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        deadline = time.monotonic() + _SETTLE_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None
            pid = _read_pid(fd)
            if pid is not None:
                return pid
            if time.monotonic() >= deadline:
                return 0
            time.sleep(_SETTLE_STEP)
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def _after_fork_in_child() -> None:
    for lock in list(_held):
        lock._forget_in_child()
    _held.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
