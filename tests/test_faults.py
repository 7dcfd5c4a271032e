"""Faults: SIGKILL at every step, dead workers, a full disk, a vanished images folder, a corrupt
store, two daemons, and a reader inside the output while it is swapped 100 times.

Each crash is followed by a restart and the same checks: the store passes
``PRAGMA integrity_check``, ``OUTPUT`` names a complete generation, the interrupted leftovers
are gone, and the whole tree -- every (link path relative to OUTPUT -> target) -- equals what a
fresh ``scan`` of the same folder into another output and state dir writes. The images folder
is byte-for-byte unchanged throughout (the ``workspace`` fixture checks it at teardown).

Crashes at a precise step (inside a store transaction, between the temporary symlink and the
swap) are too short to hit by timing; there the real CLI runs under a small driver that SIGKILLs
its own process at that call: a real kill, real SQLite and real files, only the moment chosen.
The others are killed from outside at a moment observed on disk or in /proc.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgclusterd import status as status_module
from imgclusterd.config import load_config
from imgclusterd.store import STORE_NAME

from .conftest import DaemonProcess, Workspace, run_cli, wait_for
from .test_bad_input import (
    ALGORITHMS,
    encode,
    output_links,
    put,
    smooth,
    store_records,
    write_config,
)

DEADLINE = 120.0  # generous: the machine is shared; nothing asserts a duration
GENERATION_RE = re.compile(r"\A\.[^/]+\.imgclusterd/generations/(g\d{8,}-\d+-[0-9a-f]{16})\Z")

# Runs the real CLI, but SIGKILLs its own process at a chosen call (argv: point, after, args).
DRIVER = r"""
import os, signal, sys
from imgclusterd.output import WriteHooks, set_default_hooks
from imgclusterd.output.hooks import (
    ALGORITHM_WRITTEN, GENERATION_BUILT, OBJECT_STAGED, SWAP_LINK_MADE)
from imgclusterd.store import Store
from imgclusterd.cli import main

point, after, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
calls = [0]

class KillAt(WriteHooks):
    def __init__(self, point):
        self.point = point
    def at(self, point):
        if point == self.point:
            calls[0] += 1
            if calls[0] > after:
                os.kill(os.getpid(), signal.SIGKILL)

if point == "commit":        # inside BEGIN IMMEDIATE, some rows written, no COMMIT
    real = Store.put_hashed  # a public method wrapped: the store has no hooks of its own
    def put_hashed(self, *a, **k):
        calls[0] += 1
        if calls[0] > after:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, *a, **k)
    Store.put_hashed = put_hashed
elif point == "objects":     # some objects published, one complete in tmp/ but not published
    set_default_hooks(KillAt(OBJECT_STAGED))
elif point == "algorithm":   # a whole tree: one algorithm's folders built, the next not
    set_default_hooks(KillAt(ALGORITHM_WRITTEN))
elif point == "generation":  # the generation built and renamed in, never swapped
    set_default_hooks(KillAt(GENERATION_BUILT))
elif point == "swap":        # the temporary symlink made, os.replace not done
    set_default_hooks(KillAt(SWAP_LINK_MADE))
