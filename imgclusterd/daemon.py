"""``imgclusterd run``: the watching daemon. The only module that wires the stages together
over time; each refresh is :meth:`Pipeline.refresh`, the same code ``scan`` runs once.

Shape of the main loop (one thread decides everything; others only record):

    watchdog thread ──paths──▶ Debouncer ◀── signal thread: sets ``stop`` / asks a rescan
                                   │ due (quiet for `debounce`, or `max_delay` after the first
                                   │      event)
    main loop: heartbeat + WATCHDOG=1 ─▶ refresh ─▶ idle ─▶ sleep until due / next ping / stop

The watchdog pings come from the main loop (and from progress callbacks inside a long refresh),
so a hung loop stops them and systemd restarts the service. A missing or empty images folder
is a *waiting* state, never a reason to forget photos: the last output stays as it is.

A refresh that fails (a full disk, a store locked by hand) keeps its batch aside -- not in the
debouncer, whose next due time is seconds away -- and is retried after :data:`RETRY_AFTER`,
doubling up to :data:`RETRY_MAX` while it keeps failing; new events wait for that retry. The
failure is in the state row (``status`` shows it) from the moment it happens.

Signals (see :data:`SIGNALS`): SIGTERM, SIGINT, SIGQUIT, SIGXCPU and SIGPWR stop in order;
SIGHUP rescans the folder (and retries a failed refresh at once); the other signals a user
may send (SIGUSR1, SIGUSR2, SIGALRM, SIGPIPE, real-time signals...) are logged and ignored
rather than killing the daemon by their default action.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from .config import Config
from .debounce import Batch, Debouncer
from .errors import ImagesFolderError, ImgclusterdError, OutputError
from .filters import is_candidate
from .lock import InstanceLock
from .memory import give_back
from .mount import Mount, SnapshotHolder, load_binding
from .notify import Notifier, watchdog_interval
from .pipeline import Pipeline, RefreshReport, check_layout
from .status import LOCK_NAME
from .store import STORE_NAME
from .watch import RootMissingError, Watcher

__all__ = ["HEARTBEAT_EVERY", "RETRY_AFTER", "RETRY_MAX", "SIGNALS", "Daemon"]

log = logging.getLogger(__name__)

#: Seconds without hashing after which the hashing workers are stopped (Pipeline.release_idle_pool).
POOL_IDLE_SECONDS = 120.0
#: Seconds of idle work (spares, purge) between two hand-backs of the heap's freed pages.
IDLE_GIVE_BACK_EVERY = 60.0
HEARTBEAT_EVERY = 5.0  # seconds between heartbeat rows while idle (status: stale after 90 s)
RETRY_AFTER = 30.0  # seconds before the first retry of a refresh that failed (output or store)
RETRY_MAX = 600.0  # the retry delay doubles while the refresh keeps failing, up to this
_WAITING_CHECK = 5.0  # seconds between looks for the images folder while waiting for it


def _signal_table() -> dict[int, str]:
    """Signal number -> "stop", "rescan" or "ignore", for every signal a user may send whose
    default action would end the process. Not here: SIGKILL and SIGSTOP (cannot be caught),
    the job-control stops (Ctrl-Z works as usual), and the faults (SIGSEGV, SIGBUS, SIGFPE,
    SIGILL, SIGABRT, SIGSYS, SIGTRAP), which mean a crash that systemd should see as one."""
    actions = {
        "stop": ("SIGTERM", "SIGINT", "SIGQUIT", "SIGXCPU", "SIGPWR"),
        "rescan": ("SIGHUP",),
        "ignore": ("SIGUSR1", "SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGPIPE", "SIGIO",
                   "SIGSTKFLT", "SIGXFSZ"),  # SIGXFSZ ignored: the write fails with EFBIG
    }
    table = {int(getattr(signal, name)): action
             for action, names in actions.items() for name in names if hasattr(signal, name)}
    if hasattr(signal, "SIGRTMIN"):
        table.update({n: "ignore" for n in range(signal.SIGRTMIN, signal.SIGRTMAX + 1)})
    return table


#: What each signal does to ``imgclusterd run`` (see :func:`_signal_table`).
SIGNALS: dict[int, str] = _signal_table()


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}" if hasattr(signal, "SIGRTMIN") \
            else f"signal {signum}"


@dataclass
class _State:
    """What the daemon is doing, as written to the store's ``daemon`` row for ``status``."""

    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)
    phase: str = "starting"
    progress: dict[str, int] | None = None
    message: str | None = None
    pending: int = 0
    watcher_mode: str | None = None
    warnings: list[str] = field(default_factory=list)
    refreshes: int = 0  # refreshes completed since start-up (tests and tools wait on it)
    root_checks: int = 0  # looks for the images folder while waiting for it (likewise)
    sighup_rescans: int = 0  # SIGHUPs received whose rescan has completed (likewise)
    failure: dict[str, Any] | None = None  # the refresh that is failing, until one succeeds

    def row(self, now: float) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "started": self.started,
            "heartbeat": now,
            "phase": self.phase,
            "progress": self.progress,
            "message": self.message,
            "pending": self.pending,
            "watcher_mode": self.watcher_mode,
            "warnings": self.warnings,
            "refreshes": self.refreshes,
            "root_checks": self.root_checks,
            "sighup_rescans": self.sighup_rescans,
            "failure": self.failure,
        }


