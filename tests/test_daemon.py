"""``imgclusterd run`` and ``imgclusterd status``, driven from the outside: the real daemon in a
subprocess on a tmp folder, real files, real signals, a real sd_notify datagram socket.

This machine allows 3 inotify watches, so the watcher falls back to polling (with a warning);
every test works in that mode (``poll_interval`` is small in the test config) and in inotify mode.
Nothing here asserts a duration: conditions are awaited with generous deadlines.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imgclusterd import status as status_module
from imgclusterd.explorer import DATA_FILE, PAGE_FILES

from .conftest import DaemonProcess, Workspace, run_cli, wait_for

DEADLINE = 60.0  # seconds: generous, the machine is shared and noisy
STEP = 0.2

ALGORITHMS = (("phash_8", 20, 1), ("dhash_8", 20, 1))
THRESHOLDS = {name: len(range(0, top, step)) for name, top, step in ALGORITHMS}
GENERATION_RE = re.compile(r"\.[^/]+\.imgclusterd/generations/g\d{8,}-\d+-[0-9a-f]{16}\Z")


# -- helpers -----------------------------------------------------------------------------------


def make_photos(folder: Path, count: int, seed: int, size: tuple[int, int] = (320, 240),
                prefix: str = "photo") -> list[Path]:
    """Distinct smooth random JPEGs (what perceptual hashes see in photos: coarse structure)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for number in range(count):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BICUBIC)
        path = folder / f"{prefix}{seed}_{number:03d}.jpg"
        image.save(path, quality=90)
        written.append(path)
    return written


def output_targets(output: Path) -> set[str]:
    """The absolute image paths the output tree links to (empty when there is no output)."""
    if not os.path.lexists(output):
        return set()
    root = os.path.realpath(output)  # pins one generation, as a reader would
    targets: set[str] = set()
    for directory, _, files in os.walk(root, followlinks=True):
        for name in files:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                targets.add(os.readlink(path))
    return targets


def assert_complete_generation(output: Path, images: set[str] | None = None) -> None:
    """OUTPUT names a generation (not a temporary) and every threshold lists every image."""
    target = os.readlink(output)
    assert GENERATION_RE.search(target), f"OUTPUT points at {target!r}, not a generation"
    root = Path(os.path.realpath(output))
    # Beside the algorithm folders: the explorer page, written and swapped with the tree.
    assert sorted(os.listdir(root)) == sorted([*THRESHOLDS, *PAGE_FILES, DATA_FILE])
    seen: set[str] | None = images
    for algorithm, count in THRESHOLDS.items():
        folders = sorted(os.listdir(root / algorithm))
        assert len(folders) == count, (algorithm, folders)
        for folder in folders:
            targets = sorted(
                os.readlink(os.path.join(d, f))
                for d, _, files in os.walk(root / algorithm / folder, followlinks=True)
                for f in files
            )
            assert len(targets) == len(set(targets)), f"an image listed twice in {folder}"
            if seen is None:
                seen = set(targets)
            assert set(targets) == seen, f"{algorithm}/{folder} does not list every image"


def write_config(ws: Workspace, **overrides: Any) -> Path:
    values: dict[str, Any] = {
        "images": str(ws.images),
        "output": str(ws.output),
        "state_dir": str(ws.state),
        "debounce": 0.5,
        "max_delay": 3.0,
        "poll_interval": 0.3,
        "watcher": "auto",
        "workers": 2,
    }
    values.update(overrides)
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    for name, top, step in ALGORITHMS:
        lines += ["[[algorithms]]", f'name = "{name}"', f"max_threshold = {top}",
                  f"step = {step}"]
    path = ws.root / "cfg.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Daemon(DaemonProcess):
    """The daemon suite's driver: status through the CLI, idle and output waits."""

    def refreshes(self) -> int:
        return self.log().count("refresh done")

    def status_cli(self) -> tuple[int, dict[str, Any]]:
        result = run_cli("status", "--config", str(self.config_path), "--json",
                         cwd=self.ws.root, timeout=120)
        return result.returncode, json.loads(result.stdout)

    def wait_idle(self, after: str | None = None) -> dict[str, Any]:
        """Wait until running, idle, with a refresh recorded (finished after ``after``)."""

        def ready() -> dict[str, Any] | None:
            self.assert_alive()
            st = self.status()
            last = st["last_refresh"]
            if (st["state"] == "running" and st["pid"] == self.pid and st["phase"] == "idle"
                    and last and (after is None or last["finished"] > after)):
                return st
            return None

        return wait_for(ready, "the daemon to be running and idle")

    def wait_output(self, condition: Callable[[set[str]], bool], what: str) -> set[str]:
        def check() -> set[str] | None:
            self.assert_alive()
            targets = output_targets(self.config.output)
            return targets if condition(targets) else None

        return wait_for(check, what)

    def wait_quiet(self) -> dict[str, Any]:
        """Everything on disk is processed: a SIGHUP rescan completed (see rescan()), then
        idle with nothing pending."""
        self.rescan()

        def quiet() -> dict[str, Any] | None:
            st = self.status()
            return st if st["phase"] == "idle" and st["counts"]["pending"] == 0 else None

        return wait_for(quiet, "the daemon to settle")

    def terminate(self, timeout: float = DEADLINE) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGCONT)  # harmless if it runs; needed if a test stopped it
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the daemon did not stop on SIGTERM:\n{self.log()}") from None