sys.exit(main(args))
"""


# -- helpers -----------------------------------------------------------------------------------


def add_photos(folder: Path, count: int, seed: int, size: tuple[int, int] = (320, 240),
               prefix: str = "extra") -> list[Path]:
    return [put(folder, f"{prefix}{seed}_{n:03d}.jpg",
                encode(smooth(seed * 1000 + n, size), "JPEG", quality=90), mtime=None)
            for n in range(count)]


def add_slow_photos(folder: Path, count: int, seed: int) -> list[Path]:
    """Photos that keep the hashing workers busy for seconds, for kills that must land mid-hash.

    PNG, not JPEG: a JPEG is decoded drafted at 1/8 scale, so a few dozen of this size hash in
    about a second on a fast machine; a PNG is decoded whole (~50 ms each here), which leaves
    seconds of hashing for the kill to land in.
    """
    return [put(folder, f"slow{seed}_{n:03d}.png",
                encode(smooth(seed * 1000 + n, (1600, 1200)), "PNG", compress_level=1),
                mtime=None)
            for n in range(count)]


def config_for(ws: Workspace, name: str = "cfg.toml", **extra: Any) -> Path:
    extra.setdefault("debounce", 0.3)
    extra.setdefault("max_delay", 2.0)
    extra.setdefault("poll_interval", 0.3)
    extra.setdefault("watcher", "polling")
    extra.setdefault("generation_grace", 0.0)
    return write_config(ws.root / name, ws.images, ws.output, ws.state, **extra)


def scan(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("scan", "--config", str(config), *args, cwd=config.parent, timeout=600)


def clean_links(ws: Workspace, label: str = "clean") -> dict[str, str]:
    """The tree a fresh scan of the images folder writes (another output and state)."""
    out, state = ws.root / label / "output", ws.root / label / "state"
    config = write_config(ws.root / f"{label}.toml", ws.images, out, state)
    result = scan(config, "-q")
    assert result.returncode == 0, result.stderr
    return output_links(out)


def integrity(state: Path) -> str:
    with sqlite3.connect(f"file:{state / STORE_NAME}?mode=ro", uri=True) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def assert_recovered(ws: Workspace) -> None:
    """After a restart: store intact, one hash per algorithm per photo, OUTPUT a complete
    generation, no leftovers, and the tree equal to a clean scan's."""
    assert integrity(ws.state) == "ok"
    with sqlite3.connect(f"file:{ws.state / STORE_NAME}?mode=ro", uri=True) as db:
        per_file = db.execute(
            "SELECT count(*) FROM files f LEFT JOIN hashes h ON h.file_id = f.id "
            "WHERE f.status = 'hashed' GROUP BY f.id").fetchall()
    assert {n for (n,) in per_file} == {len(ALGORITHMS)}
    target = os.readlink(ws.output)
    match = GENERATION_RE.match(target)
    assert match, f"OUTPUT points at {target!r}, not a generation"
    area = ws.output.parent / f".{ws.output.name}.imgclusterd"
    assert os.listdir(area / "tmp") == [], "interrupted leftovers were not cleaned"
    newer = [g for g in os.listdir(area / "generations") if g > match[1]]
    assert newer == [], f"generations never swapped in were left: {newer}"
    assert not [e for e in os.listdir(ws.output.parent) if e.endswith(".new")]
    assert output_links(ws.output) == clean_links(ws)


def finished_at(last_refresh: dict[str, Any]) -> float:
    """The epoch time of status' ``last_refresh.finished`` (ISO 8601, milliseconds)."""
    finished = last_refresh.get("finished")
    return dt.datetime.fromisoformat(finished).timestamp() if finished else 0.0


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def worker_pids(pid: int) -> list[int]:
    """The hashing workers of an imgclusterd process: children of its fork server."""
    workers: list[int] = []
    own = cmdline(pid)
    for child in children(pid):
        command = cmdline(child)
        if not command or command == own:
            # Empty: gone, or mid-exec. Equal: forked, not exec'd yet. Either way the fork
            # server (or a spawned worker) starting or a child ending: not a worker to name.
            continue
        # Named, not guessed by elimination: a child that is neither (once, ldconfig run by
        # ctypes.util at import) was taken for a worker, and killing it tested nothing.
        if "multiprocessing.forkserver" in command:
            workers += [w for w in children(child) if cmdline(w)]
        elif "multiprocessing.spawn" in command:
            workers.append(child)  # spawn start method: workers are direct children
    return workers


