"""The browsable output tree: symlinks grouping near-duplicates, swapped in atomically.

What readers see (the compatibility contract with the one-shot script)::

    OUTPUT/<algo>/thr_<TTT>_unclustered_<U>/<CCC>_<size>/<stem>_<hexhash><ext>  -> /abs/image
    OUTPUT/<algo>/thr_<TTT>_unclustered_<U>/unclustered_<U>/<stem>_<hexhash><ext> -> /abs/image

How it is stored. ``OUTPUT`` is a symlink owned by the daemon; everything else lives in a hidden
*area* beside it, ``<parent>/.<name>.imgclusterd/``, which carries a marker file proving we made
it::

    MARKER                  "imgclusterd output area v1" -- nothing is deleted without it
    lock                    flock: one writer per output
    objects/<digest>/       immutable, content-addressed directories (a Merkle DAG):
                              leaf       cluster / unclustered folder: file symlinks, absolute
                              threshold  ``001_5 -> ../<leaf>``, ``unclustered_3 -> ../<leaf>``
                              algorithm  ``thr_000_unclustered_3 -> ../<threshold>`` (+ files)
    generations/g<seq>-<ms>-<gdigest>/   a real directory: ``<algo> -> ../../objects/<algo obj>``
    pool/<digest>~<slot>~<thr>~<algo>    garbage kept one write for recycling (see below)
    tmp/                    objects, generations and symlinks under construction
    links/<xx>/<key>        one symlink inode per (name, target); every entry of every object
                            is a hard link to one of these (see :mod:`imgclusterd.linkstore`)

An object's digest is a hash of exactly what is on disk in it (entry names and symlink targets or
file contents), so equal content is stored once: the same cluster at consecutive thresholds, and
everything that did not change since the last generation, is reused, not rewritten. Objects are
built in ``tmp/`` and renamed into ``objects/`` when complete, children before parents, so an
object in ``objects/`` is always complete; garbage collection removes parents before children.

A write: build the missing objects, build the generation directory, ``syncfs`` once (so a crash
can never leave ``OUTPUT`` naming something that is not on disk), rename a fresh temporary
symlink over ``OUTPUT`` (``os.replace``: readers see the old or the new tree, never none), then
collect garbage: generations beyond the newest ``keep_generations`` *and* superseded more than
``grace_seconds`` ago are removed, never the current one, and objects no kept generation reaches
are moved to ``pool/``.

Recycling (why a refresh is not O(images x thresholds)). When one image is added, every
threshold where it is unclustered gets a new ``unclustered_<U>`` folder of ~U links, and a
directory cannot be copied, only rebuilt. Instead of building it from scratch, the writer takes
the garbage object that played the same role (same algorithm, same slot -- ``unclustered`` or
cluster ``001``... -- nearest threshold) in a retired generation out of ``pool/``, and patches
it in ``tmp/``: unlink the few links that went, create the few that came, rename it into
``objects/`` under its new digest. Cost: the difference, not the size (and the garbage never
has to be deleted link by link either). Pool entries that a write did not use are deleted at the
end of it.

Link names inside one folder are unique: links are grouped by name; within a group, sorted by
target path, the first keeps ``<stem>_<hexhash><ext>`` and the k-th (k >= 2) becomes
``<stem>_<hexhash>_<k><ext>`` (skipping any name already taken). Every name is capped at 255
bytes by shortening the stem, keeping the hash and extension.

Readers: ``cd OUTPUT`` (or ``os.path.realpath(OUTPUT)``) pins a generation, which stays intact
for at least ``grace_seconds`` after it is replaced and while it is among the newest
``keep_generations``. A reader that re-resolves ``OUTPUT/...`` path strings across a swap sees
the new generation, whose ``thr_*_unclustered_<U>`` names may differ.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import heapq
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from imgclusterd.errors import OutputError
from imgclusterd.linkstore import LinkStore

__all__ = [
    "Link",
    "OutputTree",
    "OutputWriter",
    "ThresholdFolder",
    "WriteReport",
    "area_path",
    "folder_links",
    "link_name",
]

log = logging.getLogger(__name__)

NAME_MAX = 255
#: Objects at least this big are patched from a pool object instead of written from scratch.
RECYCLE_MIN = 16
_RECYCLE_CANDIDATES = 3
#: A leaf in the pool is found again by its first few member names (its identity, mostly).
_IDENTITY_NAMES = 2
_PROGRESS_EVERY = 0.5  # seconds between progress callbacks during a write
_SWEEP_LINKS_AFTER = 50_000  # new link-store entries between two sweeps of it

_MARKER = "MARKER"
_MARKER_TEXT = "imgclusterd output area v1\n"
_DIGEST_LEN = 32
_DIGEST_RE = re.compile(r"[0-9a-f]{32}\Z")
_GEN_RE = re.compile(r"g(\d{8,})-(\d+)-([0-9a-f]{16})\Z")
_POOL_RE = re.compile(r"([0-9a-f]{32})~([a-z0-9]+)~(-?\d+)~(.+)\Z", re.S)
_TMP_PREFIXES = ("obj-", "rec-", "gen-", "link-", "dead-", "spare-")
_THR_RE = re.compile(r"thr_(-?\d+)_unclustered_\d+\Z")
_CLUSTER_RE = re.compile(r"(\d+)_\d+\Z")



class Link(NamedTuple):
    """One image in one folder: ``name`` (``<stem>_<hexhash><ext>``) -> absolute ``target``.

    A named tuple rather than a dataclass: folders are compared and hashed as tuples of
    thousands of links on every refresh, and tuple hashing stays in C.
    """

    name: str
    target: str


@dataclass(frozen=True)
class ThresholdFolder:
    """One threshold of a sweep: clusters in output order (largest first) and the unclustered."""

    threshold: int
    clusters: Sequence[Sequence[Link]]
    unclustered: Sequence[Link]


#: algorithm name -> its sweep, in threshold order.
OutputTree = Mapping[str, Sequence[ThresholdFolder]]


@dataclass
class WriteReport:
    """What one :meth:`OutputWriter.write` did. ``links_written`` counts every symlink created."""

    generation: str
    objects_written: int
    objects_reused: int
    links_written: int
    seconds: float
    sync_seconds: float
    objects_recycled: int = 0  # of objects_written: patched from a pool object
    links_removed: int = 0  # unlinked while patching recycled objects
    objects_deleted: int = 0  # by garbage collection (pool purge and unpoolable garbage)
    gc_seconds: float = 0.0
    swapped: bool = True  # False when the tree equalled the current generation


def area_path(output: Path) -> Path:
    """The hidden area beside ``output`` that holds generations and objects."""
    return output.parent / f".{output.name}.imgclusterd"


def _truncate(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose file-system encoding fits ``limit`` bytes."""
    if len(os.fsencode(text)) <= limit:
        return text
    used = 0
    for i, char in enumerate(text):
        used += len(os.fsencode(char))
        if used > limit:
            return text[:i]
    return text


