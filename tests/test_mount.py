"""``output_mode = "mount"`` and ``imgclusterd mount``: the output tree as a read-only FUSE view.

Against a real FUSE mount (libfuse 3 through mfusepy, /dev/fuse, fusermount3), real photos, the
real CLI and daemon in subprocesses and real signals. Where FUSE cannot be used here (no binding,
no /dev/fuse) the FUSE tests skip, saying why; the in-process exactness test needs no FUSE.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from imgclusterd.config import load_config
from imgclusterd.pipeline import Pipeline, StoreView
from imgclusterd.view import Node, Snapshot

from .conftest import DaemonProcess, Workspace, run_cli, wait_for
from .test_daemon import make_photos, write_config


def _fuse_unusable() -> str | None:
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError, AttributeError) as exc:
        return (f"no usable libfuse 3 binding ({exc}); pip install 'imgclusterd[mount]' and "
                "the system package fuse3")
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse cannot be opened here ({exc.strerror}): FUSE mounts are impossible"
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "not root and no fusermount3 (Debian: apt install fuse3)"
    return None


FUSE_UNUSABLE = _fuse_unusable()
needs_fuse = pytest.mark.skipif(FUSE_UNUSABLE is not None, reason=str(FUSE_UNUSABLE))


# -- helpers -----------------------------------------------------------------------------------


def add_real_photos(images: Path) -> None:
    """Real photographs (skimage.data), near-duplicate variants, and names that exercise the
    unique-name rules: the same file name in two folders, exact copies, a 255-byte name."""
    from skimage import data

    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        image.save(images / f"{name}.jpg", quality=92)
        image.resize((image.width // 2, image.height // 2)).save(
            images / f"{name}_small.jpg", quality=70)
        (images / "again").mkdir(exist_ok=True)
        image.save(images / "again" / f"{name}.jpg", quality=92)  # same name, same content
    shutil.copyfile(images / "coffee.jpg", images / ("c" * 250 + ".jpg"))  # name capped


def _entry(path: str) -> str:
    """A link's target, or a regular file's content digest (the explorer page's files)."""
    if os.path.islink(path):
        return os.readlink(path)
    with open(path, "rb") as handle:
        return "sha256:" + hashlib.sha256(handle.read()).hexdigest()


def written_tree(output: Path) -> dict[str, str]:
    """relative path -> link target (file digest, or "dir"), through the written tree's
    directory symlinks."""
    root = os.path.realpath(output)
    found: dict[str, str] = {}
    for directory, dirs, files in os.walk(root, followlinks=True):
        for name in dirs:
            found[os.path.relpath(os.path.join(directory, name), root)] = "dir"
        for name in files:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, root)] = _entry(path)
    return found


def mounted_tree(mount: Path) -> dict[str, str]:
    """The same walk on the mount, where every folder is a real directory."""
    found: dict[str, str] = {}
    for directory, dirs, files in os.walk(mount):
        for name in dirs:
            found[os.path.relpath(os.path.join(directory, name), mount)] = "dir"
        for name in files:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, mount)] = _entry(path)
    return found


def snapshot_tree(snapshot: Snapshot) -> dict[str, str]:
    """The same walk through Snapshot.resolve / listdir, in-process."""
    found: dict[str, str] = {}

    def walk(path: str, node: Node) -> None:
        for name, kind in snapshot.listdir(node):
            child = f"{path}/{name}" if path else name
            resolved = snapshot.resolve("/" + child)
            assert resolved is not None, child
            if kind == "dir":
                found[child] = "dir"
                walk(child, resolved)
            elif kind == "file":
                content = snapshot.extra_files[name]
                found[child] = "sha256:" + hashlib.sha256(content).hexdigest()
            else:
                assert resolved.target is not None
                found[child] = resolved.target

    walk("", Node("root"))
    return found


def mount_state(path: Path) -> str:
    from imgclusterd.mount import mount_state as state

    return state(path)


class MountProcess:
    """``imgclusterd mount MOUNTPOINT`` in a subprocess."""

    def __init__(self, ws: Workspace, mountpoint: Path, *args: str) -> None:
        self.mountpoint = mountpoint
        self.log_path = ws.root / "mount.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "imgclusterd", "mount", str(mountpoint),
                 "--state-dir", str(ws.state), *args],
                cwd=ws.root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_mounted(self) -> None:
        def mounted() -> bool:
            assert self.proc.poll() is None, f"imgclusterd mount exited:\n{self.log()}"
            return "Ctrl-C unmounts" in self.log()

        wait_for(mounted, "imgclusterd mount to be mounted")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=60)
        finally:
            if mount_state(self.mountpoint) != "not mounted":  # never leave a mount behind
                subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], check=False)


# -- the view, in-process (no FUSE needed) ------------------------------------------------------


