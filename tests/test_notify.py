"""sd_notify over real AF_UNIX datagram sockets, path-bound and abstract."""

from __future__ import annotations

import multiprocessing
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgclusterd.notify import Notifier, watchdog_interval


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(10)  # a deadline, not a timing assertion: messages arrive at once
    return sock


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    address = str(tmp_path / "notify.sock")
    with _receiver(address) as sock:
        yield address, sock


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"imgclusterd-test-{uuid.uuid4().hex}"
    with _receiver("\0" + name) as sock:
        yield "@" + name, sock


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


@pytest.mark.parametrize("which", ["path_socket", "abstract_socket"])
def test_messages_arrive(which: str, request: pytest.FixtureRequest) -> None:
    address, sock = request.getfixturevalue(which)
    with Notifier.from_env({"NOTIFY_SOCKET": address}) as notifier:
        _all_messages(notifier, sock)


def _all_messages(notifier: Notifier, sock: socket.socket) -> None:
    assert notifier.enabled
    assert notifier.ready()
    assert _recv(sock) == "READY=1"
    assert notifier.status("hashing 3 of 10")
    assert _recv(sock) == "STATUS=hashing 3 of 10"
    assert notifier.watchdog()
    assert _recv(sock) == "WATCHDOG=1"
    assert notifier.stopping()
    assert _recv(sock) == "STOPPING=1"


def test_send_several_fields_and_flattens_newlines(
    path_socket: tuple[str, socket.socket], request: pytest.FixtureRequest
) -> None:
    address, sock = path_socket
    notifier = Notifier(address)
    request.addfinalizer(notifier.close)
    assert notifier.ready(status="line one\nline two")
    assert _recv(sock) == "READY=1\nSTATUS=line one line two"
    assert notifier.reloading()
    lines = _recv(sock).split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=") and int(lines[1].split("=")[1]) > 0


def test_no_socket_is_a_noop() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert Notifier.from_env({"NOTIFY_SOCKET": ""}).enabled is False


def test_failure_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens.sock"))
    request.addfinalizer(notifier.close)
    caplog.set_level("DEBUG", logger="imgclusterd.notify")
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    failures = [r for r in caplog.records if "cannot notify" in r.getMessage()]
    assert len(failures) == 1  # logged once, not on every ping


def test_forked_child_cannot_send(
    path_socket: tuple[str, socket.socket], request: pytest.FixtureRequest
) -> None:
    address, sock = path_socket
    notifier = Notifier(address)
    request.addfinalizer(notifier.close)
    pid = os.fork()
    if pid == 0:  # child: must stay silent
        os._exit(0 if notifier.ready() is False else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The child has exited: anything it sent would be queued before this.
    assert notifier.status("parent")
    assert _recv(sock) == "STATUS=parent"


def _spawned_ready(notifier: Notifier) -> None:
    raise SystemExit(0 if notifier.ready() is False else 1)


def test_spawned_child_with_a_pickled_notifier_cannot_send(
    path_socket: tuple[str, socket.socket], request: pytest.FixtureRequest
) -> None:
    address, sock = path_socket
    notifier = Notifier(address)
    request.addfinalizer(notifier.close)
    process = multiprocessing.get_context("spawn").Process(target=_spawned_ready, args=(notifier,))
    process.start()
    process.join(60)
    assert process.exitcode == 0
    assert notifier.status("parent")
    assert _recv(sock) == "STATUS=parent"


def test_watchdog_interval() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    mine = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": mine}) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