def kill_and_reap(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


class Daemon(DaemonProcess):
    """The fault suite's driver: waits for idle with a photo count, stops with a deadline."""

    def wait_idle(self, images: int | None = None, after: float = 0.0) -> dict[str, Any]:
        def idle() -> dict[str, Any] | None:
            self.assert_alive()
            st = self.status()
            last = st.get("last_refresh") or {}
            if (st["state"] == "running" and st["pid"] == self.pid and st["phase"] == "idle"
                    and finished_at(last) > after
                    and (images is None or st["counts"]["images"] == images)):
                return st
            return None

        return wait_for(idle, f"daemon idle ({images} images)")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                kill_and_reap(self.proc)


@pytest.fixture
def daemons(workspace: Workspace) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


# -- SIGKILL at a precise step (driver) --------------------------------------------------------


@pytest.mark.parametrize(("point", "after"), [
    ("commit", 70),      # 64 rows committed, 6 more written in the open transaction
    ("objects", 25),     # 25 folders published, the 26th built in tmp/, not published
    ("algorithm", 0),    # the first algorithm's folders published, the second's not planned
    ("generation", 0),   # a complete generation renamed into generations/, not swapped in
    ("swap", 0),         # tmp/link-<gen> made, OUTPUT not yet replaced
])
def test_sigkill_at_each_step_then_restart(workspace: Workspace, point: str,
                                           after: int) -> None:
    ws = workspace
    config = config_for(ws)
    first = scan(config)  # a previous output exists, as in real life
    assert first.returncode == 0, first.stderr
    before = os.readlink(ws.output)
    add_photos(ws.images, 100, seed=2)
    ws.snapshot()
    crashed = subprocess.run(
        [sys.executable, "-c", DRIVER, point, str(after), "scan", "--config", str(config)],
        cwd=ws.root, capture_output=True, text=True, timeout=600)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    # Right after the crash: the store is consistent and OUTPUT still names the old output.
    assert integrity(ws.state) == "ok"
    assert os.readlink(ws.output) == before
    if point == "commit":
        assert len(store_records(ws.state)) == 44 + 64  # the open transaction is gone
    restart = scan(config)
    assert restart.returncode == 0, restart.stderr
    assert_recovered(ws)


# -- SIGKILL from outside at an observed moment ------------------------------------------------


def test_sigkill_scan_during_hashing(workspace: Workspace) -> None:
    ws = workspace
    add_slow_photos(ws.images, 40, seed=3)
    ws.snapshot()
    config = config_for(ws)
    proc = subprocess.Popen([sys.executable, "-m", "imgclusterd", "scan", "--config",
                             str(config)], cwd=ws.root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: worker_pids(proc.pid) or proc.poll() is not None, "hashing workers",
                 step=0.01)
        time.sleep(0.2)  # into the hashing, which lasts seconds (add_slow_photos)
    finally:
        kill_and_reap(proc)
    assert proc.returncode == -signal.SIGKILL, "the scan finished before it could be killed"
    assert not os.path.lexists(ws.output)
    assert scan(config).returncode == 0
    assert_recovered(ws)


@pytest.mark.slow
def test_sigkill_scan_while_building_a_generation(workspace: Workspace) -> None:
    """The full algorithm set, so that writing takes long enough to be caught in the act."""
    ws = workspace
    config = write_config(ws.root / "full.toml", ws.images, ws.output, ws.state)
    text = config.read_text()
    config.write_text(text[: text.index("[[algorithms]]")])  # default: all 14 algorithms
    assert scan(config).returncode == 0
    before = os.readlink(ws.output)
    add_photos(ws.images, 5, seed=4)
    ws.snapshot()
    tmp = ws.output.parent / f".{ws.output.name}.imgclusterd" / "tmp"
    proc = subprocess.Popen([sys.executable, "-m", "imgclusterd", "scan", "--config",
                             str(config)], cwd=ws.root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.listdir(tmp) or proc.poll() is not None, "a build in tmp/",
                 step=0.002)
    finally:
        kill_and_reap(proc)
    if proc.returncode != -signal.SIGKILL:
        pytest.skip("the write finished before the kill landed (timing)")
    assert os.readlink(ws.output) == before
    assert integrity(ws.state) == "ok"
    assert scan(config).returncode == 0
    # assert_recovered compares with a small-set clean scan: compare with a full one here.
    assert integrity(ws.state) == "ok"
    assert os.listdir(tmp) == []
    out, state = ws.root / "clean" / "output", ws.root / "clean" / "state"
    assert scan(config, "--output", str(out), "--state-dir", str(state)).returncode == 0
    assert output_links(ws.output) == output_links(out)


@pytest.mark.slow
def test_sigkill_one_worker_mid_hash(workspace: Workspace) -> None:
    ws = workspace
    add_slow_photos(ws.images, 40, seed=5)
    ws.snapshot()
    config = config_for(ws)
    proc = subprocess.Popen([sys.executable, "-m", "imgclusterd", "scan", "-v", "--config",
                             str(config)], cwd=ws.root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        killed = wait_for(lambda: kill_one_worker(proc.pid) or proc.poll() is not None,
                          "a hashing worker to kill", step=0.01)
        assert killed is not True, "the scan ended before a hashing worker was seen"
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            kill_and_reap(proc)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert proc.returncode == 0, err
    assert "a hashing worker died" in err
    records = store_records(ws.state)
    assert len(records) == 44 + 40
    assert all(r.status == "hashed" for r in records.values()), \
        [(p, r.reason) for p, r in records.items() if r.status != "hashed"]
    assert_recovered(ws)


def kill_one_worker(pid: int) -> int | None:
    """SIGKILL one live hashing worker of ``pid``; its pid, or None while there is none."""
    for worker in worker_pids(pid):
        try:
            os.kill(worker, signal.SIGKILL)
        except ProcessLookupError:
            continue  # gone between the listing and the kill: try the next one
        return worker
    return None


# -- disk full ---------------------------------------------------------------------------------


@pytest.fixture
def small_fs(workspace: Workspace) -> Iterator[Path]:
    mount = workspace.root / "smallfs"
    mount.mkdir()
    # 16 MB: room for the state folder after indexing the sample (store, WAL and thumbnails:
    # with 2 MB it could already be full before the test filled it).
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16M,nr_inodes=100000",
                             "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def remount(mount: Path, inodes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,nr_inodes={inodes}", str(mount)], check=True)


