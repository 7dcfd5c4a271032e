"""The watcher with real observers on real folders. No fixed sleeps: wait for a condition."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imgclusterd.watch import (
    RootMissingError,
    Watcher,
    filesystem_type,
    is_network_filesystem,
    is_temporary,
)

DEADLINE = 10.0  # generous upper bound for an event to arrive; never a timing assertion


class Recorder:
    """Collects what the watcher reports, from watchdog's threads."""

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.rescans: list[str] = []
        self.changed = threading.Condition()
        self.fail_next = 0

    def on_paths(self, paths: set[str]) -> None:
        with self.changed:
            if self.fail_next:
                self.fail_next -= 1
                raise RuntimeError("consumer bug")
            self.paths |= paths
            self.changed.notify_all()

    def on_rescan(self, reason: str) -> None:
        with self.changed:
            self.rescans.append(reason)
            self.changed.notify_all()

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + DEADLINE
        with self.changed:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out waiting for {what}; paths={self.paths} rescans={self.rescans}"
                    )
                self.changed.wait(min(left, 0.1))

    def wait_paths(self, *paths: Path) -> None:
        wanted = {str(p) for p in paths}
        self.wait_for(lambda: wanted <= self.paths, f"paths {wanted}")

    def wait_rescan(self, fragment: str) -> None:
        self.wait_for(lambda: any(fragment in r for r in self.rescans), f"rescan {fragment!r}")

    def clear(self) -> None:
        with self.changed:
            self.paths.clear()
            self.rescans.clear()


def is_image(path: str) -> bool:
    return path.lower().endswith((".jpg", ".png"))


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    return folder


@pytest.fixture(params=["inotify", "polling"])
def watching(request: pytest.FixtureRequest, root: Path) -> Iterator[tuple[Watcher, Recorder]]:
    recorder = Recorder()

    def start() -> Watcher:
        watcher = Watcher(
            root,
            recorder.on_paths,
            recorder.on_rescan,
            mode=request.param,
            poll_interval=0.1,
            is_candidate=is_image,
        )
        watcher.start()
        return watcher

    watcher = start()
    # This machine allows 3 inotify watches per user, and the kernel returns a closed
    # instance's watches asynchronously: just after another test (a systemd --user manager,
    # a daemon) there may be none left for a while. Wait for them; skip if they never come.
    deadline = time.monotonic() + 20
    while request.param == "inotify" and watcher.mode != "inotify":
        watcher.stop()
        if time.monotonic() > deadline:
            pytest.skip(f"no inotify watch free on this machine: {watcher.warnings}")
        time.sleep(0.5)
        recorder = Recorder()
        watcher = start()
    try:
        assert watcher.mode == request.param and watcher.warnings == []
        assert watcher.alive()
        yield watcher, recorder
    finally:
        watcher.stop()
    assert watcher.mode is None and not watcher.alive()


def test_create_modify_delete(watching: tuple[Watcher, Recorder], root: Path) -> None:
    _, recorder = watching
    photo = root / "a.jpg"
    photo.write_bytes(b"one")
    recorder.wait_paths(photo)
    recorder.clear()
    # A different size, so even a polling snapshot with coarse mtimes sees the change.
    with photo.open("ab") as handle:
        handle.write(b"more bytes")
    recorder.wait_paths(photo)
    recorder.clear()
    photo.unlink()
    recorder.wait_paths(photo)


def test_part_then_rename_reports_only_the_final_name(
    watching: tuple[Watcher, Recorder], root: Path
) -> None:
    _, recorder = watching
    partial = root / "b.jpg.part"
    partial.write_bytes(b"downloading")
    final = root / "b.jpg"
    partial.rename(final)
    recorder.wait_paths(final)
    assert recorder.paths == {str(final)}


def test_move_within_the_tree_reports_both_paths(
    watching: tuple[Watcher, Recorder], root: Path
) -> None:
    _, recorder = watching
    (root / "sub").mkdir()
    # watchdog adds the watch on a new folder from its own thread: a file moved into it before
    # that happens arrives as a delete only (the daemon's dirty-folder walk of "sub" still
    # finds it). Wait until "sub" reports events, so this test is about the move itself.
    probe = root / "sub" / "probe.jpg"
    probe.write_bytes(b"x")
    old = root / "old.jpg"
    old.write_bytes(b"x")
    recorder.wait_paths(probe, old)
    recorder.clear()
    new = root / "sub" / "new.jpg"
    old.rename(new)
    recorder.wait_paths(old, new)


