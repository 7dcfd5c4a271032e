"""Shared fixtures: photo folders made of real image files, the real CLI in a subprocess, and a
guard that proves imgclusterd left the images folder byte-for-byte unchanged.

And a guard for the machine: every process the tests start inherits :data:`SESSION_MARKER` in
its environment; at the end of the session any process still carrying it (a daemon a test
forgot, a fork server, a hashing worker) fails the run, listed by pid and command line.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from imgclusterd.sample import make_sample


def tree_digest(root: Path) -> dict[str, tuple[str, int, int]]:
    """sha256, mode and mtime of every entry under root (symlinks by their target text).

    Folders count by their mtime, root included: a file created and removed again inside the
    images folder (a temporary, a lock) leaves no entry behind but changes its folder's mtime.
    """
    result: dict[str, tuple[str, int, int]] = {}
    if root.is_dir():
        st = root.lstat()
        result["."] = ("dir", st.st_mode, st.st_mtime_ns)
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            st = path.lstat()
            rel = os.path.relpath(path, root)
            if path.is_symlink():
                result[rel] = ("link:" + os.readlink(path), st.st_mode, 0)
            elif path.is_file():
                try:
                    data = path.read_bytes()
                except PermissionError:
                    data = b"<no permission>"
                result[rel] = (hashlib.sha256(data).hexdigest(), st.st_mode, st.st_mtime_ns)
            else:
                result[rel] = ("dir", st.st_mode, st.st_mtime_ns)
    return result


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 120.0,
             step: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``. Deadlines
    are generous: the machine is shared and nothing here asserts a duration."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


class Workspace:
    """A folder laid out like the one-shot script's (``data/images``, ``data/output``) plus a
    private state dir. ``snapshot()`` records the images folder after the test's own changes;
    at teardown the folder must equal the last snapshot."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.images = root / "data" / "images"
        self.output = root / "data" / "output"
        self.state = root / "state"
        self._expected: dict[str, tuple[str, int, int]] = {}

    def snapshot(self) -> None:
        self._expected = tree_digest(self.images)

    def assert_unchanged(self) -> None:
        assert tree_digest(self.images) == self._expected, "the images folder was modified"

    def scan(self, *args: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
        return run_cli("scan", "--state-dir", str(self.state), *args, cwd=self.root, env=env)


@pytest.fixture(scope="session")
def sample_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sample") / "images"
    make_sample(folder)
    return folder


@pytest.fixture
def workspace(tmp_path: Path, sample_source: Path) -> Iterator[Workspace]:
    ws = Workspace(tmp_path)
    ws.images.parent.mkdir(parents=True)
    shutil.copytree(sample_source, ws.images)
    ws.state.mkdir()
    ws.snapshot()
    yield ws
    ws.assert_unchanged()


def spawn_daemon(config: Path, cwd: Path, log_path: Path,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``imgclusterd run`` in a subprocess, its output into ``log_path``; outside systemd
    (an inherited NOTIFY_SOCKET or WATCHDOG_USEC is dropped) unless ``env`` sets them."""
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    environment.update(env or {})
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "imgclusterd", "run", "--config", str(config)],
            cwd=cwd, env=environment, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )


class DaemonProcess:
    """One ``imgclusterd run`` subprocess on a workspace; each start logs to its own file."""

    def __init__(self, ws: Workspace, config: Path, env: dict[str, str] | None = None) -> None:
        from imgclusterd.config import load_config

        self.ws = ws
        self.config_path = config
        self.config = load_config(config).config
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.log_path = ws.root / "daemon-0.log"

    def start(self) -> Self:
        self.runs += 1
        self.log_path = self.ws.root / f"daemon-{self.runs}.log"
        self.proc = spawn_daemon(self.config_path, self.ws.root, self.log_path, self.env)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self, now: float | None = None) -> dict[str, Any]:
        """The status as ``imgclusterd status`` computes it (in-process: fast to poll)."""
        from imgclusterd import status

        return status.collect(self.config, now=now)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self) -> None:
        assert self.alive(), f"the daemon exited early:\n{self.log()}"

    def counters(self) -> dict[str, int]:
        """This process's own counters from its state row in the store (all 0 before it wrote
        one): ``refreshes``, ``sighup_rescans`` (SIGHUPs whose rescan completed),
        ``root_checks`` (looks for a missing images folder)."""
        from imgclusterd.errors import StoreError
        from imgclusterd.store import STORE_NAME, Store

        names = ("refreshes", "sighup_rescans", "root_checks")
        try:
            with Store.open(self.config.store_dir / STORE_NAME, readonly=True) as store:
                row = store.get_state("daemon") or {}
        except StoreError:
            row = {}
        if row.get("pid") != self.pid:
            row = {}
        return {name: int(row.get(name) or 0) for name in names}

    def rescan(self) -> dict[str, Any]:
        """SIGHUP, then wait until the full rescan it asks for has completed: everything on
        disk before the call is then in the store and the output. Returns the status."""
        before = self.counters()["sighup_rescans"]
        os.kill(self.pid, signal.SIGHUP)

        def done() -> bool:
            self.assert_alive()
            return self.counters()["sighup_rescans"] > before

        wait_for(done, "the rescan asked for by SIGHUP")
        return self.status()

    def look_for_images(self) -> dict[str, Any]:
        """While the daemon waits for its images folder: SIGHUP makes it look at once; wait
        until it has looked (its ``root_checks`` counter). Returns the status."""
        before = self.counters()["root_checks"]
        os.kill(self.pid, signal.SIGHUP)

        def looked() -> bool:
            self.assert_alive()
            return self.counters()["root_checks"] > before

        wait_for(looked, "the daemon to look for its images folder")
        return self.status()


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real ``imgclusterd`` command in a subprocess."""
    environment = dict(os.environ)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "imgclusterd", *args],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout,
    )