@pytest.fixture
def start_daemon(workspace: Workspace) -> Iterator[Callable[..., Daemon]]:
    """Start the real daemon on ``workspace`` (waiting until it is idle); SIGTERM at the end,
    which must exit 0."""
    started: list[Daemon] = []

    def start(*, wait: bool = True, env: dict[str, str] | None = None,
              **config: Any) -> Daemon:
        daemon = Daemon(workspace, write_config(workspace, **config), env)
        started.append(daemon)
        daemon.start()
        if wait:
            daemon.wait_idle()
        return daemon

    yield start
    failures = []
    for daemon in started:
        if daemon.alive():
            code = daemon.terminate()
            if code != 0:
                failures.append(f"exit code {code}:\n{daemon.log()}")
    assert not failures, failures


def abs_paths(ws: Workspace, *relative: str) -> set[str]:
    return {str(ws.images / r) for r in relative}


def disk_photos(ws: Workspace) -> set[str]:
    return {
        os.path.join(d, f) for d, _, files in os.walk(ws.images) for f in files
        if not f.startswith(".")
    }


# -- start-up and events -----------------------------------------------------------------------


def test_starts_and_indexes_the_folder(workspace: Workspace, start_daemon: Any) -> None:
    daemon = start_daemon()
    code, st = daemon.status_cli()
    assert code == 0, st
    assert st["state"] == "running" and st["pid"] == daemon.pid and st["phase"] == "idle"
    assert st["watcher"]["mode"] in ("inotify", "polling")
    assert output_targets(workspace.output) == disk_photos(workspace)
    assert_complete_generation(workspace.output, disk_photos(workspace))


def test_burst_of_photos_is_one_or_two_refreshes(
    workspace: Workspace, start_daemon: Any, tmp_path: Path
) -> None:
    daemon = start_daemon()
    staged = make_photos(tmp_path / "camera", 30, seed=1)
    before = daemon.refreshes()
    for path in staged:
        (workspace.images / path.name).write_bytes(path.read_bytes())
    workspace.snapshot()
    wanted = abs_paths(workspace, *(p.name for p in staged))
    daemon.wait_output(wanted.issubset, "the 30 new photos in the output")
    daemon.wait_quiet()
    refreshes = daemon.refreshes() - before
    assert 1 <= refreshes <= 2, daemon.log()
    assert output_targets(workspace.output) == disk_photos(workspace)
    assert daemon.status()["counts"]["images"] == len(disk_photos(workspace))


def test_slow_chunked_copy_is_never_unreadable(
    workspace: Workspace, start_daemon: Any, tmp_path: Path
) -> None:
    daemon = start_daemon()
    source = make_photos(tmp_path / "share", 1, seed=2, size=(1600, 1200))[0]
    data = source.read_bytes()
    target = workspace.images / "slow.jpg"
    chunk = len(data) // 5 + 1
    # Pauses longer than the debounce (a refresh sees a partial JPEG), one longer than max_delay.
    pauses = [1.0, 1.5, daemon.config.max_delay + 0.5, 1.0]
    with open(target, "wb") as handle:
        for index in range(5):
            handle.write(data[index * chunk:(index + 1) * chunk])
            handle.flush()
            if index < len(pauses):
                deadline = time.monotonic() + pauses[index]
                while time.monotonic() < deadline:
                    st = daemon.status()
                    assert st["counts"]["unreadable"] == 0, st["unreadable_examples"]
                    time.sleep(STEP)
    workspace.snapshot()
    daemon.wait_output(lambda t: str(target) in t, "the slowly copied photo in the output")
    st = daemon.status()
    assert st["counts"]["unreadable"] == 0, st["unreadable_examples"]
    assert "unreadable: slow.jpg" not in daemon.log()


