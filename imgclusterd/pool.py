"""The process pool that runs the hashing stage, and survives workers being killed.

Workers start through ``forkserver`` (``spawn`` where that is missing), never ``fork``: the
daemon holds an flock and a SQLite connection that a forked child would inherit. They ignore
SIGINT (the main process decides when to stop), ask the kernel to kill them when their parent
dies, and apply the plan's decompression-bomb limit.

A worker killed by the OOM killer or a SIGKILL breaks a ``ProcessPoolExecutor`` and fails every
task in flight, without saying whose task it was. :class:`HashPool` then starts a new executor
and re-runs those *suspects* one at a time: an innocent path simply gets hashed, and a path
that breaks the pool again while alone is reported as ``"crashed the hashing worker"``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType

from PIL import Image

from imgclusterd.hashing import HashPlan, HashResult, hash_file, register_heif

__all__ = ["CRASHED", "HashPool"]

logger = logging.getLogger(__name__)

#: The error reported for a path that broke the pool twice.
CRASHED = "crashed the hashing worker"

_PR_SET_PDEATHSIG = 1
#: How often map() wakes up to look at the stop event while tasks run.
_POLL_SECONDS = 0.1
#: Submits in a row that may find the pool broken (each time replaced) before the error is
#: raised: a worker killed while another starts is one; a machine that cannot fork is many.
_MAX_REFUSALS = 3


class HashPool:
    """Hash paths in worker processes; yields one :class:`HashResult` per path."""

    def __init__(self, plan: HashPlan, workers: int | None = None) -> None:
        self.plan = plan
        self.workers = max(1, workers or os.cpu_count() or 1)
        methods = multiprocessing.get_all_start_methods()
        self._context = multiprocessing.get_context(
            "forkserver" if "forkserver" in methods else "spawn"
        )
        if self._context.get_start_method() == "forkserver":
            # Import Pillow/numpy/scipy once in the fork server rather than in every worker.
            self._context.set_forkserver_preload(["imgclusterd.hashing"])
        self._executor: ProcessPoolExecutor | None = None
        # When map() last started or ended (see Pipeline.release_idle_pool).
        self.used_at = time.monotonic()
        self.restarts = 0  # how many times a broken pool was replaced (for status/tests)
        self._refusals = 0  # submits in a row that found the pool broken

    def __enter__(self) -> HashPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(cancel=exc_type is not None)

    def worker_pids(self) -> list[int]:
        """Pids of the live worker processes (empty before the first task)."""
        if self._executor is None:
            return []
        processes = getattr(self._executor, "_processes", None) or {}
        return [p.pid for p in list(processes.values()) if p.pid is not None and p.is_alive()]

    def map(
        self,
        paths: Iterable[str],
        stop: threading.Event | None = None,
        task: Callable[[str, HashPlan], HashResult] = hash_file,
    ) -> Generator[HashResult, None, None]:
        """Yield ``task(path, plan)`` as they complete (any order), at most ~2*workers tasks in
        flight. ``task`` is a module-level function (workers import it by name).

        When ``stop`` is set, nothing more is submitted, queued tasks are cancelled, and the
        iterator ends within about ``_POLL_SECONDS`` (results still running are dropped).
        """
        self.used_at = time.monotonic()
        source = iter(paths)
        exhausted = False
        in_flight: dict[Future[HashResult], str] = {}
        suspects: deque[str] = deque()  # paths in flight when the pool broke: run alone
        strikes: dict[str, int] = {}
        limit = 2 * self.workers
        try:
            while True:
                if stop is not None and stop.is_set():
                    return
                broken: list[str] = []  # in flight when the pool broke
                unsent: list[str] = []  # found it broken when submitted: not their fault
                # A suspect runs with nothing else in flight, so a crash names its culprit.
                if suspects:
                    if not in_flight:
                        self._submit_into(in_flight, suspects.popleft(), task, unsent)
                else:
                    while not exhausted and len(in_flight) < limit and not unsent:
                        try:
                            path = next(source)
                        except StopIteration:
                            exhausted = True
                            break
                        self._submit_into(in_flight, path, task, unsent)
                if not in_flight and not unsent:
                    return
                done: set[Future[HashResult]] = set()
                if not unsent:
                    done, _ = wait(in_flight, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
                for future in done:
                    path = in_flight.pop(future)
                    try:
                        yield future.result()
                    except BrokenProcessPool:
                        broken.append(path)
                    except Exception as exc:  # a pickling problem, say: report, go on
                        logger.warning("hashing %s failed in the pool: %r", path, exc)
                        yield HashResult(path, None, None, error=f"hashing failed: {exc!r}")
                if broken or unsent:
                    # Every other task in flight fails the same way: collect them too.
                    for future, path in list(in_flight.items()):
                        del in_flight[future]
                        future.cancel()
                        broken.append(path)
                    self._replace_broken_executor([*broken, *unsent])
                    alone = len(broken) == 1
                    for path in broken:
                        strikes[path] = strikes.get(path, 0) + 1
                        if alone and strikes[path] >= 2:
                            yield HashResult(path, None, None, error=CRASHED)
                        else:
                            suspects.append(path)
                    suspects.extend(unsent)
        finally:
            for future in in_flight:
                future.cancel()
            # Idle time counts from the end of the work: a run of hashing longer than the idle
            # limit must not stop the workers at the first idle tick after it.
            self.used_at = time.monotonic()

    def close(self, cancel: bool = False, stop_server: bool = False) -> None:
        """Shut the workers down; ``cancel`` drops queued work and kills running tasks.

        ``stop_server``: the fork server too (it holds numpy, Pillow and scipy, preloaded:
        ~50 MB); the next pool starts a new one. For a daemon going idle, not between maps.
        """
        executor, self._executor = self._executor, None
        if stop_server:
            try:
                self._close(executor, cancel)
            finally:
                if self._context.get_start_method() == "forkserver":
                    _stop_forkserver()
                _stop_resource_tracker()
            return
        self._close(executor, cancel)

    def _close(self, executor: ProcessPoolExecutor | None, cancel: bool) -> None:
        if executor is None:
            return
        if cancel:
            processes = list((getattr(executor, "_processes", None) or {}).values())
            executor.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                if process.is_alive():
                    process.terminate()
            for process in processes:
                process.join(timeout=5)
        else:
            executor.shutdown(wait=True)

    # --- internals --------------------------------------------------------------------------

    def _submit(
        self, path: str, task: Callable[[str, HashPlan], HashResult]
    ) -> Future[HashResult]:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=self._context,
                initializer=_init_worker,
                initargs=(self.plan.max_image_pixels,),
            )
        return self._executor.submit(task, path, self.plan)

    def _submit_into(
        self,
        in_flight: dict[Future[HashResult], str],
        path: str,
        task: Callable[[str, HashPlan], HashResult],
        unsent: list[str],
    ) -> None:
        """Submit ``path`` into ``in_flight``; when the pool is found broken while doing so,
        put it in ``unsent`` instead. A worker killed while the executor started another one
        made ``submit`` itself fail (BrokenProcessPool, or OSError from the fork server's
        hand-over), which ended the whole scan; it is a broken pool like any other."""
        try:
            in_flight[self._submit(path, task)] = path
        except (BrokenProcessPool, OSError) as exc:
            # A new pool that cannot take a task either (no fork, no file descriptor left) is
            # not a killed worker: after a few, the error is the caller's, not a retry loop's.
            self._refusals += 1
            if self._refusals > _MAX_REFUSALS:
                raise
            logger.debug("submitting %s found the pool broken: %r", path, exc)
            unsent.append(path)
        else:
            self._refusals = 0

    def _replace_broken_executor(self, paths: list[str]) -> None:
        self.restarts += 1
        logger.warning(
            "a hashing worker died (killed or out of memory); restarting the pool and "
            "retrying %d file(s) one at a time",
            len(paths),
        )
        executor, self._executor = self._executor, None
        # Its live workers are killed here, not waited for: a worker the executor was starting
        # while another was killed joins it after the executor's own clean-up terminated the
        # others, and that clean-up then waits for it forever (a scan hung for good).
        self._close(executor, cancel=True)


def _init_worker(max_image_pixels: int | None) -> None:
    """Per-worker setup: leave SIGINT to the parent, die with it, apply the plan's limits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _release_forkserver()
    _die_with_parent()
    Image.MAX_IMAGE_PIXELS = max_image_pixels
    register_heif()