def _cap(stem: str, tail: str) -> str:
    """``stem + tail`` in at most 255 bytes: shorten the stem, and the tail only if it must."""
    name = stem + tail
    if len(os.fsencode(name)) <= NAME_MAX:
        return name
    budget = NAME_MAX - len(os.fsencode(tail))
    if budget < 0:  # an absurd extension: keep what fits, from the start of the tail
        return _truncate(tail, NAME_MAX)
    return _truncate(stem, budget) + tail


def link_name(stem: str, hexhash: str, ext: str) -> str:
    """The contract's link name ``<stem>_<hexhash><ext>``, capped at 255 bytes (stem shortened)."""
    return _cap(stem, f"_{hexhash}{ext}")


def _numbered(name: str, k: int) -> str:
    """``<stem>_<hexhash><ext>`` -> ``<stem>_<hexhash>_<k><ext>`` (still within 255 bytes)."""
    base, ext = os.path.splitext(name)
    stem, sep, hexhash = base.rpartition("_")
    if not sep:
        stem, hexhash = "", base
        return _cap(hexhash, f"_{k}{ext}")
    return _cap(stem, f"_{hexhash}_{k}{ext}")


def _check_name(name: str, what: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"{what} {name!r} is not a valid file name")
    if len(os.fsencode(name)) > NAME_MAX:
        raise ValueError(f"{what} {name!r} is longer than {NAME_MAX} bytes")


def folder_links(links: Sequence[Link]) -> dict[str, str]:
    """The entries of one folder, name -> target, with names made unique (see module doc)."""
    entries = dict(links)
    _validate(entries)
    if len(entries) == len(links):
        return entries
    taken = set(entries)
    entries = {}
    for link in sorted(links):  # by name, then target
        name = link.name
        if name in entries:
            k = 2
            while (name := _numbered(link.name, k)) in taken:
                k += 1
            taken.add(name)
        entries[name] = link.target
    return entries


# Names and targets already found valid: a refresh re-checks only what is new (set difference
# in C), not the ~N x thresholds entries of every changed folder. Cleared when large.
_CHECKED_NAMES: set[str] = set()
_CHECKED_TARGETS: set[str] = set()
_CHECKED_MAX = 2_000_000


