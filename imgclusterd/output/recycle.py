"""The recycling pool and spares: a changed folder costs its difference, not its size.

Why a refresh is not O(images x thresholds). When one image is added, every threshold where it
is unclustered gets a new ``unclustered_<U>`` folder of ~U links, and a directory cannot be
copied, only rebuilt. Instead of building it from scratch, the writer takes the garbage object
that played the same role (same algorithm, same slot -- ``unclustered`` or cluster ``001``... --
nearest threshold) in a retired generation out of ``pool/``, and patches it in ``tmp/``: unlink
the few links that went, create the few that came, rename it into ``objects/`` under its new
digest. Cost: the difference, not the size (and the garbage never has to be deleted link by
link either). Pool entries that a write did not use are deleted at the end of it.

Only garbage is patched: an object enters ``pool/`` when no kept generation reaches it any more
(see ``retention``), and spares are fresh copies. A folder some kept generation uses is never
modified.

Spares. Retired copies only exist once old generations pass their grace period; a *spare* is
such a copy made ahead of time, while idle, of a folder the last write changed (it is likely to
change again), so the next refresh patches instead of rewriting (N=5,000: ~800,000 links
rewritten per added photo otherwise).
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imgclusterd.errors import OutputError

from .area import Area, Step, apply_steps, remove_tree
from .plan import DIGEST_LEN, PlannedObject, Role

__all__ = ["POOL_RE", "Pool", "PoolIndex", "Pooled", "copy_object", "pool_entry_name"]

log = logging.getLogger(__name__)

#: Objects at least this big are patched from a pool object instead of written from scratch.
RECYCLE_MIN = 16
_RECYCLE_CANDIDATES = 3
#: A leaf in the pool is found again by its first few member names (its identity, mostly).
_IDENTITY_NAMES = 2
POOL_RE = re.compile(rf"([0-9a-f]{{{DIGEST_LEN}}})~([a-z0-9]+)~(-?\d+)~(.+)\Z", re.S)


def copy_object(source: Path, staging: Path, skip: set[str] | frozenset[str] = frozenset()) -> int:
    """A new directory ``staging`` with the entries of object ``source`` (but ``skip``).

    Each entry is a hard link to the source's entry (a symlink inode: the same one the link
    store shares), so a copy costs one ``link()`` per entry and no new inode; a symlink is made
    where a hard link is refused. Returns the entries made.
    """
    if os.path.lexists(staging):
        remove_tree(staging)
    staging.mkdir()
    made = 0
    src = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    dst = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in os.listdir(src):
            if name in skip:
                continue
            try:
                os.link(name, name, src_dir_fd=src, dst_dir_fd=dst, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.EMLINK, errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
            made += 1
    finally:
        os.close(src)
        os.close(dst)
    return made


def pool_entry_name(digest: str, role: Role) -> str:
    """``<digest>~<slot>~<threshold>~<algo>``: a pool entry says what it was and where."""
    algo, slot, threshold = role
    return f"{digest}~{slot}~{threshold}~{algo}"


@dataclass(frozen=True)
class Pooled:
    digest: str
    role: Role
    entry: str  # file name in pool/


@dataclass
class PoolIndex:
    """What ``pool/`` holds, for one write: by kind of slot, and leaves by member name."""

    by_kind: dict[str, list[Pooled]] = field(default_factory=dict)
    # (algorithm, kind of slot, member name): an unclustered folder is never patched into a
    # cluster or back, or the greedy matching steals the one object each would patch cheaply.
    by_member: dict[tuple[str, str, str], list[Pooled]] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)  # entries taken by this write


@dataclass(frozen=True)
class Patch:
    """What recycling one object did."""

    added: int
    removed: int


class Pool:
    """``pool/`` of one area, and what we know of the objects that may land in it."""

    def __init__(self, area: Area, recycle_min: int = RECYCLE_MIN) -> None:
        self.area = area
        self.recycle_min = recycle_min
        # digest -> symlinks of leaf and threshold objects we planned (to diff pool objects)
        self.contents: dict[str, dict[str, str]] = {}
        # Objects the last write changed, to copy into the pool while idle (prepare_spares):
        # (digest, role, entries).
        self.spare_wanted: list[tuple[str, Role, int]] = []

    def recyclable(self, obj: PlannedObject) -> bool:
        return not obj.files and len(obj.links) >= self.recycle_min and obj.role is not None

    def index(self) -> PoolIndex:
        """Pool entries by kind of slot ("u", "c", "t"), and leaves by their first members."""
        index = PoolIndex()
        for entry in os.listdir(self.area.pool):
            match = POOL_RE.match(entry)
            if not match:
                continue
            pooled = Pooled(match[1], (match[4], match[2], int(match[3])), entry)
            index.by_kind.setdefault(match[2][0], []).append(pooled)
            known = self.contents.get(pooled.digest)
            if known and match[2] != "t":
                for name in heapq.nsmallest(_IDENTITY_NAMES, known):
                    key = (pooled.role[0], match[2][0], name)
                    index.by_member.setdefault(key, []).append(pooled)
        return index

    def entries(self, pooled: Pooled) -> dict[str, str] | None:
        """A pool object's symlinks, None if not recyclable. From memory when we planned it
        and its stamp says it is as made; read from disk otherwise (a damaged object patched
        from memory would carry its damage into the new one)."""
        known = self.contents.get(pooled.digest)
        if known is not None and self.area.stamped(self.area.pool / pooled.entry, pooled.digest):
            return known
        entries: dict[str, str] = {}
        try:
            with os.scandir(self.area.pool / pooled.entry) as it:
                for item in it:
                    if not item.is_symlink():
                        return None
                    entries[item.name] = os.readlink(item.path)
        except FileNotFoundError:
            return None
        return entries

    def recycle(self, digest: str, obj: PlannedObject, index: PoolIndex) -> Patch | None:
        """Patch the most similar pool object into ``digest``; None if none is worth it.

        Candidates: the few pool objects of the same kind of slot nearest in (algorithm, slot,
        threshold), and, for a cluster or unclustered folder, those that held the same first
        members (the same cluster, renumbered or one threshold over: a diff of a link or two).
        Each is compared entry by entry; the smallest difference wins, if patching it is
        cheaper than writing fresh and deleting it later.
        """
        assert obj.role is not None
        algo, slot, threshold = obj.role
        kind = [c for c in index.by_kind.get(slot[0], ()) if c.entry not in index.used]
        if not kind:
            return None
        shortlist = heapq.nsmallest(
            _RECYCLE_CANDIDATES,
            kind,
            key=lambda c: (c.role[0] != algo, c.role[1] != slot, abs(c.role[2] - threshold)),
        )
        if obj.level == 2:
            for name in heapq.nsmallest(_IDENTITY_NAMES, obj.links):
                shortlist += index.by_member.get((algo, slot[0], name), ())
        best: tuple[int, Pooled, list[str], list[str]] | None = None
        for pooled in dict.fromkeys(shortlist):
            if pooled.entry in index.used:
                continue
            old = self.entries(pooled)
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
            return None
        _, pooled, remove, add = best
        index.used.add(pooled.entry)
        staging = self.area.tmp / f"rec-{digest}"
        if os.path.lexists(staging):
            remove_tree(staging)
        os.rename(self.area.pool / pooled.entry, staging)
        # (its contents stay known: a spare's digest is still a live object; forget() drops
        # the digests that are gone)
        step: Step = (tuple(remove), {name: obj.links[name] for name in add}, {})
        apply_steps(staging, [step], self.area.placer(obj.level == 2))
        self.area.publish(staging, digest)
        return Patch(added=len(add), removed=len(remove))

    def purge(self, entries: set[str]) -> int:
        """Delete these pool entries (the ones a write found and did not use); return count."""
        deleted = 0
        for entry in entries:
            if POOL_RE.match(entry) and os.path.lexists(self.area.pool / entry):
                remove_tree(self.area.pool / entry)
                deleted += 1
        return deleted

    def forget(self, only: set[str] | None = None) -> set[str] | None:
        """Drop what we know of objects neither in ``objects/`` nor in ``pool/``; return the
        digests alive (None with ``only``: then only those digests are looked at)."""
        pooled = {entry[:DIGEST_LEN] for entry in os.listdir(self.area.pool)}
        if only is not None:
            for digest in only - pooled:
                if not os.path.isdir(os.path.join(self.area.objects, digest)):
                    self.contents.pop(digest, None)
                    self.area.children.pop(digest, None)
            return None
        alive = set(os.listdir(self.area.objects)) | pooled
        self.contents = {d: c for d, c in self.contents.items() if d in alive}
        return alive

    def prepare_spares(
        self,
        should_stop: Callable[[], bool],
        progress: Callable[[], None] | None = None,
        only: frozenset[str] | None = None,
    ) -> int:
        """Copy into ``pool/`` the folders the last write changed; return links written.

        Stops, keeping the rest for later, as soon as ``should_stop()`` says work is waiting.
        Biggest first: if the next event interrupts us, the costliest rewrites are covered.
        ``only``: just the folders of these kinds of slot ("t", "u", "c"); the rest stay
        wanted.
        """
        wanted, self.spare_wanted = self.spare_wanted, []
        if only is not None:
            self.spare_wanted = [item for item in wanted if item[1][1][0] not in only]
            wanted = [item for item in wanted if item[1][1][0] in only]
        if not wanted or not self.area.is_ours():
            self.spare_wanted += wanted
            return 0
        wanted.sort(key=lambda item: -item[2])
        links = 0
        try:
            with self.area.locked():
                present = set(os.listdir(self.area.pool))
                for number, (digest, role, _) in enumerate(wanted):
                    if should_stop():
                        self.spare_wanted += wanted[number:]
                        break
                    name = pool_entry_name(digest, role)
                    entries = self.contents.get(digest)
                    if name in present or not (self.area.objects / digest).is_dir():
                        continue
                    if entries is None and not self.area.stamped(
                        os.path.join(self.area.objects, digest), digest
                    ):
                        continue  # changed since made: a copy would carry the damage along
                    staging = self.area.tmp / f"spare-{digest}"
                    if entries is None:  # planned as a patch: copy it from its object
                        links += copy_object(self.area.objects / digest, staging)
                    else:
                        self.area.write_object_at(staging, entries, {}, shared=role[1] != "t")
                        links += len(entries)
                    os.rename(staging, self.area.pool / name)
                    self.area.stamp(self.area.pool / name, digest)
                    present.add(name)
                    if progress is not None:
                        progress()
        except OutputError:
            pass  # another writer holds the lock: it will not need our spares
        except OSError as exc:  # a full disk, say: spares are an optimisation only
            log.warning("could not prepare spare output folders: %s", exc)
            with contextlib.suppress(OSError):
                self.area.remove_leftovers()
        if links:
            log.debug("prepared spare folders: %d links", links)
        return links
