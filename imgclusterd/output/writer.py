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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from imgclusterd.errors import OutputError

from .area import Area, area_path, remove_tree
from .area import Step as _Step
from .delta import (
    RefCounts,
    TreeDelta,
    TreeModel,
    plan_delta,
    position_changes,
    positions,
)
from .hooks import (
    ALGORITHM_WRITTEN,
    IDLE_FLUSHED,
    IDLE_SLICE_FLUSHED,
    OBJECT_STAGED,
    WriteHooks,
    default_hooks,
)
from .plan import (
    LeafMemo,
    OutputTree,
    Plan,
    PlannedObject,
    Role,
    plan_algorithm,
    split_extra_files,
    tree_algorithms,
)
from .recycle import POOL_RE, RECYCLE_MIN, Pool, PoolIndex
from .retention import Record, collect, write_record
from .staging import PARALLEL_MIN, PatchJob, Staged, stage_patches

__all__ = ["OutputWriter", "WriteReport"]

log = logging.getLogger(__name__)

_PROGRESS_EVERY = 0.5  # seconds between progress callbacks during a write
# Patches remembered (writes) and followed back (steps) to recycle a retired folder: a folder
# retires once its generation is past keep_generations and generation_grace.
_LINEAGE_WRITES = 32
_LINEAGE_DEPTH = 32
#: Slots (see Role) whose folder nearly every refresh changes: each threshold's folder and its
#: unclustered folder (a new photo lands in one or joins a cluster, which renames an entry),
#: and its biggest cluster, which a new photo most likely joins: in a real library the loose
#: thresholds hold one component of most photos (20,000 photos: ~20,000 links at ~6
#: thresholds per algorithm), copied link by link by the first refreshes after a whole-tree
#: write that changed it (~20,000-200,000 link() calls per +1) unless a spare was made.
_CHANGE_EVERY_TIME = frozenset({"u", "t", "c1"})
#: Slots whose entries a +1 renames (the clusters renumbered): threshold folders.
_RENUMBERED = frozenset({"t"})


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
    planned: str = "tree"  # "delta": only the changed folders were planned (write_delta)
    links_renamed: int = 0  # entries renamed while patching (renumbered clusters)
    links_copied: int = 0  # hard links made copying a patch's base (no spare, no ancestor)
    patches_threaded: int = 0  # of objects_recycled: staged by the second thread (staging)
    # CPU time of the writing thread (the rest of seconds: waiting, or the second staging
    # thread's share of the patches, see staging)
    cpu_seconds: float = 0.0


@dataclass
class _Counts:
    written: int = 0
    reused: int = 0
    recycled: int = 0
    links: int = 0
    removed: int = 0
    deleted: int = 0
    repaired: int = 0
    renamed: int = 0
    copied: int = 0
    threaded: int = 0