class Daemon:
    """One images folder kept clustered until :attr:`stop` is set (by SIGTERM/SIGINT)."""

    def __init__(
        self,
        config: Config,
        *,
        environ: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.notifier = Notifier.from_env(environ)
        self.ping_every = watchdog_interval(environ)
        self.state = _State()
        self._last_ping = 0.0
        self._last_heartbeat = 0.0
        self._last_status = ""
        self._next_rescan = 0.0
        self._retry_at: float | None = None  # a failed refresh is retried then (clock time)
        self._recheck_at: float | None = None  # see RefreshReport.held_until
        self._held = Batch()  # the failed refresh's batch, kept out of the debouncer till then
        self._failures = 0  # failed refreshes in a row (the backoff exponent)
        self._hup = threading.Event()  # SIGHUP: retry a failed refresh / look for the folder now
        self._sighups = 0  # SIGHUPs whose rescan is requested (written by the signal thread)
        self._signal_logged: dict[int, float] = {}
        self._missed_warning: str | None = None  # see _check_watch_effective
        self._give_back_owed = False  # work was done since the heap was last trimmed
        self._gave_back_at = 0.0  # clock time of the last give_back (or refresh: see there)

        self.debouncer = Debouncer(
            config.debounce, config.max_delay, clock, on_change=self.wake.set
        )
        self.watcher: Watcher | None = None
        self.pipeline: Pipeline | None = None
        self.mount: Mount | None = None  # output_mode = "mount": the FUSE view of the output
        self._failed = False  # start-up failed: keep the error as the STATUS= line
        self._lock: InstanceLock | None = None
        self._store_identity: tuple[int, int] | None = None
        self._next_path_check = 0.0
        self._next_root_check = 0.0

    # -- entry point ------------------------------------------------------------------------

    def run(self, before_start: Callable[[], None] | None = None) -> int:
        """Run until stopped; return the exit code (0 on an orderly stop).

        ``before_start`` runs once the instance lock is held, before the store is opened
        (``run --reset-store`` sets the old store aside there, never under a live daemon).
        """
        self._install_signal_handlers()
        try:
            self.start(before_start)
            self._loop()
        except ImgclusterdError as exc:
            if self.pipeline is None:
                # Could not start (output inside the images folder, a foreign output, a
                # corrupt store, another daemon): say it where `systemctl --user status`
                # shows it, and keep that line on the way out.
                self.notifier.status(f"error: {exc}")
                self._failed = True
            raise
        finally:
            self.close()
        return 0

    def start(self, before_start: Callable[[], None] | None = None) -> None:
        """Layout check, lock, store, watcher, then READY=1 (in this order, see run()).
        With :meth:`tick` and :meth:`close`, a test drives the daemon one turn at a time."""
        if self.config.output_mode == "mount":
            load_binding()  # missing: one line saying what to install, before anything else
        check_layout(self.config)  # before the lock file: never write inside the images
        self._lock = InstanceLock(self.config.store_dir / LOCK_NAME)
        self._lock.acquire()  # AlreadyRunning("already running (pid N)") before anything else
        if before_start is not None:
            before_start()
        self.pipeline = self._new_pipeline()
        if self.config.output_mode == "mount":
            self._start_mount()
        self._store_identity = self._identity()
        self._start_watcher()
        self.debouncer.request_rescan("start-up")
        self._heartbeat(force=True)
        self.notifier.ready(status="starting: first scan")
        log.info(
            "watching %s (%s), output %s",
            self.config.images, self.state.watcher_mode or "waiting", self.config.output,
        )

    def _new_pipeline(self) -> Pipeline:
        publish = self._publish if self.config.output_mode == "mount" else None
        pipeline = Pipeline(self.config, stop=self.stop, progress=self._progress, publish=publish)
        if pipeline.writer is not None:
            pipeline.writer.purge_in_idle = True  # (the idle jobs purge what a write left)
        return pipeline

    def _publish(self, snapshot: Any) -> None:
        if self.mount is not None:
            self.mount.publish(snapshot)

    def _start_mount(self) -> None:
        """Mount the (empty until the first refresh) view at the output path. A stale mount
        of a killed run is unmounted first; a foreign or non-empty mount point is refused."""
        from .output import OutputWriter

        holder = SnapshotHolder(self.config.keep_generations, self.config.generation_grace)
        if self.pipeline is not None and self.pipeline.served is not None:
            holder.publish(self.pipeline.served)  # a remount keeps serving the last view
        mount = Mount(self.config.output, holder)
        own = OutputWriter(self.config.output).current_generation() is not None
        mount.start(own_symlink=own)
        self.mount = mount

    def close(self) -> None:
        """Record the stop, stop the watcher, close the store, release the lock."""
        if self._lock is not None and self._lock.held:
            self._shutdown()
            self._lock.release()

    def _install_signal_handlers(self) -> None:
        """Every signal of :data:`SIGNALS` is decided by a thread, not a handler.

        Python runs a handler in the main thread between two bytecodes, possibly while that
        thread holds the lock inside an Event or the debouncer: a handler taking that lock
        again would deadlock the loop. So the handlers do nothing; the C-level handler writes
        the signal number to a socket (``set_wakeup_fd``) and a small thread acts on it.
        """
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._signal_sockets = (reader, writer)

        def nothing(signum: int, frame: FrameType | None) -> None:
            pass  # see above: the wakeup fd carries the signal to _signal_loop

        for signum in SIGNALS:
            signal.signal(signum, nothing)
        threading.Thread(
            target=self._signal_loop, args=(reader,), name="imgclusterd-signals", daemon=True
        ).start()

    def _signal_loop(self, reader: socket.socket) -> None:
        while True:
            try:
                received = reader.recv(64)
            except OSError:
                return
            if not received:
                return
            for signum in received:
                self.on_signal(signum)

    def on_signal(self, signum: int) -> None:
        """What a signal does (called by the signal thread; never by a handler)."""
        action = SIGNALS.get(signum, "ignore")
        name = _signal_name(signum)
        if action == "stop":
            log.info("%s received: stopping", name)
            self.stop.set()
            self.wake.set()
        elif action == "rescan":
            log.info("%s received: rescanning the images folder", name)
            self._hup.set()  # tick(): a failed refresh or a missing folder is looked at now
            self.debouncer.request_rescan(name)
            self._sighups += 1  # after the request: a refresh that sees it includes the rescan
        else:
            # Rate-limited: a SIGPIPE from writing this very line to a closed pipe must not
            # turn into a loop of log lines.
            now = self.clock()
            if now - self._signal_logged.get(signum, -60.0) >= 60.0:
                self._signal_logged[signum] = now
                log.warning("%s received: ignored (SIGHUP rescans, SIGTERM or SIGINT stops)",
                            name)

    # -- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.tick()
            wait = self._sleep_time()
            self.wake.wait(wait)
            self.wake.clear()

    def tick(self) -> None:
        """One turn of the main loop: keep-alives, watcher health, and a refresh when due."""
        now = self.clock()
        self._ping()
        if self._hup.is_set():
            self._hup.clear()
            self._next_root_check = now  # the user may have just remounted the drive
            if self._retry_at is not None:
                self._retry_at = now
        if now >= self._next_root_check:
            # Walking a photo-less folder for a photo costs something: not on every tick.
            self._next_root_check = now + (_WAITING_CHECK if self.state.phase == "waiting" else 0)
            self._check_root()
        if now >= self._next_path_check:
            self._next_path_check = now + HEARTBEAT_EVERY
            self._check_own_paths()
            self._copy_watcher_warnings()
        if now >= self._next_rescan and self.state.phase != "waiting":
            self.debouncer.request_rescan("periodic rescan")
            # +-25 %, as Syncthing does: daemons of several folders do not all rescan together.
            self._next_rescan = now + self.config.rescan_interval * random.uniform(0.75, 1.25)
        if self._recheck_at is not None and now >= self._recheck_at:
            self._recheck_at = None
            self.debouncer.request_rescan("photos that vanished at once: still gone?")
        if self._retry_at is not None:
            # A failed refresh waits for its retry time, and so does everything that arrived
            # meanwhile: retrying on every event would hammer a full disk every few seconds.
            if now >= self._retry_at and self.state.phase != "waiting":
                self._refresh()
        elif self.state.phase != "waiting" and self.debouncer.due():
            self._refresh()
        elif self.state.phase == "idle" and not self.debouncer.pending():
            worked = self._prepare_spares()
            worked = self._make_thumbnails() or worked
            if self.pipeline is not None and not self.debouncer.pending():
                self.pipeline.release_idle_pool(POOL_IDLE_SECONDS)
                if worked:
                    self._give_back_owed = True
                elif self._give_back_owed:
                    # Refreshes and idle jobs are over: the daemon may now sit idle for hours,
                    # so hand the heap's freed pages back (at 100,000 photos it kept ~1.1 GB
                    # resident after a few drops otherwise). Once, not on every idle tick.
                    self._give_back_owed = False
                    self._gave_back_at = now
                    self.pipeline.shed_idle()
                    give_back("refreshes and idle work", logging.INFO)
        self.state.pending = len(self.debouncer) + len(self._held.paths)
        self._heartbeat()

    def _sleep_time(self) -> float:
        candidates = [HEARTBEAT_EVERY, 1.0]
        if self.ping_every:
            candidates.append(self.ping_every)
        # While waiting for the images folder nothing is refreshed, and while backing off
        # only the retry is: a due batch or retry must not make this a busy loop then.
        if self.state.phase == "waiting":
            pass
        elif self._retry_at is not None:
            candidates.append(self._retry_at - self.clock())
        elif (due := self.debouncer.wait_time()) is not None:
            candidates.append(due)
        return max(0.0, min(candidates))

    @property
    def refreshes(self) -> int:
        """Refreshes completed since start-up (also ``refreshes`` in ``status --json``)."""
        return self.state.refreshes

    def _refresh(self) -> None:
        assert self.pipeline is not None
        sighups = self._sighups  # before take(): see on_signal
        batch = _merge(self._held, self.debouncer.take())
        self._held = Batch()
        self._retry_at = None
        if not batch:
            return
        why = ", ".join(
            [*batch.reasons, *([f"{len(batch.paths)} changed paths"] if batch.paths else [])]
        )
        log.debug("refresh: %s", why)
        self._set_phase("scanning")
        try:
            # Only a rescan walks the whole folder; a batch of events looks at its paths (a
            # rewrite alone at none).
            report = self.pipeline.refresh(dirty=None if batch.rescan else batch.paths)
        except ImagesFolderError as exc:
            self._wait_for_root(str(exc))
            return
        except OutputError as exc:
            # e.g. disk full while building a generation: the previous output stays current.
            self._retry_later(f"output not refreshed: {exc}", batch)
            return
        except (sqlite3.Error, OSError) as exc:
            # The store's disk is full, or a `scan` by hand holds its write lock, or a folder
            # of ours vanished: nothing committed is lost (SQLite rolled back); try again.
            self._retry_later(f"refresh failed: {exc}", batch)
            return
        if report.deferred:
            # Still being written (or changed while hashed): look again after the next quiet.
            self.debouncer.add(report.deferred)
        self._check_watch_effective(batch, report)
        if report.held_until is not None:
            # Photos vanished en masse are kept for now; a full rescan decides after the grace.
            self._recheck_at = self.clock() + max(0.0, report.held_until - time.time())
        if report.interrupted:
            return
        if self._failures:
            log.info("refresh succeeded again after %d failed attempt(s)", self._failures)
        self._failures = 0
        self.state.failure = None
        self.state.refreshes += 1
        self._give_back_owed = True
        self._gave_back_at = self.clock()  # (idle work gives back from a minute after this)
        self.state.sighup_rescans = sighups
        self._log_refresh(report)
        when = time.strftime("%H:%M", time.localtime())
        self._set_phase(
            "idle",
            message=f"idle: {report.images:,} images, refreshed {when}",
        )

    def _check_watch_effective(self, batch: Batch, report: RefreshReport) -> None:
        """A periodic rescan that finds changes nobody reported means the watch misses
        events (a folder reached through a link or a bind mount, a file changed through a
        hard link from outside): say so in status, as it means photos wait up to an hour.
        Only in inotify mode: a poller legitimately lags the rescan by a poll interval."""
        if batch.paths or batch.reasons != ["periodic rescan"] or report.interrupted:
            return
        if self.state.watcher_mode != "inotify":
            return
        found = (report.hashed + report.copies + report.verified + report.moved
                 + report.removed + len(report.new_unreadable))
        if not found:
            self._missed_warning = None
            return
        when = time.strftime("%H:%M", time.localtime())
        self._missed_warning = (
            f"the file watch on {self.config.images} is not effective: the periodic rescan at "
            f"{when} found {found} change(s) it had not reported; new photos may wait until "
            "the next rescan (rescan_interval)"
        )
        log.warning("%s", self._missed_warning)
        self._copy_watcher_warnings()
        self._heartbeat(force=True)

    def _prepare_spares(self) -> bool:
        """Spend idle time making the next refresh cheap: spare copies of the output folders
        the last refresh changed, patched by the next one instead of rewritten whole (see
        OutputWriter.prepare_spares). Any new event stops it at once. True if it made any."""
        if self.pipeline is None or self.pipeline.writer is None:
            return False

        def should_stop() -> bool:
            return self.stop.is_set() or self.debouncer.pending()

        pipeline, writer = self.pipeline, self.pipeline.writer

        def progress() -> None:
            self._ping()
            self._heartbeat()
            # Spares after a big refresh can take many minutes (100,000 photos): the idle
            # hashing workers (~150 MB) need not wait for them to end before they stop.
            pipeline.release_idle_pool(POOL_IDLE_SECONDS)
            # Nor the heap: a refresh's freed pages (~250 MB at 100,000 photos) are handed
            # back every IDLE_GIVE_BACK_EVERY seconds of idle work, not only at its end (the
            # purge after a restart can take ten minutes at that size).
            now = self.clock()
            if self._give_back_owed and now - self._gave_back_at >= IDLE_GIVE_BACK_EVERY:
                self._gave_back_at = now
                give_back("idle work so far")

        try:
            return writer.prepare_spares(should_stop, progress) > 0
        except Exception as exc:  # an optimisation: never a reason to stop the daemon
            log.warning("could not prepare spare output folders: %s", exc)
            return False

    def _make_thumbnails(self) -> bool:
        """Idle time: thumbnails of photos hashed before thumbnails existed, and removal of
        those no photo needs (Pipeline.make_thumbnails). Any new event stops it at once.
        True if it made any."""
        if self.pipeline is None:
            return False
        message = self.state.message
        try:
            made, left = self.pipeline.make_thumbnails(
                should_stop=lambda: self.stop.is_set() or self.debouncer.pending()
            )
        except Exception as exc:  # a cache for the explorer page: never stops the daemon
            log.warning("could not make thumbnails: %s", exc)
            made, left = 0, 0
        if self.state.phase == "thumbnails":
            self._set_phase("idle", message=message)
        if made:
            log.info("made %d thumbnails in idle time (%d still missing)", made, left)
            if not left and self.config.explorer:
                self.debouncer.request_rewrite("new thumbnails for the explorer page")
        return made > 0

    def _retry_later(self, message: str, batch: Batch) -> None:
        """Keep ``batch`` for the retry, RETRY_AFTER from now, doubling while it fails."""
        self._failures += 1
        delay = min(RETRY_AFTER * 2 ** (self._failures - 1), RETRY_MAX)
        self._retry_at = self.clock() + delay
        self._held = batch  # not the debouncer: it would be due again within seconds
        wall = time.time()
        since = self.state.failure["since"] if self.state.failure else wall
        self.state.failure = {"message": message, "attempts": self._failures, "since": since,
                              "retry_at": wall + delay}
        log.error("%s (attempt %d; retrying in %.0f s, or at once on SIGHUP)",
                  message, self._failures, delay)
        self._set_phase("idle", message=f"{message} (retrying in {delay:.0f} s)")

    def _log_refresh(self, report: RefreshReport) -> None:
        timings = ", ".join(f"{k} {v:.2f}s" for k, v in report.timings.items())
        timings += "; walked the folder" if report.full else "; looked at the changed paths"
        if report.output is not None:
            out = report.output
            # What the write time was made of (why a +1 costs what it does): the explorer
            # page's data, the flush before the swap, the collection after it, the writing
            # thread's CPU time, and the entries renamed (renumbered clusters) or copied.
            log.info(
                "refresh done: %s (%s; %d links written, %d folders reused; of the write: "
                "explorer %.2fs, sync %.2fs, gc %.2fs, write_cpu %.2fs, %d renamed, %d copied)",
                report.summary(), timings, out.links_written, out.objects_reused,
                report.explorer_seconds, out.sync_seconds, out.gc_seconds, out.cpu_seconds,
                out.links_renamed, out.links_copied,
            )
        elif report.changed or "cluster" in report.timings:  # mount mode: a new snapshot
            log.info("refresh done: %s (%s)", report.summary(), timings)
        else:
            log.debug("nothing changed (%s)", timings)

    # -- the images root and the watcher ----------------------------------------------------

    def _start_watcher(self) -> None:
        exts = tuple(self.config.extensions)
        self.watcher = Watcher(
            self.config.images,
            on_paths=self.debouncer.add,
            on_rescan=self.debouncer.request_rescan,
            mode=self.config.watcher,
            poll_interval=self.config.poll_interval,
            is_candidate=lambda path: is_candidate(os.path.basename(path), exts),
            exclude=[self.config.output, self.config.store_dir],
            follow_symlinks=self.config.follow_symlinks,
        )
        try:
            self.watcher.start()
        except RootMissingError:
            self._wait_for_root(f"images folder {self.config.images} is missing")
            return
        self.state.watcher_mode = self.watcher.mode
        self.state.warnings = list(self.watcher.warnings)  # the watcher logged them

    def _wait_for_root(self, reason: str) -> None:
        if self.state.phase != "waiting":
            log.warning("%s; waiting for it to come back (nothing is forgotten)", reason)
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        self.state.watcher_mode = None
        self._set_phase("waiting", message=f"waiting: {reason}")

    def _check_root(self) -> None:
        """Leave the waiting state when the folder is back; restart a dead watcher."""
        images: Path = self.config.images
        if self.state.phase == "waiting":
            self.state.root_checks += 1
            if images.is_dir() and _has_photos(images, tuple(self.config.extensions)):
                log.info("images folder %s is back: rescanning", images)
                self._set_phase("idle", message="images folder is back")
                self._start_watcher()
                self.debouncer.request_rescan("images folder came back")
            return
        if not images.is_dir():
            self._wait_for_root(f"images folder {images} is missing")
        elif self.watcher is not None and not self.watcher.alive():
            log.warning("the file watcher stopped; restarting it and rescanning")
            self.watcher.stop()
            self._start_watcher()
            self.debouncer.request_rescan("watcher restarted")

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.config.store_dir / STORE_NAME)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _check_own_paths(self) -> None:
        """Someone deleted the state dir or the OUTPUT symlink: recreate, do not crash.

        SQLite keeps writing into an unlinked store file without any error, and the instance
        lock would then be on a file nobody else sees; so a vanished store means: new lock,
        new store (every photo re-hashed; the photos are all still there), full rescan.
        """
        if self.pipeline is None:
            return
        if self._store_identity is not None and self._identity() != self._store_identity:
            log.warning("the store %s was deleted or replaced; starting a new one",
                        self.config.store_dir / STORE_NAME)
            self.pipeline.close()
            self.pipeline = None
            if self._lock is not None:
                self._lock.release()
                self._lock.acquire()  # AlreadyRunning if another daemon took the folder
            self.pipeline = self._new_pipeline()
            self._store_identity = self._identity()
            self.debouncer.request_rescan("store recreated")
        elif self.mount is not None and not self.mount.alive():
            log.warning("the output mount at %s went away (unmounted by hand?); mounting it "
                        "again", self.config.output)
            self.mount = None
            try:
                self._start_mount()
            except ImgclusterdError as exc:
                log.error("%s", exc)
        elif (
            self.mount is None
            and self.state.phase not in ("waiting", "starting")
            and self._retry_at is None  # a failed write already retries on its own
            and not os.path.exists(self.config.output)  # deleted, or dangling (area deleted)
        ):
            log.warning("the output %s was deleted; writing it again", self.config.output)
            self.debouncer.request_rescan("output deleted")

    def _copy_watcher_warnings(self) -> None:
        """Problems the watcher meets later (a watch limit, a queue overflow) reach status."""
        if self.watcher is None:
            return
        warnings = list(self.watcher.warnings)
        if self.watcher.overflows:
            warnings.append(
                f"the inotify event queue overflowed {self.watcher.overflows} time(s); each "
                "time a full rescan made the store equal the folder again"
            )
        if self.watcher.handler_errors:
            warnings.append(f"{self.watcher.handler_errors} error(s) in the event handler "
                            "(logged); a rescan followed each")
        if self._missed_warning:
            warnings.append(self._missed_warning)
        self.state.warnings = warnings

    # -- status, heartbeat, systemd ---------------------------------------------------------

    def _progress(self, phase: str, done: int, total: int) -> None:
        """Called by the pipeline from the main thread during a refresh."""
        # A phase change is always written at once (the heartbeat is otherwise rate-limited), so
        # status never shows the previous phase while a long stage runs.
        changed = phase != self.state.phase
        self.state.phase = phase
        self.state.progress = {"done": done, "total": total} if total else None
        if phase == "hashing" and total:
            self.state.pending = total - done + len(self.debouncer)
            text = f"hashing {done}/{total}"
        elif phase == "writing" and total:
            text = f"writing output {done}/{total} folders"
        else:
            text = phase
        self._notify_status(text)
        self._ping()
        self._heartbeat(force=changed)

    def _set_phase(self, phase: str, message: str | None = None) -> None:
        self.state.phase = phase
        self.state.progress = None
        self.state.message = message
        self._notify_status(message or phase)
        self._heartbeat(force=True)

    def _notify_status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.notifier.status(text)

    def _ping(self) -> None:
        now = self.clock()
        if self.ping_every and now - self._last_ping >= self.ping_every / 2:
            self._last_ping = now
            self.notifier.watchdog()

    def _heartbeat(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_heartbeat < 1.0:
            return
        self._last_heartbeat = now
        if self.pipeline is not None:
            try:
                self.pipeline.store.set_state("daemon", self.state.row(time.time()))
            except Exception as exc:  # a locked or full disk must not kill the daemon
                log.warning("could not write the heartbeat: %s", exc)

    def _shutdown(self) -> None:
        self.notifier.stopping(status=None if self._failed else "stopping")
        log.info("stopping")
        if self.watcher is not None:
            self.watcher.stop()
        if self.mount is not None:
            self.mount.stop()
            self.mount = None
        if self.pipeline is not None:
            self.state.phase = "stopped"
            self.state.progress = None
            self.state.message = None
            try:
                self.pipeline.store.set_state("daemon", self.state.row(time.time()))
            except Exception as exc:
                log.warning("could not record the stop: %s", exc)
            self.pipeline.close()


def _merge(first: Batch, second: Batch) -> Batch:
    """One batch holding both (a failed batch and what arrived while it waited)."""
    reasons = first.reasons + [r for r in second.reasons if r not in first.reasons]
    return Batch(paths=first.paths | second.paths, rescan=first.rescan or second.rescan,
                 reasons=reasons, age=max(first.age, second.age),
                 rewrite=first.rewrite or second.rewrite)


def _has_photos(folder: Path, extensions: tuple[str, ...]) -> bool:
    """Is there at least one photo under ``folder``? (Stops at the first one.)

    Any entry is not enough: an unmounted drive's mount point may hold a dotfile or an empty
    folder, and leaving the waiting state for those would only fail again, every few seconds.
    """
    try:
        for _, dirs, files in os.walk(folder):
            if any(is_candidate(name, extensions) for name in files):
                return True
            dirs[:] = [d for d in dirs if not d.startswith(".")]
    except OSError:
        pass  # vanished meanwhile: not back yet
    return False
