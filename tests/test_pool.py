"""The hashing pool: real worker processes, real SIGKILLs, a real stop event."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

from imgclusterd.algorithms import DEFAULT_ALGORITHMS
from imgclusterd.hashing import HashPlan, hash_file
from imgclusterd.pool import CRASHED, HashPool

PLAN = HashPlan(DEFAULT_ALGORITHMS)


def _small_files(folder: Path, count: int) -> list[str]:
    base = Image.fromarray(data.coffee()).resize((160, 107))
    paths = []
    for i in range(count):
        path = folder / f"img_{i:03d}.png"
        base.rotate(i * 7).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def slow_file(tmp_path_factory) -> str:
    """A camera-sized photo: long enough to hash (~1 s) that a kill lands mid-task."""
    path = tmp_path_factory.mktemp("slow") / "big.jpg"
    Image.fromarray(data.astronaut()).resize((6000, 4500)).save(path, quality=95)
    return str(path)


def _wait_for(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_workers_are_not_forked():
    pool = HashPool(PLAN, workers=1)
    assert pool._context.get_start_method() in ("forkserver", "spawn")


def test_the_pool_counts_idle_time_from_the_end_of_a_map(slow_file):
    """``used_at`` (what Pipeline.release_idle_pool measures idle time from) is the end of the
    last map, not its start: a long hashing run must not look idle the moment it ends."""
    with HashPool(PLAN, workers=1) as pool:
        results = []
        for result in pool.map([slow_file]):
            results.append(result)
            hashed_at = time.monotonic()
        assert results[0].error is None
        assert pool.used_at >= hashed_at


def test_every_path_gets_one_result(tmp_path):
    paths = _small_files(tmp_path, 30)
    paths.append(str(tmp_path / "missing.jpg"))
    (tmp_path / "notes.jpg").write_text("not a photo")
    paths.append(str(tmp_path / "notes.jpg"))
    with HashPool(PLAN, workers=2) as pool:
        results = list(pool.map(paths))
    assert Counter(r.path for r in results) == Counter(paths)
    by_path = {r.path: r for r in results}
    assert by_path[str(tmp_path / "missing.jpg")].error == "vanished"
    assert by_path[str(tmp_path / "notes.jpg")].error == "not an image"
    for path in paths[:30]:
        assert by_path[path] == hash_file(path, PLAN)


def test_workers_ignore_sigint(tmp_path):
    paths = _small_files(tmp_path, 4)
    with HashPool(PLAN, workers=2) as pool:
        assert len(list(pool.map(paths[:2]))) == 2
        pids = pool.worker_pids()
        assert pids
        for pid in pids:
            # Ignored, not handled: the kernel discards it at once (no moment to wait for).
            assert _ignored_signals(pid) & (1 << (signal.SIGINT - 1)), pid
            os.kill(pid, signal.SIGINT)
        assert sorted(pool.worker_pids()) == sorted(pids)
        assert all(r.error is None for r in pool.map(paths[2:]))
        assert pool.restarts == 0


def _ignored_signals(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        line = next(line for line in handle if line.startswith("SigIgn:"))
    return int(line.split()[1], 16)


def test_sigkilled_worker_is_replaced_and_no_file_is_lost(tmp_path, slow_file):
    paths = [slow_file, *_small_files(tmp_path, 40)]
    results = []
    with HashPool(PLAN, workers=2) as pool:
        for result in pool.map(paths):
            if not results:
                # The big photo is still being hashed: kill whichever worker comes first.
                os.kill(_wait_for(pool.worker_pids)[0], signal.SIGKILL)
            results.append(result)
        assert pool.restarts >= 1
    assert Counter(r.path for r in results) == Counter(paths)
    assert all(r.error is None and r.hashes for r in results)


def test_pool_found_broken_when_submitting_is_replaced(tmp_path):
    """A worker killed between two maps (or while the executor starts another one) leaves the
    executor broken, and its ``submit`` raises: that ended a whole scan (found by the fault
    suite). It is a broken pool like any other: replaced, and every path hashed."""
    paths = _small_files(tmp_path, 6)
    with HashPool(PLAN, workers=2) as pool:
        assert all(r.error is None for r in pool.map(paths[:2]))
        for pid in pool.worker_pids():
            os.kill(pid, signal.SIGKILL)
        # Read (not patched) to wait for: the executor marks itself broken on its own thread.
        executor = pool._executor
        _wait_for(lambda: getattr(executor, "_broken", False))
        results = list(pool.map(paths))
        assert pool.restarts == 1
    assert Counter(r.path for r in results) == Counter(paths)
    assert all(r.error is None and r.hashes for r in results)


_NO_FILE_LEFT = """
import os, resource, sys
from imgclusterd.algorithms import DEFAULT_ALGORITHMS
from imgclusterd.hashing import HashPlan
from imgclusterd.pool import HashPool
limit = len(os.listdir("/proc/self/fd")) + 4  # too few for the pool's pipes
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
with HashPool(HashPlan(DEFAULT_ALGORITHMS), workers=2) as pool:
    try:
        list(pool.map([sys.argv[1]]))
    except OSError as exc:
        print("raised", exc.errno, pool.restarts)