def test_folder_moved_in_from_outside(
    watching: tuple[Watcher, Recorder], root: Path, tmp_path: Path
) -> None:
    _, recorder = watching
    outside = tmp_path / "camera"
    (outside / "day1").mkdir(parents=True)
    for name in ("p1.jpg", "day1/p2.jpg"):
        (outside / name).write_bytes(b"x")
    outside.rename(root / "camera")
    # The folder itself is a dirty path (reconcile walks it: watchdog may not have reported
    # every file in it); no rescan of the whole tree.
    recorder.wait_paths(root / "camera")
    assert recorder.rescans == []


@pytest.mark.parametrize("where", ["out", "inside"])
def test_folder_moved_is_a_dirty_path(
    watching: tuple[Watcher, Recorder], root: Path, tmp_path: Path, where: str
) -> None:
    """Moved out: nothing is reported of the files that left with it, so the folder is the
    dirty path (reconcile looks at what the store knew under it). Moved inside: both ends."""
    _, recorder = watching
    (root / "2019").mkdir()
    (root / "2019" / "p.jpg").write_bytes(b"x")
    recorder.wait_paths(root / "2019" / "p.jpg")
    recorder.clear()
    if where == "out":
        (root / "2019").rename(tmp_path / "2019")
        recorder.wait_paths(root / "2019")
    else:
        (root / "2019").rename(root / "2019 Rome")
        recorder.wait_paths(root / "2019", root / "2019 Rome")
    assert recorder.rescans == []


def test_hidden_and_temporary_names_are_ignored(
    watching: tuple[Watcher, Recorder], root: Path
) -> None:
    _, recorder = watching
    (root / ".thumbnails").mkdir()
    (root / ".thumbnails" / "t.jpg").write_bytes(b"x")
    (root / ".hidden.jpg").write_bytes(b"x")
    (root / "~$lock.jpg").write_bytes(b"x")
    (root / "c.jpg.tmp").write_bytes(b"x")
    (root / "notes.txt").write_bytes(b"not an image")
    marker = root / "visible.jpg"
    marker.write_bytes(b"x")
    recorder.wait_paths(marker)  # events arrive in order: anything earlier would be here by now
    assert recorder.paths == {str(marker)}
    assert not any(".thumbnails" in reason for reason in recorder.rescans)


def test_a_failing_consumer_does_not_kill_the_observer(
    watching: tuple[Watcher, Recorder], root: Path
) -> None:
    watcher, recorder = watching
    recorder.fail_next = 1
    (root / "first.jpg").write_bytes(b"x")
    recorder.wait_rescan("handler failed")
    assert watcher.handler_errors >= 1
    second = root / "second.jpg"
    second.write_bytes(b"x")
    recorder.wait_paths(second)
    assert watcher.alive()


def test_root_deleted_is_noticed(watching: tuple[Watcher, Recorder], root: Path) -> None:
    watcher, recorder = watching
    shutil.rmtree(root)
    recorder.wait_rescan("disappeared")
    wait_until(lambda: not watcher.alive(), "alive() to turn False")


def test_root_replaced_is_noticed(
    watching: tuple[Watcher, Recorder], root: Path, tmp_path: Path
) -> None:
    watcher, _ = watching
    root.rename(tmp_path / "moved-away")
    root.mkdir()  # a different folder at the same path: the watches do not cover it
    wait_until(lambda: not watcher.alive(), "alive() to turn False")


def test_restart_after_stop(root: Path) -> None:
    recorder = Recorder()
    watcher = Watcher(root, recorder.on_paths, recorder.on_rescan, is_candidate=is_image)
    with watcher, pytest.raises(RuntimeError, match="already started"):
        watcher.start()
    watcher.stop()  # idempotent
    with watcher:
        (root / "again.jpg").write_bytes(b"x")
        recorder.wait_paths(root / "again.jpg")


def test_missing_root_raises_a_file_not_found_error(tmp_path: Path) -> None:
    recorder = Recorder()
    watcher = Watcher(tmp_path / "nope", recorder.on_paths, recorder.on_rescan)
    with pytest.raises(FileNotFoundError) as caught:
        watcher.start()
    assert isinstance(caught.value, RootMissingError)
    assert "waiting for it" in str(caught.value) and str(tmp_path / "nope") in str(caught.value)
    assert not watcher.alive() and watcher.mode is None
    (tmp_path / "not-a-folder").write_text("x")
    with pytest.raises(RootMissingError):
        Watcher(tmp_path / "not-a-folder", recorder.on_paths, recorder.on_rescan).start()


