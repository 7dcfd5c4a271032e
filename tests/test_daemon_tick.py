"""The daemon's main loop stepped by hand: :meth:`Daemon.tick` under an injected clock, on a
real images folder, a real store and a real output, in this process (no sleeping: time is
ours). The watcher polls once an hour here, so every event is one the test hands over."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgclusterd import status as status_module
from imgclusterd.config import load_config
from imgclusterd.daemon import (
    IDLE_GIVE_BACK_EVERY,
    POOL_IDLE_SECONDS,
    RETRY_AFTER,
    RETRY_MAX,
    Daemon,
)
from imgclusterd.output import WriteHooks
from imgclusterd.output.hooks import IDLE_FLUSHED

from .conftest import Workspace
from .test_bad_input import encode, put, smooth, write_config


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.step = 0.0  # added on every read: time that passes while the daemon works

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def stepped(workspace: Workspace) -> Iterator[tuple[Daemon, Clock, Path]]:
    """A started daemon whose output lives in ``ws.root/out`` (the test breaks that folder)."""
    ws = workspace
    out = ws.root / "out"
    config_path = write_config(ws.root / "cfg.toml", ws.images, out / "output", ws.state,
                               watcher="polling", poll_interval=3600, debounce=2.0,
                               max_delay=30.0, generation_grace=0.0)
    clock = Clock()
    daemon = Daemon(load_config(config_path).config, environ={}, clock=clock)
    daemon.start()
    try:
        yield daemon, clock, out
    finally:
        daemon.close()


def run_until_idle(daemon: Daemon, clock: Clock) -> None:
    """The start-up rescan: due once quiet for `debounce`."""
    daemon.tick()
    clock.now += daemon.config.debounce
    daemon.tick()
    assert daemon.refreshes == 1 and daemon.state.phase == "idle", daemon.state


def failed_attempts(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.levelno == logging.ERROR and r.name == "imgclusterd.daemon"
               for r in caplog.records)


def break_output(out: Path) -> Path:
    """A real fault no permission check can wave through (the tests run as root): the output's
    folder becomes a regular file, so writing a generation fails with ENOTDIR."""
    aside = out.with_name("out.aside")
    out.rename(aside)
    out.write_text("in the way\n")
    return aside


def repair_output(out: Path, aside: Path) -> None:
    out.unlink()
    aside.rename(out)


def test_failed_refresh_backs_off_instead_of_retrying_every_few_seconds(
        workspace: Workspace, stepped: tuple[Daemon, Clock, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    daemon, clock, out = stepped
    caplog.set_level(logging.INFO, logger="imgclusterd")
    run_until_idle(daemon, clock)
    aside = break_output(out)
    first = put(workspace.images, "new1.jpg", encode(smooth(71), "JPEG", quality=90))
    workspace.snapshot()
    daemon.debouncer.add({str(first)})  # what the watcher would report
    clock.now += daemon.config.debounce
    daemon.tick()
    assert failed_attempts(caplog) == 1

    # status says so at once (not after the next photo), from the state row.
    st = status_module.collect(daemon.config)
    assert st["failure"] is not None and st["failure"]["attempts"] == 1, st
    assert "output not refreshed" in st["failure"]["message"]
    assert any("refreshes are failing" in w for w in st["warnings"]), st["warnings"]
    assert st["refreshes"] == 1

    # Events during the backoff neither retry early nor make the loop spin.
    second = put(workspace.images, "new2.jpg", encode(smooth(72), "JPEG", quality=90))
    workspace.snapshot()
    for _ in range(10):
        daemon.debouncer.add({str(second)})
        clock.now += (RETRY_AFTER - 1) / 10
        daemon.tick()
        assert daemon._sleep_time() > 0
    assert failed_attempts(caplog) == 1, [r.message for r in caplog.records]

    # Retries at RETRY_AFTER, then after twice, four times... as long as it keeps failing.
    delay, elapsed = RETRY_AFTER, RETRY_AFTER - 1
    for attempt in range(2, 6):
        clock.now += delay - elapsed - 0.5
        daemon.tick()
        assert failed_attempts(caplog) == attempt - 1
        clock.now += 0.5
        daemon.tick()
        assert failed_attempts(caplog) == attempt
        assert daemon.state.failure is not None and daemon.state.failure["attempts"] == attempt
        delay, elapsed = min(delay * 2, RETRY_MAX), 0.0
    assert delay == 16 * RETRY_AFTER

    # Space is back: the retry includes the failed batch and what arrived meanwhile.
    repair_output(out, aside)
    clock.now += delay
    daemon.tick()
    assert failed_attempts(caplog) == 5
    assert daemon.refreshes == 2 and daemon.state.failure is None
    st = status_module.collect(daemon.config)
    assert st["failure"] is None and not any("failing" in w for w in st["warnings"])
    assert st["counts"]["images"] == 44 + 2 and st["refreshes"] == 2


def test_sighup_retries_a_failed_refresh_at_once(
        workspace: Workspace, stepped: tuple[Daemon, Clock, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    daemon, clock, out = stepped
    caplog.set_level(logging.INFO, logger="imgclusterd")
    run_until_idle(daemon, clock)
    aside = break_output(out)
    daemon.debouncer.request_rescan("test")
    clock.now += daemon.config.debounce
    daemon.tick()
    assert failed_attempts(caplog) == 1
    repair_output(out, aside)
    clock.now += 1.0
    daemon.on_signal(signal.SIGHUP)  # what the signal thread does with a real one
    daemon.tick()
    assert daemon.refreshes == 2 and daemon.state.failure is None
    assert "SIGHUP received: rescanning" in caplog.text


def test_no_busy_loop_while_waiting_for_the_folder_with_a_retry_due(
        workspace: Workspace, stepped: tuple[Daemon, Clock, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    daemon, clock, out = stepped
    caplog.set_level(logging.INFO, logger="imgclusterd")
    run_until_idle(daemon, clock)
    aside = break_output(out)
    daemon.debouncer.request_rescan("test")
    clock.now += daemon.config.debounce
    daemon.tick()
    assert failed_attempts(caplog) == 1
    away = workspace.images.with_name("images.away")
    workspace.images.rename(away)
    try:
        clock.now += 1.0
        daemon.tick()
        assert daemon.state.phase == "waiting"
        clock.now += RETRY_AFTER  # the retry is due, but there is nothing to refresh from
        daemon.tick()
        assert daemon.state.phase == "waiting" and failed_attempts(caplog) == 1
        assert daemon._sleep_time() >= 1.0
    finally:
        away.rename(workspace.images)
    repair_output(out, aside)
    clock.now += 5.0  # the next look for the folder finds it back
    daemon.tick()
    clock.now += daemon.config.debounce
    daemon.tick()
    assert daemon.state.phase == "idle" and daemon.state.failure is None
    assert daemon.refreshes == 2


def test_the_idle_daemon_gives_memory_back_once_its_refresh_and_idle_work_are_done(
        workspace: Workspace, stepped: tuple[Daemon, Clock, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    daemon, clock, _out = stepped
    caplog.set_level(logging.DEBUG, logger="imgclusterd.memory")

    def given_back(after: str) -> int:
        return sum(r.name == "imgclusterd.memory" and r.getMessage().startswith("memory: gave")
                   and f"after {after} (" in r.getMessage() for r in caplog.records)

    def idle_ticks(count: int = 6) -> None:
        for _ in range(count):
            clock.now += 1.0
            daemon.tick()
            assert daemon.state.phase == "idle"

    run_until_idle(daemon, clock)  # the start-up refresh: a whole-tree write
    assert given_back("a whole-tree write") == 1
    assert given_back("refreshes and idle work") == 0
    idle_ticks()  # spare folders made, then nothing left to do: once
    assert given_back("refreshes and idle work") == 1

    photo = put(workspace.images, "new1.jpg", encode(smooth(71), "JPEG", quality=90))
    workspace.snapshot()
    daemon.debouncer.add({str(photo)})
    clock.now += daemon.config.debounce
    daemon.tick()  # a delta write: the pipeline leaves the trim to the idle daemon
    assert daemon.refreshes == 2 and daemon.state.phase == "idle"
    assert given_back("a whole-tree write") == 1
    assert given_back("refreshes and idle work") == 1
    idle_ticks()
    assert given_back("refreshes and idle work") == 2


def test_long_idle_work_gives_memory_back_as_it_goes_not_only_at_its_end(
        stepped: tuple[Daemon, Clock, Path], caplog: pytest.LogCaptureFixture) -> None:
    """The spares and the purge after a big refresh can take ten minutes (100,000 photos):
    the heap a refresh freed is handed back every IDLE_GIVE_BACK_EVERY seconds of that
    work, not only once it is all done."""
    daemon, clock, _out = stepped
    caplog.set_level(logging.DEBUG, logger="imgclusterd.memory")
    run_until_idle(daemon, clock)  # the start-up refresh: its idle work makes spares
    assert daemon.pipeline is not None and daemon.pipeline.writer is not None
    given_when_flushed: list[int] = []

    def given_back_so_far() -> int:
        return sum(r.name == "imgclusterd.memory"
                   and "after idle work so far (" in r.getMessage() for r in caplog.records)

    class Spy(WriteHooks):
        def at(self, point: str) -> None:
            if point == IDLE_FLUSHED:  # the end of the idle spares (see prepare_spares)
                given_when_flushed.append(given_back_so_far())

    daemon.pipeline.writer.hooks = Spy()
    clock.step = IDLE_GIVE_BACK_EVERY / 2  # each spare made takes half a minute
    clock.now += 1.0
    daemon.tick()  # one idle tick: the spares after the whole-tree write
    clock.step = 0.0
    assert len(given_when_flushed) == 1 and given_when_flushed[0] >= 1


def test_idle_hashing_workers_stop_while_spare_folders_are_still_being_made(
        stepped: tuple[Daemon, Clock, Path]) -> None:
    """Spares after a big refresh can take many minutes: the hashing workers, unused for
    longer than POOL_IDLE_SECONDS, stop during them, not after them."""
    daemon, clock, _out = stepped
    run_until_idle(daemon, clock)  # the start-up refresh hashed the photos: workers are up
    assert daemon.pipeline is not None and daemon.pipeline.writer is not None
    pool = daemon.pipeline.pool
    workers = pool.worker_pids()
    assert workers
    pool.used_at -= POOL_IDLE_SECONDS + 1  # as if the hashing ended long ago
    alive_when_flushed: list[list[int]] = []

    class Spy(WriteHooks):
        def at(self, point: str) -> None:
            if point == IDLE_FLUSHED:  # the end of the idle spares (see prepare_spares)
                alive_when_flushed.append(
                    [pid for pid in workers if os.path.exists(f"/proc/{pid}")])

    daemon.pipeline.writer.hooks = Spy()
    clock.now += 1.0
    daemon.tick()  # one idle tick: the spares after the whole-tree write
    assert alive_when_flushed == [[]]