def test_part_file_renamed_to_final_name(
    workspace: Workspace, start_daemon: Any, tmp_path: Path
) -> None:
    daemon = start_daemon()
    source = make_photos(tmp_path / "dl", 1, seed=3, size=(1200, 900))[0]
    part = workspace.images / "download.jpg.part"
    known = daemon.status()["counts"]["images"]
    with open(part, "wb") as handle:
        data = source.read_bytes()
        handle.write(data[: len(data) // 2])
        handle.flush()
        # A full rescan while the download is half written (no event would cause one: the
        # watcher ignores the name): it sees the .part and must leave it alone.
        st = daemon.rescan()
        assert st["counts"]["images"] == known and st["counts"]["unreadable"] == 0, st
        assert not any(".part" in t for t in output_targets(workspace.output))
        handle.write(data[len(data) // 2:])
    os.rename(part, workspace.images / "download.jpg")
    workspace.snapshot()
    final = str(workspace.images / "download.jpg")
    targets = daemon.wait_output(lambda t: final in t, "the renamed photo in the output")
    assert not any(".part" in t for t in targets)
    daemon.wait_quiet()
    st = daemon.status()
    assert st["counts"]["images"] == len(disk_photos(workspace))
    assert st["counts"]["unreadable"] == 0
    assert ".part" not in daemon.log()


def test_move_within_the_tree_is_not_rehashed(workspace: Workspace, start_daemon: Any) -> None:
    daemon = start_daemon()
    (workspace.images / "trip").mkdir()
    os.rename(workspace.images / "scene03.jpg", workspace.images / "trip" / "renamed.jpg")
    workspace.snapshot()
    new, old = str(workspace.images / "trip" / "renamed.jpg"), str(workspace.images / "scene03.jpg")
    daemon.wait_output(lambda t: new in t and old not in t, "the moved photo under its new path")
    assert "moved: scene03.jpg -> trip/renamed.jpg (not re-hashed)" in daemon.log()
    assert output_targets(workspace.output) == disk_photos(workspace)


def test_directory_moved_in_is_fully_indexed(
    workspace: Workspace, start_daemon: Any, tmp_path: Path
) -> None:
    daemon = start_daemon()
    outside = tmp_path / "card" / "DCIM"
    staged = make_photos(outside, 20, seed=4)
    os.rename(outside, workspace.images / "DCIM")
    workspace.snapshot()
    wanted = abs_paths(workspace, *(f"DCIM/{p.name}" for p in staged))
    daemon.wait_output(wanted.issubset, "all 20 photos of the moved-in folder")
    daemon.wait_quiet()
    assert output_targets(workspace.output) == disk_photos(workspace)
    assert daemon.status()["counts"]["images"] == len(disk_photos(workspace))


def test_deletes_are_removed_from_the_output(workspace: Workspace, start_daemon: Any) -> None:
    daemon = start_daemon()
    gone = ["scene01.jpg", "scene02_bright.jpg", "singles/single1.jpg"]
    for name in gone:
        (workspace.images / name).unlink()
    workspace.snapshot()
    removed = abs_paths(workspace, *gone)
    daemon.wait_output(lambda t: bool(t) and not (t & removed), "the deleted photos to go")
    assert output_targets(workspace.output) == disk_photos(workspace)
    assert daemon.status()["counts"]["images"] == len(disk_photos(workspace))
    assert_complete_generation(workspace.output, disk_photos(workspace))


def test_changes_made_while_stopped_are_picked_up(
    workspace: Workspace, start_daemon: Any, tmp_path: Path
) -> None:
    daemon = start_daemon()
    assert daemon.terminate() == 0
    new = make_photos(tmp_path / "new", 1, seed=5)[0]
    (workspace.images / new.name).write_bytes(new.read_bytes())
    (workspace.images / "scene04_crop.jpg").unlink()
    os.rename(workspace.images / "scene05.jpg", workspace.images / "singles" / "scene05.jpg")
    workspace.snapshot()
    daemon.start()
    expected = disk_photos(workspace)
    daemon.wait_output(lambda t: t == expected, "the output to match the changed folder")
    assert "moved: scene05.jpg -> singles/scene05.jpg (not re-hashed)" in daemon.log()
    daemon.wait_idle()


def test_root_renamed_away_and_back(
    workspace: Workspace, start_daemon: Any, tmp_path: Path
) -> None:
    daemon = start_daemon()
    before = output_targets(workspace.output)
    known = daemon.status()["counts"]["images"]
    away = workspace.images.with_name("images.away")
    os.rename(workspace.images, away)
    try:
        st = wait_for(lambda: (s := daemon.status())["phase"] == "waiting" and s,
                      "status to say waiting")
        assert st["state"] == "running"
        assert "waiting" in (st["message"] or "")
        for _ in range(2):  # it looks for the folder and finds it still missing
            st = daemon.look_for_images()
            assert st["phase"] == "waiting" and st["counts"]["images"] == known
        assert output_targets(workspace.output) == before
        daemon.assert_alive()
    finally:
        os.rename(away, workspace.images)
    wait_for(lambda: daemon.status()["phase"] == "idle", "the daemon to resume")
    new = make_photos(tmp_path / "new", 1, seed=6)[0]
    (workspace.images / new.name).write_bytes(new.read_bytes())
    workspace.snapshot()
    expected = disk_photos(workspace)
    daemon.wait_output(lambda t: t == expected, "the photo added after the folder came back")
    assert daemon.status()["counts"]["images"] == known + 1


# -- signals, instances, status ----------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_mid_hash_exits_cleanly(workspace: Workspace, start_daemon: Any) -> None:
    big = make_photos(workspace.images / "big", 60, seed=7, size=(3000, 2000))
    assert len(big) == 60
    workspace.snapshot()
    daemon = start_daemon(wait=False)
    wait_for(lambda: daemon.assert_alive() or daemon.status()["phase"] == "hashing",
             "the daemon to be hashing", timeout=120)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    try:
        code = daemon.proc.wait(20)
    except subprocess.TimeoutExpired:
        daemon.proc.kill()
        daemon.proc.wait()
        raise AssertionError(f"no exit within 20 s of SIGTERM:\n{daemon.log()}") from None
    assert code == 0, daemon.log()
    if os.path.lexists(workspace.output):
        assert_complete_generation(workspace.output)
    st = daemon.status()
    assert st["state"] == "not running" and st["phase"] == "stopped", st
    # A restart finishes the job and leaves a complete generation.
    daemon.start()
    daemon.wait_output(lambda t: t == disk_photos(workspace), "every photo after the restart")
    assert_complete_generation(workspace.output, disk_photos(workspace))


IGNORED_SIGNALS = ["SIGUSR1", "SIGUSR2", "SIGALRM", "SIGPIPE", "SIGVTALRM", "SIGPROF", "SIGIO",
                   "SIGXFSZ", "SIGRTMIN", "SIGRTMAX"]


def test_every_signal_a_user_may_send_is_logged_not_fatal(
    workspace: Workspace, start_daemon: Any
) -> None:
    """SIGUSR1 and friends used to end the daemon by their default action, silently. Now each
    is logged and ignored, SIGHUP rescans (a refresh happens, counted in status), SIGQUIT stops
    in order like SIGTERM. Real signals to the real daemon process."""
    daemon = start_daemon()
    for name in [*IGNORED_SIGNALS, "SIGRTMIN+3"]:
        number = (signal.SIGRTMIN + 3 if name == "SIGRTMIN+3" else getattr(signal, name))
        os.kill(daemon.pid, number)
        wait_for(lambda n=name: daemon.assert_alive() or f"{n} received: ignored" in daemon.log(),
                 f"the daemon to log {name}")
    st = daemon.status()
    assert st["state"] == "running" and st["phase"] == "idle", st

    before = st["refreshes"]
    assert isinstance(before, int) and before >= 1
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for(lambda: daemon.assert_alive() or daemon.status()["refreshes"] > before,
             "a refresh after SIGHUP")
    assert "SIGHUP received: rescanning" in daemon.log()

    os.kill(daemon.pid, signal.SIGQUIT)
    assert daemon.proc is not None
    assert daemon.proc.wait(DEADLINE) == 0, daemon.log()
    assert "SIGQUIT received: stopping" in daemon.log()
    assert daemon.status()["phase"] == "stopped"


def test_run_help_documents_the_signals(workspace: Workspace) -> None:
    result = run_cli("run", "--help", cwd=workspace.root)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "SIGHUP rescans the whole folder" in text, text
    assert "SIGUSR1" in text and "logged and ignored" in text


def test_second_instance_refuses_and_changes_nothing(
    workspace: Workspace, start_daemon: Any
) -> None:
    daemon = start_daemon()
    link = os.readlink(workspace.output)
    generations = sorted(os.listdir(workspace.output.parent / ".output.imgclusterd/generations"))
    result = run_cli("run", "--config", str(daemon.config_path), cwd=workspace.root, timeout=120)
    assert result.returncode != 0
    assert f"already running (pid {daemon.pid})" in result.stderr
    assert os.readlink(workspace.output) == link
    assert sorted(
        os.listdir(workspace.output.parent / ".output.imgclusterd/generations")
    ) == generations
    st = daemon.status()
    assert st["state"] == "running" and st["pid"] == daemon.pid
    daemon.assert_alive()


def test_scan_beside_the_daemon_refuses_and_reset_store_touches_nothing(
    workspace: Workspace, start_daemon: Any
) -> None:
    """A hand-made scan would race the daemon for the store and the output, and
    ``--reset-store`` would pull the store from under it: both are refused under its lock."""
    daemon = start_daemon()
    store = workspace.state / "store.sqlite"
    inode, link = store.stat().st_ino, os.readlink(workspace.output)
    for args in ([], ["--reset-store"]):
        for command in ("scan", "run"):
            result = run_cli(command, "--config", str(daemon.config_path), *args,
                             cwd=workspace.root, timeout=120)
            assert result.returncode == 75, (command, args, result.stderr)
            assert f"already running (pid {daemon.pid})" in result.stderr
    assert store.stat().st_ino == inode and os.readlink(workspace.output) == link
    assert sorted(p.name for p in workspace.state.iterdir() if "reset" in p.name) == []
    daemon.assert_alive()
    assert daemon.status()["counts"]["images"] == len(disk_photos(workspace))


def test_folder_left_with_only_non_photos_waits_without_flapping(
    workspace: Workspace, start_daemon: Any
) -> None:
    """Emptied of photos but not of everything (a mount point's dotfile, a thumbnail cache,
    empty folders): the daemon waits, keeps store and output, and does not retry in a loop."""
    daemon = start_daemon()
    photos = disk_photos(workspace)
    output_before = output_targets(workspace.output)
    away = workspace.root / "away"
    away.mkdir()
    for path in photos:
        os.rename(path, away / os.path.basename(path))
    (workspace.images / ".directory").write_text("[Desktop Entry]\n")
    (workspace.images / "empty-album").mkdir()
    workspace.snapshot()
    wait_for(lambda: daemon.status()["phase"] == "waiting", "the daemon to wait")
    log_before = daemon.log().count("is back")
    for _ in range(3):  # it looks at the folder each time and keeps waiting
        st = daemon.look_for_images()
        assert st["phase"] == "waiting" and st["counts"]["images"] == len(photos)
    assert daemon.log().count("is back") == log_before, daemon.log()
    assert output_targets(workspace.output) == output_before
    for path in photos:
        os.rename(away / os.path.basename(path), path)
    workspace.snapshot()
    wait_for(lambda: daemon.status()["phase"] == "idle", "the daemon to resume")
    daemon.assert_alive()


def test_start_up_error_is_the_status_line_under_systemd(
    workspace: Workspace, tmp_path: Path
) -> None:
    """An error found after the config loaded (here: the output inside the images folder) exits
    78 and leaves its message as systemd's STATUS= (not "stopping")."""
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        config = write_config(workspace, output=str(workspace.images / "out"))
        env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
        result = subprocess.run(
            [sys.executable, "-m", "imgclusterd", "run", "--config", str(config)],
            cwd=workspace.root, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 78, result.stderr
        statuses = [m["STATUS"] for m in notify.drain() + notify.messages if "STATUS" in m]
        assert statuses and "inside the images folder" in statuses[-1], statuses
    finally:
        notify.close()


def test_status_in_every_state(workspace: Workspace, start_daemon: Any) -> None:
    config = write_config(workspace)
    never = run_cli("status", "--config", str(config), cwd=workspace.root)
    assert never.returncode == 3, never.stdout + never.stderr
    assert "never ran" in never.stdout

    daemon = start_daemon()
    code, st = daemon.status_cli()
    assert code == 0
    for key in ("state", "pid", "uptime_seconds", "heartbeat_age_seconds", "phase", "progress",
                "message", "counts", "unreadable_examples", "last_refresh", "images", "output",
                "store", "watcher"):
        assert key in st
    assert st["state"] == "running" and st["pid"] == daemon.pid
    assert st["counts"]["images"] == len(disk_photos(workspace))
    assert st["last_refresh"]["generation"] in os.readlink(workspace.output)
    assert st["images"] == str(workspace.images) and st["output"] == str(workspace.output)

    # Hung: a stopped process writes no heartbeat. Rather than wait STALE_AFTER (90 s), look
    # from the future, and run the real CLI with a short staleness window.
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: _proc_state(daemon.pid) == "T", "the daemon to be stopped")
        hung = daemon.status(now=time.time() + status_module.STALE_AFTER + 5)
        assert hung["state"] == "not responding" and hung["pid"] == daemon.pid
        assert status_module.EXIT_CODES[hung["state"]] == 1
        wait_for(lambda: daemon.status()["heartbeat_age_seconds"] > 2.5,
                 "the heartbeat to be older than the CLI's 2 s window below")
        script = (
            "import sys; import imgclusterd.status as s; s.STALE_AFTER = 2.0; "
            "from imgclusterd.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        result = subprocess.run(
            [sys.executable, "-c", script, "status", "--config", str(daemon.config_path)],
            capture_output=True, text=True, timeout=120, cwd=workspace.root,
        )
        assert result.returncode == 1, result.stdout + result.stderr
        assert "not responding" in result.stdout
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    wait_for(lambda: daemon.status()["heartbeat_age_seconds"] < 2.0, "a fresh heartbeat")

    assert daemon.terminate() == 0
    stopped = run_cli("status", "--config", str(config), "--json", cwd=workspace.root)
    assert stopped.returncode == 3
    st = json.loads(stopped.stdout)
    assert st["state"] == "not running" and st["phase"] == "stopped" and st["pid"] is None
    assert st["counts"]["images"] == len(disk_photos(workspace))


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0]


# -- sd_notify ---------------------------------------------------------------------------------


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def receive(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append(fields)
        return fields

    def until(self, predicate: Callable[[dict[str, str]], bool], what: str,
              timeout: float = DEADLINE) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.receive(max(0.01, min(1.0, deadline - time.monotonic())))
            if message is not None and predicate(message):
                return message
        raise AssertionError(f"no {what} within {timeout:.0f} s; got {self.messages}")

    def drain(self) -> list[dict[str, str]]:
        drained = []
        while (message := self.receive(0.01)) is not None:
            drained.append(message)
        return drained

    def close(self) -> None:
        self.sock.close()


def test_sd_notify(workspace: Workspace, start_daemon: Any, tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        daemon = start_daemon(
            wait=False,
            env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"},
        )
        notify.until(lambda m: m.get("READY") == "1", "READY=1")
        st = daemon.status()  # READY=1 only after the lock and the store are set up
        assert st["pid"] == daemon.pid and st["state"] == "running"
        assert st["watcher"]["mode"] in ("inotify", "polling")
        notify.until(lambda m: re.fullmatch(r"hashing \d+/\d+", m.get("STATUS", "")) is not None,
                     "STATUS=hashing x/y")
        notify.until(lambda m: m.get("STATUS", "").startswith("idle: "), "STATUS=idle: ...")
        for _ in range(2):
            notify.until(lambda m: m.get("WATCHDOG") == "1", "WATCHDOG=1 while idle")

        # A stopped (hung) process sends no pings.
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: _proc_state(daemon.pid) == "T", "the daemon to be stopped")
            notify.drain()
            time.sleep(3.0)  # more than the 2 s watchdog period
            assert not [m for m in notify.drain() if "WATCHDOG" in m]
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
        notify.until(lambda m: m.get("WATCHDOG") == "1", "WATCHDOG=1 after SIGCONT")

        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        notify.until(lambda m: m.get("STOPPING") == "1", "STOPPING=1 after SIGTERM")
        assert daemon.proc.wait(DEADLINE) == 0, daemon.log()
        assert sum(m.get("READY") == "1" for m in notify.messages) == 1
    finally:
        notify.close()


def test_no_notify_socket_is_a_no_op(workspace: Workspace, start_daemon: Any) -> None:
    # The common case outside systemd: nothing to notify, nothing fails.
    daemon = start_daemon(env={"NOTIFY_SOCKET": str(workspace.root / "absent.sock")})
    daemon.assert_alive()
    assert "Traceback" not in daemon.log()