def test_excluded_output_inside_the_root(root: Path) -> None:
    recorder = Recorder()
    output = root / "output"
    output.mkdir()
    watcher = Watcher(
        root, recorder.on_paths, recorder.on_rescan, is_candidate=is_image, exclude=[output]
    )
    with watcher:
        (output / "gen1").mkdir()
        (output / "gen1" / "x.jpg").write_bytes(b"x")
        marker = root / "m.jpg"
        marker.write_bytes(b"x")
        recorder.wait_paths(marker)
        assert recorder.paths == {str(marker)} and recorder.rescans == []


def test_auto_polls_on_a_network_filesystem(root: Path, tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        f"40 22 0:35 / {root} rw,relatime shared:2 - nfs4 server:/photos rw,vers=4.2\n"
    )
    recorder = Recorder()
    watcher = Watcher(
        root,
        recorder.on_paths,
        recorder.on_rescan,
        poll_interval=0.1,
        is_candidate=is_image,
        mountinfo=mountinfo,
    )
    with watcher:
        assert watcher.mode == "polling"
        assert len(watcher.warnings) == 1 and "network filesystem (nfs4)" in watcher.warnings[0]
        (root / "n.jpg").write_bytes(b"x")
        recorder.wait_paths(root / "n.jpg")


def test_filesystem_type_picks_the_longest_mount_and_unescapes(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        "41 22 0:36 / /mnt/my\\040photos rw - fuse.sshfs host:/p rw\n"
        "42 22 0:37 / /mnt/my rw - cifs //nas/p rw\n"
    )
    assert filesystem_type(Path("/mnt/my photos/2024"), mountinfo) == "fuse.sshfs"
    assert filesystem_type(Path("/mnt/my/x"), mountinfo) == "cifs"
    assert filesystem_type(Path("/mnt/myother"), mountinfo) == "ext4"
    assert filesystem_type(Path("/x"), tmp_path / "absent") is None
    assert is_network_filesystem("fuse.sshfs") and is_network_filesystem("NFS")
    assert not is_network_filesystem("ext4") and not is_network_filesystem(None)
    assert filesystem_type(tmp_path) is not None  # the real /proc/self/mountinfo


@pytest.mark.parametrize(
    ("name", "temporary"),
    [
        ("a.jpg", False), ("IMG_0001.JPG", False), ("a.jpg.part", True), ("a.JPG.PART", True),
        ("b.tmp", True), ("c.crdownload", True), ("d.partial", True), ("~$doc.jpg", True),
        (".hidden.jpg", True), (".thumbnails", True), ("~tilde.jpg", False),
    ],
)  # fmt: skip
def test_is_temporary(name: str, temporary: bool) -> None:
    assert is_temporary(name) is temporary


