"""The output tree as a read-only FUSE filesystem (``output_mode = "mount"``).

:class:`Mount` serves :class:`~imgclusterd.view.Snapshot` objects at the output path through
libfuse 3 (the ``mfusepy`` binding, pure ctypes; ``pip install 'imgclusterd[mount]'``; the
system package ``fuse3`` gives ``libfuse3.so.3`` and ``fusermount3``). Nothing is written for
the tree: a refresh is :meth:`Mount.publish`, a pointer swap.

Consistency, the same promises as the written tree's atomic swap:

- A directory listing comes whole from one snapshot: ``opendir`` pins the snapshot current at
  that moment into the handle, and every ``readdir`` of that handle lists it.
- A path is resolved in the current snapshot; a path that no longer exists there is resolved in
  the previous snapshots still kept (``keep_generations`` of them, for ``generation_grace``
  seconds), newest first -- as a reader inside an old generation keeps it for that long in
  ``tree`` mode. So a walk that started before a refresh does not fail half-way.

Life of the mount: the mount point must be missing, an empty folder, imgclusterd's own
``tree``-mode symlink (switching modes) or a *stale* imgclusterd mount (its server was killed:
every access fails with ENOTCONN), which is unmounted first. Anything else is refused, never
mounted over. :meth:`Mount.stop` unmounts (lazily when a reader is still inside) and removes a
mount point folder it made.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import ConfigError, OutputError
from .fsinfo import mounted_at
from .view import Listing, Node, Snapshot

__all__ = [
    "FSNAME",
    "FSTYPE",
    "INSTALL_HINT",
    "Mount",
    "SnapshotHolder",
    "load_binding",
    "mount_state",
    "unmount",
]

log = logging.getLogger(__name__)

FSNAME = "imgclusterd"
FSTYPE = f"fuse.{FSNAME}"
INSTALL_HINT = (
    "output_mode = \"mount\" needs a libfuse 3 binding: pip install 'imgclusterd[mount]' "
    "(and the system package that gives libfuse3 and fusermount3; Debian/Ubuntu: fuse3)"
)
_STALE_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_MODES = {"dir": stat.S_IFDIR | 0o555, "link": stat.S_IFLNK | 0o777, "file": stat.S_IFREG | 0o444}
_CAP_READDIRPLUS = 1 << 13  # fuse_common.h FUSE_CAP_READDIRPLUS
_CAP_READDIRPLUS_AUTO = 1 << 14


def load_binding() -> ModuleType:
    """The mfusepy module, or ConfigError saying what to install (one line)."""
    try:
        import mfusepy
    except ImportError:
        raise ConfigError(INSTALL_HINT, key="output_mode") from None
    except (OSError, AttributeError) as exc:  # no libfuse3.so found, or a wrong version
        raise ConfigError(f"{INSTALL_HINT} ({exc})", key="output_mode") from None
    return mfusepy


def mount_state(path: Path, timeout: float = 5.0) -> str:
    """``mounted`` (ours, answering), ``stale`` (ours, server gone), ``not responding`` (ours,
    server alive but stuck), ``foreign:<type>`` or ``not mounted``.

    Reads /proc/self/mountinfo, and only when the mount is ours opens it as a folder: an open
    always reaches the server (a stat may be answered from the kernel's attribute cache for a
    second after the server died). The open runs in a thread, given up after ``timeout``: a
    stopped server (SIGSTOP, a debugger) would block it for as long as it stays stopped.
    """
    fstype = mounted_at(path)
    if fstype is None:
        return "not mounted"
    if fstype != FSTYPE:
        return f"foreign:{fstype}"
    outcome: list[str] = []

    def probe() -> None:
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_DIRECTORY))
            outcome.append("mounted")
        except OSError as exc:
            outcome.append("stale" if exc.errno in _STALE_ERRNOS else f"error:{exc.strerror}")

    thread = threading.Thread(target=probe, name="imgclusterd-mount-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return "not responding"
    return outcome[0] if not outcome[0].startswith("error:") else "mounted"


def unmount(path: Path, *, lazy: bool = False) -> None:
    """Unmount a FUSE mount: ``fusermount3 -u`` (what an unprivileged user may do), or
    ``umount2`` as root where fusermount3 is missing. Raises OSError with the reason."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is not None:
        result = subprocess.run([tool, "-u", *(["-z"] if lazy else []), os.fspath(path)],
                                capture_output=True, text=True, timeout=60)
        if result.returncode == 0:
            return
        reason = (result.stderr.strip().splitlines() or ["failed"])[-1]
        if os.geteuid() != 0:
            busy = "busy" in reason.lower()
            raise OSError(errno.EBUSY if busy else errno.EPERM, reason)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(path), 2 if lazy else 0) != 0:  # 2 = MNT_DETACH
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), os.fspath(path))