"""


def test_a_pool_that_can_never_start_raises_instead_of_retrying_forever(tmp_path):
    """A submit that finds the pool broken is retried on a new pool, but a machine where no
    pool can start (here: no file descriptor left for its pipes; a real subprocess, since the
    limit is per process) gets the error after a few tries, not an endless loop."""
    photo = _small_files(tmp_path, 1)[0]
    result = subprocess.run([sys.executable, "-c", _NO_FILE_LEFT, photo],
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith("raised "), (result.stdout, result.stderr[-2000:])
    assert int(result.stdout.split()[2]) <= 4  # pools replaced before giving up


def test_path_that_breaks_the_pool_twice_is_reported(slow_file):
    """Killed twice while it is the only task in flight: reported, not retried forever."""
    killed: list[int] = []
    done = threading.Event()
    with HashPool(PLAN, workers=1) as pool:

        def killer():
            # Ends with the test: a thread left behind would fail a later test when it raised.
            while len(killed) < 2 and not done.is_set():
                pids = [p for p in pool.worker_pids() if p not in killed]
                if pids:
                    time.sleep(0.2)  # let it get into the decode (~2.5 s long)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pids[0], signal.SIGKILL)
                        killed.append(pids[0])
                time.sleep(0.01)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        try:
            results = list(pool.map([slow_file]))
        finally:
            done.set()
            thread.join(timeout=30)
        assert not thread.is_alive()
        assert [(r.path, r.error) for r in results] == [(slow_file, CRASHED)]
        assert pool.restarts == 2
        assert hash_file(slow_file, PLAN).error is None  # the file itself is fine


def test_stop_event_ends_map_promptly(tmp_path, slow_file):
    paths = [slow_file] * 6 + _small_files(tmp_path, 40)
    stop = threading.Event()
    results = []
    with HashPool(PLAN, workers=2) as pool:
        iterator = pool.map(paths, stop=stop)
        results.append(next(iterator))
        stop.set()
        started = time.monotonic()
        results.extend(iterator)
        elapsed = time.monotonic() - started
    assert elapsed < 2.0  # one poll interval plus scheduling, never the remaining work
    assert len(results) < len(paths)


def test_stop_already_set_submits_nothing(tmp_path):
    stop = threading.Event()
    stop.set()
    with HashPool(PLAN, workers=1) as pool:
        assert list(pool.map(_small_files(tmp_path, 3), stop=stop)) == []
        assert pool.worker_pids() == []


def test_close_with_cancel_kills_busy_workers(slow_file):
    pool = HashPool(PLAN, workers=1)
    iterator = pool.map([slow_file] * 4)
    next(iterator)
    pids = pool.worker_pids()
    iterator.close()
    started = time.monotonic()
    pool.close(cancel=True)
    assert time.monotonic() - started < 5
    assert pids
    for pid in pids:
        _wait_for(lambda pid=pid: not _alive(pid), timeout=5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_close_with_stop_server_ends_workers_and_fork_server_and_a_new_pool_works(tmp_path):
    """An idle daemon stops its hashing processes (Pipeline.release_idle_pool): the workers
    and the fork server (numpy, Pillow, scipy preloaded) are gone, and hashing later starts
    them again."""
    from multiprocessing import forkserver, resource_tracker

    paths = _small_files(tmp_path, 4)
    pool = HashPool(PLAN, workers=2)
    assert len(list(pool.map(paths))) == 4
    workers = pool.worker_pids()
    server = getattr(forkserver._forkserver, "_forkserver_pid", None)
    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
    assert workers
    pool.close(stop_server=True)
    for pid in workers:
        _wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}"))
    if pool._context.get_start_method() == "forkserver":
        assert server is not None and not os.path.exists(f"/proc/{server}")
        # the resource tracker the server started is gone too (it was ~13 MB idle)
        assert tracker is not None
        _wait_for(lambda: not os.path.exists(f"/proc/{tracker}"))
    again = HashPool(PLAN, workers=1)
    try:
        assert {r.path for r in again.map(paths)} == set(paths)
    finally:
        again.close(stop_server=True)