def test_inotify_watch_limit_falls_back_to_polling(tmp_path: Path) -> None:
    """A real exhausted watch limit (see _run_in_user_namespace)."""
    root = tmp_path / "images"
    for i in range(8):
        (root / f"d{i}").mkdir(parents=True)
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        Path("/proc/sys/fs/inotify/max_user_watches").write_text("3")
        from imgclusterd.watch import Watcher
        w = Watcher(Path({str(root)!r}), lambda p: None, lambda r: None, poll_interval=0.1)
        w.start()
        print(w.mode)
        print(*w.warnings, sep="\\n")
        w.stop()
        """
    )
    result = _run_in_user_namespace(code)
    mode, *warnings = result.stdout.splitlines()
    assert mode == "polling"
    assert any("fs.inotify.max_user_watches" in w and "sysctl" in w for w in warnings), warnings


def test_inotify_limit_on_a_later_folder_warns_and_asks_for_a_rescan(tmp_path: Path) -> None:
    """Start within the limit, then create more folders than it allows."""
    root = tmp_path / "images"
    root.mkdir()
    code = textwrap.dedent(
        f"""
        import threading, time
        from pathlib import Path
        Path("/proc/sys/fs/inotify/max_user_watches").write_text("3")
        from imgclusterd.watch import Watcher
        root = Path({str(root)!r})
        rescans = []
        w = Watcher(root, lambda p: None, rescans.append, poll_interval=0.1)
        w.start()
        print(w.mode)
        for name in "abcd":
            (root / name).mkdir()
        deadline = time.monotonic() + 10
        while not any("limit" in r for r in rescans) and time.monotonic() < deadline:
            time.sleep(0.05)
        print(w.mode, w.alive())
        print(*w.warnings, sep="\\n")
        w.stop()
        """
    )
    result = _run_in_user_namespace(code)
    first, second, *warnings = result.stdout.splitlines()
    if first == "polling":
        # A namespace's inotify watches are charged to its parents' limits too: where the
        # machine-wide limit is tiny (3 here) another process's watches leave none for us.
        pytest.skip(f"no inotify watch left on this machine to start with: {warnings}")
    assert first == "inotify" and second == "inotify True"
    assert any("max_user_watches" in w and "periodic rescan" in w for w in warnings), warnings


def test_inotify_queue_overflow_asks_for_a_rescan(root: Path) -> None:
    """Simulated: a real overflow needs ~16k unread events (fs.inotify.max_queued_events is a
    machine-wide setting we must not lower), so we hand the reader thread the kernel's
    IN_Q_OVERFLOW event ourselves."""
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent

    recorder = Recorder()
    with Watcher(root, recorder.on_paths, recorder.on_rescan, mode="inotify") as watcher:
        if watcher.mode != "inotify":
            pytest.skip(f"inotify unavailable here right now: {watcher.warnings}")
        inotify_fd = watcher._observer._inotify_fd  # type: ignore[union-attr]
        inotify_fd.handle_event(InotifyEvent(-1, InotifyConstants.IN_Q_OVERFLOW, 0, b""))
        recorder.wait_rescan("overflow")
        assert watcher.overflows == 1
        (root / "after.jpg").write_bytes(b"x")  # watchdog rebuilt its watches; still watching
        recorder.wait_paths(root / "after.jpg")


_MACHINE_LIMIT = Path("/proc/sys/fs/inotify/max_user_watches")


def _run_in_user_namespace(code: str) -> subprocess.CompletedProcess[str]:
    """Run python code as root of a new user namespace, which has its own inotify limits that
    it may lower without touching the machine's.

    Not on every kernel: on some (seen on a 6.18 VM kernel) a write in the namespace sets the
    machine's own limit, and these tests left it at 3 for every process of the machine (the
    daemon then polled, benchmarks and other tests included). So the probe checks that the
    machine's limit did not move, puts it back if it did, and skips."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare(1) to get a user namespace with its own inotify limits")
    before = _MACHINE_LIMIT.read_text().strip()
    probe = subprocess.run(
        [unshare, "-U", "-r", "sh", "-c", "echo 3 > /proc/sys/fs/inotify/max_user_watches"],
        capture_output=True,
        text=True,
        check=False,
    )
    after = _MACHINE_LIMIT.read_text().strip()
    if after != before:
        try:
            _MACHINE_LIMIT.write_text(before)
        except OSError as exc:  # not root: say so, the machine needs a hand
            pytest.fail(f"lowering the inotify limit in a user namespace lowered the "
                        f"machine's ({before} -> {after}) and it could not be put back: {exc}")
        pytest.skip("a user namespace shares the machine's inotify limits on this kernel")
    if probe.returncode != 0:
        pytest.skip(f"cannot lower inotify limits in a user namespace: {probe.stderr.strip()}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [unshare, "-U", "-r", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_root_given_as_a_symlink_is_watched_where_it_points(tmp_path: Path) -> None:
    """watchdog adds its watches with IN_DONT_FOLLOW: on the link itself, photos at the top of
    the folder were never reported. Paths come back under the configured (link) name."""
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    recorder = Recorder()
    with Watcher(link, recorder.on_paths, recorder.on_rescan, mode="inotify",
                 is_candidate=is_image) as watcher:
        if watcher.mode != "inotify":
            pytest.skip(f"inotify unavailable here right now: {watcher.warnings}")
        (real / "top.jpg").write_bytes(b"x")
        (real / "sub" / "deep.jpg").write_bytes(b"x")
        recorder.wait_paths(link / "top.jpg", link / "sub" / "deep.jpg")
        assert all(p.startswith(str(link) + os.sep) for p in recorder.paths), recorder.paths
        assert watcher.alive()
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        link.unlink()
        link.symlink_to(elsewhere)  # the link now names another folder: watch that one
        assert not watcher.alive()