class OutputWriter:
    """Writes generations of the output tree at ``output`` (see :mod:`imgclusterd.output`).

    ``hooks``: called at named points of a write (fault tests); by default the process default
    of :func:`~imgclusterd.output.hooks.set_default_hooks`, which does nothing.
    ``recycle_min``: objects with at least this many links are patched from the pool rather
    than written fresh (tests set 1 to exercise patching on small trees).
    ``lean``: after a full write keep only the tree's model (a few numbers per folder, see
    ``delta``), not the folders' entries: for a caller that continues with
    :meth:`write_delta` (the pipeline); the next full write then plans from scratch.
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
        lean: bool = False,
        stage_parallel_min: int = PARALLEL_MIN,
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
        self.lean = lean
        self._stage_parallel_min = stage_parallel_min  # see staging (tests: 0, always two)
        # The tree of generation _model_generation, for write_delta (None: plan in full).
        self._model: TreeModel | None = None
        self._model_generation: str | None = None
        # Pool entries a delta write found and did not use: deleted in idle time (a leaf
        # costs one unlink per entry: not something a refresh should wait for).
        self._purge_later: set[str] = set()
        # A whole-tree write's too (the daemon, whose idle time purges; a one-shot scan
        # purges before it returns). Why: the first write after a start finds the pool of the
        # last run (spares and retired folders of up to every photo each), and purged there
        # it held the first refresh up (100,000 photos: 52-686 s of a 814-2,268 s write).
        self.purge_in_idle = False
        # patch object -> (write number, base, names removed, links added): how to bring a
        # retired ancestor of a folder forward to it (see _patch_job). Kept for a few writes.
        self._lineage: dict[str, tuple[int, str, bytes]] = {}  # (the step: pack_step)
        self._writes = 0
        # Of the model's generation: algorithm -> its object, and how many places of the tree
        # each object fills (the records of delta writes come from these, see retention).
        self._algo_digests: dict[str, str] = {}
        self._refs = RefCounts()
        # Collect by a full walk next time: a collection from records failed half-way.
        self._walk_next = False
        # After a delta write: from this time on, the next write finds its patches' retired
        # ancestors in pool/ (see _release_expired), so spares of them are not needed.
        self._ancestors_from: float | None = None
        # Seconds of idle work between flushes (see prepare_spares; None: only at its end).
        self.idle_flush_every: float | None = 2.0

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

        One algorithm at a time: ``tree[algo]`` is read, planned, its folders built, and the
        plan dropped before the next algorithm's is made (``tree`` may make each sweep on
        demand, as the pipeline's does), so a write holds one algorithm's plan, not the
        tree's (gigabytes at 100,000 photos). Nothing is swapped before every algorithm is
        built: a crash in between leaves ``OUTPUT`` on the previous generation, and folders
        no generation names, which the next whole-tree write reuses or collects.
        """
        started = time.perf_counter()
        cpu_started = time.thread_time()
        self.check()
        self._model = None
        self._ancestors_from = None
        top_files, algo_files = split_extra_files(extra_files or {})
        algos = tree_algorithms(tree, top_files, algo_files)
        old_memo, self._leaf_memo = self._leaf_memo, {}
        memo: LeafMemo = {}
        model = TreeModel()
        generation_links: dict[str, str] = {}
        planned: set[str] = set()  # every object digest of the tree (for its record)

        def build(counts: _Counts) -> Plan:
            built = 0  # objects of the algorithms before (progress counts the whole write)

            def step(done: int, total: int) -> None:
                if progress is not None:
                    progress(built + done, built + total)

            for algo in algos:
                part = plan_algorithm(
                    algo, tree.get(algo, ()), algo_files.get(algo, {}), old_memo, memo,
                    step if progress is not None else None,
                )  # fmt: skip
                # (an object an algorithm before planned too is built and counted once)
                fresh = {d: obj for d, obj in part.objects.items() if d not in planned}
                self._build_objects(fresh, counts, step, whole_tree=True)
                built += len(fresh)
                planned.update(fresh)
                del fresh
                generation_links.update(part.generation_links)
                model.algorithms.update(part.thresholds)
                model.algo_files.update(part.algo_files)
                del part  # before the next algorithm is planned
                if self.lean:  # (else kept for the next write, as the memo is)
                    memo.clear()
                    self._pool.contents = {}
                self.hooks.at(ALGORITHM_WRITTEN)
            return Plan({}, generation_links, top_files, memo)

        report = self._write_plan(
            build, (started, cpu_started), progress, purge_now=True,
            record=lambda current: self._walked(current, planned),
            live=lambda digests: [d in planned for d in digests],
        )  # fmt: skip
        if not self.lean:
            self._leaf_memo = memo
        self._model, self._model_generation = model, report.generation
        self._algo_digests = {a: link.rsplit("/", 1)[1] for a, link in generation_links.items()}
        self._refs = positions(self._model, self._algo_digests)
        return report

    def can_patch(self) -> bool:
        """Can :meth:`write_delta` patch the current generation (we wrote it, it is current)?"""
        return (
            self._model is not None
            and self._model_generation is not None
            and self.current_generation() == self._model_generation
        )

    def write_delta(
        self,
        delta: TreeDelta,
        extra_files: Mapping[str, bytes] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> WriteReport:
        """As :meth:`write`, for the tree of the current generation changed by ``delta``.

        Only the changed folders are planned: leaves and threshold folders as patches of their
        base folder (a spare copy of it from ``pool/`` when there is one, else a hard-link
        copy of it), algorithm folders re-listed; unchanged folders are reused as they are,
        neither listed nor checked (the bases are: a stamp each). Raises
        ValueError when :meth:`can_patch` is false or the delta does not fit the tree (then
        write the whole tree with :meth:`write`).
        """
        started = time.perf_counter()
        cpu_started = time.thread_time()
        self.check()
        if not self.can_patch() or self._model is None:
            raise ValueError("no model of the current generation: write the whole tree")
        plan, model = plan_delta(self._model, delta, extra_files)
        # The folders patched into new ones (and patches already on disk) are known by
        # digest only: check them (a stamp each) rather than the whole tree; a damaged one
        # is repaired by a whole-tree write, which knows every folder's entries.
        for digest, obj in plan.objects.items():
            if obj.base is None:
                continue
            for leaf, missing_ok in ((obj.base, False), (digest, True)):
                if not self._area.leaf_intact(leaf, missing_ok):
                    raise ValueError(
                        f"output folder {self._area.objects / leaf} was changed since it was "
                        "written: the whole tree is written (and repaired) instead"
                    )
        # Its record: the objects whose last place it empties, the ones it gives a first.
        algo_digests = _algo_digests(plan)
        changes = position_changes(self._model, model, delta, self._algo_digests, algo_digests)
        changed = list(dict.fromkeys(digest for digest, _, _, _ in changes))
        counts = dict(zip(changed, self._refs.counts(changed), strict=True))
        before = dict(counts)
        record = Record(self._model_generation)
        for digest, sign, level, role in changes:
            counts[digest] += sign
            if sign < 0:
                record.retired[digest] = (level, role)
        record.retired = {d: r for d, r in record.retired.items() if counts[d] <= 0 < before[d]}
        record.added = {d for d, n in counts.items() if before[d] <= 0 < n}
        self._model = None  # until the write is through: a failed one leaves an unknown state
        self._writes += 1
        oldest = self._writes - _LINEAGE_WRITES
        self._lineage = {d: step for d, step in self._lineage.items() if step[0] > oldest}
        def live(digests: list[str]) -> list[bool]:  # in the tree after this write
            return [
                counts.get(d, n) > 0
                for d, n in zip(digests, self._refs.counts(digests), strict=True)
            ]

        report = self._write_plan(
            plan, (started, cpu_started), progress, purge_now=False,
            record=lambda current: record, live=live,
        )
        self._model, self._model_generation = model, report.generation
        self._algo_digests = algo_digests
        self._refs.set_counts(counts)
        self._lineage = self._lineage_in_reach()
        report.planned = "delta"
        if report.swapped and self.keep_generations == 2:
            # The generation it replaced is released once past its grace. (With more kept,
            # it is held by the count: the ancestors are two patches back, if there.)
            swapped = self._swapped_at.get(report.generation, self.clock())
            self._ancestors_from = swapped + self.grace_seconds
        return report

    def _walked(self, current: str | None, planned: set[str]) -> Record:
        """The record of a whole-tree write: what the current generation reaches (a walk of
        it, as the whole tree is written anyway) against what the plan holds."""
        if current is None:
            return Record(None)
        roles: dict[str, tuple[int, Role | None]] = {}
        for digest, level, role in self._area.walk(current):
            roles.setdefault(digest, (level, role))
        return Record(
            current,
            {d: level_role for d, level_role in roles.items() if d not in planned},
            {d for d in planned if d not in roles},
        )

    def _write_plan(
        self,
        plan: Plan | Callable[[_Counts], Plan],
        started: tuple[float, float],  # perf_counter, thread_time
        progress: Callable[[int, int], None] | None,
        purge_now: bool,
        record: Callable[[str | None], Record],
        live: Callable[[list[str]], list[bool]],
    ) -> WriteReport:
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
                if isinstance(plan, Plan):  # planned up front (a delta)
                    same = self._same(current, plan)
                    left: list[tuple[str, Role, int]] = []
                    if not same:
                        left, self._pool.spare_wanted = self._pool.spare_wanted, []
                        if not purge_now:  # a delta write
                            counts.deleted += self._release_expired()
                    self._build_objects(plan.objects, counts, progress, whole_tree=purge_now)
                    if left:
                        # Spares idle time had no time to make (20,000 photos: the ~4 million
                        # links after a whole tree take minutes; the next photo came after
                        # 20 s), of folders this write left as they were: still wanted. Else
                        # each of them was copied link by link by the first write that
                        # changed it (the biggest clusters: ~20,000 links each).
                        alive = live([digest for digest, _, _ in left])
                        self._pool.spare_wanted += [
                            wanted for wanted, a in zip(left, alive, strict=True) if a
                        ]
                else:  # the whole tree: planned and built one algorithm at a time
                    wanted, self._pool.spare_wanted = self._pool.spare_wanted, []
                    plan = plan(counts)
                    same = self._same(current, plan)
                    if same:
                        self._pool.spare_wanted[:0] = wanted
                gen_digest = plan.digest
                if same:
                    assert current is not None
                    name, swapped = current, False
                else:
                    swapped = True
                    name = area.next_name(gen_digest, self.clock())
                    # Before the generation (and flushed with it): a crash cannot leave a
                    # generation whose record is missing, only a record nobody needs.
                    write_record(area, name, record(current))
                    counts.links += area.build_generation(
                        name, plan.generation_links, plan.top_files
                    )
                    sync_started = time.perf_counter()
                    area.sync()
                    sync_seconds = time.perf_counter() - sync_started
                    area.swap(name)
                    self._swapped_at[name] = self.clock()
                gc_started = time.perf_counter()
                unused = pool_before & set(os.listdir(area.pool))
                if not purge_now or self.purge_in_idle:
                    kept = self._ancestors_kept(unused) | self._spares_kept(unused, live)
                    self._purge_later |= unused - kept
                    unused = set()
                try:
                    counts.deleted += self._collect(purge=unused, from_records=not purge_now)
                except OSError as exc:  # the new generation is current: only tidying failed
                    log.warning("could not collect old output generations: %s", exc)
                    self._walk_next = True
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
            seconds=time.perf_counter() - started[0],
            sync_seconds=sync_seconds,
            objects_recycled=counts.recycled,
            links_removed=counts.removed,
            objects_deleted=counts.deleted,
            gc_seconds=gc_seconds,
            swapped=swapped,
            objects_repaired=counts.repaired,
            links_renamed=counts.renamed,
            links_copied=counts.copied,
            patches_threaded=counts.threaded,
            cpu_seconds=time.thread_time() - started[1],
        )
        log.info(
            "output generation %s: %d objects written (%d recycled), %d reused, %d links, "
            "%d renamed, %d copied, %.2fs (cpu %.2fs, sync %.2fs, gc %.2fs)",
            name, report.objects_written, report.objects_recycled, report.objects_reused,
            report.links_written, report.links_renamed, report.links_copied, report.seconds,
            report.cpu_seconds, sync_seconds, gc_seconds,
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
        After a delta write, spares of its patched folders are made only within the grace
        period of the generation it replaced: a write after that patches the retired folders
        of that generation instead (20,000 photos: ~2 million links copied per photo, and
        deleted unused, otherwise). In this order: spares of threshold folders (within that
        grace only: see below), the deletion of the pool entries the last delta writes did not
        use, the other spares; then, unless stopped, a flush of what all this dirtied.
        """
        links = 0
        if self.idle_flush_every is not None:  # flushed in slices, see below
            progress = self._flushing(progress, self.idle_flush_every)
        if self._ancestors_from is not None and self.clock() < self._ancestors_from:
            # Threshold folders first: a refresh after the grace patches every folder from
            # its retired ancestor, two patches back, which costs an unclustered or cluster
            # folder its few links twice, but a threshold folder each renumbered entry twice
            # (20,000 photos: ~38,000 renames instead of ~21,000 from a spare). The bigger
            # unclustered folders, copied first, took the grace at 20,000 photos; and the
            # purge, first, took the whole idle gap.
            links += self._spares(should_stop, progress, only=_RENUMBERED)
        purged = self._purge_unused(should_stop, progress)
        links += self._spares(should_stop, progress)
        if (links or purged) and not should_stop():
            # What idle time dirtied (a purge: an unlink per entry) is flushed now, not by the
            # next refresh's syncfs before its swap (~0.5 s of a +1 at 5,000 photos).
            try:
                self._area.sync()
            except OSError as exc:
                log.warning("could not flush %s: %s", self.area, exc)
            self.hooks.at(IDLE_FLUSHED)
        return links

    def _flushing(
        self, progress: Callable[[], None] | None, every: float
    ) -> Callable[[], None]:
        """``progress`` that also flushes what idle work dirtied, every ``every`` seconds of
        it.

        Why: idle work that an event interrupts skips its final flush, so the refresh's
        ``syncfs`` before its swap wrote out all of it -- up to a whole idle gap of spare
        copies and purged pool entries (20,000 photos: millions of directory entries) --
        and the +1 waited for it. Flushed in slices, the refresh finds at most one slice.
        (Not skipped when an event is waiting: the refresh would flush the same.)
        """
        last = time.monotonic()

        def step() -> None:
            nonlocal last
            if progress is not None:
                progress()
            if time.monotonic() - last >= every:
                try:
                    self._area.sync()
                except OSError as exc:
                    log.warning("could not flush %s: %s", self.area, exc)
                self.hooks.at(IDLE_SLICE_FLUSHED)
                last = time.monotonic()

        return step

    def _spares(
        self,
        should_stop: Callable[[], bool],
        progress: Callable[[], None] | None,
        only: frozenset[str] | None = None,
    ) -> int:
        """The spares of :meth:`prepare_spares`: those of patched folders within the grace
        (``only`` those of these kinds of slot)."""
        until = self._ancestors_from
        if until is None:
            return self._pool.prepare_spares(should_stop, progress, only)
        links = 0
        if self.clock() < until:
            links = self._pool.prepare_spares(
                lambda: should_stop() or self.clock() >= until, progress, only
            )
        if only is not None:
            return links
        if self.clock() >= until:  # (what is left of them: fresh folders have no ancestor)
            self._pool.spare_wanted = [
                wanted for wanted in self._pool.spare_wanted if wanted[0] not in self._lineage
            ]
            self._ancestors_from = None
            if self._pool.spare_wanted and not should_stop():
                links += self._pool.prepare_spares(should_stop, progress)
        return links

    def _purge_unused(
        self, should_stop: Callable[[], bool], progress: Callable[[], None] | None
    ) -> int:
        """Delete the pool entries the last delta writes did not use; return how many.
        Stops (the rest kept for later) when ``should_stop()``: one unlink per entry."""
        if not self._purge_later:
            return 0
        purge, self._purge_later = self._purge_later, set()
        purged = 0
        try:
            with self._area.locked():
                for entry in sorted(purge):
                    if should_stop():
                        break
                    purge.discard(entry)
                    purged += self._pool.purge({entry})
                    if progress is not None:
                        progress()
        except OutputError:
            pass
        except OSError as exc:
            log.warning("could not delete unused spare output folders: %s", exc)
        self._purge_later |= purge
        return purged

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

    def _collect(
        self, purge: set[str], sweep_links: bool = False, from_records: bool = False
    ) -> int:
        """Collect garbage: from the generations' records after a delta write, by a full walk
        after a whole-tree write, at clean-up, and after a collection that failed."""
        names = set(os.listdir(self._area.generations))
        self._swapped_at = {n: t for n, t in self._swapped_at.items() if n in names}
        walk, self._walk_next = self._walk_next or not from_records, True
        deleted = collect(
            self._area,
            self._pool,
            keep=self.keep_generations,
            grace_seconds=self.grace_seconds,
            now=self.clock(),
            purge=purge,
            sweep_links=sweep_links,
            swapped_at=self._swapped_at,
            from_records=not walk,
        )
        self._walk_next = False
        return deleted

    def _release_expired(self) -> int:
        """Before a delta write is built: drop the generations that the collection after its
        swap would drop anyway -- beyond ``keep_generations`` counting the one being built,
        and past their grace -- so that their folders are in ``pool/`` for this write.

        Why: a patch is cheap only when built on garbage (a spare, or a retired ancestor of
        its base); otherwise its base is copied, one ``link()`` per entry. Collected after
        the swap, the generation before the previous one retires one write too late: the
        second write after a whole-tree write found no ancestor and copied every changed
        unclustered and threshold folder (20,000 photos: ~2 million links, a minute). Only
        from the records (no walk in the way of a refresh); nothing is dropped when they do
        not chain, and the collection after the swap does the rest as before.
        """
        if self._walk_next:
            return 0
        try:
            return collect(
                self._area,
                self._pool,
                keep=self.keep_generations - 1,
                grace_seconds=self.grace_seconds,
                now=self.clock(),
                purge=set(),
                swapped_at=self._swapped_at,
                from_records=True,
                walk=False,
            )
        except OSError as exc:  # tidying only: the write goes on, the next collection walks
            log.warning("could not collect old output generations: %s", exc)
            self._walk_next = True
            return 0

    def _lineage_in_reach(self) -> dict[str, tuple[int, str, bytes]]:
        """The remembered patches a later patch can still follow: from each folder of the
        current tree that was patched, back through its bases up to the first one in
        ``pool/`` (where :meth:`_patch_job` starts from; it never walks past it), or up to the
        last one still in ``objects/`` (retired into ``pool/`` later), at most
        ``_LINEAGE_DEPTH`` steps.

        Why: a +1 renumbers clusters of most threshold folders (100,000 photos: ~100,000
        renamed entries a write), and the steps of every patch of the last writes were kept
        whether or not anything could reach them: folders gone from the tree, and chains
        whose older folders are deleted. The rest is dropped.
        """
        lineage = self._lineage
        if not lineage:
            return lineage
        try:
            pooled = {entry.split("~", 1)[0] for entry in os.listdir(self._area.pool)}
        except OSError:  # (no pool to look at: keep them all, as before)
            return lineage
        kept: dict[str, tuple[int, str, bytes]] = {}
        patched = list(lineage)
        for digest, count in zip(patched, self._refs.counts(patched), strict=True):
            if count <= 0:
                continue  # not a folder of the current tree: nothing patches from it
            chain: list[tuple[str, tuple[int, str, bytes]]] = []
            useful = 0  # the steps up to a base that is, or may become, a source
            while digest in lineage and len(chain) <= _LINEAGE_DEPTH:
                if digest in kept:  # (the rest of this chain was followed already)
                    useful = len(chain)
                    break
                entry = lineage[digest]
                chain.append((digest, entry))
                if entry[1] in pooled:
                    useful = len(chain)
                    break
                if os.path.isdir(os.path.join(self._area.objects, entry[1])):
                    useful = len(chain)
                digest = entry[1]
            kept.update(chain[:useful])
        return kept

    @staticmethod
    def _spares_kept(entries: set[str], live: Callable[[list[str]], list[bool]]) -> set[str]:
        """Of these unused pool entries, the spares of folders the tree still holds: kept for
        the write that changes such a folder (not purged).

        Why: a spare made in idle time for a folder the next write happened not to change
        (the biggest cluster of a threshold the new photo did not join there) was purged
        unused, and the write after it that did change the folder copied it link by link
        (20,000 photos: ~20,000 links per such folder, ~20,000-200,000 per +1 in the first
        drops after a restart). At most one spare per live folder; one whose folder leaves
        the tree is purged as before.
        """
        found = {entry: match[1] for entry in entries if (match := POOL_RE.match(entry))}
        digests = list(found.values())
        alive = dict(zip(digests, live(digests), strict=True)) if digests else {}
        return {entry for entry, digest in found.items() if alive[digest]}

    def _ancestors_kept(self, entries: set[str]) -> set[str]:
        """Of these unused pool entries, the nearest retired ancestors of live folders: kept
        for the next write that changes such a folder (not purged).

        A folder that one write changes and the next does not (an unclustered folder where
        the next photo joined a cluster, the biggest cluster of a loose threshold) has its
        retired ancestor unused by that next write; purged, the write after that found
        neither a spare nor an ancestor and copied the folder link by link (20,000 photos: up
        to ~50,000 links per +1, and the purge itself an unlink per entry in idle time). An
        ancestor is kept while the folder patched from it is still in ``objects/`` and its
        patch is remembered (``_lineage``, a few dozen writes), so ``pool/`` holds at most
        one such entry per live patched folder.
        """
        bases: dict[str, list[str]] = {}
        for digest, (_, base, _) in self._lineage.items():
            bases.setdefault(base, []).append(digest)
        kept: set[str] = set()
        for entry in entries:
            match = POOL_RE.match(entry)
            if match is None:
                continue
            if any(
                os.path.isdir(os.path.join(self._area.objects, child))
                for child in bases.get(match[1], ())
            ):
                kept.add(entry)
        return kept

    def _same(self, current: str | None, plan: Plan) -> bool:
        """The same tree again: nothing to swap, unless the current generation was damaged.
        Its objects are checked (and repaired in place) either way."""
        return (
            current is not None
            and current.endswith(plan.digest)
            and self._area.generation_intact(current, plan.generation_links, plan.top_files)
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
        whole_tree: bool = False,
    ) -> None:
        area, pool = self._area, self._pool
        if len(objects) < 4096:  # a delta's few objects: a stat each, not a list of them all
            existing = {d for d in objects if os.path.isdir(os.path.join(area.objects, d))}
        else:
            existing = set(os.listdir(area.objects))
        index = pool.index()
        spares = {entry.split("~", 1)[0]: entry for entry in os.listdir(area.pool)}
        # Patches first: each takes its spare now (before a recycled folder could), and their
        # entries are renamed, unlinked and linked in two threads (see ``staging``); each is
        # published below, in plan order.
        jobs = [
            self._patch_job(digest, obj, spares, index.used)
            for digest, obj in objects.items()
            if obj.base is not None and digest not in existing
        ]
        staged, counts.threaded = stage_patches(jobs, self._stage_parallel_min)
        self._place_objects(objects, existing, staged, index, counts, progress, whole_tree)

    def _place_objects(
        self,
        objects: dict[str, PlannedObject],
        existing: set[str],
        staged: dict[str, Staged],
        index: PoolIndex,
        counts: _Counts,
        progress: Callable[[int, int], None] | None,
        whole_tree: bool,
    ) -> None:
        """Put each planned object in ``objects/``, children before parents: reused, repaired,
        a staged patch published, recycled from the pool, or written fresh."""
        area, pool = self._area, self._pool
        total = len(objects)
        reported = time.monotonic()
        # children were planned before their parents
        for done, (digest, obj) in enumerate(objects.items()):
            if progress is not None and time.monotonic() - reported >= _PROGRESS_EVERY:
                reported = time.monotonic()
                progress(done, total)
            if obj.level > 0 and obj.base is None:
                pool.contents[digest] = obj.links
            if obj.level < 2 and obj.base is None:  # (a patch's links are its difference)
                area.remember_children(
                    digest, ((name, target.rsplit("/", 1)[1]) for name, target in obj.links.items())
                )
            if digest in existing:
                counts.reused += 1
                if (
                    whole_tree
                    and obj.role is not None
                    and obj.role[1] in _CHANGE_EVERY_TIME
                    and pool.recyclable(obj)
                ):
                    # Reused (a restart finds the tree it left) but as likely to change:
                    # without a spare the next refreshes copied it link by link (20,000
                    # photos: ~4 million links in the first +1 after a restart).
                    pool.spare_wanted.append((digest, obj.role, len(obj.links)))
                # (a patch's own links are its difference only: write_delta checked it)
                if obj.base is None and not area.stamped(
                    os.path.join(area.objects, digest), digest
                ) and area.repair_object(
                    digest, obj.links, obj.files, shared=obj.level == 2
                ):
                    counts.repaired += 1
                continue
            if obj.base is not None:
                if obj.size >= pool.recycle_min and obj.role is not None:
                    pool.spare_wanted.append((digest, obj.role, obj.size))
                done_patch = staged[digest]
                self.hooks.at(OBJECT_STAGED)
                area.publish(done_patch.staging, digest)
                self._lineage[digest] = (
                    self._writes, obj.base, pack_step((obj.removed, obj.links, obj.moved))
                )
                counts.written += 1
                counts.recycled += 1
                counts.links += done_patch.added
                counts.removed += done_patch.removed
                counts.renamed += done_patch.renamed
                counts.copied += done_patch.copied
                continue
            recyclable = pool.recyclable(obj)
            if recyclable and obj.role is not None and (
                not whole_tree or obj.role[1] in _CHANGE_EVERY_TIME
            ):
                # Written now, so likely to change again: a spare copy makes that a patch.
                # (Of a whole tree -- every folder written -- only the kinds of folder that
                # one more photo changes at each threshold: the others would be copies of
                # the whole tree, made in idle time and deleted unused.)
                pool.spare_wanted.append((digest, obj.role, len(obj.links)))
            if recyclable and (patch := pool.recycle(digest, obj, index)) is not None:
                counts.written += 1
                counts.recycled += 1
                counts.links += patch.added
                counts.removed += patch.removed
                continue
            area.write_object(digest, obj.links, obj.files, shared=obj.level == 2)
            counts.written += 1
            counts.links += len(obj.links)

    def _patch_job(
        self, digest: str, obj: PlannedObject, spares: dict[str, str], used: set[str]
    ) -> PatchJob:
        """What patch object ``digest`` is built from (staged later, see ``staging``).

        From, cheapest first: a spare copy of its base in ``pool/`` (renamed into its staging
        place now, so no other object takes it); a retired ancestor of the base in ``pool/``
        (an object the base was patched from, a few writes ago, that no kept generation
        reaches any more), brought forward through the recorded patches; else a hard-link
        copy of the base.
        """
        assert obj.base is not None
        area = self._area
        staging = area.tmp / f"rec-{digest}"
        if os.path.lexists(staging):
            remove_tree(staging)
        own: _Step = (obj.removed, obj.links, obj.moved)
        steps: list[_Step] = [own]
        source = obj.base
        # (a spare or retired folder whose stamp is off was changed: not built on)
        while (
            source not in spares
            or spares[source] in used
            or not area.stamped(os.path.join(area.pool, spares[source]), source)
        ):
            parent = self._lineage.get(source)
            if parent is None or len(steps) > _LINEAGE_DEPTH:
                source = ""
                break
            steps.append(unpack_step(parent[2]))
            source = parent[1]
        composed = own
        if source:
            entry = spares.pop(source)
            used.add(entry)
            os.rename(area.pool / entry, staging)
            try:
                # (as one step: an entry renumbered at each step is renamed once)
                composed = compose_steps(list(reversed(steps)))
            except (FileNotFoundError, FileExistsError) as exc:  # not what we recorded
                log.warning("recycled output folder %s did not match (%s); copying", entry, exc)
                remove_tree(staging)
                source = ""
        return PatchJob(
            digest=digest,
            staging=staging,
            spare=bool(source),
            steps=composed,
            base=area.objects / obj.base,
            own=own,
            place=area.placer(obj.level == 2),
        )


def pack_step(step: _Step) -> bytes:
    """One patch step as one bytes object, for the lineage (see :func:`unpack_step`).

    Why: the lineage keeps the steps of the last writes' patches, and a +1 renames up to every
    cluster of a threshold folder (20,000 photos: ~30,000 renames a drop); kept as tuples and
    dicts of strings they were ~120 bytes a name, scattered among the small objects of the
    heap, which then cannot shrink (5,000 photos: 17 MB after 3 drops, a delete, a rename and a
    burst). Packed: the names' bytes and one separator each, in one block the heap gives back
    whole. Entry names and link targets hold no NUL.
    """
    removed, links, moved = step
    counts = f"{len(removed)},{len(links)},{len(moved)}"
    parts = [counts, *removed]
    for pair in links.items():
        parts.extend(pair)
    for pair in moved.items():
        parts.extend(pair)
    return "\0".join(parts).encode("utf-8", "surrogatepass")


def unpack_step(packed: bytes) -> _Step:
    """The step :func:`pack_step` packed: (names removed, links added, moved), same order."""
    parts = packed.decode("utf-8", "surrogatepass").split("\0")
    n_removed, n_links, n_moved = (int(n) for n in parts[0].split(","))
    at = 1 + n_removed
    links_end = at + 2 * n_links
    removed = tuple(parts[1:at])
    links = dict(zip(parts[at:links_end:2], parts[at + 1 : links_end : 2], strict=True))
    end = links_end + 2 * n_moved
    moved = dict(zip(parts[links_end:end:2], parts[links_end + 1 : end : 2], strict=True))
    return removed, links, moved


def compose_steps(steps: Sequence[_Step]) -> _Step:
    """One step that does what ``steps`` do one after the other (each: names unlinked, then
    entries renamed -- new name -> old name, all at once --, then links added).

    A folder brought forward through several patches would otherwise rename its renumbered
    entries once per patch (20,000 photos: ~20,000 renames per patch of the threshold folders).
    Entries are followed by where they came from: an entry of the first folder (its name
    there) or a link added on the way (its target).
    """
    if len(steps) == 1:
        # The common case (a spare of the base): the step itself, without following ~20,000
        # renumbered entries one call each. Exactly what the general case gives when no name
        # is both unlinked and renamed, renamed twice, or renamed onto and also added.
        gone, new, moved = steps[0]
        sources = set(moved.values())
        if (
            len(set(gone)) == len(gone)
            and len(sources) == len(moved)
            and sources.isdisjoint(gone)
            and moved.keys().isdisjoint(new)
        ):
            renamed = {name: old for name, old in moved.items() if name != old}
            return tuple(gone), dict(new), renamed
    at: dict[str, tuple[bool, str]] = {}  # name now -> (True, original name) | (False, target)
    vacated: set[str] = set()  # original names no longer holding their original entry
    removed: list[str] = []

    def take(name: str) -> tuple[bool, str]:
        found = at.pop(name, None)
        if found is None:
            if name in vacated:
                raise FileNotFoundError(name)
            vacated.add(name)
            found = (True, name)
        return found

    for gone, new, moved in steps:
        for name in gone:
            origin, value = take(name)
            if origin:
                removed.append(value)
        entries = {new_name: take(old_name) for new_name, old_name in moved.items()}
        at.update(entries)
        for name, target in new.items():
            at[name] = (False, target)
    links = {name: value for name, (origin, value) in at.items() if not origin}
    renamed = {name: value for name, (origin, value) in at.items() if origin and name != value}
    return tuple(removed), links, renamed


def _algo_digests(plan: Plan) -> dict[str, str]:
    """algorithm -> the digest of its object, from a plan's generation links."""
    return {algo: link.rsplit("/", 1)[1] for algo, link in plan.generation_links.items()}