def test_view_lists_exactly_the_written_tree(workspace: Workspace) -> None:
    add_real_photos(workspace.images)
    workspace.snapshot()
    config = load_config(None, {"images": workspace.images, "output": workspace.output,
                                "state_dir": workspace.state}).config
    with Pipeline(config) as pipeline:
        pipeline.refresh()
    written = written_tree(workspace.output)
    with StoreView(config) as view:
        snapshot = view.update()
        assert snapshot is not None
        assert view.update() is None  # nothing changed in the store: no new snapshot
        viewed = snapshot_tree(snapshot)
    assert viewed == written
    names = {os.path.basename(p) for p, target in written.items() if target != "dir"}
    assert any(n.startswith("astronaut_") and n.endswith("_2.jpg") for n in names)  # _2 rule
    assert max(len(os.fsencode(n)) for n in names) == 255  # the cap
    assert len(written) > 20_000  # all 14 algorithms, every threshold
    assert "index.html" in written  # the explorer page's files are served too


# -- against a real FUSE mount ------------------------------------------------------------------


@needs_fuse
def test_mounted_tree_equals_written_tree_and_ctrl_c_unmounts(workspace: Workspace) -> None:
    add_real_photos(workspace.images)
    workspace.snapshot()
    scan = workspace.scan("-q")
    assert scan.returncode == 0, scan.stderr
    written = written_tree(workspace.output)
    mountpoint = workspace.root / "view"
    mount = MountProcess(workspace, mountpoint)
    try:
        mount.wait_mounted()
        assert mount_state(mountpoint) == "mounted"
        assert mounted_tree(mountpoint) == written
        with pytest.raises(OSError) as refused:  # read-only
            (mountpoint / "phash_8" / "x").mkdir()
        assert refused.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    finally:
        code = mount.stop()
    assert code == 0, mount.log()
    assert mount_state(mountpoint) == "not mounted"
    assert not mountpoint.exists()  # it made the folder, so it removed it
    assert written_tree(workspace.output) == written  # the written tree untouched


@needs_fuse
def test_non_empty_or_foreign_mount_point_is_refused_and_untouched(
        workspace: Workspace) -> None:
    assert workspace.scan("-q").returncode == 0
    busy = workspace.root / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    refused = run_cli("mount", str(busy), "--state-dir", str(workspace.state),
                      cwd=workspace.root)
    assert refused.returncode == 73, refused.stderr
    assert "not empty" in refused.stderr and refused.stderr.count("\n") == 1
    assert (busy / "notes.txt").read_text() == "mine" and mount_state(busy) == "not mounted"

    # The daemon in mount mode refuses the same, and a symlink it did not make.
    elsewhere = workspace.root / "elsewhere"
    elsewhere.mkdir()
    for output in (busy, workspace.root / "link"):
        if output.name == "link":
            output.symlink_to(elsewhere)
        config = write_config(workspace, output=str(output), output_mode="mount")
        daemon = DaemonProcess(workspace, config).start()
        assert daemon.proc is not None
        assert daemon.proc.wait(timeout=120) == 73, daemon.log()
        assert "imgclusterd will not mount" in daemon.log() or "not empty" in daemon.log()
        assert mount_state(output) == "not mounted"
    assert (busy / "notes.txt").read_text() == "mine"
    assert os.readlink(workspace.root / "link") == str(elsewhere)


def _reader(mount: Path, counts: set[int], errors: list[str], stop: threading.Event,
            rounds: list[int]) -> None:
    """List the tree over and over; every listing must be whole and from one snapshot."""
    while not stop.is_set():
        try:
            algorithms = sorted(e.name for e in os.scandir(mount) if e.is_dir())
            if len(algorithms) != 2:
                errors.append(f"the root lists {algorithms}")
            for algo in algorithms:
                folders = os.listdir(mount / algo)
                if len(folders) != 20:
                    errors.append(f"{algo}: {len(folders)} threshold folders")
                for folder in sorted(folders)[::4]:
                    unclustered = int(folder.rsplit("_", 1)[1])
                    entries = os.listdir(mount / algo / folder)
                    sizes = [int(e.rsplit("_", 1)[1]) for e in entries]
                    if f"unclustered_{unclustered}" not in entries:
                        errors.append(f"{algo}/{folder} lists {sorted(entries)}")
                    total = sum(sizes)
                    if total not in counts:
                        errors.append(f"{algo}/{folder}: {total} photos, a mix of snapshots?")
                    for leaf in entries[:3]:
                        links = os.listdir(mount / algo / folder / leaf)
                        if len(links) != int(leaf.rsplit("_", 1)[1]):
                            errors.append(f"{algo}/{folder}/{leaf}: {len(links)} links")
                        for link in links[:5]:
                            if not os.path.isfile(mount / algo / folder / leaf / link):
                                errors.append(f"{algo}/{folder}/{leaf}/{link}: broken")
            rounds[0] += 1
        except OSError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")