def test_disk_full_while_building_keeps_previous_output(workspace: Workspace,
                                                        small_fs: Path) -> None:
    """Full by inodes: symlinks this short live in the inode, so ``size=`` alone never fills."""
    ws = workspace
    ws.output = small_fs / "output"
    config = config_for(ws)
    assert scan(config).returncode == 0
    before_target, before_links = os.readlink(ws.output), output_links(ws.output)
    used = os.statvfs(small_fs).f_files - os.statvfs(small_fs).f_ffree
    remount(small_fs, used + 40)  # room for a little, not for a new generation
    add_photos(ws.images, 20, seed=6)
    ws.snapshot()
    full = scan(config)
    assert full.returncode != 0
    line = full.stderr.strip().splitlines()[-1]
    assert "Traceback" not in full.stderr, full.stderr
    assert line.startswith("imgclusterd: error:") and "No space left" in line, line
    assert os.readlink(ws.output) == before_target
    assert output_links(ws.output) == before_links  # intact and still current
    assert integrity(ws.state) == "ok"
    remount(small_fs, 100000)
    again = scan(config)
    assert again.returncode == 0, again.stderr
    assert_recovered(ws)


@pytest.mark.slow
def test_disk_full_daemon_says_why_and_recovers(workspace: Workspace, small_fs: Path,
                                                daemons: list[Daemon]) -> None:
    ws = workspace
    ws.output = small_fs / "output"
    daemon = Daemon(ws, config_for(ws))
    daemons.append(daemon.start())
    daemon.wait_idle(images=44)
    before_target = os.readlink(ws.output)
    used = os.statvfs(small_fs).f_files - os.statvfs(small_fs).f_ffree
    remount(small_fs, used + 40)
    add_photos(ws.images, 20, seed=7)
    ws.snapshot()
    st = wait_for(lambda: (daemon.assert_alive(), daemon.status())[1]
                  if "No space left" in (daemon.status().get("message") or "") else None,
                  "status to say the disk is full")
    assert "output not refreshed" in st["message"]
    assert os.readlink(ws.output) == before_target
    remount(small_fs, 100000)
    # The daemon retries on its own (and any change would trigger a refresh too).
    wait_for(lambda: (daemon.assert_alive(), os.readlink(ws.output) != before_target)[1],
             "the output to be refreshed once space is back", timeout=180)
    daemon.wait_idle(images=64)
    daemon.stop()
    assert_recovered(ws)


# -- the images root, the output symlink -------------------------------------------------------


