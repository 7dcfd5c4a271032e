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

import numpy as np
import pytest
from PIL import Image

from imgclusterd.algorithms import hash_hex
from imgclusterd.cluster import spanning_forest
from imgclusterd.config import load_config
from imgclusterd.explorer import ExplorerAlgorithm, ExplorerPhoto, page_files
from imgclusterd.output import Link, folder_links, link_name
from imgclusterd.pipeline import Pipeline, StoreView
from imgclusterd.view import LazyFiles, Node, Snapshot

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


def _leaf_links(snapshot: Snapshot, algo: str, threshold: int, leaf: int) -> dict[str, str]:
    """What the writer would put in a leaf: folder_links of its members' links, made here
    from the paths and hashes alone (not through the snapshot's per-algorithm names)."""
    sweep_ = snapshot.algorithms[algo]
    links = []
    for v in sweep_.members(threshold, leaf).tolist():
        path = sweep_.files.paths[sweep_.keys[v]]
        stem, ext = os.path.splitext(os.path.basename(path))
        links.append(Link(link_name(stem, hash_hex(sweep_.packed[v].tobytes(), sweep_.nbits),
                                    ext), os.path.join(sweep_.files.root, path)))
    return folder_links(links)


def _every_leaf_is_folder_links(snapshot: Snapshot) -> int:
    leaves = 0
    for algo, sweep_ in snapshot.algorithms.items():
        for folder, threshold in sweep_.folder_names().items():
            for child in sweep_.children(threshold):
                node = snapshot.resolve(f"/{algo}/{folder}/{child}")
                assert node is not None and node.leaf is not None
                expected = _leaf_links(snapshot, algo, threshold, node.leaf)
                listed = [name for name, kind in snapshot.listdir(node) if kind == "link"]
                assert sorted(listed) == sorted(expected), (folder, child)
                for name, target in expected.items():
                    found = snapshot.resolve(f"/{algo}/{folder}/{child}/{name}")
                    assert found is not None and found.target == target, name
                leaves += 1
    return leaves


