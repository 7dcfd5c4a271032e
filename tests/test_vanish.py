"""Photos that vanish, come back, change only in their file facts, or cannot be seen: through
the real ``scan`` command (and ``status``) on the sample folder, real files and real SQLite.

Each case is one that once cost a decode or a photo: a folder that cannot be listed was taken
for deleted, a photo moved out and back was decoded again, a touch re-hashed, a replaced file
with the same size and mtime kept its old hash, and most of the library vanishing at once cut
the store and the output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgclusterd import status as status_module
from imgclusterd.config import load_config

from .conftest import DaemonProcess, Workspace, run_cli, tree_digest, wait_for
from .test_bad_input import encode, output_links, put, smooth, store_records, write_config


def config_for(ws: Workspace, **extra: Any) -> Path:
    return write_config(ws.root / "cfg.toml", ws.images, ws.output, ws.state, **extra)


def scan(config: Path, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [*(prefix or []), sys.executable, "-m", "imgclusterd", "scan", "-v",
               "--config", str(config)]
    result = subprocess.run(command, cwd=config.parent, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    return result


def hashed_now(result: subprocess.CompletedProcess[str]) -> int:
    match = re.search(r"(\d+) hashed now", result.stdout)
    assert match, result.stdout
    return int(match.group(1))


def warnings(config: Path) -> list[str]:
    return list(status_module.collect(load_config(config).config)["warnings"])


def facts(ws: Workspace) -> dict[str, tuple[int, str | None, bytes | None]]:
    return {p: (r.inode, r.status, r.digest) for p, r in store_records(ws.state).items()}


def test_touch_and_a_same_content_copy_are_not_decoded(workspace: Workspace) -> None:
    ws = workspace
    config = config_for(ws)
    scan(config)
    os.utime(ws.images / "scene01.jpg")  # touch
    copy = ws.root / "restored.jpg"
    shutil.copy(ws.images / "scene02.jpg", copy)  # restored from a backup: new inode, mtime
    os.replace(copy, ws.images / "scene02.jpg")
    ws.snapshot()
    result = scan(config)
    assert hashed_now(result) == 0, result.stderr
    records = store_records(ws.state)
    st = os.stat(ws.images / "scene02.jpg")
    assert (records["scene02.jpg"].inode, records["scene02.jpg"].mtime_ns) == (st.st_ino,
                                                                              st.st_mtime_ns)
    assert hashed_now(scan(config)) == 0  # the new facts were recorded: nothing left to check


def test_replaced_with_same_size_and_mtime_is_hashed_again(workspace: Workspace) -> None:
    """BMPs of one size have one file size, so the replacement is byte-for-byte as long."""
    ws = workspace
    config = config_for(ws)
    first = put(ws.images, "swap.bmp", encode(smooth(1), "BMP"))
    scan(config)
    old = os.stat(first)

    def link_hash() -> str:
        names = [n for n in output_links(ws.output) if os.path.basename(n).startswith("swap_")]
        return os.path.basename(names[0])

    before = link_hash()
    # A new inode (written beside, renamed over), same size and mtime.
    put(ws.root, "swap.bmp", encode(smooth(2), "BMP"), mtime=old.st_mtime)
    os.replace(ws.root / "swap.bmp", first)
    assert os.stat(first).st_size == old.st_size
    ws.snapshot()
    assert hashed_now(scan(config)) == 1
    second = link_hash()
    assert second != before
    # The same inode rewritten in place, the mtime put back: only the ctime tells.
    with open(first, "r+b") as f:
        f.write(encode(smooth(3), "BMP"))
    os.utime(first, ns=(old.st_atime_ns, old.st_mtime_ns))
    ws.snapshot()
    assert hashed_now(scan(config)) == 1
    assert link_hash() not in (before, second)


def test_photos_that_leave_and_come_back_are_not_decoded(workspace: Workspace) -> None:
    ws = workspace
    config = config_for(ws)
    scan(config)
    away = ws.root / "away"
    away.mkdir()
    names = ["scene01.jpg", "scene02.jpg", "singles/single1.jpg"]
    for name in names:
        shutil.move(ws.images / name, away / os.path.basename(name))
    ws.snapshot()
    assert "removed 3 photos" in scan(config).stderr
    targets = set(output_links(ws.output).values())
    assert not targets & {str(ws.images / n) for n in names}
    for name in names:  # back as copies: new inodes, only the content is the same
        shutil.copy(away / os.path.basename(name), ws.images / name)
    ws.snapshot()
    result = scan(config)
    assert hashed_now(result) == 0, result.stderr
    assert {str(ws.images / n) for n in names} <= set(output_links(ws.output).values())
    # With no retention a vanished photo is forgotten at once: back, it is decoded again.
    config = config_for(ws, vanished_retention=0)
    for name in names:
        os.unlink(ws.images / name)
    scan(config)
    for name in names:
        shutil.copy(away / os.path.basename(name), ws.images / name)
    ws.snapshot()
    assert hashed_now(scan(config)) == 3


def test_mass_disappearance_waits_then_a_real_bulk_delete_is_applied_once(
        workspace: Workspace) -> None:
    ws = workspace
    config = config_for(ws, mass_removal_grace=3600)
    scan(config)
    links, known = output_links(ws.output), facts(ws)
    everything = sorted(os.path.relpath(os.path.join(d, f), ws.images)
                        for d, _, files in os.walk(ws.images) for f in files)
    leaving, staying = everything[:40], everything[40:]
    away = ws.root / "away"
    for name in leaving:
        (away / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(ws.images / name, away / name)
    ws.snapshot()
    result = scan(config)
    assert "40 of 44 known photos vanished at once" in result.stderr
    assert facts(ws) == known and output_links(ws.output) == links
    assert any("40 of 44 known photos vanished at once" in w for w in warnings(config))
    # Coming back gradually (copies: new inodes): nothing is decoded, nothing leaves.
    for batch in (leaving[:20], leaving[20:]):
        for name in batch:
            shutil.copy2(away / name, ws.images / name)
        ws.snapshot()
        result = scan(config)
        assert hashed_now(result) == 0, result.stderr
        assert output_links(ws.output) == links
    assert not any("vanished" in w for w in warnings(config))
    # A real bulk delete: held once, applied after the grace period (0 here), once.
    config = config_for(ws, mass_removal_grace=0)
    for name in leaving:
        os.unlink(ws.images / name)
    ws.snapshot()
    scan(config)
    assert output_links(ws.output) == links  # the first refresh only holds
    result = scan(config)
    assert "removing them" in result.stderr
    assert sorted(store_records(ws.state)) == staying
    assert set(output_links(ws.output).values()) == {str(ws.images / n) for n in staying}
    generation = os.readlink(ws.output)
    again = scan(config)
    assert "removing" not in again.stderr and os.readlink(ws.output) == generation
    assert not any("vanished" in w for w in warnings(config))


def test_unreadable_subfolder_keeps_its_photos_and_status_names_it(
        workspace: Workspace) -> None:
    """Root lists every folder, so the scan runs as root *without* the capabilities that
    override permissions (dropped with setpriv, as test_bad_input does). Not ``nobody``: the
    interpreter here lives under /root (0700), so an unprivileged user cannot run it."""
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to drop CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH")
    ws = workspace
    config = config_for(ws)
    scan(config)
    links, known = output_links(ws.output), facts(ws)
    drop = "-dac_override,-dac_read_search"
    unprivileged = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}"]
    folder = ws.images / "singles"
    before = tree_digest(ws.images)
    os.chmod(folder, 0)
    try:
        if subprocess.run([*unprivileged, "ls", os.fspath(folder)],
                          capture_output=True).returncode == 0:
            pytest.skip("dropping the capabilities did not take effect here")
        result = scan(config, unprivileged)
        assert "removed" not in result.stderr, result.stderr
        assert facts(ws) == known and output_links(ws.output) == links
        assert any(w.startswith("folder singles in the images folder") and "kept" in w
                   for w in warnings(config)), warnings(config)
        assert run_cli("status", "--config", str(config), cwd=ws.root).stdout.count(
            "warning:      folder singles") == 1
    finally:
        os.chmod(folder, 0o755)
    assert tree_digest(ws.images) == before
    result = scan(config, unprivileged)
    assert hashed_now(result) == 0, result.stderr
    assert facts(ws) == known and not any("singles" in w for w in warnings(config))


# -- the daemon --------------------------------------------------------------------------------


def daemon_config(ws: Workspace, **extra: Any) -> Path:
    extra.setdefault("debounce", 0.3)
    extra.setdefault("max_delay", 2.0)
    extra.setdefault("poll_interval", 0.3)
    return config_for(ws, **extra)


def idle_after(daemon: DaemonProcess, finished: str | None) -> dict[str, Any]:
    """Wait for an idle daemon whose last refresh finished after ``finished``."""
    def check() -> dict[str, Any] | None:
        daemon.assert_alive()
        st = daemon.status()
        last = st["last_refresh"]
        if st["phase"] == "idle" and last and (finished is None or last["finished"] > finished):
            return st
        return None

    return wait_for(check, "the daemon to finish a refresh")


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        if daemon.alive():
            assert daemon.proc is not None
            daemon.proc.terminate()
            assert daemon.proc.wait(60) == 0, daemon.log()


def test_daemon_folder_deleted_and_restored_gradually(workspace: Workspace,
                                                      daemons: list[DaemonProcess]) -> None:
    ws = workspace
    daemon = DaemonProcess(ws, daemon_config(ws, mass_removal_grace=3600))
    daemons.append(daemon.start())
    st = idle_after(daemon, None)
    links = output_links(ws.output)
    away = ws.root / "away"
    ws.images.rename(away)
    wait_for(lambda: daemon.status()["phase"] == "waiting", "the daemon to wait")
    ws.images.mkdir()
    names = sorted(os.path.relpath(os.path.join(d, f), away)
                   for d, _, files in os.walk(away) for f in files)
    for step, batch in enumerate((names[:2], names[2:20], names[20:])):
        for name in batch:
            (ws.images / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(away / name, ws.images / name)
        ws.snapshot()
        st = idle_after(daemon, st["last_refresh"]["finished"])
        assert output_links(ws.output) == links
        if step < 2:  # some still missing
            assert any("vanished at once" in w for w in st["warnings"]), st["warnings"]
    wait_for(lambda: not any("vanished" in w for w in daemon.status()["warnings"]),
             "the warning to clear once every photo is back")
    assert output_links(ws.output) == links
    decoded = [int(n) for n in re.findall(r"(\d+) hashed now", daemon.log())]
    assert decoded[0] == 44 and not any(decoded[1:]), decoded


def test_daemon_watches_an_images_folder_given_as_a_symlink(
        workspace: Workspace, daemons: list[DaemonProcess]) -> None:
    ws = workspace
    link = ws.root / "photos-link"
    link.symlink_to(ws.images)
    config = write_config(ws.root / "cfg.toml", link, ws.output, ws.state, debounce=0.3,
                          max_delay=2.0, watcher="inotify", rescan_interval=3600)
    daemon = DaemonProcess(ws, config)
    daemons.append(daemon.start())
    st = idle_after(daemon, None)
    if st["watcher"]["mode"] != "inotify":
        pytest.skip(f"inotify unavailable here right now: {st['watcher']['warnings']}")
    put(ws.images, "top_level.jpg", encode(smooth(4711), "JPEG"), mtime=None)
    ws.snapshot()
    wait_for(lambda: str(link / "top_level.jpg") in output_links(ws.output).values(),
             "the photo at the top of the linked folder in the output")


def test_daemon_warns_when_the_watch_misses_changes(
        workspace: Workspace, daemons: list[DaemonProcess], tmp_path: Path) -> None:
    """A file changed through a hard link from outside the folder: inotify reports events to
    the folder a file was opened through, so the watch never hears of it; the periodic
    rescan (rescan_interval's minimum, 10 s) finds it and status must say so."""
    ws = workspace
    outside = tmp_path / "outside"
    outside.mkdir()
    os.link(ws.images / "scene01.jpg", outside / "same-inode.jpg")
    config = daemon_config(ws, watcher="inotify", rescan_interval=10)
    daemon = DaemonProcess(ws, config)
    daemons.append(daemon.start())
    st = idle_after(daemon, None)
    if st["watcher"]["mode"] != "inotify":
        pytest.skip(f"inotify unavailable here right now: {st['watcher']['warnings']}")
    assert not any("not effective" in w for w in st["watcher"]["warnings"])
    with open(outside / "same-inode.jpg", "r+b") as f:
        f.truncate()
        f.write(encode(smooth(99), "JPEG"))
    ws.snapshot()
    found = wait_for(lambda: [w for w in daemon.status()["watcher"]["warnings"]
                              if "not effective" in w], "the warning", timeout=120)
    assert "found 1 change(s)" in found[0], found