def test_images_root_deleted_or_empty_then_restored(workspace: Workspace) -> None:
    ws = workspace
    config = config_for(ws)
    assert scan(config).returncode == 0
    links, known = output_links(ws.output), store_records(ws.state)
    away = ws.root / "away"
    ws.images.rename(away)
    gone = scan(config)
    assert gone.returncode == 66 and "does not exist" in gone.stderr
    ws.images.mkdir()  # an empty mount point: must not look like 44 deletions
    empty = scan(config)
    assert empty.returncode == 66 and "is empty but 44 photos are known" in empty.stderr
    assert store_records(ws.state) == known
    assert output_links(ws.output) == links
    ws.images.rmdir()
    away.rename(ws.images)
    back = scan(config)
    assert back.returncode == 0 and " 0 hashed now" in back.stdout
    assert output_links(ws.output) == links
    assert_recovered(ws)


@pytest.mark.slow
def test_daemon_images_root_deleted_and_restored(workspace: Workspace,
                                                 daemons: list[Daemon]) -> None:
    ws = workspace
    daemon = Daemon(ws, config_for(ws))
    daemons.append(daemon.start())
    daemon.wait_idle(images=44)
    links, known = output_links(ws.output), store_records(ws.state)
    away = ws.root / "away"
    ws.images.rename(away)
    wait_for(lambda: (daemon.assert_alive(), daemon.status()["phase"] == "waiting")[1],
             "the daemon to wait for its folder")
    for _ in range(2):  # it looks for the folder while it is gone, and forgets nothing
        assert daemon.look_for_images()["phase"] == "waiting"
        assert store_records(ws.state) == known and output_links(ws.output) == links
    away.rename(ws.images)
    now = time.time()
    daemon.wait_idle(images=44, after=now)
    assert store_records(ws.state) == known and output_links(ws.output) == links


@pytest.mark.slow
def test_output_symlink_deleted_while_running_is_recreated(workspace: Workspace,
                                                           daemons: list[Daemon]) -> None:
    ws = workspace
    daemon = Daemon(ws, config_for(ws))
    daemons.append(daemon.start())
    daemon.wait_idle(images=44)
    ws.output.unlink()  # nothing else happens: the daemon must notice by itself
    wait_for(lambda: (daemon.assert_alive(), os.path.lexists(ws.output))[1],
             "OUTPUT to be recreated")
    daemon.wait_idle(images=44)
    daemon.stop()
    assert_recovered(ws)


def test_scan_makes_a_deleted_output_area_again(workspace: Workspace) -> None:
    """OUTPUT left dangling by a deleted hidden area is still ours: a scan writes a new area
    (before: refused for ever as "a symlink ... outside" the very area it names)."""
    ws = workspace
    config = config_for(ws)
    assert scan(config).returncode == 0
    shutil.rmtree(ws.output.parent / f".{ws.output.name}.imgclusterd")
    again = scan(config)
    assert again.returncode == 0, again.stderr
    assert_recovered(ws)


@pytest.mark.slow
def test_daemon_repairs_a_damaged_output(workspace: Workspace, daemons: list[Daemon]) -> None:
    """A link deleted through OUTPUT comes back at the next rescan (SIGHUP here); a deleted
    hidden area (OUTPUT dangling) is noticed without any event and written again."""
    ws = workspace
    daemon = Daemon(ws, config_for(ws))
    daemons.append(daemon.start())
    daemon.wait_idle(images=44)
    victim = ws.output / min(output_links(ws.output))
    os.unlink(victim)
    daemon.assert_alive()
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for(lambda: (daemon.assert_alive(), os.path.lexists(victim))[1],
             "the deleted link to be repaired")
    area = ws.output.parent / f".{ws.output.name}.imgclusterd"

    def area_removed() -> bool:  # idle-time spares may be writing into it: try again
        shutil.rmtree(area, ignore_errors=True)
        return not os.path.lexists(area)

    wait_for(area_removed, "the output area to be deleted")
    wait_for(lambda: (daemon.assert_alive(), os.path.exists(ws.output))[1],
             "the output area to be made again")
    daemon.wait_idle(images=44)
    daemon.stop()
    assert "not made by imgclusterd" not in daemon.log()
    assert_recovered(ws)


