"""The debouncer, stepped by hand: no sleeping, the clock is ours."""

from __future__ import annotations

import threading

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from imgclusterd.debounce import Batch, Debouncer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_quiet_window() -> None:
    clock = Clock()
    d = Debouncer(quiet=2.0, max_delay=30.0, clock=clock)
    assert not d.due() and d.wait_time() is None
    d.add({"a.jpg"})
    assert d.wait_time() == 2.0
    clock.now += 1.5
    d.add({"b.jpg"})  # not quiet yet: the window restarts
    assert not d.due()
    assert d.wait_time() == 2.0
    clock.now += 1.9
    assert not d.due()
    clock.now += 0.1
    assert d.due() and d.wait_time() == 0.0
    batch = d.take()
    assert batch.paths == {"a.jpg", "b.jpg"} and not batch.rescan
    assert batch.age == pytest.approx(3.5)


def test_max_delay_for_a_stream_that_never_goes_quiet() -> None:
    clock = Clock()
    d = Debouncer(quiet=2.0, max_delay=10.0, clock=clock)
    d.add({"busy.jpg"})
    for _ in range(9):
        clock.now += 1.0
        d.add({"busy.jpg"})
        assert not d.due()
    assert d.wait_time() == pytest.approx(1.0)  # capped by max_delay, not by the quiet window
    clock.now += 1.0
    d.add({"busy.jpg"})
    assert d.due()
    assert d.take().paths == {"busy.jpg"}
    # The next batch has its own clock.
    clock.now += 0.5
    d.add({"busy.jpg"})
    assert not d.due() and d.wait_time() == 2.0


def test_take_clears() -> None:
    clock = Clock()
    d = Debouncer(quiet=1.0, max_delay=5.0, clock=clock)
    d.add(["x", "y"])
    assert len(d) == 2 and d.pending()
    d.take()
    assert len(d) == 0 and not d.pending() and not d.due()
    assert d.wait_time() is None
    empty = d.take()
    assert not empty and empty == Batch()


def test_empty_add_starts_no_batch() -> None:
    d = Debouncer(quiet=1.0, max_delay=5.0, clock=Clock())
    d.add([])
    assert not d.pending() and d.wait_time() is None


def test_explicit_now_overrides_the_clock() -> None:
    d = Debouncer(quiet=1.0, max_delay=5.0, clock=lambda: 0.0)
    d.add({"a"}, now=100.0)
    assert not d.due(now=100.5)
    assert d.due(now=101.0)
    assert d.wait_time(now=100.25) == 0.75


def test_rescan_flag() -> None:
    clock = Clock()
    d = Debouncer(quiet=1.0, max_delay=5.0, clock=clock)
    d.request_rescan("inotify queue overflowed")
    d.request_rescan("inotify queue overflowed")
    d.request_rescan("folder appeared: /x")
    assert d.full_rescan and d.pending() and len(d) == 0
    assert not d.due()
    clock.now += 1.0
    assert d.due()
    batch = d.take()
    assert batch and batch.rescan and not batch.paths
    assert batch.reasons == ["inotify queue overflowed", "folder appeared: /x"]
    assert not d.full_rescan and not d.take().rescan


def test_rewrite_is_a_batch_without_a_rescan() -> None:
    """New thumbnails ask for the page again: a batch of its own, due like any other, that
    walks nothing unless a rescan was asked for too."""
    clock = Clock()
    d = Debouncer(quiet=1.0, max_delay=5.0, clock=clock)
    d.request_rewrite("new thumbnails for the explorer page")
    assert d.pending() and not d.full_rescan and len(d) == 0 and not d.due()
    clock.now += 1.0
    batch = d.take()
    assert batch and batch.rewrite and not batch.rescan and not batch.paths
    assert batch.reasons == ["new thumbnails for the explorer page"]
    assert not d.take()
    d.request_rewrite("new thumbnails for the explorer page")
    d.add({"a.jpg"})
    d.request_rescan("periodic rescan")
    batch = d.take()
    assert batch.rewrite and batch.rescan and batch.paths == {"a.jpg"}


def test_on_change_wakes_the_loop_and_its_errors_are_contained() -> None:
    woken = threading.Event()
    d = Debouncer(quiet=1.0, max_delay=5.0, clock=Clock(), on_change=woken.set)
    d.add({"a"})
    assert woken.is_set()

    def boom() -> None:
        raise RuntimeError("boom")

    d2 = Debouncer(quiet=1.0, max_delay=5.0, clock=Clock(), on_change=boom)
    d2.add({"a"})  # does not raise
    assert d2.pending()


def test_rejects_negative_windows() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        Debouncer(quiet=-1, max_delay=5)


def test_threads_add_while_the_main_loop_takes() -> None:
    d = Debouncer(quiet=0.0, max_delay=0.0)  # the real clock; always due
    per_thread, threads = 2000, 4
    taken: set[str] = set()
    done = threading.Event()

    def producer(n: int) -> None:
        for i in range(per_thread):
            d.add({f"{n}/{i}"})

    workers = [threading.Thread(target=producer, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()

    def consumer() -> None:
        while not done.is_set() or d.pending():
            taken.update(d.take().paths)

    main_loop = threading.Thread(target=consumer)
    main_loop.start()
    for worker in workers:
        worker.join()
    done.set()
    main_loop.join()
    assert taken == {f"{n}/{i}" for n in range(threads) for i in range(per_thread)}


@given(st.lists(st.tuples(st.floats(0, 5), st.booleans()), min_size=1, max_size=50))
@example([(1.1802800187839726, True), (2.0, False)])  # the rounding case above
def test_never_later_than_max_delay_and_never_due_while_noisy(
    steps: list[tuple[float, bool]],
) -> None:
    """Laws: due no later than max_delay after the first event; never due inside the quiet
    window before max_delay; wait_time says exactly when it becomes due."""
    quiet, max_delay = 2.0, 7.0
    d = Debouncer(quiet=quiet, max_delay=max_delay, clock=lambda: 0.0)
    now = 0.0
    first: float | None = None
    last: float | None = None
    for gap, add in steps:
        now += gap
        if first is not None and last is not None:
            wait = d.wait_time(now)
            assert wait is not None
            # As deadlines, not as differences: `now - last >= quiet` and `now >= last + quiet`
            # round differently (1.18028... + 2.0 then 2.0 later failed once in a fresh run).
            expected_due = now >= last + quiet or now >= first + max_delay
            assert d.due(now) == expected_due
            assert wait == pytest.approx(max(0.0, min(last + quiet, first + max_delay) - now))
            if expected_due:
                d.take(now)
                first = last = None
                continue
        if add:
            d.add({"p"}, now=now)
            first = now if first is None else first
            last = now