def _release_forkserver() -> None:
    """Let the fork server exit when the main process dies, and take this worker with it.

    The fork server quits when the write end of its "alive" pipe closes, i.e. when its last
    holder exits; CPython hands that end to every forked worker too. So a SIGKILLed daemon
    left the server and its workers alive for ever (each waiting on the other), holding the
    daemon's stdout/stderr open. We fork nothing, so closing our copy is safe; the server then
    sees EOF when the daemon dies, exits, and the death signal below ends this worker.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int):
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]


def _stop_process(helper: object) -> None:
    """Stop one of multiprocessing's helper processes through its private ``_stop`` (there is
    no public call; it is what multiprocessing's own tests use). Without it, it simply stays."""
    stop = getattr(helper, "_stop", None)
    if callable(stop):
        with contextlib.suppress(OSError, ChildProcessError):
            stop()


def _stop_forkserver() -> None:
    """Stop this process's fork server, if it runs."""
    from multiprocessing import forkserver

    _stop_process(getattr(forkserver, "_forkserver", None))


def _stop_resource_tracker() -> None:
    """Stop multiprocessing's resource tracker process (~13 MB resident, started with the fork
    server and left behind by it); the next pool starts it again. Only once the workers and
    the server are gone: it would clean up their semaphores."""
    from multiprocessing import resource_tracker

    _stop_process(getattr(resource_tracker, "_resource_tracker", None))


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when its parent (the fork server or daemon) exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux, or no prctl: best effort only
        pass