@needs_fuse
def test_daemon_in_mount_mode_refreshes_survives_kill_9_and_unmounts_on_sigterm(
        workspace: Workspace) -> None:
    # Start from a written tree (tree mode), so the switch to mount mode is covered too.
    config_path = write_config(workspace)
    assert run_cli("scan", "--config", str(config_path), "-q", cwd=workspace.root).returncode == 0
    assert os.path.islink(workspace.output)
    config_path = write_config(workspace, output_mode="mount")
    daemon = DaemonProcess(workspace, config_path).start()
    output = workspace.output
    photos = 44
    try:
        wait_for(lambda: daemon.assert_alive() or (
            mount_state(output) == "mounted" and os.listdir(output)), "the mount")
        first = os.listdir(output / "phash_8")
        wait_for(lambda: photos == _photos_in(output), "all photos in the mounted view")
        st = daemon.status()
        assert st["output_mode"] == "mount" and st["mount"] == "mounted", st
        status_text = run_cli("status", "--config", str(config_path), cwd=workspace.root)
        assert "mount (read-only FUSE view): mounted" in status_text.stdout, status_text.stdout
        assert first

        # Readers list the tree while photos arrive in five refreshes.
        counts = {photos + k for k in range(0, 6)}
        errors: list[str] = []
        rounds = [0]
        stop = threading.Event()
        reader = threading.Thread(target=_reader, args=(output, counts, errors, stop, rounds))
        reader.start()
        try:
            for batch in range(5):
                make_photos(workspace.images, 1, seed=100 + batch)
                photos += 1
                wait_for(lambda n=photos: _photos_in(output) == n, f"photo {photos} in the view")
                wait_for(lambda start=rounds[0]: rounds[0] > start or errors, "a reader round")
        finally:
            stop.set()
            reader.join(timeout=120)
        workspace.snapshot()
        assert not errors, errors[:10]
        assert rounds[0] >= 5

        # kill -9: the mount is left stale; the next start cleans it and serves again.
        daemon.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        daemon.proc.wait(timeout=60)  # type: ignore[union-attr]
        assert mount_state(output) == "stale"
        with pytest.raises(OSError) as stale:
            os.listdir(output)
        assert stale.value.errno == errno.ENOTCONN
        daemon.start()
        wait_for(lambda: daemon.assert_alive() or (
            mount_state(output) == "mounted" and _photos_in(output) == photos),
            "the restarted daemon to serve the view again")
        assert "stale imgclusterd mount" in daemon.log()

        daemon.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert daemon.proc.wait(timeout=60) == 0, daemon.log()  # type: ignore[union-attr]
        assert mount_state(output) == "not mounted"
        st = daemon.status()
        assert st["mount"] == "not mounted" and st["state"] == "not running"
    finally:
        if daemon.alive():
            daemon.proc.kill()  # type: ignore[union-attr]
            daemon.proc.wait()  # type: ignore[union-attr]
        if mount_state(output) != "not mounted":
            subprocess.run(["fusermount3", "-uz", str(output)], check=False)
    # Back to tree mode: the mount point folder it made is gone, a scan writes the tree again.
    config_path = write_config(workspace)
    assert run_cli("scan", "--config", str(config_path), "-q", cwd=workspace.root).returncode == 0
    assert os.path.islink(output) and _photos_in(output) == photos


def _photos_in(output: Path) -> int:
    """Photos in the view: the size of the threshold-0 folder's members, all leaves."""
    try:
        folder = next(f for f in os.listdir(output / "phash_8") if f.startswith("thr_000_"))
        return sum(len(os.listdir(output / "phash_8" / folder / leaf))
                   for leaf in os.listdir(output / "phash_8" / folder))
    except (OSError, StopIteration):
        return -1


def test_without_the_binding_mount_mode_is_one_line_and_tree_mode_works(
        workspace: Workspace) -> None:
    # The one fake here: a Python that cannot import mfusepy (the real one is installed).
    hide = ("import sys; sys.modules['mfusepy'] = None; from imgclusterd.cli import main; "
            "sys.exit(main(sys.argv[1:]))")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", hide, *args, "--state-dir",
                               str(workspace.state)], cwd=workspace.root, capture_output=True,
                              text=True, timeout=600)

    for args in (("run", "--output-mode", "mount"), ("mount", str(workspace.root / "v"))):
        result = cli(*args)
        assert result.returncode == 78, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert "pip install 'imgclusterd[mount]'" in result.stderr
        assert "fuse3" in result.stderr
    assert not (workspace.root / "v").exists() and not workspace.output.exists()
    scan = cli("scan", "-q")
    assert scan.returncode == 0, scan.stderr
    assert os.path.islink(workspace.output)