@pytest.mark.slow
def test_state_dir_deleted_while_running_is_recreated(workspace: Workspace,
                                                      daemons: list[Daemon]) -> None:
    """SQLite would go on writing into the unlinked file without an error, and the lock
    would be on a file nobody sees: the daemon must start a new store and lock."""
    ws = workspace
    daemon = Daemon(ws, config_for(ws))
    daemons.append(daemon.start())
    daemon.wait_idle(images=44)
    shutil.rmtree(ws.state)
    wait_for(lambda: (daemon.assert_alive(), (ws.state / STORE_NAME).exists())[1],
             "the store to be recreated")
    daemon.wait_idle(images=44)
    assert status_module.holder_pid(ws.state / status_module.LOCK_NAME) == daemon.pid
    second = subprocess.run(
        [sys.executable, "-m", "imgclusterd", "run", "--config", str(daemon.config_path)],
        cwd=ws.root, capture_output=True, text=True, timeout=120)
    assert second.returncode == 75 and f"already running (pid {daemon.pid})" in second.stderr
    daemon.stop()
    assert_recovered(ws)


@pytest.mark.slow
def test_store_disk_full_daemon_survives_says_why_and_recovers(
        workspace: Workspace, small_fs: Path, daemons: list[Daemon]) -> None:
    ws = workspace
    ws.state = small_fs / "state"
    daemon = Daemon(ws, config_for(ws))
    daemons.append(daemon.start())
    daemon.wait_idle(images=44)
    filler = small_fs / "filler"
    # fill the filesystem to the last byte
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    add_photos(ws.images, 30, seed=9)
    ws.snapshot()

    def says_why() -> bool:
        daemon.assert_alive()
        return any("full" in w for w in daemon.status()["warnings"])

    wait_for(says_why, "status to say the disk is full")
    assert integrity(ws.state) == "ok"
    filler.unlink()
    daemon.wait_idle(images=74)
    daemon.stop()
    assert_recovered(ws)


# -- the store ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["garbage", "foreign"])
def test_corrupt_or_foreign_store_then_reset(workspace: Workspace, kind: str) -> None:
    ws = workspace
    config = config_for(ws)
    store = ws.state / STORE_NAME
    if kind == "garbage":
        store.write_bytes(os.urandom(8192))
    else:
        with sqlite3.connect(store) as db:
            db.execute("CREATE TABLE recipes (name TEXT)")
            db.execute("INSERT INTO recipes VALUES ('bread')")
        db.close()
    original = store.read_bytes()
    refused = scan(config)
    assert refused.returncode == 74
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "--reset-store" in lines[0], refused.stderr
    assert store.read_bytes() == original, "the refused store was modified"
    assert not os.path.lexists(ws.output)
    reset = scan(config, "--reset-store")
    assert reset.returncode == 0, reset.stderr
    aside = [p for p in ws.state.iterdir() if p.name.startswith(f"{STORE_NAME}.reset-")]
    assert len(aside) == 1 and aside[0].read_bytes() == original
    assert_recovered(ws)


# -- two daemons, a daemon killed with a worker busy -------------------------------------------


def test_second_daemon_refuses(workspace: Workspace, daemons: list[Daemon]) -> None:
    ws = workspace
    daemon = Daemon(ws, config_for(ws))
    daemons.append(daemon.start())
    daemon.wait_idle(images=44)
    second = run_cli("run", "--config", str(daemon.config_path), cwd=ws.root, timeout=120)
    assert second.returncode != 0
    assert f"already running (pid {daemon.pid})" in second.stderr
    daemon.assert_alive()


def test_second_daemon_with_another_state_dir_refuses(workspace: Workspace,
                                                     daemons: list[Daemon]) -> None:
    """The output has its own owner: a daemon or scan for the same output with a different
    state dir is refused too (before, both ran and swapped OUTPUT in turns)."""
    ws = workspace
    daemon = Daemon(ws, config_for(ws))
    daemons.append(daemon.start())
    daemon.wait_idle(images=44)
    current = os.readlink(ws.output)
    other = config_for(ws, "other.toml", state_dir=str(ws.root / "other-state"))
    for command in ("run", "scan"):
        second = run_cli(command, "--config", str(other), cwd=ws.root, timeout=120)
        assert second.returncode == 75, (command, second.stderr)
        assert f"already running (pid {daemon.pid})" in second.stderr
        assert str(ws.output) in second.stderr
    daemon.assert_alive()
    assert os.readlink(ws.output) == current
    daemon.stop()
    assert scan(other).returncode == 0  # the owner gone, the output is free