def test_leaf_names_equal_folder_links_even_where_a_numbered_name_clashes(
        tmp_path: Path) -> None:
    """Names are made once per algorithm (a photo's name is the same in every folder); where
    that shortcut would differ from a folder's own numbering -- a numbered ``_2`` name equal
    to another photo's name, possible with a 4-bit hash -- every leaf still equals
    folder_links of its members. Random libraries with exact copies, and the clash."""
    root = str(tmp_path / "images")
    rng = np.random.default_rng(5)
    for case in range(6):
        n = 60
        paths = {i: f"d{i % 3}/p{int(rng.integers(0, 25))}.jpg" for i in range(n)}
        paths = {i: p if p not in list(paths.values())[:i] else f"e{i}/{p}"
                 for i, p in paths.items()}  # unique paths; many equal file names
        nbits = 4 if case % 2 else 16
        packed = rng.integers(0, 256, (n, nbits // 8 or 1), dtype=np.uint8)
        if nbits == 4:
            packed &= 0xF0
        packed[1::4] = packed[0::4][: len(packed[1::4])]  # exact copies
        if case == 1:  # the clash: d0/x.jpg and d1/x.jpg (hash 1) and d2/x_1.jpg (hash 2)
            paths.update({0: "d0/x.jpg", 1: "d1/x.jpg", 2: "d2/x_1.jpg"})
            packed[:3, 0] = [0x10, 0x10, 0x20]
        limit = 4 if nbits == 4 else 10
        forest = spanning_forest(packed, limit)
        snapshot = Snapshot.build(root, paths, [("h", list(range(limit)), nbits, forest,
                                                 list(paths), packed)])
        assert _every_leaf_is_folder_links(snapshot) > limit
        if case == 1:
            sweep_ = snapshot.algorithms["h"]
            assert not sweep_.table().exact  # named leaf by leaf here
            # Threshold 2 joins d2/x_1.jpg (named x_1_2.jpg) to the two x.jpg: d1's is _3.
            folder = next(name for name, t in sweep_.folder_names().items() if t == 2)
            names = set()
            for child in sweep_.children(2):
                node = snapshot.resolve(f"/h/{folder}/{child}")
                assert node is not None
                names |= {name for name, _ in snapshot.listdir(node)}
            assert {"x_1.jpg", "x_1_2.jpg", "x_1_3.jpg"} <= names


def test_names_handed_on_to_the_next_snapshot_equal_folder_links(tmp_path: Path) -> None:
    """A refresh that adds photos reuses the previous snapshot's names for the others; the
    added ones may bring a name an earlier photo has (an exact copy under the same file name
    elsewhere): then every leaf must still be numbered as folder_links numbers it."""
    root = str(tmp_path / "images")
    rng = np.random.default_rng(11)
    n = 80
    paths = {i: f"d{i % 4}/IMG_{i:03d}.jpg" for i in range(n)}
    packed = rng.integers(0, 256, (n, 2), dtype=np.uint8)
    packed[40:50] = packed[30:40] ^ np.uint8(1)  # near copies: clusters at low thresholds
    paths[78], packed[78] = "e/IMG_005.jpg", packed[5]  # an exact copy, same file name
    paths[79] = "e/IMG_006.jpg"  # same file name, other content
    thresholds = list(range(6))
    previous = None
    for count in (40, 60, 60, 78, 80):  # growing, unchanged, then the copy arrives
        keys = list(range(count))
        sub = {k: paths[k] for k in keys}
        forest = spanning_forest(packed[:count], 5)
        snapshot = Snapshot.build(root, sub, [("h", thresholds, 16, forest, keys,
                                               packed[:count])], previous=previous)
        assert _every_leaf_is_folder_links(snapshot) >= len(thresholds)
        assert snapshot.algorithms["h"].table().numbered == (count == 80)
        previous = snapshot


def test_explorer_page_of_a_snapshot_is_made_on_first_read_from_its_own_photos(
        workspace: Workspace) -> None:
    """Mount mode publishes a snapshot without making the explorer page; reading it makes it,
    for the snapshot's photos even when the store has changed since."""
    make_photos(workspace.images, 4, seed=1)
    config = load_config(None, {"images": workspace.images, "output": workspace.output,
                                "state_dir": workspace.state, "output_mode": "mount",
                                "thumbnails": False}).config
    published: list[Snapshot] = []
    with Pipeline(config, publish=published.append) as pipeline:
        pipeline.refresh()
        first = published[-1]
        assert isinstance(first.extra_files, LazyFiles) and not first.extra_files.built
        make_photos(workspace.images, 2, seed=2)  # two more photos: a second snapshot
        workspace.snapshot()
        pipeline.refresh()
        second = published[-1]
        assert not first.extra_files.built and second.photos == first.photos + 2
        # Each published snapshot was warmed right after: its names and ranks are made, so a
        # folder's first listing is a partition and a gather (no naming of 100,000 photos).
        for snapshot in (first, second):
            assert all(s._table is not None and s._ranks is not None
                       for s in snapshot.algorithms.values())
        page = {s: s.extra_files["explorer-data.js"] for s in (second, first)}
        assert first.extra_files.built and "index.html" in first.extra_files
        expected = {s: pipeline_page(s) for s in (first, second)}
    assert page == expected and page[first] != page[second]


def pipeline_page(snapshot: Snapshot) -> bytes:
    """The page as tree mode makes it (page_files) for a snapshot's photos and forests."""
    sweeps = list(snapshot.algorithms.values())
    ids = sorted({k for s in sweeps for k in s.keys})
    position = {k: i for i, k in enumerate(ids)}
    files = sweeps[0].files
    photos = [ExplorerPhoto(path=files.paths[k], target=files.target(k), thumbnail=None)
              for k in ids]
    algorithms = [ExplorerAlgorithm(s.name, s.thresholds, s.forest,
                                    [position[k] for k in s.keys]) for s in sweeps]
    return page_files(photos, algorithms)["explorer-data.js"]


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


def _one_cluster(root: str, n: int, seed: int) -> Snapshot:
    """``n`` photos, all within distance 2 of each other: threshold 2 is one cluster of n."""
    rng = np.random.default_rng(seed)
    paths = {i: f"f{i % 7}/IMG_{seed}_{i:05d}.jpg" for i in range(n)}
    packed = np.zeros((n, 8), dtype=np.uint8)
    packed[np.arange(n), rng.integers(0, 8, n)] = 1  # one bit set: distance <= 2
    forest = spanning_forest(packed, 3)
    return Snapshot.build(root, paths, [("phash_8", [0, 2], 64, forest, list(paths), packed)])


def test_a_snapshot_replaced_drops_its_caches_and_still_answers(tmp_path: Path) -> None:
    """Old snapshots are kept for the grace period (readers inside them); their partition
    caches are dropped when they stop being served, and they still resolve and list."""
    from imgclusterd.mount import SnapshotHolder

    root = str(tmp_path / "images")
    old, new = _one_cluster(root, 300, seed=1), _one_cluster(root, 200, seed=2)
    holder = SnapshotHolder()
    holder.publish(old)
    node = old.resolve("/phash_8/thr_002_unclustered_0/001_300")
    assert node is not None and len(old.listdir(node)) == 300
    assert len(old.algorithms["phash_8"].cuts) > 0
    holder.publish(new)
    assert len(old.algorithms["phash_8"].cuts) == 0
    found = holder.resolve("/phash_8/thr_002_unclustered_0/001_300")  # the old one answers
    assert found is not None and found[0] is old and len(old.listdir(found[1])) == 300


@needs_fuse
@pytest.mark.parametrize("caller", ["cffi", "ctypes"])
def test_a_big_folder_is_listed_whole_across_kernel_requests_from_one_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caller: str) -> None:
    """readdir answers the kernel's requests one at a time from offsets: a folder of 6,000
    links (~300 KB of entries, many requests) lists every entry once, each link resolves, and
    a listing that started before a new snapshot was published finishes on its own. Both
    ways of calling libfuse's fill function: cffi (the mount extra's) and the ctypes fallback."""
    from imgclusterd import mount as mount_module
    from imgclusterd.mount import Mount, SnapshotHolder

    if caller == "ctypes":
        monkeypatch.setattr(mount_module, "_ffi", None)
    else:
        assert mount_module._ffi is not None, "cffi (the mount extra) is not installed"

    root = str(tmp_path / "images")
    old, new = _one_cluster(root, 6000, seed=1), _one_cluster(root, 5000, seed=2)
    holder = SnapshotHolder()
    holder.publish(old)
    mount = Mount(tmp_path / "view", holder)
    mount.start()
    try:
        folder = tmp_path / "view" / "phash_8" / "thr_002_unclustered_0" / "001_6000"
        node = old.resolve("/phash_8/thr_002_unclustered_0/001_6000")
        assert node is not None
        expected = [name for name, _ in old.listdir(node)]
        listed = os.listdir(folder)
        assert len(listed) == 6000 and sorted(listed) == sorted(expected)
        for name in listed[::250]:  # IMG_1_<i>_<hash>.jpg -> images/f<i % 7>/IMG_1_<i>.jpg
            i = int(name.split("_")[2])
            assert os.readlink(folder / name) == os.path.join(root, f"f{i % 7}/IMG_1_{i:05d}.jpg")
        with os.scandir(folder) as entries:
            first = next(entries)  # the first request answered from the old snapshot
            holder.publish(new)
            rest = [e.name for e in entries]
        assert sorted([first.name, *rest]) == sorted(expected)
        assert len(os.listdir(tmp_path / "view" / "phash_8" / "thr_002_unclustered_0" /
                              "001_5000")) == 5000
    finally:
        mount.stop()
    assert not (tmp_path / "view").exists()


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
        try:
            assert daemon.proc.wait(timeout=120) == 73, daemon.log()
        finally:
            if daemon.proc.poll() is None:  # it mounted after all: not left running
                daemon.proc.kill()
                daemon.proc.wait()
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