class SnapshotHolder:
    """The snapshot being served and the previous ones still kept (see the module doc)."""

    def __init__(
        self,
        keep: int = 2,
        grace_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keep = max(1, keep)
        self.grace_seconds = grace_seconds
        self.clock = clock
        self._lock = threading.Lock()
        # newest first: (snapshot, when it stopped being current or None)
        self._kept: list[tuple[Snapshot, float | None]] = [(Snapshot.empty(), None)]
        self.published = 0

    @property
    def current(self) -> Snapshot:
        return self._kept[0][0]

    def publish(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` current: one list replacement, so a lookup sees old or new."""
        with self._lock:
            now = self.clock()
            old = [(s, now if retired is None else retired) for s, retired in self._kept]
            # Keep the newest ``keep - 1`` old ones, and any still inside the grace period.
            kept = [
                (s, retired)
                for i, (s, retired) in enumerate(old)
                if i < self.keep - 1 or now - retired < self.grace_seconds
            ]
            self._kept = [(snapshot, None), *kept]
            self.published += 1
        if old and old[0][0] is not snapshot:
            old[0][0].retire()

    def resolve(self, path: str) -> tuple[Snapshot, Node] | None:
        """``path`` in the current snapshot, else in the kept older ones, newest first."""
        for snapshot, _ in self._kept:  # a copy-free read of an immutable list
            node = snapshot.resolve(path)
            if node is not None:
                return snapshot, node
        return None


class Mount:
    """A read-only FUSE filesystem at ``mountpoint`` serving ``holder``, run by a thread."""

    def __init__(self, mountpoint: Path, holder: SnapshotHolder) -> None:
        self.mountpoint = Path(os.path.abspath(mountpoint))
        self.holder = holder
        self._binding = load_binding()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._made_folder = False
        self.cleaned_stale = False

    # -- life -----------------------------------------------------------------------------------

    def check(self, *, own_symlink: bool = False) -> None:
        """Raise OutputError now if the mount point will be refused (changes nothing)."""
        path = self.mountpoint
        state = mount_state(path)
        if state != "not mounted":
            if state != "stale":
                self.prepare(own_symlink=own_symlink)  # raises: live or foreign mount
            return
        if os.path.islink(path):
            if not own_symlink:
                raise _foreign_symlink(path)
        elif os.path.lexists(path):
            if not path.is_dir():
                raise _not_a_folder(path)
            if any(os.scandir(path)):
                raise _not_empty(path)

    def prepare(self, *, own_symlink: bool = False) -> None:
        """Make the mount point usable, or raise OutputError (see the module doc).

        ``own_symlink``: the path is imgclusterd's ``tree``-mode output symlink (the caller
        knows the writer's marker), replaced by an empty folder when switching modes.
        """
        path = self.mountpoint
        state = mount_state(path)
        if state == "stale":
            log.warning("%s: a stale imgclusterd mount (its server was killed); unmounting it",
                        path)
            try:
                unmount(path, lazy=True)
            except OSError as exc:
                raise OutputError(f"{path}: cannot unmount the stale imgclusterd mount left "
                                  f"there: {exc.strerror or exc}; run fusermount3 -uz {path}"
                                  ) from None
            self.cleaned_stale = True
            self._made_folder = True  # a folder our last run mounted on: ours to remove
        elif state in ("mounted", "not responding"):
            raise OutputError(f"{path}: another imgclusterd already serves this mount point "
                              f"({state}; a daemon, or `imgclusterd mount`): stop it first")
        elif state.startswith("foreign:"):
            raise OutputError(f"{path}: a {state.split(':', 1)[1]} filesystem is mounted "
                              "there, not imgclusterd's; imgclusterd will not mount over it")
        if os.path.islink(path):
            if not own_symlink:
                raise _foreign_symlink(path)
            log.info("%s: switching from the written tree to the mounted view", path)
            path.unlink()
        if not os.path.lexists(path):
            path.mkdir(parents=True)
            self._made_folder = True
            return
        if not path.is_dir():
            raise _not_a_folder(path)
        if any(os.scandir(path)):
            raise _not_empty(path)

    def start(self, *, own_symlink: bool = False) -> None:
        """Prepare the mount point, mount, and return once the kernel talks to us."""
        self.prepare(own_symlink=own_symlink)
        operations = _operations(self._binding, self.holder, self._ready)
        self._thread = threading.Thread(
            target=self._serve, args=(operations,), name="imgclusterd-fuse", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._ready.wait(0.05):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._give_up()
                detail = f": {self._error}" if self._error else ""
                raise OutputError(
                    f"could not mount the output at {self.mountpoint}{detail}" + _mount_hint()
                )
        log.info("output mounted at %s (read-only FUSE view)", self.mountpoint)

    def _serve(self, operations: Any) -> None:
        try:
            _fuse_class(self._binding)(
                operations,
                os.fspath(self.mountpoint),
                foreground=True,
                ro=True,
                default_permissions=True,
                fsname=FSNAME,
                subtype=FSNAME,
            )
        except BaseException as exc:  # reported by start() or stop(); the thread just ends
            self._error = exc

    def _give_up(self) -> None:
        if mount_state(self.mountpoint) != "not mounted":
            try:
                unmount(self.mountpoint, lazy=True)
            except OSError as exc:
                log.warning("could not unmount %s: %s", self.mountpoint, exc)
        self._remove_folder()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Unmount (lazily if a reader is still inside) and wait for the server to end."""
        if self._thread is None:
            return
        if mounted_at(self.mountpoint) == FSTYPE:
            try:
                unmount(self.mountpoint)
            except OSError as exc:
                log.info("%s busy (%s): detaching it lazily", self.mountpoint, exc.strerror)
                try:
                    unmount(self.mountpoint, lazy=True)
                except OSError as exc2:
                    log.error("could not unmount %s: %s", self.mountpoint, exc2)
        self._thread.join(_STOP_TIMEOUT)
        if self._thread.is_alive():
            log.warning("the FUSE server is still answering a reader; it ends with the process")
        self._thread = None
        self._remove_folder()
        log.info("output unmounted from %s", self.mountpoint)

    def _remove_folder(self) -> None:
        if self._made_folder and mounted_at(self.mountpoint) is None:
            try:
                self.mountpoint.rmdir()  # only if empty: never anything else
            except OSError:
                pass
            else:
                self._made_folder = False

    # -- serving ------------------------------------------------------------------------------

    def publish(self, snapshot: Snapshot) -> None:
        self.holder.publish(snapshot)


def _foreign_symlink(path: Path) -> OutputError:
    return OutputError(f"{path} is a symlink imgclusterd did not make; imgclusterd will not "
                       "mount over it: move it away or choose another --output")


def _not_a_folder(path: Path) -> OutputError:
    return OutputError(f"{path} exists and is not a folder; imgclusterd will not mount over "
                       "it: move it away or choose another --output")


def _not_empty(path: Path) -> OutputError:
    return OutputError(f"{path} is not empty and is not imgclusterd's; imgclusterd mounts "
                       "only on an empty folder: move it away or choose another --output")


def _mount_hint() -> str:
    """Why mounting may have failed, when it can be told from here."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return ""
    if os.geteuid() != 0 and "NoNewPrivs:\t1" in text:
        return ("; this process runs with no_new_privs (e.g. a hardened systemd unit), so the "
                "setuid fusermount3 cannot mount: reinstall the service with output_mode = "
                "\"mount\" in the config (imgclusterd install-service) to relax it")
    if not os.path.exists("/dev/fuse"):
        return "; /dev/fuse is missing (load the fuse kernel module)"
    return ""


# fuse_fill_dir_t with every pointer as a plain integer: nothing is converted per entry (a
# c_char_p argument would copy each name, a c_void_p is checked more slowly). cffi calls it in
# about half of ctypes' time (measured: 100,000 calls 0.37-0.55 s against 0.65-1.2 s on a
# loaded machine); the filler is called once per entry, so a 100,000-entry folder's listing
# is mostly these calls. ctypes is the fallback where cffi is not installed.
_CFFI_FILLER = "int(*)(uintptr_t, uintptr_t, uintptr_t, int64_t, int)"
_CFFI_FILLER2 = "int(*)(uintptr_t, uintptr_t, uintptr_t, int64_t)"
_FILLER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t,
                           ctypes.c_int64, ctypes.c_int)
_FILLER2 = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t,
                            ctypes.c_int64)
_DOTS = b".\0..\0"
_CHUNK = 512  # entries converted to Python integers at a time


def _cffi() -> Any:
    try:
        import cffi
    except ImportError:
        return None
    return cffi.FFI()


_ffi = _cffi()


def _filler(filler: Any, version3: bool) -> Callable[[int, int, int, int, int], int]:
    """libfuse's fill function of one readdir request, callable with plain integers as
    ``fill(buf, name, stat, next_offset, flags)``."""
    address = ctypes.cast(filler, ctypes.c_void_p).value or 0
    if _ffi is not None:
        if version3:
            return _ffi.cast(_CFFI_FILLER, address)
        fill4 = _ffi.cast(_CFFI_FILLER2, address)
    elif version3:
        return ctypes.cast(address, _FILLER)
    else:
        fill4 = ctypes.cast(address, _FILLER2)

    def fill(b: int, name: int, st: int, off: int, flags: int) -> int:
        return int(fill4(b, name, st, off))

    return fill


def _address(buffer: bytes) -> int:
    """Where a bytes object's content lives (CPython never moves it while it is alive)."""
    return ctypes.cast(ctypes.c_char_p(buffer), ctypes.c_void_p).value or 0


def _fuse_class(binding: ModuleType) -> Any:
    """mfusepy's FUSE with a readdir that costs one C call per entry, in the kernel's chunks.

    mfusepy's own readdir inspects every entry in Python (type checks, a stat struct filled
    field by field) and hands libfuse the whole folder at once with offset 0; libfuse then
    keeps its own copy and, for each of the kernel's requests, walks that list from the start
    to the request's offset. Here the filler gets offsets ("." is 0, "..", then entry i at
    i + 2; each entry passes the offset of the next), so libfuse fills each kernel request
    straight from the snapshot's :class:`~imgclusterd.view.Listing`: a name is a pointer into
    its buffer and the stat one of three prepared structs, all plain integers. Relies on
    mfusepy 3's internal ``_readdir(path, buf, filler, offset, fip)`` hook (pinned below 4 in
    the ``mount`` extra); falls back to mfusepy's when it is missing.
    """
    base = binding.FUSE
    if not hasattr(base, "_readdir"):
        return base
    version3 = binding.fuse_version_major == 3
    dots = _DOTS

    class FastFUSE(base):  # type: ignore[misc,valid-type]
        def _readdir(self, path: Any, buf: Any, filler: Any, offset: int, fip: Any) -> int:
            listing, stats = self.operations.listing(fip.contents.fh)  # stat addresses
            fill = _filler(filler, version3)
            buf = buf or 0  # a c_void_p argument: an int, or None for NULL
            at = int(offset)
            dots_at = _address(dots)
            while at < 2:
                if fill(buf, dots_at + 2 * at, stats["dir"], at + 1, 0):
                    return 0
                at += 1
            base_at = _address(listing.buffer)
            starts = listing.starts
            runs = listing.runs
            total = len(starts)
            i = at - 2
            while i < total:
                # The kind of entries i.. and where that run ends.
                run = 0
                while run + 1 < len(runs) and runs[run + 1][0] <= i:
                    run += 1
                end = runs[run + 1][0] if run + 1 < len(runs) else total
                st = stats[runs[run][1]]
                chunk = (starts[i : min(end, i + _CHUNK)] + base_at).tolist()
                off = i + 3  # the offset of the entry after this one
                for name in chunk:
                    if fill(buf, name, st, off, 0):
                        return 0
                    off += 1
                i += len(chunk)
            return 0

    return FastFUSE


def _operations(binding: ModuleType, holder: SnapshotHolder, ready: threading.Event) -> Any:
    """The mfusepy Operations object (a class made here: the binding is an optional import)."""
    fuse_error = binding.FuseOSError
    stats = {}
    for kind, mode in _MODES.items():  # readdir passes only the file type on to the kernel
        stats[kind] = binding.c_stat()
        stats[kind].st_mode = mode
    addresses = {kind: ctypes.addressof(st) for kind, st in stats.items()}
    uid, gid = os.getuid(), os.getgid()

    class Operations(binding.Operations):  # type: ignore[name-defined]
        use_ns = True  # times as integer nanoseconds (mfusepy warns otherwise)

        def __init__(self) -> None:
            self._handles: dict[int, tuple[Snapshot, Node]] = {}
            self._listings: dict[int, Listing] = {}
            self._stats = stats  # readdir hands libfuse their addresses: keep them alive
            self._next = 0
            self._lock = threading.Lock()

        def init_with_config(self, conn: Any, config: Any) -> None:
            if conn is not None and binding.fuse_version_major == 3:
                # Plain READDIR, not READDIRPLUS: entries without attributes are a third of the
                # size, so a 100,000-entry folder needs a third of the kernel round trips
                # (no attributes are lost: readdir never had them, a lookup stats each name).
                conn.want &= ~(_CAP_READDIRPLUS | _CAP_READDIRPLUS_AUTO)
            ready.set()

        def _resolve(self, path: str) -> tuple[Snapshot, Node]:
            found = holder.resolve(path)
            if found is None:
                raise fuse_error(errno.ENOENT)
            return found

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            snapshot, node = self._resolve(path)
            when = int(snapshot.created * 1e9)
            attrs: dict[str, Any] = {
                "st_uid": uid, "st_gid": gid, "st_atime": when, "st_mtime": when,
                "st_ctime": when, "st_nlink": 1,
            }
            if node.kind == "link":
                assert node.target is not None
                attrs["st_mode"] = stat.S_IFLNK | 0o777
                attrs["st_size"] = len(os.fsencode(node.target))
            elif node.kind == "file":
                attrs["st_mode"] = stat.S_IFREG | 0o444
                attrs["st_size"] = len(snapshot.extra_files[node.target or ""])
            else:
                attrs["st_mode"] = stat.S_IFDIR | 0o555
                attrs["st_nlink"] = 2
            return attrs

        def readlink(self, path: str) -> str:
            _, node = self._resolve(path)
            if node.kind != "link" or node.target is None:
                raise fuse_error(errno.EINVAL)
            return node.target

        def opendir(self, path: str) -> int:
            found = self._resolve(path)
            if found[1].kind in ("link", "file"):
                raise fuse_error(errno.ENOTDIR)
            with self._lock:
                self._next += 1
                self._handles[self._next] = found  # the listing stays on this snapshot
                return self._next

        def readdir(self, path: str, fh: int) -> list[Any]:
            """mfusepy's form (used only where _fuse_class cannot install readdir_raw)."""
            snapshot, node = self._handle(fh)
            entries: list[Any] = [(".", _MODES["dir"], 0), ("..", _MODES["dir"], 0)]
            entries += [(name, _MODES[kind], 0) for name, kind in snapshot.listdir(node)]
            return entries

        def listing(self, fh: int) -> tuple[Listing, dict[str, int]]:
            """The handle's listing, made on its first readdir (the kernel asks again for each
            chunk, from an offset: the same listing answers every one)."""
            found = self._listings.get(fh)
            if found is None:
                snapshot, node = self._handle(fh)
                found = self._listings[fh] = snapshot.listing(node)
            return found, addresses

        def _handle(self, fh: int) -> tuple[Snapshot, Node]:
            found = self._handles.get(fh)
            if found is None:
                raise fuse_error(errno.EBADF)
            return found

        def releasedir(self, path: str, fh: int) -> int:
            with self._lock:
                self._handles.pop(fh, None)
                self._listings.pop(fh, None)
            return 0

        def open(self, path: str, flags: int) -> int:
            _, node = self._resolve(path)
            if node.kind != "file":
                raise fuse_error(errno.EISDIR if node.kind != "link" else errno.ELOOP)
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise fuse_error(errno.EROFS)
            return 0

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            snapshot, node = self._resolve(path)
            if node.kind != "file":
                raise fuse_error(errno.EISDIR)
            return snapshot.extra_files[node.target or ""][offset : offset + size]

        def statfs(self, path: str) -> dict[str, Any]:
            return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    return Operations()
