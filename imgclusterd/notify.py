"""Tell systemd how we are doing: the sd_notify protocol, without a dependency.

The protocol is one datagram of ``KEY=value`` lines sent to the ``AF_UNIX`` socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` names a Linux abstract socket). Outside systemd the variable
is unset and every call here is a no-op, so the daemon calls these unconditionally.

Two rules shape this module:

- Notifying must never take the daemon down: a failed send is logged once at debug level and
  otherwise ignored (systemd's own ``sd_notify`` returns an error code that callers ignore too).
- Only the main process may notify (``NotifyAccess=main``; systemd drops other senders and logs
  about them). A :class:`Notifier` remembers the pid that created it and is silent in any other
  process, so a forked or spawned worker that inherited one cannot speak for the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["Notifier", "watchdog_interval"]

logger = logging.getLogger(__name__)

# A blocked send must not stall the main loop (and so starve the watchdog pings it exists for).
_SEND_TIMEOUT = 2.0


class Notifier:
    """Sends sd_notify messages to ``address``, or does nothing when ``address`` is None."""

    def __init__(self, address: str | None) -> None:
        if address is not None and address.startswith("@"):
            # Abstract namespace: the kernel name starts with a NUL byte instead of '@'.
            address = "\0" + address[1:]
        self.address = address or None
        self._pid = os.getpid()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failure_logged = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """The notifier systemd asked for, via ``$NOTIFY_SOCKET`` (a no-op one when unset)."""
        return cls(environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        """True when messages would actually be sent from this process."""
        return self.address is not None and os.getpid() == self._pid

    def send(self, **fields: Any) -> bool:
        """Send one message, e.g. ``send(READY=1, STATUS="watching")``; True if it was sent."""
        address = self.address
        if address is None or not fields:
            return False
        if os.getpid() != self._pid:
            logger.debug("not notifying systemd from pid %d (not the main process)", os.getpid())
            return False
        # A newline inside a value would start a new KEY=value line: flatten it.
        message = "\n".join(
            f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()
        )
        try:
            with self._lock:
                if self._sock is None:
                    # Python sockets are close-on-exec, so spawned children never inherit it.
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sock.settimeout(_SEND_TIMEOUT)
                self._sock.sendto(message.encode("utf-8", "replace"), address)
        except (OSError, ValueError) as exc:
            if not self._failure_logged:
                self._failure_logged = True
                logger.debug("cannot notify systemd at %r: %s", address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up is complete (lock, store and watches are set up)."""
        return self.send(READY=1, **({"STATUS": status} if status is not None else {}))

    def status(self, text: str) -> bool:
        """``STATUS=``: one line saying what the daemon is doing, shown by ``systemctl status``."""
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the main loop is alive. Call at :func:`watchdog_interval`."""
        return self.send(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.send(STOPPING=1, **({"STATUS": status} if status is not None else {}))

    def reloading(self) -> bool:
        """``RELOADING=1``; ``MONOTONIC_USEC`` lets ``Type=notify-reload`` match it to a reload."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING=1, MONOTONIC_USEC=usec)

    def close(self) -> None:
        """Close the socket (a later send opens a new one)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # A pickled notifier (e.g. passed to a spawned worker) keeps the creator's pid, so it stays
        # silent over there; the socket itself cannot travel.
        state = self.__dict__.copy()
        state["_sock"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Notifier(address={self.address!r}, pid={self._pid})"


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, as systemd advises.

    None when no watchdog is configured, or when ``$WATCHDOG_PID`` names another process (the
    variables were inherited, and the watchdog is not ours to feed).
    """
    pid = environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000