def _validate(entries: Mapping[str, str]) -> None:
    names = entries.keys() - _CHECKED_NAMES
    targets = set(entries.values()) - _CHECKED_TARGETS
    for name in names:
        _check_name(name, "link name")
    for target in targets:
        if not os.path.isabs(target) or "\0" in target:
            raise ValueError(f"link target {target!r} is not an absolute path")
    if len(_CHECKED_NAMES) + len(names) > _CHECKED_MAX:
        _CHECKED_NAMES.clear()
        _CHECKED_TARGETS.clear()
    _CHECKED_NAMES.update(names)
    _CHECKED_TARGETS.update(targets)


def _digest(links: Mapping[str, str], files: Mapping[str, bytes] | None = None) -> str:
    """Content address of a directory holding exactly these symlinks and files."""
    parts = ["imgclusterd-object-1"]
    for name in sorted(links):
        parts += ("L", name, links[name])
    for name in sorted(files or {}):
        parts += ("F", name, hashlib.sha256(files[name]).hexdigest())  # type: ignore[index]
    return hashlib.sha256(os.fsencode("\0".join(parts))).hexdigest()[:_DIGEST_LEN]


# A role says where an object sat in a tree, to find a similar one among the garbage:
# (algorithm, slot, threshold) with slot "u" (unclustered), "c<n>" (cluster n) or "t" (threshold).
_Role = tuple[str, str, int]


@dataclass
class _Object:
    links: dict[str, str]
    level: int  # 0 algorithm, 1 threshold, 2 leaf
    role: _Role | None
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class _Pooled:
    digest: str
    role: _Role
    entry: str  # file name in pool/


@dataclass
class _PoolIndex:
    """What ``pool/`` holds, for one write: by kind of slot, and leaves by member name."""

    by_kind: dict[str, list[_Pooled]] = field(default_factory=dict)
    # (algorithm, kind of slot, member name): an unclustered folder is never patched into a
    # cluster or back, or the greedy matching steals the one object each would patch cheaply.
    by_member: dict[tuple[str, str, str], list[_Pooled]] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)  # entries taken by this write


@dataclass
class _Counts:
    written: int = 0
    reused: int = 0
    recycled: int = 0
    links: int = 0
    removed: int = 0
    deleted: int = 0


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