SESSION_MARKER = "IMGCLUSTERD_TEST_SESSION"
#: How long processes may take to exit once the session is over (a fork server notices its
#: parent's end, a killed daemon's workers their parent's death): then they are leaks.
LEFTOVER_GRACE = 20.0


def pytest_sessionstart(session: pytest.Session) -> None:
    # setdefault: .ci/run (or a developer) may set it to find the leftovers itself, too.
    os.environ.setdefault(SESSION_MARKER, f"{os.getpid()}-{uuid.uuid4().hex}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a process started by the tests is still alive (see the module doc)."""
    _stop_own_fork_server()
    marker = f"{SESSION_MARKER}={os.environ[SESSION_MARKER]}".encode()
    deadline = time.monotonic() + LEFTOVER_GRACE
    while (survivors := leftover_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not survivors:
        return
    lines = [f"pid {pid}: {command}" for pid, command in survivors]
    lines.append(f"{len(survivors)} process(es) started by the tests outlived the session "
                 f"({LEFTOVER_GRACE:.0f} s after its end): a leak; killed now")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "processes left running by the tests", red=True)
        for line in lines:
            reporter.write_line(line, red=True)
    else:
        print("\n".join(lines), file=sys.stderr)
    for pid, _ in survivors:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)  # keep the shared machine clean
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def leftover_processes(marker: bytes) -> list[tuple[int, str]]:
    """(pid, command line) of every other process whose environment holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if marker not in handle.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # exited meanwhile, or not ours to read
            continue
        found.append((int(entry), command or "?"))
    return found


def _stop_own_fork_server() -> None:
    """The in-process pools (test_pool, the stepped daemon...) share this process's fork
    server and multiprocessing's resource tracker, which live as long as this process: stop
    them here, as the end of this process would, so that only real leftovers remain."""
    from multiprocessing import forkserver, resource_tracker

    for helper in (getattr(forkserver, "_forkserver", None),
                   getattr(resource_tracker, "_resource_tracker", None)):
        stop = getattr(helper, "_stop", None)
        if callable(stop):
            stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the systemd service tests last: their user manager holds inotify watches, this
    machine allows 3 per user, and the kernel hands them back only some time after it stops --
    the watcher tests must not run in its wake."""
    items.sort(key=lambda item: item.path.name == "test_service.py")
