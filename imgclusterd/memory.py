"""Give the heap's free memory back to the system once a burst of work is over.

Why: a refresh or an idle job (spare folders, thumbnails) allocates and frees a lot -- a
whole-tree write's plan holds a link reference per photo per threshold folder, 44 million at
100,000 photos, and a delta write, the forests' update and a sweep make large temporaries.
glibc's ``free`` returns only the top of its heap to the system; the pages of free chunks
below a live one stay resident, and so does the memory of a thread's own arena. The daemon
then sits idle for hours with that memory counted as its own (measured: 764 MB after the
first index at 100,000 photos, ~1.1 GB after a few drops). ``malloc_trim(0)`` hands every
free page of every arena back (``madvise``), whatever lies above it.

It is called where a burst of work ends (after a refresh, after the idle jobs that did
something), never in a loop: it walks the heap's free lists. Where the C library has no
``malloc_trim`` (musl, macOS) it does nothing. Memory held by Python's own small-object
allocator (arenas with a live object left in them) is not the C heap's: this cannot return it.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import time
from collections.abc import Callable

__all__ = ["give_back", "resident_bytes"]

log = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _find_trim() -> Callable[[int], int] | None:
    try:
        # The running program's own symbols (libc among them), not find_library("c"): that
        # forks ``ldconfig -p`` at every start, a stray child beside the hashing workers.
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # no glibc: nothing to trim with
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_trim = _find_trim()


def resident_bytes() -> int:
    """This process's resident memory (RSS) in bytes, 0 where /proc is not there."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def give_back(why: str, level: int = logging.DEBUG) -> int:
    """Collect garbage and freeze what survives (see below), then return the C heap's free
    pages to the system; returns the bytes of resident memory that went (0 where there is no
    ``malloc_trim``). ``why`` is for the log line (e.g. "refresh", "idle work"), logged at
    ``level``."""
    started = time.perf_counter()
    before = resident_bytes()
    # Everything alive now is looked at once more (an object frozen last time may be garbage
    # now), then frozen: the collections Python runs by itself during the next refreshes
    # skip it. Why: a full collection walks every tracked object, ~0.3-0.5 s at 20,000
    # photos and five times that at 100,000, and one falling inside a refresh delayed a
    # photo by that much, more the bigger the library. Here, once per idle spell, it is paid
    # while nothing waits.
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    collected = time.perf_counter()
    if _trim is None:
        return 0
    _trim(0)
    after = resident_bytes()
    given = max(0, before - after)
    log.log(level, "memory: gave back %.1f MB after %s (gc %.0f ms, trim %.0f ms; %.1f MB "
            "resident now)", given / 2**20, why, (collected - started) * 1000,
            (time.perf_counter() - collected) * 1000, after / 2**20)
    return given
