"""The content-addressed area beside ``OUTPUT``: objects, generations, the swap.

``OUTPUT`` is a symlink owned by the daemon; everything else lives in a hidden *area* beside
it, ``<parent>/.<name>.imgclusterd/``, which carries a marker file proving we made it::

    MARKER                  "imgclusterd output area v1" -- nothing is deleted without it
    objects/<digest>/       immutable, content-addressed directories (see ``plan``)
    generations/g<seq>-<ms>-<gdigest>/   a real directory: ``<algo> -> ../../objects/<algo obj>``
    pool/<digest>~<slot>~<thr>~<algo>    garbage kept one write for recycling (see ``recycle``)
    tmp/                    objects, generations and symlinks under construction
    links/<xx>/<key>        one symlink inode per (name, target); every photo link of every
                            object is a hard link to one of these (see ``linkstore``)
    records/<generation>    the objects a generation stopped using and started using, against
                            its parent (see ``retention``): garbage collection without a walk

Damage. Objects are immutable, so a changed one was damaged (a link deleted through
``OUTPUT``, a file dropped in). Every object and generation directory is *stamped* when it is
made: its mtime's nanoseconds are set to a value derived from its digest
(:func:`stamp_ns`). Any entry added or removed later sets the mtime to the kernel's clock, so
one ``stat`` tells whether a folder is as made; one that is not is compared entry by entry
with what it must hold and repaired in place (missing links put back, wrong or extra symlinks
removed; a regular file or folder someone put there is left alone). Where the filesystem
keeps no nanoseconds, every reuse compares entries instead.

Ownership: ``<parent>/.<name>.imgclusterd.lock`` beside the area (not in it, so that a deleted
area does not take the lock with it) is an ``flock`` with the holder's pid, held by the process
that owns the output for as long as it runs (:meth:`Area.acquire`, the pipeline's life): one
writer per output, whatever state dir each process uses. A write without an owner takes it for
its own duration.

Objects are built in ``tmp/`` and renamed into ``objects/`` when complete, children before
parents, so an object in ``objects/`` is always complete. A generation: its directory is built
in ``tmp/`` and renamed into ``generations/``; ``syncfs`` once (so a crash can never leave
``OUTPUT`` naming something that is not on disk); then a fresh temporary symlink is renamed over
``OUTPUT`` (``os.replace``: readers see the old or the new tree, never none).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from imgclusterd.errors import AlreadyRunning, OutputError, StoreError
from imgclusterd.lock import InstanceLock

from .hooks import GENERATION_BUILT, OBJECT_STAGED, SWAP_LINK_MADE, WriteHooks
from .linkstore import LinkStore
from .names import CLUSTER_RE, THRESHOLD_RE
from .plan import DIGEST_LEN, Role, leaf_digest

__all__ = [
    "DIGEST_RE",
    "GENERATION_RE",
    "Area",
    "Place",
    "Step",
    "apply_steps",
    "area_path",
    "owner_lock_path",
    "remove_tree",
    "stamp_ns",
]

log = logging.getLogger(__name__)

_MARKER = "MARKER"
_MARKER_TEXT = "imgclusterd output area v1\n"
DIGEST_RE = re.compile(rf"[0-9a-f]{{{DIGEST_LEN}}}\Z")
#: ``g<seq>-<ms>-<gdigest>``: sequence number, time it was named (ms), generation digest.
GENERATION_RE = re.compile(r"g(\d{8,})-(\d+)-([0-9a-f]{16})\Z")
_TMP_PREFIXES = ("obj-", "rec-", "gen-", "link-", "dead-", "spare-", "record-")


def area_path(output: Path) -> Path:
    """The hidden area beside ``output`` that holds generations and objects."""
    return output.parent / f".{output.name}.imgclusterd"


def owner_lock_path(output: Path) -> Path:
    """The lock file of the process that owns ``output`` (beside the area, see above)."""
    return output.parent / f".{output.name}.imgclusterd.lock"


def remove_tree(path: Path) -> None:
    """Remove a file, symlink or directory tree of ours, never following symlinks."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _syncfs(path: Path) -> None:
    """Flush the file system holding ``path`` (``syncfs``; ``os.sync`` where it is missing)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = getattr(libc, "syncfs", None)
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def stamp_ns(key: str) -> int:
    """The nanoseconds part of the mtime that marks a folder as made for digest ``key``."""
    return int(key[:8], 16) % 1_000_000_000


def _generation_key(name: str) -> str:
    """A generation is stamped with its digest (the last part of its name)."""
    return name.rsplit("-", 1)[1]


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


#: One patch: names removed from its base, links added, entries renamed (new -> old name).
Step = tuple[tuple[str, ...], Mapping[str, str], Mapping[str, str]]
Place = Callable[[int, str, str], None]


def symlink_at(dir_fd: int, name: str, target: str) -> None:
    os.symlink(target, name, dir_fd=dir_fd)


def rename_at(dir_fd: int, moved: Mapping[str, str]) -> None:
    """Rename entries of the directory ``dir_fd`` (``moved``: new name -> old name), one
    ``rename`` each, never onto a name another of them still holds.

    Renumbered clusters form chains (``005_2 -> 006_2 -> 007_2``): each chain is renamed from
    its far end; a cycle (two entries trading names) goes through a temporary name. A
    destination no entry of ``moved`` holds must be free already (its entry unlinked).
    """
    pending = {old: new for new, old in moved.items()}
    for start in list(pending):
        if start not in pending:
            continue
        path, seen, name = [start], {start}, pending[start]
        while name in pending and name not in seen:
            path.append(name)
            seen.add(name)
            name = pending[name]
        if name in seen:  # a cycle (through start: a name has one predecessor at most)
            os.rename(start, ".moving", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            for old in reversed(path[1:]):
                os.rename(old, pending.pop(old), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.rename(".moving", pending.pop(start), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            for old in reversed(path):
                os.rename(old, pending.pop(old), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def apply_steps(staging: Path, steps: Iterable[Step], place: Place) -> tuple[int, int, int]:
    """Apply ``steps`` to the folder ``staging``, in order; (added, removed, renamed)."""
    added = removed = renamed = 0
    fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for gone, new, moved in steps:
            for name in gone:
                os.unlink(name, dir_fd=fd)
            # Renamed entries (a threshold folder's clusters renumbered) keep their inode.
            rename_at(fd, moved)
            renamed += len(moved)
            for name, target in new.items():
                place(fd, name, target)
            added += len(new)
            removed += len(gone)
    finally:
        os.close(fd)
    return added, removed, renamed


def write_file_at(dir_fd: int, name: str, content: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


class Area:
    """The hidden area of one ``output``: ownership, building blocks of a write, reading the DAG.

    Objects are immutable, so what is learnt about one stays true while it exists:
    :attr:`children` (digest -> [(entry name, child digest)] of algorithm and threshold
    objects) and the objects each generation reaches are memoised.
    """

    def __init__(self, output: Path, hooks: WriteHooks) -> None:
        self.output = output
        self.root = area_path(output)
        self.hooks = hooks
        self.objects = self.root / "objects"
        self.generations = self.root / "generations"
        self.pool = self.root / "pool"
        self.tmp = self.root / "tmp"
        self.records = self.root / "records"  # per generation: what it retired (retention)
        # Every photo link is a hard link to one inode per (name, target): see linkstore.
        self.links = LinkStore(self.root / "links")
        # (packed: see remember_children; a whole tree's were ~270 MB as tuples at 100,000
        # photos, kept for good after its write)
        self.children: dict[str, tuple[str, bytes]] = {}
        # generation -> the digests it reaches, 16 bytes each (see reachable)
        self.reach: dict[str, bytes] = {}
        self.record_cache: dict[str, Any] = {}  # generation -> its record (see retention)
        self.lock_file = owner_lock_path(output)
        self._owner: InstanceLock | None = None  # held from acquire() to release()
        self._owner_identity: tuple[int, int] | None = None
        self.stamps_hold = True  # False once the filesystem dropped a stamp's nanoseconds

    # ------------------------------------------------------------------ ownership

    def foreign(self, path: Path, what: str) -> OutputError:
        return OutputError(
            f"{path} already exists and was not made by imgclusterd ({what}); imgclusterd "
            f"will not delete or write into it: move it away, or choose another --output"
        )

    def is_ours(self) -> bool:
        if self.root.is_symlink() or not self.root.is_dir():
            return False
        try:
            with open(self.root / _MARKER, encoding="utf-8", errors="replace") as marker:
                return marker.read(len(_MARKER_TEXT)) == _MARKER_TEXT
        except OSError:
            return False

    def check(self) -> None:
        """Raise :class:`OutputError` if ``output`` or the area exists and is not ours."""
        if os.path.lexists(self.root) and not self.is_ours():
            raise self.foreign(self.root, "no imgclusterd marker in it")
        if not os.path.lexists(self.output):
            return
        if not self.output.is_symlink():
            what = "a directory" if self.output.is_dir() else "not a symlink"
            raise self.foreign(self.output, what)
        if self.current_name() is None:
            target = os.readlink(self.output)
            raise self.foreign(self.output, f"a symlink to {target!r}, outside {self.root}")
        # A symlink of ours whose area was deleted is still ours (dangling): the next write
        # makes a new area and replaces the symlink, nothing else.

    def current_name(self) -> str | None:
        """The generation ``output`` names, if it is a symlink of ours (not checked on disk)."""
        try:
            target = os.readlink(self.output)
        except OSError:
            return None
        prefix = f"{self.root.name}/generations/"
        name = target[len(prefix) :] if target.startswith(prefix) else ""
        return name if GENERATION_RE.match(name) else None

    def ensure(self) -> None:
        """Make the area (marker first) and its folders if they are missing."""
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(self.root):
            # Marker first, in a private temporary name, so the area is never without it.
            staging = self.output.parent / f".{self.output.name}.imgclusterd.{os.getpid()}.new"
            if os.path.lexists(staging):
                shutil.rmtree(staging)
            staging.mkdir()
            (staging / _MARKER).write_text(
                _MARKER_TEXT + f"output: {os.fsencode(self.output)!r}\n", encoding="utf-8"
            )
            try:
                os.rename(staging, self.root)
            except OSError:
                shutil.rmtree(staging)
                raise
        self.ensure_folders()

    def ensure_folders(self) -> None:
        for sub in (self.objects, self.generations, self.pool, self.tmp, self.records):
            sub.mkdir(exist_ok=True)

    def acquire(self) -> None:
        """Own the output until :meth:`release`; AlreadyRunning if another process does."""
        if self._owner is not None:
            return
        try:
            self.output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"cannot use the output folder {self.output.parent}: {exc.strerror or exc}"
            ) from exc
        lock = InstanceLock(self.lock_file)
        try:
            lock.acquire()
        except StoreError as exc:  # InstanceLock speaks of a state folder: not here
            cause = exc.__cause__
            reason = getattr(cause, "strerror", None) or str(cause or exc)
            raise OutputError(
                f"cannot use the output folder {self.output.parent}: {reason}"
            ) from exc
        except AlreadyRunning as exc:
            raise AlreadyRunning(
                exc.pid, f"another imgclusterd process writes the output {self.output}"
            ) from None
        self._owner = lock
        self._owner_identity = _identity(self.lock_file)

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.release()

    @property
    def owned(self) -> bool:
        return self._owner is not None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the output (and the link store open) for a write or a cleanup.

        An owner checks that its lock file is still the one it locked (a deleted or replaced
        file would let a second writer in) and locks the new one if not; without an owner,
        the lock is taken for the duration, and a held one is an :class:`OutputError`.
        """
        temporary = self._owner is None
        if temporary:
            try:
                self.acquire()
            except AlreadyRunning as exc:
                raise OutputError(
                    f"another imgclusterd process (pid {exc.pid}) is writing {self.output}; "
                    f"only one writer per output"
                ) from None
        elif _identity(self.lock_file) != self._owner_identity:
            log.warning("the output lock %s was deleted or replaced; locking it again",
                        self.lock_file)
            self.release()
            self.acquire()  # AlreadyRunning if another process took the output meanwhile
        try:
            self.links.open()
            try:
                yield
            finally:
                self.links.close()
        finally:
            if temporary:
                self.release()

    # ------------------------------------------------------------------ building

    def write_object_at(
        self,
        staging: Path,
        links: Mapping[str, str],
        files: Mapping[str, bytes],
        shared: bool = True,
    ) -> None:
        """A fresh directory ``staging`` holding exactly these symlinks and files.

        ``shared``: entries are hard links into the link store. Only for photo links (leaf
        folders): a threshold folder's ``001_5 -> ../<digest>`` is rarely repeated, and
        storing each once more would only grow the store.
        """
        if os.path.lexists(staging):
            remove_tree(staging)
        staging.mkdir()
        fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        place = self.placer(shared)
        try:
            for name, target in links.items():
                place(fd, name, target)
            for name, content in files.items():
                write_file_at(fd, name, content)
        finally:
            os.close(fd)

    def placer(self, shared: bool) -> Callable[[int, str, str], None]:
        """How to create a symlink entry: through the link store (photo links) or plainly."""
        return self.links.place if shared else symlink_at

    def write_object(
        self, digest: str, links: Mapping[str, str], files: Mapping[str, bytes], shared: bool
    ) -> None:
        """Build object ``digest`` in ``tmp/`` and publish it."""
        staging = self.tmp / f"obj-{digest}"
        self.write_object_at(staging, links, files, shared=shared)
        self.hooks.at(OBJECT_STAGED)
        self.publish(staging, digest)

    def publish(self, staging: Path, digest: str) -> None:
        """Rename a complete object from ``tmp/`` into ``objects/<digest>``."""
        try:
            os.rename(staging, self.objects / digest)
        except OSError as exc:  # already there (complete, by construction): keep that one
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            remove_tree(staging)
            return
        self.stamp(self.objects / digest, digest)

    def next_name(self, gen_digest: str, now: float) -> str:
        """The next generation's name: a sequence number above every one seen, ``now`` in ms."""
        seqs = [0]
        for entry in os.listdir(self.generations):
            match = GENERATION_RE.match(entry)
            if match:
                seqs.append(int(match[1]))
        current = self.current_name()
        if current is not None:
            seqs.append(int(GENERATION_RE.match(current)[1]))  # type: ignore[index]
        millis = max(0, int(now * 1000))
        return f"g{max(seqs) + 1:08d}-{millis}-{gen_digest}"

    def build_generation(
        self, name: str, links: Mapping[str, str], files: Mapping[str, bytes]
    ) -> int:
        """Build generation ``name`` in ``tmp/``, rename it into ``generations/``; entries."""
        staging = self.tmp / f"gen-{name}"
        staging.mkdir()
        fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for algo, target in links.items():
                os.symlink(target, algo, dir_fd=fd)
            for file_name, content in files.items():
                write_file_at(fd, file_name, content)
        finally:
            os.close(fd)
        os.rename(staging, self.generations / name)
        self.stamp(self.generations / name, _generation_key(name))
        self.hooks.at(GENERATION_BUILT)
        return len(links)

    def sync(self) -> None:
        _syncfs(self.root)

    def swap(self, name: str) -> None:
        """Point ``output`` at generation ``name``, atomically."""
        temporary = self.tmp / f"link-{name}"
        os.symlink(f"{self.root.name}/generations/{name}", temporary)
        self.hooks.at(SWAP_LINK_MADE)
        os.replace(temporary, self.output)

    # ------------------------------------------------------------------ damage

    def stamp(self, path: Path, key: str) -> None:
        """Mark ``path`` as made for ``key`` (see the module docstring). After a crash between
        a rename and its stamp, the folder is merely compared once more: never wrong."""
        now_ns = time.time_ns() // 1_000_000_000 * 1_000_000_000 + stamp_ns(key)
        os.utime(path, ns=(now_ns, now_ns), follow_symlinks=False)
        if self.stamps_hold and os.lstat(path).st_mtime_ns % 1_000_000_000 != stamp_ns(key):
            log.info("%s keeps no nanosecond mtimes: output folders are compared on reuse",
                     self.root)
            self.stamps_hold = False

    def stamped(self, path: Path | str, key: str) -> bool:
        """True when ``path`` is unchanged since it was made for ``key`` (one ``lstat``)."""
        if not self.stamps_hold:
            return False
        try:
            mtime_ns = os.lstat(path).st_mtime_ns
        except OSError:
            return False
        return mtime_ns % 1_000_000_000 == stamp_ns(key)

    def leaf_intact(self, digest: str, missing_ok: bool = False) -> bool:
        """True if leaf object ``digest`` holds exactly the links its digest names (or, with
        ``missing_ok``, does not exist).

        One ``lstat`` when its stamp holds; else its links are read and their set hash
        compared with the digest (a touched folder is intact, and restamped). A delta write
        knows the leaves it patches by digest only: a damaged one must be neither copied
        forward nor "repaired" against the few links of a patch.
        """
        path = os.path.join(self.objects, digest)
        try:
            mtime_ns = os.lstat(path).st_mtime_ns
        except FileNotFoundError:
            return missing_ok
        except OSError:
            return False
        if self.stamps_hold and mtime_ns % 1_000_000_000 == stamp_ns(digest):
            return True
        links: dict[str, str] = {}
        try:
            with os.scandir(path) as it:
                for item in it:
                    if not item.is_symlink():
                        return False  # not ours: a full write leaves it alone, not a copy
                    links[item.name] = os.readlink(item.path)
        except OSError:
            return False
        if leaf_digest(links).digest != digest:
            return False
        self.stamp(Path(path), digest)
        return True

    def repair_object(
        self, digest: str, links: Mapping[str, str], files: Mapping[str, bytes], shared: bool
    ) -> bool:
        """Make ``objects/<digest>`` hold exactly these entries again; True if it had to.

        Called for an object whose stamp is off. Fixing it in place only ever moves it back
        to the content its digest names, which every generation using it expects.
        """
        path = self.objects / digest
        wrong, missing_links, missing_files = self._differences(path, links, files)
        if wrong or missing_links or missing_files:
            log.warning("output folder %s was damaged (%d entries missing, %d wrong or extra); "
                        "repairing it", path, len(missing_links) + len(missing_files), len(wrong))
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            place = self.placer(shared)
            try:
                for name in wrong:
                    os.unlink(name, dir_fd=fd)
                for name in missing_links:
                    place(fd, name, links[name])
                for name in missing_files:
                    write_file_at(fd, name, files[name])
            finally:
                os.close(fd)
        self.stamp(path, digest)
        return bool(wrong or missing_links or missing_files)

    def generation_intact(
        self, name: str, links: Mapping[str, str], files: Mapping[str, bytes]
    ) -> bool:
        """True if generation ``name`` holds exactly these entries (restamped if it does)."""
        path = self.generations / name
        key = _generation_key(name)
        if self.stamped(path, key):
            return True
        try:
            wrong, missing_links, missing_files = self._differences(path, links, files)
        except FileNotFoundError:
            return False
        if wrong or missing_links or missing_files:
            log.warning("output generation %s was damaged; writing a new one", path)
            return False
        self.stamp(path, key)
        return True

    def _differences(
        self, path: Path, links: Mapping[str, str], files: Mapping[str, bytes]
    ) -> tuple[list[str], list[str], list[str]]:
        """Entries of ``path`` to remove, links and files to add so it holds exactly these.

        Our own files with other content are rewritten; a symlink with another target or
        name is removed; anything else someone put there (a photo copied in, a folder) is
        left alone: it is not ours to delete.
        """
        wrong: list[str] = []
        seen_links: set[str] = set()
        seen_files: set[str] = set()
        foreign: set[str] = set()
        with os.scandir(path) as it:
            for item in it:
                if item.is_symlink():
                    if links.get(item.name) == os.readlink(item.path):
                        seen_links.add(item.name)
                    else:
                        wrong.append(item.name)
                elif item.name in files and item.is_file(follow_symlinks=False):
                    with open(item.path, "rb") as f:
                        if f.read() == files[item.name]:
                            seen_files.add(item.name)
                        else:
                            wrong.append(item.name)
                else:
                    log.warning("leaving %s alone inside the output: not made by imgclusterd",
                                item.path)
                    foreign.add(item.name)
        missing_links = [n for n in links if n not in seen_links and n not in foreign]
        missing_files = [n for n in files if n not in seen_files and n not in foreign]
        return wrong, missing_links, missing_files

    def damaged(self, generation: str) -> bool:
        """True if ``generation`` or an object it reaches is missing or changed since made.

        One ``lstat`` per object (memoised walk of the DAG): cheap enough for a refresh
        that would otherwise write nothing.
        """
        if not self.stamped(self.generations / generation, _generation_key(generation)):
            return True
        objects = str(self.objects)  # (a string join per object: pathlib is 5x slower here)
        return any(
            not self.stamped(os.path.join(objects, d), d) for d in self.reachable(generation)
        )

    # ------------------------------------------------------------------ cleaning

    def remove_leftovers(self) -> None:
        """What an interrupted write left: temporaries, generations never swapped in."""
        for entry in os.listdir(self.tmp):
            if entry.startswith(_TMP_PREFIXES):
                remove_tree(self.tmp / entry)
            else:
                log.warning("leaving unknown entry %s alone", self.tmp / entry)
        current = self.current_name()
        current_seq = (
            int(GENERATION_RE.match(current)[1]) if current else None  # type: ignore[index]
        )
        for entry in os.listdir(self.generations):
            match = GENERATION_RE.match(entry)
            if match and current_seq is not None and int(match[1]) > current_seq:
                self.drop_generation(entry)

    def drop_generation(self, name: str) -> None:
        dead = self.tmp / f"dead-{name}"
        os.rename(self.generations / name, dead)
        remove_tree(dead)

    def generation_names(self) -> list[str]:
        """The generations on disk, oldest first."""
        return sorted(
            (e for e in os.listdir(self.generations) if GENERATION_RE.match(e)),
            key=lambda e: int(GENERATION_RE.match(e)[1]),  # type: ignore[index]
        )

    # ------------------------------------------------------------------ reading the DAG

    def reachable(self, generation: str) -> frozenset[str]:
        """Every object digest a generation reaches (memoised: generations never change)."""
        packed = self.reach.get(generation)
        if packed is not None:
            text = packed.hex()
            return frozenset(text[i : i + DIGEST_LEN] for i in range(0, len(text), DIGEST_LEN))
        found = frozenset(digest for digest, _, _ in self.walk(generation))
        self.reach[generation] = bytes.fromhex("".join(found))
        return found

    def remember_children(self, digest: str, children: Iterable[tuple[str, str]]) -> None:
        """Memoise object ``digest``'s (entry name, child digest) pairs, packed: the names
        in one string, the digests as 16 bytes each (entry names hold no ``/``)."""
        names: list[str] = []
        digests: list[str] = []
        for name, child in children:
            names.append(name)
            digests.append(child)
        self.children[digest] = ("/".join(names), bytes.fromhex("".join(digests)))

    def peek_level(self, digest: str) -> int:
        """Level of an object we know nothing about, from its first entry (GC ordering only)."""
        with os.scandir(self.objects / digest) as it:
            for item in it:
                if item.name.startswith("thr_") or not item.is_symlink():
                    return 0  # algorithm objects: threshold folders and extra files
                return 1 if os.readlink(item.path).startswith("../") else 2
        return 2

    def _read_children(self, directory: Path, prefix: str) -> list[tuple[str, str]]:
        children = []
        with os.scandir(directory) as it:
            for item in it:
                if item.is_symlink():
                    target = os.readlink(item.path)
                    digest = target[len(prefix) :] if target.startswith(prefix) else ""
                    if DIGEST_RE.match(digest):
                        children.append((item.name, digest))
        return children

    def walk(self, generation: str) -> Iterator[tuple[str, int, Role | None]]:
        """(digest, level, role) of every object a generation reaches."""
        try:
            algos = self._read_children(self.generations / generation, "../../objects/")
        except FileNotFoundError:
            return
        for algo, algo_digest in algos:
            yield algo_digest, 0, None
            for thr_name, thr_digest in self.object_children(algo_digest):
                match = THRESHOLD_RE.match(thr_name)
                threshold = int(match[1]) if match else 0
                yield thr_digest, 1, (algo, "t", threshold)
                for leaf_name, leaf in self.object_children(thr_digest):
                    cluster = CLUSTER_RE.match(leaf_name)
                    slot = f"c{int(cluster[1])}" if cluster else "u"
                    yield leaf, 2, (algo, slot, threshold)

    def object_children(self, digest: str) -> list[tuple[str, str]]:
        packed = self.children.get(digest)
        if packed is None:
            try:
                children = self._read_children(self.objects / digest, "../")
            except FileNotFoundError:
                return []
            self.remember_children(digest, children)
            return children
        names, digests = packed
        if not names:
            return []
        text = digests.hex()
        return [
            (name, text[i * DIGEST_LEN : (i + 1) * DIGEST_LEN])
            for i, name in enumerate(names.split("/"))
        ]