def _remove(path: Path) -> None:
    """Remove a file, symlink or directory tree of ours, never following symlinks."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class OutputWriter:
    """Writes generations of the output tree at ``output`` (see the module docstring)."""

    def __init__(
        self,
        output: Path,
        keep_generations: int = 2,
        grace_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if keep_generations < 2:
            raise ValueError("keep_generations must be at least 2 (the current and the previous)")
        self.output = Path(os.path.abspath(output))
        self.area = area_path(self.output)
        self.keep_generations = keep_generations
        self.grace_seconds = grace_seconds
        self.clock = clock
        self._objects = self.area / "objects"
        self._generations = self.area / "generations"
        self._pool = self.area / "pool"
        self._tmp = self.area / "tmp"
        # Every symlink entry is a hard link to one inode per (name, target): see linkstore.
        self._links = LinkStore(self.area / "links")
        # Objects are immutable, so what we learn about one stays true: digest -> children
        # (algorithm and threshold objects), and the last write's folders -> (digest, entries).
        self._children: dict[str, list[tuple[str, str]]] = {}
        self._leaf_memo: dict[tuple[Link, ...], tuple[str, dict[str, str]]] = {}
        # digest -> symlinks of leaf and threshold objects we planned (to diff pool objects)
        self._contents: dict[str, dict[str, str]] = {}
        self._reach: dict[str, frozenset[str]] = {}  # generation -> digests (see _reachable)
        # Objects the last write changed, to copy into the pool while idle (prepare_spares).
        self._spare_wanted: list[tuple[str, _Role]] = []

    # ------------------------------------------------------------------ ownership

    def _foreign(self, path: Path, what: str) -> OutputError:
        return OutputError(
            f"{path} already exists and was not made by imgclusterd ({what}); imgclusterd "
            f"will not delete or write into it: move it away, or choose another --output"
        )

    def _area_is_ours(self) -> bool:
        if self.area.is_symlink() or not self.area.is_dir():
            return False
        try:
            with open(self.area / _MARKER, encoding="utf-8", errors="replace") as marker:
                return marker.read(len(_MARKER_TEXT)) == _MARKER_TEXT
        except OSError:
            return False

    def check(self) -> None:
        """Raise :class:`OutputError` if ``output`` or its area exists and is not ours."""
        if os.path.lexists(self.area) and not self._area_is_ours():
            raise self._foreign(self.area, "no imgclusterd marker in it")
        if not os.path.lexists(self.output):
            return
        if not self.output.is_symlink():
            what = "a directory" if self.output.is_dir() else "not a symlink"
            raise self._foreign(self.output, what)
        if self._current_name() is None or not self._area_is_ours():
            target = os.readlink(self.output)
            raise self._foreign(self.output, f"a symlink to {target!r}, outside {self.area}")

    def _current_name(self) -> str | None:
        """The generation ``output`` names, if it is a symlink of ours (not checked on disk)."""
        try:
            target = os.readlink(self.output)
        except OSError:
            return None
        prefix = f"{self.area.name}/generations/"
        name = target[len(prefix) :] if target.startswith(prefix) else ""
        return name if _GEN_RE.match(name) else None

    def current_generation(self) -> str | None:
        """The name of the generation ``output`` points at, or None if there is none of ours."""
        name = self._current_name()
        if name is None or not self._area_is_ours():
            return None
        return name

    def _ensure_area(self) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(self.area):
            # Marker first, in a private temporary name, so the area is never without it.
            staging = self.output.parent / f".{self.output.name}.imgclusterd.{os.getpid()}.new"
            if os.path.lexists(staging):
                shutil.rmtree(staging)
            staging.mkdir()
            (staging / _MARKER).write_text(
                _MARKER_TEXT + f"output: {os.fsencode(self.output)!r}\n", encoding="utf-8"
            )
            try:
                os.rename(staging, self.area)
            except OSError:
                shutil.rmtree(staging)
                raise
        for sub in (self._objects, self._generations, self._pool, self._tmp):
            sub.mkdir(exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.area / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputError(
                    f"another imgclusterd process is writing {self.output}; "
                    f"only one writer per output"
                ) from None
            self._links.open()
            try:
                yield
            finally:
                self._links.close()
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ public

    def write(
        self,
        tree: OutputTree,
        extra_files: Mapping[str, bytes] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> WriteReport:
        """Build a generation for ``tree`` (reusing objects), flush, swap it in, collect.

        ``progress(done, total)`` is called about twice a second while objects are built: a
        first write of a big tree takes minutes, and the daemon's watchdog pings and status
        come from that callback meanwhile.
        """
        started = time.perf_counter()
        self.check()
        objects, generation_links, top_files = self._plan(tree, extra_files or {}, progress)
        gen_digest = _digest(generation_links, top_files)[:16]
        counts = _Counts()
        sync_seconds = gc_seconds = 0.0
        pool_before: set[str] = set()
        try:
            self._ensure_area()
            with self._locked():
                self._remove_leftovers()
                current = self._current_name()
                pool_before = set(os.listdir(self._pool))
                if (
                    current is not None
                    and current.endswith(gen_digest)
                    and (self._generations / current).is_dir()
                ):
                    name, swapped = current, False
                    counts.reused = len(objects)
                else:
                    swapped = True
                    self._spare_wanted = []
                    self._build_objects(objects, counts, progress)
                    name = self._next_name(gen_digest)
                    counts.links += self._build_generation(name, generation_links, top_files)
                    sync_started = time.perf_counter()
                    _syncfs(self.area)
                    sync_seconds = time.perf_counter() - sync_started
                    self._swap(name)
                gc_started = time.perf_counter()
                try:
                    counts.deleted += self._collect(purge=pool_before)
                except OSError as exc:  # the new generation is current: only tidying failed
                    log.warning("could not collect old output generations: %s", exc)
                gc_seconds = time.perf_counter() - gc_started
        except OSError as exc:
            # Anything before the swap (area, lock, objects, generation, sync, swap itself):
            # OUTPUT still names the previous, complete generation.
            raise self._build_failed(exc, pool_before) from exc
        report = WriteReport(
            generation=name,
            objects_written=counts.written,
            objects_reused=counts.reused,
            links_written=counts.links,
            seconds=time.perf_counter() - started,
            sync_seconds=sync_seconds,
            objects_recycled=counts.recycled,
            links_removed=counts.removed,
            objects_deleted=counts.deleted,
            gc_seconds=gc_seconds,
            swapped=swapped,
        )
        log.info(
            "output generation %s: %d objects written (%d recycled), %d reused, %d links, "
            "%.2fs (sync %.2fs, gc %.2fs)",
            name, report.objects_written, report.objects_recycled, report.objects_reused,
            report.links_written, report.seconds, sync_seconds, gc_seconds,
        )  # fmt: skip
        return report

    def _build_failed(self, exc: OSError, pool: set[str]) -> OutputError:
        """Undo what a failed build left (best effort) and say why; ``OUTPUT`` is untouched."""
        # Free what we can, so the next attempt has room: the half-built temporaries and the
        # recycling pool (garbage by definition). Published objects stay: they are complete
        # and the next write reuses them.
        with contextlib.suppress(OSError):
            self._remove_leftovers()
        for entry in pool:
            with contextlib.suppress(OSError):
                _remove(self._pool / entry)
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            reason += " (disk or inode quota full)"
        return OutputError(
            f"could not write a new output generation in {self.area}: {reason}; "
            "the previous output, if any, stays as it was"
        )

    def prepare_spares(
        self, should_stop: Callable[[], bool], progress: Callable[[], None] | None = None
    ) -> int:
        """While idle: copy into ``pool/`` the folders the last write changed; return links.

        Why: with one photo added, every threshold's unclustered folder (or the cluster that
        took it) changes, and a changed folder must be a new directory -- readers may still be
        inside the old one. Patching a retired copy costs the difference, but retired copies
        only exist once old generations pass their grace period. A spare made in idle time
        is such a copy ahead of time, so the next refresh patches instead of rewriting
        (N=5,000: ~800,000 links rewritten per added photo otherwise). Stops, keeping the
        rest for later, as soon as ``should_stop()`` says work is waiting.
        """
        wanted, self._spare_wanted = self._spare_wanted, []
        if not wanted or not self._area_is_ours():
            return 0
        # Biggest first: if the next event interrupts us, the costliest rewrites are covered.
        wanted.sort(key=lambda item: -len(self._contents.get(item[0], ())))
        links = 0
        try:
            with self._locked():
                present = set(os.listdir(self._pool))
                for index, (digest, role) in enumerate(wanted):
                    if should_stop():
                        self._spare_wanted = wanted[index:]
                        break
                    algo, slot, threshold = role
                    name = f"{digest}~{slot}~{threshold}~{algo}"
                    entries = self._contents.get(digest)
                    if entries is None or name in present or not (self._objects / digest).is_dir():
                        continue
                    staging = self._tmp / f"spare-{digest}"
                    self._write_object_at(staging, entries, {}, shared=role[1] != "t")
                    os.rename(staging, self._pool / name)
                    present.add(name)
                    links += len(entries)
                    if progress is not None:
                        progress()
        except OutputError:
            pass  # another writer holds the lock: it will not need our spares
        except OSError as exc:  # a full disk, say: spares are an optimisation only
            log.warning("could not prepare spare output folders: %s", exc)
            with contextlib.suppress(OSError):
                self._remove_leftovers()
        if links:
            log.debug("prepared spare folders: %d links", links)
        return links

    def cleanup(self) -> None:
        """Remove interrupted leftovers and generations beyond keep/grace; safe at start-up."""
        self.check()
        if not os.path.lexists(self.area):
            return
        try:
            for sub in (self._objects, self._generations, self._pool, self._tmp):
                sub.mkdir(exist_ok=True)
            with self._locked():
                self._remove_leftovers()
                self._collect(purge=set(), sweep_links=True)
        except OSError as exc:  # tidying only: the current output is complete either way
            log.warning("could not clean up %s: %s", self.area, exc)

    # ------------------------------------------------------------------ planning (pure)

    def _plan(
        self,
        tree: OutputTree,
        extra_files: Mapping[str, bytes],
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[dict[str, _Object], dict[str, str], dict[str, bytes]]:
        """Every object the tree needs (children first), the generation's links and files.

        Hashing millions of link names takes seconds at tens of thousands of photos, so this
        reports ``progress(0, 0)`` too (the daemon's watchdog pings ride on it).
        """
        reported = time.monotonic()
        algo_files: dict[str, dict[str, bytes]] = {}
        top_files: dict[str, bytes] = {}
        for path, content in extra_files.items():
            parts = path.split("/")
            for part in parts:
                _check_name(part, "extra file path component")
            if len(parts) == 1:
                top_files[parts[0]] = bytes(content)
            elif len(parts) == 2:
                algo_files.setdefault(parts[0], {})[parts[1]] = bytes(content)
            else:
                raise ValueError(f"extra file {path!r}: only <name> or <algo>/<name> are supported")
        objects: dict[str, _Object] = {}
        memo: dict[tuple[Link, ...], tuple[str, dict[str, str]]] = {}
        old_memo = self._leaf_memo
        generation_links: dict[str, str] = {}

        def leaf(links: Sequence[Link], role: _Role) -> str:
            key = tuple(links)
            found = memo.get(key) or old_memo.get(key)
            if found is None:
                entries = folder_links(key)
                found = (_digest(entries), entries)
            memo[key] = found
            digest, entries = found
            if digest not in objects:
                objects[digest] = _Object(entries, 2, role)
            return digest

        for algo in sorted(set(tree) | set(algo_files)):
            _check_name(algo, "algorithm name")
            if algo in top_files:
                raise ValueError(f"extra file {algo!r} has the name of an algorithm folder")
            algo_links: dict[str, str] = {}
            thresholds: set[int] = set()
            for folder in tree.get(algo, ()):
                if progress is not None and time.monotonic() - reported >= _PROGRESS_EVERY:
                    reported = time.monotonic()
                    progress(0, 0)
                t = folder.threshold
                entries: dict[str, str] = {}
                for i, cluster in enumerate(folder.clusters, 1):
                    digest = leaf(cluster, (algo, f"c{i}", t))
                    entries[f"{str(i).zfill(3)}_{len(cluster)}"] = "../" + digest
                unclustered = len(folder.unclustered)
                digest = leaf(folder.unclustered, (algo, "u", t))
                entries[f"unclustered_{unclustered}"] = "../" + digest
                digest = _digest(entries)
                objects.setdefault(digest, _Object(entries, 1, (algo, "t", t)))
                if t in thresholds:
                    raise ValueError(f"{algo}: threshold {t} appears twice in the sweep")
                thresholds.add(t)
                algo_links[f"thr_{str(t).zfill(3)}_unclustered_{unclustered}"] = "../" + digest
            files = algo_files.get(algo, {})
            for name in files:
                if name in algo_links:
                    raise ValueError(f"extra file {algo}/{name} has the name of a threshold folder")
            digest = _digest(algo_links, files)
            objects.setdefault(digest, _Object(algo_links, 0, None, files))
            generation_links[algo] = "../../objects/" + digest
        self._leaf_memo = memo
        return objects, generation_links, top_files

    # ------------------------------------------------------------------ building

    def _build_objects(
        self,
        objects: dict[str, _Object],
        counts: _Counts,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        existing = set(os.listdir(self._objects))
        pool = self._pool_index()
        total = len(objects)
        reported = time.monotonic()
        # children were planned before their parents
        for done, (digest, obj) in enumerate(objects.items()):
            if progress is not None and time.monotonic() - reported >= _PROGRESS_EVERY:
                reported = time.monotonic()
                progress(done, total)
            if obj.level > 0:
                self._contents[digest] = obj.links
            if obj.level < 2:
                self._children[digest] = [
                    (name, target.rsplit("/", 1)[1]) for name, target in obj.links.items()
                ]
            if digest in existing:
                counts.reused += 1
                continue
            recyclable = not obj.files and len(obj.links) >= RECYCLE_MIN and obj.role is not None
            if recyclable and obj.role is not None:
                # Written now, so likely to change again: a spare copy makes that a patch.
                self._spare_wanted.append((digest, obj.role))
            if recyclable and self._recycle(digest, obj, pool, counts):
                continue
            self._write_object(digest, obj)
            counts.written += 1
            counts.links += len(obj.links)

    def _write_object(self, digest: str, obj: _Object) -> None:
        staging = self._tmp / f"obj-{digest}"
        self._write_object_at(staging, obj.links, obj.files, shared=obj.level == 2)
        self._publish(staging, digest)

    def _write_object_at(
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
            _remove(staging)
        staging.mkdir()
        fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        place = self._links.place if shared else _symlink
        try:
            for name, target in links.items():
                place(fd, name, target)
            for name, content in files.items():
                _write_file(fd, name, content)
        finally:
            os.close(fd)

    def _publish(self, staging: Path, digest: str) -> None:
        try:
            os.rename(staging, self._objects / digest)
        except OSError as exc:  # already there (complete, by construction): keep that one
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            _remove(staging)

    def _pool_index(self) -> _PoolIndex:
        """Pool entries by kind of slot ("u", "c", "t"), and leaves by their first members."""
        index = _PoolIndex()
        for entry in os.listdir(self._pool):
            match = _POOL_RE.match(entry)
            if not match:
                continue
            pooled = _Pooled(match[1], (match[4], match[2], int(match[3])), entry)
            index.by_kind.setdefault(match[2][0], []).append(pooled)
            known = self._contents.get(pooled.digest)
            if known and match[2] != "t":
                for name in heapq.nsmallest(_IDENTITY_NAMES, known):
                    key = (pooled.role[0], match[2][0], name)
                    index.by_member.setdefault(key, []).append(pooled)
        return index

    def _pool_entries(self, pooled: _Pooled) -> dict[str, str] | None:
        """A pool object's symlinks (from memory when we planned it), None if not recyclable."""
        known = self._contents.get(pooled.digest)
        if known is not None:
            return known
        entries: dict[str, str] = {}
        try:
            with os.scandir(self._pool / pooled.entry) as it:
                for item in it:
                    if not item.is_symlink():
                        return None
                    entries[item.name] = os.readlink(item.path)
        except FileNotFoundError:
            return None
        return entries

    def _recycle(self, digest: str, obj: _Object, pool: _PoolIndex, counts: _Counts) -> bool:
        """Patch the most similar pool object into ``digest``; False if none is worth it.

        Candidates: the few pool objects of the same kind of slot nearest in (algorithm, slot,
        threshold), and, for a cluster or unclustered folder, those that held the same first
        members (the same cluster, renumbered or one threshold over: a diff of a link or two).
        Each is compared entry by entry; the smallest difference wins, if patching it is
        cheaper than writing fresh and deleting it later.
        """
        assert obj.role is not None
        algo, slot, threshold = obj.role
        kind = [c for c in pool.by_kind.get(slot[0], ()) if c.entry not in pool.used]
        if not kind:
            return False
        shortlist = heapq.nsmallest(
            _RECYCLE_CANDIDATES,
            kind,
            key=lambda c: (c.role[0] != algo, c.role[1] != slot, abs(c.role[2] - threshold)),
        )
        if obj.level == 2:
            for name in heapq.nsmallest(_IDENTITY_NAMES, obj.links):
                shortlist += pool.by_member.get((algo, slot[0], name), ())
        best: tuple[int, _Pooled, list[str], list[str]] | None = None
        for pooled in dict.fromkeys(shortlist):
            if pooled.entry in pool.used:
                continue
            old = self._pool_entries(pooled)
            if old is None:
                continue
            lower_bound = abs(len(old) - len(obj.links))
            if best is not None and lower_bound >= best[0]:
                continue
            remove = [name for name, target in old.items() if obj.links.get(name) != target]
            add = [name for name, target in obj.links.items() if old.get(name) != target]
            cost = len(remove) + len(add)
            if cost < len(obj.links) + len(old) and (best is None or cost < best[0]):
                best = (cost, pooled, remove, add)
        if best is None:
            return False
        _, pooled, remove, add = best
        pool.used.add(pooled.entry)
        staging = self._tmp / f"rec-{digest}"
        if os.path.lexists(staging):
            _remove(staging)
        os.rename(self._pool / pooled.entry, staging)
        # (its contents stay known: a spare's digest is still a live object; _collect forgets
        # the digests that are gone)
        fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        place = self._links.place if obj.level == 2 else _symlink
        try:
            for name in remove:
                os.unlink(name, dir_fd=fd)
            for name in add:
                place(fd, name, obj.links[name])
        finally:
            os.close(fd)
        self._publish(staging, digest)
        counts.written += 1
        counts.recycled += 1
        counts.links += len(add)
        counts.removed += len(remove)
        return True

    def _next_name(self, gen_digest: str) -> str:
        seqs = [0]
        for entry in os.listdir(self._generations):
            match = _GEN_RE.match(entry)
            if match:
                seqs.append(int(match[1]))
        current = self._current_name()
        if current is not None:
            seqs.append(int(_GEN_RE.match(current)[1]))  # type: ignore[index]
        millis = max(0, int(self.clock() * 1000))
        return f"g{max(seqs) + 1:08d}-{millis}-{gen_digest}"

    def _build_generation(
        self, name: str, links: Mapping[str, str], files: Mapping[str, bytes]
    ) -> int:
        staging = self._tmp / f"gen-{name}"
        staging.mkdir()
        fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for algo, target in links.items():
                os.symlink(target, algo, dir_fd=fd)
            for file_name, content in files.items():
                _write_file(fd, file_name, content)
        finally:
            os.close(fd)
        os.rename(staging, self._generations / name)
        return len(links)

    def _swap(self, name: str) -> None:
        temporary = self._tmp / f"link-{name}"
        os.symlink(f"{self.area.name}/generations/{name}", temporary)
        os.replace(temporary, self.output)

    # ------------------------------------------------------------------ cleaning

    def _remove_leftovers(self) -> None:
        """What an interrupted write left: temporaries, generations never swapped in."""
        for entry in os.listdir(self._tmp):
            if entry.startswith(_TMP_PREFIXES):
                _remove(self._tmp / entry)
            else:
                log.warning("leaving unknown entry %s alone", self._tmp / entry)
        current = self._current_name()
        current_seq = int(_GEN_RE.match(current)[1]) if current else None  # type: ignore[index]
        for entry in os.listdir(self._generations):
            match = _GEN_RE.match(entry)
            if match and current_seq is not None and int(match[1]) > current_seq:
                self._drop_generation(entry)

    def _drop_generation(self, name: str) -> None:
        dead = self._tmp / f"dead-{name}"
        os.rename(self._generations / name, dead)
        _remove(dead)

    def _kept(self, names: list[str]) -> tuple[list[str], list[str]]:
        """Split generations (oldest first) into kept and dropped by keep-N and grace."""
        current = self._current_name()
        now_ms = self.clock() * 1000
        kept: list[str] = []
        dropped: list[str] = []
        for i, name in enumerate(names):
            newer = names[i + 1] if i + 1 < len(names) else None
            superseded_ms = int(_GEN_RE.match(newer)[2]) if newer else None  # type: ignore[index]
            keep = (
                name == current
                or current is None
                or i >= len(names) - self.keep_generations
                or superseded_ms is None
                or now_ms - superseded_ms < self.grace_seconds * 1000
            )
            (kept if keep else dropped).append(name)
        return kept, dropped

    def _collect(self, purge: set[str], sweep_links: bool = False) -> int:
        """Drop generations, pool what no kept generation reaches, purge ``purge``'s leftovers."""
        names = sorted(
            (e for e in os.listdir(self._generations) if _GEN_RE.match(e)),
            key=lambda e: int(_GEN_RE.match(e)[1]),  # type: ignore[index]
        )
        kept, dropped = self._kept(names)
        roles: dict[str, tuple[int, _Role | None]] = {}
        for name in dropped:
            for digest, level, role in self._walk(name):
                roles.setdefault(digest, (level, role))
        for name in dropped:
            self._drop_generation(name)
        reachable: set[str] = set()
        for name in kept:
            reachable |= self._reachable(name)
        self._reach = {name: self._reach[name] for name in kept if name in self._reach}
        deleted = 0
        garbage = [d for d in os.listdir(self._objects) if _DIGEST_RE.match(d)]
        garbage = [d for d in garbage if d not in reachable]
        levels = {d: roles[d][0] if d in roles else self._peek_level(d) for d in garbage}
        for digest in sorted(garbage, key=lambda d: levels[d]):  # parents before children
            level, role = roles.get(digest, (levels[digest], None))
            if role is not None and level > 0:
                algo, slot, threshold = role
                pooled = self._pool / f"{digest}~{slot}~{threshold}~{algo}"
                os.rename(self._objects / digest, pooled)
            else:
                dead = self._tmp / f"dead-{digest}"
                os.rename(self._objects / digest, dead)
                _remove(dead)
                deleted += 1
            self._children.pop(digest, None)
        for entry in purge:
            if _POOL_RE.match(entry) and os.path.lexists(self._pool / entry):
                _remove(self._pool / entry)
                deleted += 1
        alive = set(os.listdir(self._objects))
        alive.update(entry[:_DIGEST_LEN] for entry in os.listdir(self._pool))
        self._contents = {d: c for d, c in self._contents.items() if d in alive}
        self._children = {d: c for d, c in self._children.items() if d in alive}
        if sweep_links or self._links.added >= _SWEEP_LINKS_AFTER:
            # Photos moved or deleted leave link entries nobody uses; reclaim them now and
            # then (a full sweep lstat()s every entry: ~1 per photo per algorithm).
            deleted += self._links.sweep()
        return deleted

    def _reachable(self, generation: str) -> frozenset[str]:
        """Every object digest a generation reaches (memoised: generations never change)."""
        found = self._reach.get(generation)
        if found is None:
            found = frozenset(digest for digest, _, _ in self._walk(generation))
            self._reach[generation] = found
        return found

    def _peek_level(self, digest: str) -> int:
        """Level of an object we know nothing about, from its first entry (GC ordering only)."""
        with os.scandir(self._objects / digest) as it:
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
                    if _DIGEST_RE.match(digest):
                        children.append((item.name, digest))
        return children

    def _walk(self, generation: str) -> Iterator[tuple[str, int, _Role | None]]:
        """(digest, level, role) of every object a generation reaches."""
        try:
            algos = self._read_children(self._generations / generation, "../../objects/")
        except FileNotFoundError:
            return
        for algo, algo_digest in algos:
            yield algo_digest, 0, None
            for thr_name, thr_digest in self._object_children(algo_digest):
                match = _THR_RE.match(thr_name)
                threshold = int(match[1]) if match else 0
                yield thr_digest, 1, (algo, "t", threshold)
                for leaf_name, leaf_digest in self._object_children(thr_digest):
                    cluster = _CLUSTER_RE.match(leaf_name)
                    slot = f"c{int(cluster[1])}" if cluster else "u"
                    yield leaf_digest, 2, (algo, slot, threshold)

    def _object_children(self, digest: str) -> list[tuple[str, str]]:
        children = self._children.get(digest)
        if children is None:
            try:
                children = self._read_children(self._objects / digest, "../")
            except FileNotFoundError:
                return []
            self._children[digest] = children
        return children


def _symlink(dir_fd: int, name: str, target: str) -> None:
    os.symlink(target, name, dir_fd=dir_fd)


def _write_file(dir_fd: int, name: str, content: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