@pytest.mark.slow
def test_daemon_sigkilled_with_busy_worker_restart_gets_lock(
        workspace: Workspace, daemons: list[Daemon]) -> None:
    ws = workspace
    add_slow_photos(ws.images, 40, seed=9)
    ws.snapshot()
    daemon = Daemon(ws, config_for(ws))
    daemons.append(daemon.start())
    wait_for(lambda: (daemon.assert_alive(), worker_pids(daemon.pid))[1], "busy workers",
             step=0.01)
    assert daemon.proc is not None
    kill_and_reap(daemon.proc)
    daemon.start()  # at once: workers of the dead daemon may still be finishing a photo
    daemon.wait_idle(images=44 + 40)
    assert "already running" not in daemon.log()
    daemon.stop()
    assert_recovered(ws)


# -- a reader inside the output while it is refreshed 100 times --------------------------------

READER = r"""
import os, re, sys, time
output, stop_file = sys.argv[1], sys.argv[2]
problems, rounds = [], 0
def check_generation():
    os.chdir(output)               # pins the current generation, as `cd OUTPUT` does
    for algo in os.listdir("."):
        if not os.path.isdir(algo):
            continue               # the explorer page's files beside the algorithm folders
        totals = set()
        for thr in os.listdir(algo):
            unclustered = int(re.fullmatch(r"thr_\d{3}_unclustered_(\d+)", thr)[1])
            total = 0
            for sub in os.listdir(os.path.join(algo, thr)):
                names = os.listdir(os.path.join(algo, thr, sub))
                size = unclustered if sub.startswith("unclustered_") else int(sub.split("_")[1])
                if len(names) != size:
                    problems.append(f"{algo}/{thr}/{sub}: {len(names)} links, expected {size}")
                total += len(names)
            totals.add(total)
        if len(totals) != 1:
            problems.append(f"{algo}: thresholds list different image counts {totals}")
while not os.path.exists(stop_file):
    try:
        os.listdir(output)
        check_generation()
        os.listdir(".")
        rounds += 1
    except OSError as exc:
        problems.append(repr(exc))
print(rounds)
print("\n".join(problems[:20]))
"""


@pytest.mark.slow
def test_reader_inside_output_during_100_refreshes(workspace: Workspace) -> None:
    """The refreshes run in-process through Pipeline.refresh (what scan and the daemon call),
    with a small change before each; the reader is a separate process."""
    from imgclusterd.pipeline import Pipeline

    ws = workspace
    config = load_config(config_for(ws, keep_generations=2, generation_grace=60.0)).config
    stop_file = ws.root / "stop-reader"
    extra = ws.root / "extra"
    pool = add_photos(extra, 10, seed=10)
    with Pipeline(config) as pipeline:
        pipeline.refresh()
        reader = subprocess.Popen([sys.executable, "-c", READER, str(ws.output),
                                   str(stop_file)], cwd=ws.root, stdout=subprocess.PIPE,
                                  text=True)
        try:
            generations = set()
            for number in range(100):
                photo = pool[number % len(pool)]
                inside = ws.images / photo.name
                if inside.exists():
                    inside.unlink()
                else:
                    shutil.copy(photo, inside)
                report = pipeline.refresh()
                generations.add(report.generation)
        finally:
            stop_file.touch()
            try:
                out, _ = reader.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                reader.kill()  # not left running (nor its pipe open) to fail a later test
                reader.communicate()
                raise
    rounds, _, problems = out.partition("\n")
    assert problems.strip() == "", problems
    assert int(rounds) > 0
    assert len(generations) >= 90  # each change did swap in a new generation
    ws.snapshot()
    assert_recovered(ws)

