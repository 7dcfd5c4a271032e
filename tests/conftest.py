"""Shared fixtures: photo folders made of real image files, the real CLI in a subprocess, and a
guard that proves imgclusterd left the images folder byte-for-byte unchanged."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
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


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real ``imgclusterd`` command in a subprocess."""
    environment = dict(os.environ)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "imgclusterd", *args],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout,
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the systemd service tests last: their user manager holds inotify watches, this
    machine allows 3 per user, and the kernel hands them back only some time after it stops --
    the watcher tests must not run in its wake."""
    items.sort(key=lambda item: item.path.name == "test_service.py")
