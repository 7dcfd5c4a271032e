"""The writer facade: one :meth:`OutputWriter.write` per refresh, spares while idle.

A write: plan the tree (``plan``), build the objects that are not on disk yet -- patched from a
pool object where one is similar enough (``recycle``), written fresh otherwise -- build the
generation directory, flush, swap ``OUTPUT`` (``area``), collect garbage (``retention``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from imgclusterd.errors import OutputError

from .area import Area, area_path, remove_tree
from .hooks import WriteHooks, default_hooks
from .plan import LeafMemo, OutputTree, PlannedObject, plan_tree
from .recycle import RECYCLE_MIN, Pool
from .retention import collect

__all__ = ["OutputWriter", "WriteReport"]

log = logging.getLogger(__name__)

_PROGRESS_EVERY = 0.5  # seconds between progress callbacks during a write


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
    objects_repaired: int = 0  # of objects_reused: found damaged and repaired in place


@dataclass
class _Counts:
    written: int = 0
    reused: int = 0
    recycled: int = 0
    links: int = 0
    removed: int = 0
    deleted: int = 0
    repaired: int = 0


class OutputWriter:
    """Writes generations of the output tree at ``output`` (see :mod:`imgclusterd.output`).

    ``hooks``: called at named points of a write (fault tests); by default the process default
    of :func:`~imgclusterd.output.hooks.set_default_hooks`, which does nothing.
    ``recycle_min``: objects with at least this many links are patched from the pool rather
    than written fresh (tests set 1 to exercise patching on small trees).
    """

    def __init__(
        self,
        output: Path,
        keep_generations: int = 2,
        grace_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
        *,
        hooks: WriteHooks | None = None,
        recycle_min: int = RECYCLE_MIN,
    ) -> None:
        if keep_generations < 2:
            raise ValueError("keep_generations must be at least 2 (the current and the previous)")
        self.output = Path(os.path.abspath(output))
        self.area = area_path(self.output)
        self.keep_generations = keep_generations
        self.grace_seconds = grace_seconds
        self.clock = clock
        self.hooks = hooks if hooks is not None else default_hooks()
        self._area = Area(self.output, self.hooks)
        self._pool = Pool(self._area, recycle_min)
        self._leaf_memo: LeafMemo = {}  # the last plan's folders -> (digest, entries)
        # generation -> when this process swapped it in: the grace period of its predecessor
        # counts from there (its name was given before the flush, which may take seconds).
        self._swapped_at: dict[str, float] = {}

    # ------------------------------------------------------------------ public

    def check(self) -> None:
        """Raise :class:`OutputError` if ``output`` or its area exists and is not ours."""
        self._area.check()

    def acquire(self) -> None:
        """Own the output until :meth:`release` (or exit): a second process that tries to
        write it, whatever its state dir, gets :class:`AlreadyRunning` ("already running
        (pid N)"). Without it, each write takes the lock for its own duration only."""
        self._area.acquire()

    def release(self) -> None:
        """Give the output up (idempotent)."""
        self._area.release()

    def current_generation(self) -> str | None:
        """The name of the generation ``output`` points at, or None if there is none of ours."""
        name = self._area.current_name()
        if name is None or not self._area.is_ours():
            return None
        if not (self._area.generations / name).is_dir():
            return None  # dangling: its generation was deleted
        return name

    def needs_repair(self) -> bool:
        """True if the current generation, or a folder it uses, was changed or deleted since
        it was written (a link deleted through ``OUTPUT``, say): the next :meth:`write` of the
        same tree repairs it. One ``lstat`` per folder."""
        name = self.current_generation()
        if name is None:
            return False
        try:
            return self._area.damaged(name)
        except OSError:
            return True

    def write(
        self,
        tree: OutputTree,
        extra_files: Mapping[str, bytes] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> WriteReport:
        """Build a generation for ``tree`` (reusing objects), flush, swap it in, collect.

        ``extra_files``: ``<name>`` is written at the root of the generation (beside the
        algorithm folders), ``<algo>/<name>`` inside that algorithm's folder; both are part of
        the generation's digest and swapped in with the tree.
        ``progress(done, total)`` is called about twice a second while objects are built: a
        first write of a big tree takes minutes, and the daemon's watchdog pings and status
        come from that callback meanwhile.
        """
        started = time.perf_counter()
        self.check()
        plan = plan_tree(tree, extra_files, self._leaf_memo, progress)
        self._leaf_memo = plan.leaf_memo
        gen_digest = plan.digest
        area = self._area
        counts = _Counts()
        sync_seconds = gc_seconds = 0.0
        pool_before: set[str] = set()
        try:
            area.ensure()
            with area.locked():
                area.remove_leftovers()
                current = area.current_name()
                pool_before = set(os.listdir(area.pool))
                # The same tree again: nothing to swap, unless the current generation was
                # damaged. Its objects are checked (and repaired in place) either way.
                same = (
                    current is not None
                    and current.endswith(gen_digest)
                    and area.generation_intact(current, plan.generation_links, plan.top_files)
                )
                if not same:
                    self._pool.spare_wanted = []
                self._build_objects(plan.objects, counts, progress)
                if same:
                    assert current is not None
                    name, swapped = current, False
                else:
                    swapped = True
                    name = area.next_name(gen_digest, self.clock())
                    counts.links += area.build_generation(
                        name, plan.generation_links, plan.top_files
                    )
                    sync_started = time.perf_counter()
                    area.sync()
                    sync_seconds = time.perf_counter() - sync_started
                    area.swap(name)
                    self._swapped_at[name] = self.clock()
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
            objects_repaired=counts.repaired,
        )
        log.info(
            "output generation %s: %d objects written (%d recycled), %d reused, %d links, "
            "%.2fs (sync %.2fs, gc %.2fs)",
            name, report.objects_written, report.objects_recycled, report.objects_reused,
            report.links_written, report.seconds, sync_seconds, gc_seconds,
        )  # fmt: skip
        return report

    def prepare_spares(
        self, should_stop: Callable[[], bool], progress: Callable[[], None] | None = None
    ) -> int:
        """While idle: copy into ``pool/`` the folders the last write changed; return links.

        Why: with one photo added, every threshold's unclustered folder (or the cluster that
        took it) changes, and a changed folder must be a new directory -- readers may still be
        inside the old one. Patching a retired copy costs the difference, but retired copies
        only exist once old generations pass their grace period. A spare made in idle time
        is such a copy ahead of time, so the next refresh patches instead of rewriting.
        Stops, keeping the rest for later, as soon as ``should_stop()`` says work is waiting.
        """
        return self._pool.prepare_spares(should_stop, progress)

    def cleanup(self) -> None:
        """Remove interrupted leftovers and generations beyond keep/grace; safe at start-up."""
        self.check()
        if not os.path.lexists(self.area):
            return
        try:
            self._area.ensure_folders()
            with self._area.locked():
                self._area.remove_leftovers()
                self._collect(purge=set(), sweep_links=True)
        except OSError as exc:  # tidying only: the current output is complete either way
            log.warning("could not clean up %s: %s", self.area, exc)

    # ------------------------------------------------------------------ private

    def _collect(self, purge: set[str], sweep_links: bool = False) -> int:
        names = set(os.listdir(self._area.generations))
        self._swapped_at = {n: t for n, t in self._swapped_at.items() if n in names}
        return collect(
            self._area,
            self._pool,
            keep=self.keep_generations,
            grace_seconds=self.grace_seconds,
            now=self.clock(),
            purge=purge,
            sweep_links=sweep_links,
            swapped_at=self._swapped_at,
        )

    def _build_failed(self, exc: OSError, pool: set[str]) -> OutputError:
        """Undo what a failed build left (best effort) and say why; ``OUTPUT`` is untouched."""
        # Free what we can, so the next attempt has room: the half-built temporaries and the
        # recycling pool (garbage by definition). Published objects stay: they are complete
        # and the next write reuses them.
        with contextlib.suppress(OSError):
            self._area.remove_leftovers()
        for entry in pool:
            with contextlib.suppress(OSError):
                remove_tree(self._area.pool / entry)
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            reason += " (disk or inode quota full)"
        return OutputError(
            f"could not write a new output generation in {self.area}: {reason}; "
            "the previous output, if any, stays as it was"
        )

    def _build_objects(
        self,
        objects: dict[str, PlannedObject],
        counts: _Counts,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        area, pool = self._area, self._pool
        existing = set(os.listdir(area.objects))
        index = pool.index()
        total = len(objects)
        reported = time.monotonic()
        # children were planned before their parents
        for done, (digest, obj) in enumerate(objects.items()):
            if progress is not None and time.monotonic() - reported >= _PROGRESS_EVERY:
                reported = time.monotonic()
                progress(done, total)
            if obj.level > 0:
                pool.contents[digest] = obj.links
            if obj.level < 2:
                area.children[digest] = [
                    (name, target.rsplit("/", 1)[1]) for name, target in obj.links.items()
                ]
            if digest in existing:
                counts.reused += 1
                if not area.stamped(area.objects / digest, digest) and area.repair_object(
                    digest, obj.links, obj.files, shared=obj.level == 2
                ):
                    counts.repaired += 1
                continue
            recyclable = pool.recyclable(obj)
            if recyclable and obj.role is not None:
                # Written now, so likely to change again: a spare copy makes that a patch.
                pool.spare_wanted.append((digest, obj.role))
            if recyclable and (patch := pool.recycle(digest, obj, index)) is not None:
                counts.written += 1
                counts.recycled += 1
                counts.links += patch.added
                counts.removed += patch.removed
                continue
            area.write_object(digest, obj.links, obj.files, shared=obj.level == 2)
            counts.written += 1
            counts.links += len(obj.links)
