"""One refresh of the whole pipeline: reconcile → hash → cluster → write output.

``imgclusterd scan`` runs :meth:`Pipeline.refresh` once; the daemon keeps one Pipeline alive and
calls the same method after every burst of file events, so there is a single implementation.
What lives across refreshes (the process pool, each algorithm's spanning forest) is what makes
the daemon's refresh incremental: a few new photos cost their own hashing plus O(k·N) distances.

Only this module wires the stages together; each stage knows nothing of the others.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import time
from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import reconcile
from .algorithms import Algorithm, hash_hex
from .catalog import Catalog, CatalogSync
from .cluster import BuildStopped, ClusterIndex, Forest, build_indexes
from .config import Config
from .errors import ConfigError, ImagesFolderError, StoreError
from .explorer import (
    DATA_FILE,
    PAGE_FILES,
    PAGE_VERSION,
    ExplorerAlgorithm,
    ExplorerPhoto,
    PageMemo,
    page_files,
)
from .fsinfo import filesystem_type, is_network_filesystem
from .hashing import FileFacts, HashPlan, HashResult, file_digest, thumbnail_file
from .incremental import AlgorithmState, tree_patches
from .memory import give_back
from .output import (
    Link,
    OutputWriter,
    ThresholdFolder,
    ThresholdPatch,
    WriteReport,
    link_name,
)
from .pool import HashPool
from .store import STORE_NAME, FileRecord, SavedForest, Store
from .thumbnails import THUMBNAIL_FOLDER, missing_thumbnails, prune_thumbnails, thumbnail_path
from .view import LazyFiles, Snapshot

__all__ = [
    "MASS_REMOVAL_MIN",
    "SETTLE_SECONDS",
    "Pipeline",
    "Progress",
    "RefreshReport",
    "StoreView",
    "check_layout",
    "hash_plan",
]

log = logging.getLogger(__name__)

#: Store revisions of the change journal kept for readers that follow the store.
JOURNAL_KEEP = 100

#: phase ("scanning", "hashing", "clustering", "writing"), done, total.
Progress = Callable[[str, int, int], None]

#: A file that fails to decode while modified this recently is probably still being written:
#: it is retried later rather than recorded as unreadable.
SETTLE_SECONDS = 10.0

_COMMIT_EVERY = 64  # hash results per store transaction: few fsyncs, little lost on a crash
#: Fewer vanished photos than this are never a "mass" disappearance (a small folder tidied).
MASS_REMOVAL_MIN = 10
_PROGRESS_EVERY = 0.5  # seconds between progress calls while digesting (watchdog pings)


@dataclass
class RefreshReport:
    """What one refresh did, for the summary line, the log and ``status``."""

    images: int = 0  # hashed photos known after this refresh
    hashed: int = 0  # decoded and hashed now
    copies: int = 0  # recognised by content digest (copy or move across folders), not decoded
    verified: int = 0  # known path, new facts, same content digest: not decoded
    moved: int = 0
    removed: int = 0
    kept: int = 0  # not seen (their folder could not be listed) but kept
    held: int = 0  # vanished in a mass disappearance: kept for now (see _hold_mass_removal)
    held_until: float | None = None  # when a rescan decides about the held ones (clock time)
    full: bool = True  # walked the whole folder (False: looked at the dirty paths only)
    unreadable: int = 0  # known unreadable after this refresh
    new_unreadable: list[tuple[str, str]] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)  # still changing: retry later
    skipped: list[tuple[str, str]] = field(default_factory=list)  # from the walk
    clusters: dict[str, int] = field(default_factory=dict)  # algorithm -> clusters at mid sweep
    generation: str | None = None
    output: WriteReport | None = None
    interrupted: bool = False
    thumbnails_made: int = 0  # by the background pass (make_thumbnails), not while hashing
    timings: dict[str, float] = field(default_factory=dict)
    explorer_seconds: float = 0.0  # of the write timing: the explorer page's data made
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.hashed or self.copies or self.moved or self.removed or self.new_unreadable)

    def summary(self) -> str:
        first = next(iter(self.clusters.items()), None)
        clusters = f", {first[1]} clusters ({first[0]}, mid sweep)" if first else ""
        output = f", output {self.generation}" if self.generation else ""
        return (
            f"{self.images} images, {self.hashed} hashed now, {self.unreadable} unreadable"
            f"{clusters}{output}, {self.seconds:.1f} s"
        )


class Pipeline:
    """The stages of imgclusterd for one images folder, ready to refresh again and again."""

    def __init__(
        self,
        config: Config,
        *,
        stop: threading.Event | None = None,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.time,
        publish: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self.config = config
        self.images = config.images
        self.stop = stop or threading.Event()
        self.progress: Progress = progress or (lambda phase, done, total: None)
        self.clock = clock
        self.algorithms: tuple[Algorithm, ...] = config.algorithm_set
        self.plan = hash_plan(config)
        check_layout(config)
        # output_mode = "mount": no tree is written; each refresh hands a Snapshot of the
        # clusters to ``publish`` (the daemon's FUSE mount), which lists folders on demand.
        self.publish = publish
        self.writer: OutputWriter | None = None
        self._served: tuple[str, Snapshot] | None = None  # (fingerprint, snapshot) published
        self.explorer_seconds = 0.0  # of the last snapshot()
        if config.output_mode == "tree":
            self.writer = OutputWriter(
                config.output,
                keep_generations=config.keep_generations,
                grace_seconds=config.generation_grace,
                lean=True,  # refreshes after the first one patch the tree (write_delta)
            )
            self.writer.check()  # refuse a foreign output before touching anything
            # One process per output, whatever its state dir: two daemons with different state
            # dirs would otherwise swap the same OUTPUT in turns.
            self.writer.acquire()
        try:
            self.store = Store.open(config.store_dir / STORE_NAME)
        except BaseException:
            if self.writer is not None:
                self.writer.release()
            raise
        self._pool: HashPool | None = None
        self._indexes: dict[str, ClusterIndex] = {}
        # Paths and ranks of the store's photos, followed through its change journal; with
        # the indexes, what a refresh reads from the store is what changed (_sync_indexes).
        self.catalog = Catalog(self.store)
        self._forests_saved: int | None = None  # store revision of the last save_forests
        self._explorer_photos: dict[int, ExplorerPhoto] = {}  # cache, see _explorer_page
        self._explorer_stale: set[int] = set()
        self._explorer_thumbnails: object = None
        self._page_memo = PageMemo()
        # What the output last received per algorithm (see incremental): set only after a
        # successful write, so a failed one makes the next refresh plan the whole tree.
        self._states: dict[str, AlgorithmState] = {}
        self._output_cleaned = False  # a write cleans up too; see refresh()
        self._thumbnails_done_at: int | None = None  # store revision of the last full pass
        self._thumbnail_failures: set[bytes] = set()  # digests that did not decode: not again
        #: Called with each folder the refresh lists (tests count them; None in use).
        self.on_folder: Callable[[str], None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        self.save_forests()  # the next start loads them instead of building them again
        if self._pool is not None:
            self._pool.close(cancel=True)
            self._pool = None
        try:
            self.store.close()
        finally:
            if self.writer is not None:
                self.writer.release()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pool(self) -> HashPool:
        # Started on first need and kept: worker start-up (numpy, Pillow, scipy imports) costs
        # far more than hashing one photo, and the daemon hashes a few photos at a time.
        if self._pool is None:
            self._pool = HashPool(self.plan, workers=self.config.worker_count)
        return self._pool

    def release_idle_pool(self, after: float) -> bool:
        """Stop the hashing workers and their fork server once unused for ``after`` seconds;
        True if it did. Idle, they were ~140 MB resident (two workers and the server, 20,000
        photos) of a daemon that may sit for hours; the next refresh that hashes starts them
        again (about a second)."""
        if self._pool is None or time.monotonic() - self._pool.used_at < after:
            return False
        pool, self._pool = self._pool, None
        pool.close(stop_server=True)
        log.debug("hashing workers stopped: unused for %.0f s", after)
        return True

    def shed_idle(self) -> None:
        """Idle for a while now: drop the kept state that the next refresh can remake for
        little (see :meth:`imgclusterd.clusterdelta.SweepState.shed`); what costs a refresh
        real time stays."""
        for state in self._states.values():
            if state.sweep is not None:
                state.sweep.shed()

    # -- one refresh ------------------------------------------------------------------------

    def refresh(
        self, *, force_output: bool = False, dirty: Iterable[str] | None = None
    ) -> RefreshReport:
        """Bring store and output up to date with the images folder. Raises ImagesFolderError
        when the folder is missing, or empty while photos are known (an unmounted drive must
        never look like a mass deletion).

        ``dirty`` (paths absolute or relative to the images folder, as the watcher reports
        them) limits the look at the disk to those paths -- a folder among them is walked --
        so a refresh after a few events costs those events, not the library's size. None
        walks everything (start-up, periodic rescan, SIGHUP, lost events). With
        ``follow_symlinks`` every refresh walks everything: which real path a photo is
        listed under depends on the whole tree.
        """
        started = self.clock()
        tick = time.perf_counter()
        report = RefreshReport()

        self.progress("scanning", 0, 0)
        listing, known, work = self._look_and_plan(dirty, report)
        if not report.full and self._mass_removal(len(work.removed)):
            # Most photos gone at once, seen through events (files moved away one by one, a
            # folder deleted): look at the whole folder before holding them as vanished, as a
            # rescan would; it may be empty (waiting for the photos, not a removal at all).
            log.info("%d of the known photos vanished at once: looking at the whole folder",
                     len(work.removed))
            listing, known, work = self._look_and_plan(None, report)
        report.kept = len(work.kept)
        if report.full:
            self._record_folder_warnings(listing, work)
        self._hold_mass_removal(work, report)
        # Digests first, outside any transaction (file reads must not hold the write lock);
        # then copies, moves and removals in one transaction, copies first so that a copy whose
        # original vanished in this same refresh (cp + rm, a move across filesystems) still
        # finds the original's row and hashes.
        digests, same, to_decode = self._digest_candidates(work, known, listing.files)
        if same or work.backfill:
            # New facts, same content (touched, chmod, copied back): nothing the output shows.
            with self.store.transaction(revise=False):
                for path in [*same, *work.backfill]:
                    self.store.update_facts(path, listing.files[path])
            report.verified = len(same)
            if same:
                log.info("%d photos changed only in their file facts (not re-hashed)", len(same))
        if digests or work.moved or work.removed:
            with self.store.transaction():
                self._reuse_copies(digests, listing.files, report, to_decode)
                # Interrupted while digesting: keep the vanished rows, so that the next refresh
                # can still recognise the copies not digested yet instead of decoding them.
                self._apply_moves(work, listing.files, report, remove=not self.stop.is_set())
        if report.full and self.config.vanished_retention >= 0:
            with self.store.transaction(revise=False):
                self.store.purge_vanished(self.clock() - self.config.vanished_retention)
        to_decode.sort()
        report.timings["scan"] = time.perf_counter() - tick

        tick = time.perf_counter()
        self._hash(to_decode, report)
        report.timings["hash"] = time.perf_counter() - tick
        counts = self.store.counts()
        report.images, report.unreadable = counts["hashed"], counts["unreadable"]
        if self.stop.is_set():
            report.interrupted = True
            report.seconds = self.clock() - started
            return report

        fingerprint = self._fingerprint()
        if self.writer is None:
            self._refresh_view(report, fingerprint, force=force_output)
            if not report.interrupted:
                report.seconds = self.clock() - started
                self._record(report, fingerprint)
                if report.full:  # start-up, rescan, SIGHUP: a cheap moment to keep the forests
                    self.save_forests()
            return report
        last = self.store.get_state("last_refresh") or {}
        current = self.writer.current_generation()
        # The whole tree is checked for damage (one stat per folder) only on refreshes that
        # walk everything (start-up, rescan, SIGHUP); a delta write checks the folders it
        # builds on, and refuses (the whole tree is written then) when one is damaged.
        damaged = report.full and self.writer.needs_repair()
        if (
            report.changed
            or force_output
            or current is None
            or last.get("fingerprint") != fingerprint
            or last.get("generation") != current
            or damaged  # a folder of it deleted or changed: write again
        ):
            tick = time.perf_counter()
            self.progress("clustering", 0, len(self.algorithms))
            # Patches build on the current generation's folders: never on damaged ones.
            incremental = not force_output and self.writer.can_patch() and not damaged
            states, self._states = self._states, {}
            try:
                tree, delta, pending = self._cluster(report, states if incremental else {})
            except (ValueError, LookupError) as exc:
                # The clusters' delta could not be made from what the output last received
                # (a kept numbering that does not match: a bug). The whole tree is right.
                log.warning("cluster delta refused (%s); planning the whole tree", exc)
                report.clusters.clear()
                tree, delta, pending = self._cluster(report, {})
            report.timings["cluster"] = time.perf_counter() - tick
            if self.stop.is_set():
                report.interrupted = True
                report.seconds = self.clock() - started
                return report
            tick = time.perf_counter()
            self.progress("writing", 0, 0)

            def writing(done: int, total: int) -> None:
                self.progress("writing", done, total)

            explorer_started = time.perf_counter()
            extra = self._explorer_page() if self.config.explorer else None
            report.explorer_seconds = time.perf_counter() - explorer_started
            if delta is not None:
                try:
                    report.output = self.writer.write_delta(delta, extra, progress=writing)
                except ValueError as exc:  # a damaged base, or a bug: the whole tree is right
                    log.warning("output patch refused (%s); writing the whole tree", exc)
                    tree, _, pending = self._cluster(report, {})
                    report.output = self.writer.write(tree, extra, progress=writing)
            else:
                report.output = self.writer.write(tree, extra, progress=writing)
            self._states = pending
            report.generation = report.output.generation
            # The sweeps were made during the write, one algorithm at a time: clustering.
            report.timings["write"] = time.perf_counter() - tick - tree.seconds
            report.timings["cluster"] += tree.seconds
            if tree:
                # A whole-tree write's plan held a link reference per photo per threshold
                # folder (44 million at 100,000 photos); glibc keeps most of the freed pages
                # (20,000 photos: 720 MB resident after the first write, 540 MB after this).
                # A delta write's smaller garbage is given back by the daemon once idle.
                del tree
                give_back("a whole-tree write")
        else:
            report.generation = current
            report.clusters = last.get("clusters", {})
            if not self._output_cleaned:
                # Nothing to write, but a run killed mid-write may have left a half-built
                # object, a generation never swapped in or a temporary symlink: clear them now.
                self.writer.cleanup()
        self._output_cleaned = True
        report.seconds = self.clock() - started
        self._record(report, fingerprint)
        if report.full:  # start-up, rescan, SIGHUP: a cheap moment to keep the forests
            self.save_forests()
        return report

    def _record(self, report: RefreshReport, fingerprint: str) -> None:
        """The ``last_refresh`` state row (status, and the next run's "anything to write?")."""
        self.store.set_state(
            "last_refresh",
            {
                "finished": self.clock(),
                "seconds": round(report.seconds, 3),
                "generation": report.generation,
                "fingerprint": fingerprint,
                "images": report.images,
                "unreadable": report.unreadable,
                "hashed": report.hashed,
                "full": report.full,
                "clusters": report.clusters,
                "timings": {k: round(v, 3) for k, v in report.timings.items()},
            },
        )

    def _refresh_view(self, report: RefreshReport, fingerprint: str, *, force: bool) -> None:
        """Mount mode: bring the forests up to date and publish a new snapshot (no writing).

        The folders are listed from the snapshot when a reader asks, so a refresh costs the
        forest update only. Without ``publish`` (``scan`` in mount mode) the store and the
        summary are updated and nothing is served.
        """
        if self._served is not None and self._served[0] == fingerprint and not (
            report.changed or force
        ):
            report.generation = self._served[1].label
            report.clusters = self._served[1].clusters_mid_sweep()
            return
        tick = time.perf_counter()
        self.progress("clustering", 0, len(self.algorithms))
        snapshot = self.snapshot(label=f"view-r{self.store.revision()}")
        report.timings["cluster"] = time.perf_counter() - tick - self.explorer_seconds
        report.timings["explorer"] = self.explorer_seconds
        if self.stop.is_set():
            report.interrupted = True
            return
        if self.publish is not None:
            self.publish(snapshot)  # first: the summary below is for the log and status
        report.clusters = snapshot.clusters_mid_sweep()
        report.generation = snapshot.label
        self._served = (fingerprint, snapshot)
        if self.publish is not None:
            snapshot.warm()  # served already: what its first listings would do, done now

    @property
    def served(self) -> Snapshot | None:
        """The last snapshot published (mount mode)."""
        return self._served[1] if self._served is not None else None

    def snapshot(self, label: str = "") -> Snapshot:
        """The output tree as of the store, for serving on demand (see imgclusterd.view)."""
        try:
            self._sync_indexes()
        except BuildStopped:  # stopping: the caller drops this snapshot
            return Snapshot.build(os.fspath(self.images), {}, [], label=label)
        # A copy: the snapshot is served while later refreshes update the catalog in place.
        paths = dict(self.catalog.paths)
        sweeps = []
        for done, algorithm in enumerate(self.algorithms):
            index = self._indexes[algorithm.name]
            sweeps.append((algorithm.name, algorithm.thresholds, algorithm.bits, index.forest,
                           index.keys(), index.packed))
            self.progress("clustering", done + 1, len(self.algorithms))
            if self.stop.is_set():  # stopping: the caller drops this partial snapshot
                break
        previous = self._served[1] if self._served is not None else None
        tick = time.perf_counter()
        extra = None
        if self.config.explorer:  # at the root of the tree, as in every written generation
            # Made on first read (seconds at 100,000 photos), from the store as it is now.
            extra = LazyFiles(
                [*PAGE_FILES, DATA_FILE],
                self._explorer_later(paths, [(name, thresholds, forest, keys)
                                             for name, thresholds, _, forest, keys, _ in sweeps]),
            )
        self.explorer_seconds = time.perf_counter() - tick
        snapshot = Snapshot.build(os.fspath(self.images), paths, sweeps, previous=previous,
                                  label=label, extra_files=extra)
        return snapshot

    def _explorer_later(
        self, paths: dict[int, str], sweeps: list[tuple[str, Sequence[int], Forest, list[int]]]
    ) -> Callable[[], dict[str, bytes]]:
        """The explorer page of a snapshot, made when called: what it needs from the store is
        read now (the store changes with the next refresh; the forests and keys never do)."""
        thumbs = self.config.store_dir / THUMBNAIL_FOLDER if self.config.thumbnails else None
        digests = self.store.digests() if thumbs else {}
        flat = set(self.store.flat_images())
        images = self.images

        def build() -> dict[str, bytes]:
            return _explorer_files(images, paths, digests, flat, thumbs, sweeps)

        return build

    def make_thumbnails(self, should_stop: Callable[[], bool] | None = None) -> tuple[int, int]:
        """The background thumbnail pass: remove thumbnails whose content no photo has any
        more, make the missing ones (photos hashed before thumbnails existed, or lost ones).

        New photos get theirs while hashed; this is for the rest, so it runs outside refresh
        (``scan`` after its refresh, the daemon in idle time) and stops as soon as
        ``should_stop()`` or the stop event says so. Returns (made now, still missing).
        """
        if self.plan.thumbnail_folder is None:
            return 0, 0
        revision = self.store.revision()
        if revision == self._thumbnails_done_at:
            return 0, 0  # nothing changed since the last complete pass
        folder = Path(self.plan.thumbnail_folder)
        records = self.store.files()
        photos: dict[bytes, str] = {}
        for path, record in sorted(records.items()):
            if record.status == "hashed" and record.digest is not None:
                photos.setdefault(record.digest, path)
        removed = prune_thumbnails(folder, photos)
        if removed:
            log.info("removed %d thumbnails of photos no longer there", removed)
        todo = [
            (digest, os.path.join(self.images, path))
            for digest, path in missing_thumbnails(folder, photos)
            if digest not in self._thumbnail_failures
        ]
        expected = {path: digest for digest, path in todo}
        done = made = 0
        made_digests: set[bytes] = set()
        if todo:
            self.progress("thumbnails", 0, len(todo))
            results = self.pool.map(list(expected), stop=self.stop, task=thumbnail_file)
            try:
                for done, result in enumerate(results, start=1):
                    if result.thumbnail:
                        made += 1
                        made_digests.add(expected[result.path])
                    else:
                        self._thumbnail_failures.add(expected[result.path])
                    self.progress("thumbnails", done, len(todo))
                    if should_stop is not None and should_stop():
                        break
            finally:
                results.close()
        if done == len(todo):
            self._thumbnails_done_at = revision
        if made:
            log.info("made %d thumbnails of photos hashed before (%d left)", made, len(todo) - done)
            # The explorer page written before shows placeholders for them: part of the output
            # fingerprint, so the next refresh writes the page again.
            before = self.store.get_state("thumbnails_made")
            total = int(before or 0) + made
            self.store.set_state("thumbnails_made", total)
            # Only the photos of those contents change on the page: their entries are made
            # again, the others' kept (all made again was ~3 s a refresh at 100,000 photos).
            self._explorer_stale.update(
                r.id for r in records.values() if r.digest in made_digests
            )
            if self._explorer_thumbnails == before:  # the kept entries were up to date
                self._explorer_thumbnails = total
        return made, len(todo) - done

    # -- stages -----------------------------------------------------------------------------

    def _look_and_plan(
        self, dirty: Iterable[str] | None, report: RefreshReport
    ) -> tuple[reconcile.Listing, dict[str, FileRecord], reconcile.Plan]:
        """The disk and the store's records for the scope (see :meth:`_look`), and what to do
        about them. Raises ImagesFolderError for an empty folder where photos are known."""
        listing, known = self._look(dirty, report)
        report.skipped = listing.skipped
        if (
            report.full
            and not listing.files
            and known
            and "" not in listing.unlisted
        ):
            raise ImagesFolderError(
                f"images folder {self.images} is empty but {len(known)} photos are known; "
                "keeping them and the output (is a drive unmounted?)"
            )
        names = [a.name for a in self.algorithms]
        ids = None if report.full else [r.id for r in known.values()]
        complete = self.store.complete_ids(names, self.plan.decode, ids)
        work = reconcile.plan(
            listing.files, known, complete, self.plan.decode, unseen=listing.unseen
        )
        return listing, known, work

    def _look(
        self, dirty: Iterable[str] | None, report: RefreshReport
    ) -> tuple[reconcile.Listing, dict[str, FileRecord]]:
        """The disk and the store's records for the same scope: everything, or the dirty
        paths (and everything under those that are folders)."""
        if not self.images.is_dir():
            raise ImagesFolderError(
                f"images folder {self.images} does not exist or is not a folder "
                "(set `images` in the config or pass --images)"
            )
        exclude = [self.config.output, self.config.store_dir]
        if dirty is not None and self.store.get_state("vanish_hold"):
            dirty = None  # photos are coming back after a mass disappearance: count them all
        if dirty is None or self.config.follow_symlinks:
            report.full = True
            listing = reconcile.walk(
                self.images,
                self.config.extensions,
                follow_symlinks=self.config.follow_symlinks,
                exclude=exclude,
                on_folder=self.on_folder,
            )
            return listing, self.store.files()
        report.full = False
        paths = {rel for rel in map(self._relative, dirty) if rel is not None}
        listing, _ = reconcile.look(
            self.images, paths, self.config.extensions, exclude=exclude,
            on_folder=self.on_folder,
        )
        # Every dirty path counts as a folder too: a folder deleted or moved away is only a
        # missing path now, and the store's records under it must be looked at as well.
        return listing, self.store.files(paths=paths, folders=paths)

    def _relative(self, path: str) -> str | None:
        """A dirty path relative to the images folder, or None when it is not under it. The
        watcher reports paths under the configured folder; a path under its resolved form
        (the folder is a symlink) is accepted too."""
        if not os.path.isabs(path):
            return os.path.normpath(path)
        for root in (os.fspath(self.images), self._resolved_images):
            if path.startswith(root.rstrip(os.sep) + os.sep):
                return os.path.normpath(path[len(root.rstrip(os.sep)) + 1 :])
        return None

    @property
    def _resolved_images(self) -> str:
        return os.path.realpath(self.images)

    def _record_folder_warnings(self, listing: reconcile.Listing, work: reconcile.Plan) -> None:
        """Folders that could not be listed, for status: their photos are kept, not removed,
        which is right for a passing permission problem and wrong for ever if nobody knows."""
        warnings = []
        reasons = dict(listing.skipped)
        for folder in listing.unlisted:
            under = sum(1 for p in work.kept if not folder or p.startswith(folder + "/"))
            reason = reasons.get(folder or ".", "cannot list folder")
            warnings.append(
                f"folder {folder or '.'} in the images folder: {reason}; its {under} known "
                "photos are kept as they were until it can be read again"
            )
        for path in sorted(listing.unknown):
            warnings.append(f"{path} in the images folder: {reasons.get(path, 'cannot stat')}; "
                            "kept as it was")
        if warnings or self.store.get_state("folder_warnings"):
            self.store.set_state("folder_warnings", warnings)
        for warning in warnings:
            log.warning("%s", warning)

    def _hold_mass_removal(self, work: reconcile.Plan, report: RefreshReport) -> None:
        """Most photos vanishing at once is a folder deleted, unmounted or moved away to be
        brought back, far more often than a decision to drop them: keep them (store and
        output unchanged), say so in status, and apply the removal only if they are still
        gone ``mass_removal_grace`` seconds after the last one came back. Once applied, the
        removal is not held again. Moves are not held: their photos are still there.
        """
        hold = self.store.get_state("vanish_hold")
        now = self.clock()
        grace = self.config.mass_removal_grace
        missing = len(work.removed)
        if hold is None:
            if not self._mass_removal(missing):
                return
            known = self.store.counts()["known"]
            hold = {"since": now, "changed": now, "missing": missing, "known": known}
            log.warning(
                "%d of %d known photos vanished at once; keeping them and the output for "
                "%.0f s in case they come back (mass_removal_grace)", missing, known, grace,
            )
        elif report.full:
            if missing == 0:
                log.info("the vanished photos are back (or moved): nothing to remove")
                self.store.set_state("vanish_hold", None)
                return
            if missing < hold["missing"]:
                hold.update(changed=now, missing=missing)  # coming back: wait on
            if now >= hold["changed"] + grace:
                log.warning("%d photos are still gone after %.0f s: removing them", missing,
                            now - hold["since"])
                self.store.set_state("vanish_hold", None)
                return
        elif missing == 0:
            return
        report.held = missing
        report.held_until = hold["changed"] + grace
        work.removed = []
        self.store.set_state("vanish_hold", hold)

    def _mass_removal(self, missing: int) -> bool:
        """Would removing ``missing`` photos now be held as a mass disappearance (when none is
        held yet)? At least MASS_REMOVAL_MIN and more than ``mass_removal_fraction`` of the
        known photos."""
        if missing < MASS_REMOVAL_MIN or self.store.get_state("vanish_hold") is not None:
            return False
        return missing > self.config.mass_removal_fraction * self.store.counts()["known"]

    def _apply_moves(
        self,
        work: reconcile.Plan,
        disk: dict[str, reconcile.Facts],
        report: RefreshReport,
        *,
        remove: bool,
    ) -> None:
        """Renames (same inode) and vanished paths. Call inside a store transaction."""
        removed = work.removed if remove else []
        now = self.clock()
        for old, new in work.moved:
            self.store.move(old, new, disk[new], now)
        # Kept by digest for vanished_retention: a photo that comes back is not decoded again.
        self.store.retire(removed, now)
        report.moved += len(work.moved)  # (moves recognised by content are counted before)
        report.removed = len(removed)
        for old, new in work.moved:
            log.info("moved: %s -> %s (not re-hashed)", old, new)
        if removed:
            log.info("removed %d photos no longer on disk", len(removed))

    def _digest_candidates(
        self, work: reconcile.Plan, known: dict[str, FileRecord], disk: dict[str, reconcile.Facts]
    ) -> tuple[dict[str, bytes], list[str], list[str]]:
        """Content digests that spare a decode: (digests of new paths that may be copies of
        a known or vanished photo, known paths whose content is unchanged, paths to decode).

        A new path is read only when a hashed photo of its size is known. A path to verify
        (same size, new mtime/inode/ctime) is read and compared with its own digest. This
        reads whole files, so it reports progress (the daemon's watchdog ping rides on it)
        and stops early when asked: paths not digested yet are simply left to decode (the
        hashing stage does nothing once stop is set, and the next refresh looks again).
        """
        candidates, others = [], []
        for path in work.to_hash:
            if path not in known and self.store.size_known(disk[path][0]):
                candidates.append(path)
            else:
                others.append(path)
        reads = [(p, False) for p in candidates] + [(p, True) for p in work.to_verify]
        digests: dict[str, bytes] = {}
        same: list[str] = []
        last = time.monotonic()
        for done, (path, verify) in enumerate(reads):
            if self.stop.is_set():
                others += [p for p, _ in reads[done:]]
                break
            if time.monotonic() - last >= _PROGRESS_EVERY:
                self.progress("scanning", done, len(reads))
                last = time.monotonic()
            try:
                digest = file_digest(os.path.join(self.images, path))
            except OSError:
                others.append(path)
                continue
            if not verify:
                digests[path] = digest
            elif digest == known[path].digest:
                same.append(path)
            else:
                others.append(path)
        return digests, same, others

    def _reuse_copies(
        self,
        digests: dict[str, bytes],
        disk: dict[str, reconcile.Facts],
        report: RefreshReport,
        remaining: list[str],
    ) -> None:
        """Reuse the hashes of a known photo with the same content; append the paths with no
        such photo to ``remaining``. Call inside a store transaction, before removals."""
        now = self.clock()
        for path, digest in digests.items():
            source = self.store.find_digest(digest)
            if source is None or source.decode != self.plan.decode:
                remaining.append(path)
                continue
            if self._arrived_from(source, disk[path], disk):
                self.store.move(source.path, path, disk[path], now)
                report.moved += 1
                log.info("moved: %s -> %s (not re-hashed)", source.path, path)
                continue
            self.store.copy_hashes(source, path, disk[path], now)
            report.copies += 1
            log.info("recognised %s as a copy of %s (not re-hashed)", path, source.path)

    def _arrived_from(
        self, source: FileRecord, facts: reconcile.Facts, disk: dict[str, reconcile.Facts]
    ) -> bool:
        """Is this new path the same file (inode) as the known photo ``source``, which left a
        path this refresh did not look at? A move whose departure is still on its way:
        watchdog holds a move's first half ~0.5 s to pair it with its second, and a move into
        a folder not watched yet never pairs, so the folder's walk can come first. Without
        this, the photo was a copy for one refresh (two paths, one gone) and removed in the
        next."""
        return (
            source.gone is None
            and (source.inode, source.device) == (facts[2], facts[3])
            and source.path not in disk
            and not os.path.lexists(os.path.join(self.images, source.path))
        )

    def _hash(self, paths: list[str], report: RefreshReport) -> None:
        if not paths:
            return
        total = len(paths)
        self.progress("hashing", 0, total)
        root = os.fspath(self.images)
        absolute = [os.path.join(root, p) for p in paths]
        pending: list[tuple[str, HashResult]] = []
        for done, result in enumerate(self.pool.map(absolute, stop=self.stop), start=1):
            pending.append((os.path.relpath(result.path, root), result))
            if len(pending) >= _COMMIT_EVERY:
                self._commit(pending, report)
                pending = []
            self.progress("hashing", done, total)
        self._commit(pending, report)

    def _commit(self, results: list[tuple[str, HashResult]], report: RefreshReport) -> None:
        if not results:
            return
        now = self.clock()
        with self.store.transaction():
            for path, result in results:
                if result.facts is None and result.error not in (None, "vanished"):
                    # The worker could not stat/open the file (permission denied) or died
                    # on it (pool.CRASHED) and sent no facts: take them here, so the reason
                    # is recorded and the file retried only when it changes. Without facts
                    # it was deferred, i.e. retried (and reported) on every refresh forever.
                    result.facts = _facts_now(result.path)
                if result.unstable or result.facts is None:
                    if result.error == "vanished":
                        self.store.retire([path], now)
                    else:
                        report.deferred.append(path)
                    continue
                facts = (
                    result.facts.size,
                    result.facts.mtime_ns,
                    result.facts.inode,
                    result.facts.device,
                    result.facts.ctime_ns,
                )
                if result.error is None:
                    self.store.put_hashed(
                        path, facts, result.digest, result.hashes, self.plan.decode, now,
                        flat=result.flat,
                    )
                    report.hashed += 1
                elif now - result.facts.mtime_ns / 1e9 < SETTLE_SECONDS:
                    # Probably a photo still being copied: a truncated JPEG now, fine soon.
                    report.deferred.append(path)
                else:
                    self.store.put_unreadable(path, facts, result.error, now)
                    report.new_unreadable.append((path, result.error))
                    log.warning("unreadable: %s: %s", path, result.error)

    def _cluster(
        self, report: RefreshReport, states: dict[str, AlgorithmState]
    ) -> tuple[_SweepTree, dict[str, list[ThresholdPatch]] | None, dict[str, AlgorithmState]]:
        """Update every algorithm's forest; then either the whole tree (no ``states``: the
        first refresh, or the output cannot be patched) or, per algorithm, the patches from
        ``states`` (what the output last received). Returns (tree, patches or None, the
        states to keep once the output has them)."""
        tree = _SweepTree()
        patches: dict[str, list[ThresholdPatch]] = {}
        try:
            sync, updates = self._sync_indexes()
        except BuildStopped:  # stopping (the caller sees the stop event): nothing to plan
            return tree, None, {}
        # A catalog read again in full knows nothing of what moved: plan the whole tree.
        incremental = (
            bool(states) and not sync.full and all(a.name in states for a in self.algorithms)
        )
        pending: dict[str, AlgorithmState] = {}
        root = os.fspath(self.images)
        paths = self.catalog.paths
        # What the previous output showed for the photos this sync changed (the catalog's
        # dict is updated in place).
        old_paths = ChainMap(sync.old_paths, paths)
        targets: dict[int, str] | None = None  # absolute link targets, for a whole tree
        for done, algorithm in enumerate(self.algorithms):
            index = self._indexes[algorithm.name]
            added, changed, removed = updates[algorithm.name]
            old = states.get(algorithm.name) if incremental else None
            state = AlgorithmState.capture(
                algorithm.bits, index, paths, self.catalog.ranks, old, added, removed
            )
            pending[algorithm.name] = state
            if old is not None:
                thresholds = list(algorithm.thresholds)
                patches[algorithm.name], deltas = tree_patches(
                    replace(old, paths=old_paths), state, thresholds, root, changed,
                    moved=sync.moved, added=added, removed=removed,
                )  # fmt: skip
                if deltas:
                    report.clusters[algorithm.name] = deltas[len(deltas) // 2].clusters
                self.progress("clustering", done + 1, len(self.algorithms))
                if self.stop.is_set():
                    break
                continue
            if targets is None:
                # One target string per photo for every algorithm (at 100,000 photos, 14
                # copies were ~150 MB of the whole-tree plan).
                targets = {file_id: os.path.join(root, path) for file_id, path in paths.items()}
            # What the next refresh's delta starts from (one full sweep, now rather than then).
            state.sweep_state().numbering_for(algorithm.thresholds)
            # Made when the writer asks for it, one algorithm at a time (see _SweepTree).
            tree.makers[algorithm.name] = functools.partial(
                self._sweep_folders, algorithm, index, targets, report
            )
            self.progress("clustering", done + 1, len(self.algorithms))
            if self.stop.is_set():
                break
        return tree, (patches if incremental else None), pending

    def _sweep_folders(
        self,
        algorithm: Algorithm,
        index: ClusterIndex[int],
        targets: dict[int, str],
        report: RefreshReport,
    ) -> list[ThresholdFolder]:
        """One algorithm's sweep as output folders (links named for this algorithm)."""
        paths = self.catalog.paths
        links = {
            file_id: Link(
                name=_link_name(paths[file_id], hash_hex(index.hash_of(file_id), algorithm.bits)),
                target=targets[file_id],
            )
            for file_id in index.key_array().tolist()
        }
        folders = []
        for p in index.sweep(list(algorithm.thresholds), rank_of=paths.__getitem__):
            folders.append(ThresholdFolder(
                threshold=p.threshold,
                clusters=[[links[k] for k in cluster] for cluster in p.clusters],
                unclustered=[links[k] for k in p.unclustered],
            ))  # fmt: skip
            del p  # (each partition as soon as it is folders: ids are bigger than links)
        if folders:
            report.clusters[algorithm.name] = len(folders[len(folders) // 2].clusters)
        return folders

    def _sync_indexes(
        self,
    ) -> tuple[CatalogSync, dict[str, tuple[list[int], list[int], list[int]]]]:
        """Bring the catalog and every algorithm's forest up to date with the store, reading
        only what its change journal lists since the last sync (everything the first time).

        Returns the catalog's changes and, per algorithm, (keys added or with a new hash,
        keys whose hash changed, keys removed). Indexes still empty are built from scratch
        together (:func:`imgclusterd.cluster.build_indexes`: one lockstep loop over the
        algorithms, on every core).
        """
        try:
            return self._sync_indexes_once()
        except BaseException:
            # Half-synced indexes would be trusted next time: start again from the store.
            self.catalog = Catalog(self.store)
            self._indexes = {}
            raise

    def _sync_indexes_once(
        self,
    ) -> tuple[CatalogSync, dict[str, tuple[list[int], list[int], list[int]]]]:
        decode = self.plan.decode
        updates: dict[str, tuple[list[int], list[int], list[int]]] = {}
        cold: list[tuple[ClusterIndex, list[int], np.ndarray]] = []
        restored = 0
        with self.store.snapshot():
            sync = self.catalog.sync()
            for algorithm in self.algorithms:
                index = self._indexes.get(algorithm.name)
                if index is None:
                    limit = max(algorithm.thresholds, default=0)
                    index = ClusterIndex(limit=limit, nbytes=(algorithm.bits + 7) // 8)
                    self._indexes[algorithm.name] = index
                if sync.full or not len(index):
                    rows = self.store.hashes(algorithm.name, decode)
                    wanted = {file_id: bits for file_id, _, bits in rows}
                    del rows
                    if not len(index):
                        keys = list(wanted)
                        if self._restore_index(algorithm.name, index, wanted, sync.revision):
                            updates[algorithm.name] = (keys, [], [])
                            restored += 1
                            continue
                        packed = np.frombuffer(b"".join(wanted.values()), dtype=np.uint8)
                        cold.append((index, keys, packed.reshape(len(keys), index.nbytes)))
                        updates[algorithm.name] = (keys, [], [])
                        continue
                    removed = [k for k in index.key_array().tolist() if k not in wanted]
                else:
                    rows = self.store.hashes(algorithm.name, decode, sync.ids)
                    wanted = {file_id: bits for file_id, _, bits in rows}
                    removed = [k for k in sync.ids if k in index and k not in wanted]
                added = {
                    k: bits
                    for k, bits in wanted.items()
                    if k not in index or index.hash_of(k) != bits
                }
                changed = [k for k in added if k in index]
                if added or removed:
                    index.update(added, removed)
                updates[algorithm.name] = (list(added), changed, removed)
        if restored:
            log.info("%d spanning forests loaded from the store (no build from scratch)",
                     restored)
        if cold:
            tick = time.perf_counter()
            self.progress("clustering", 0, len(cold[0][1]))

            def step(done: int, total: int) -> None:  # status: "clustering 12000/100000"
                self.progress("clustering", done, total)

            build_indexes(cold, workers=self.config.worker_count,
                          should_stop=self.stop.is_set, on_step=step)
            log.info("built %d spanning forests of %d photos from scratch in %.1f s",
                     len(cold), len(cold[0][1]), time.perf_counter() - tick)
            self.save_forests(sync.revision)  # minutes of work at 100,000 photos: keep it
        self._explorer_stale.update(sync.ids)
        if sync.full:
            self._explorer_photos = {}
        self._prune_journal(sync.revision)
        return sync, updates

    def _prune_journal(self, revision: int) -> None:
        """Keep the store's change journal short: what this pipeline has read, but the last
        ``JOURNAL_KEEP`` revisions (for a reader that follows the store, ``imgclusterd
        mount``; one that falls further behind reads everything once), and never what the
        saved forests need to catch up."""
        if self.store.readonly:
            return
        floor = int(self.store.get_state("journal_floor") or 0)
        if revision - floor > 2 * JOURNAL_KEEP:
            upto = revision - JOURNAL_KEEP
            oldest = self.store.oldest_saved_forest()
            if oldest is not None:
                upto = min(upto, oldest)
            if upto <= floor:
                return
            with self.store.transaction(revise=False):
                pruned = self.store.prune_changes(upto)
            log.debug("change journal: %d entries up to revision %d dropped", pruned, upto)

    def save_forests(self, revision: int | None = None) -> bool:
        """Save every algorithm's forest (as of ``revision``, the catalog's by default) in the
        store, so that the next start loads them instead of building them from scratch.
        Called after a cold build, on full refreshes and when the pipeline closes; a failure
        (a full disk) only costs the next start its speed-up."""
        revision = self.catalog.revision if revision is None else revision
        if (
            self.store.readonly
            or revision is None
            or revision == self._forests_saved
            or len(self._indexes) != len(self.algorithms)
        ):
            return False
        tick = time.perf_counter()
        try:
            self.store.save_forests(
                self.plan.decode,
                revision,
                [
                    (a.name, SavedForest(
                        keys=np.asarray(index.key_array(), dtype=np.int64),
                        u=index.forest.u, v=index.forest.v, w=index.forest.w, limit=index.limit,
                    ))
                    for a in self.algorithms
                    for index in [self._indexes[a.name]]
                ],
            )  # fmt: skip
        except (StoreError, sqlite3.Error) as exc:
            log.warning("could not save the spanning forests (the next start builds them "
                        "again): %s", exc)
            return False
        self._forests_saved = revision
        log.debug("saved %d spanning forests at revision %d in %.2f s", len(self.algorithms),
                  revision, time.perf_counter() - tick)
        return True

    def _restore_index(
        self, name: str, index: ClusterIndex, wanted: dict[int, bytes], revision: int
    ) -> bool:
        """Load ``index`` from its saved forest and catch up with the journal since; False
        (index untouched) when there is none or it cannot be trusted."""
        found = self.store.saved_forest(name, self.plan.decode)
        if found is None:
            return False
        saved_at, saved = found
        since = self.store.changed_since(saved_at) if saved_at <= revision else None
        keys = saved.keys.tolist()
        n = len(keys)
        if (
            since is None  # the journal no longer reaches back to it
            or saved.limit < index.limit  # a larger sweep since: edges it dropped count now
            or len(set(keys)) != n
            or not (len(saved.u) == len(saved.v) == len(saved.w) < max(n, 1))
            or (len(saved.u) and max(int(saved.u.max()), int(saved.v.max())) >= n)
        ):
            log.info("%s: the saved forest cannot be used; building it again", name)
            return False
        stale = set(since)
        if any(k not in wanted and k not in stale for k in keys):
            log.warning("%s: the saved forest names photos the store lost unjournaled; "
                        "building it again", name)
            return False
        # Photos changed since the save lose their vertex first (their old bits are not
        # known, and the forest's edges to them are dropped with them), then come back.
        blank = bytes(index.nbytes)
        rows = b"".join(blank if k in stale else wanted[k] for k in keys)
        packed = np.frombuffer(rows, dtype=np.uint8).reshape(n, index.nbytes)
        try:
            index.load(keys, packed, Forest(n, saved.u, saved.v, saved.w, saved.limit))
            gone = [k for k in keys if k in stale]
            if gone:
                index.update({}, gone)
            fresh = {k: bits for k, bits in wanted.items() if k not in index}
            if fresh:
                index.update(fresh)
        except ValueError as exc:
            log.warning("%s: the saved forest does not fit (%s); building it again", name, exc)
            index.load([], np.empty((0, index.nbytes), np.uint8))
            return False
        log.debug("%s: spanning forest loaded (saved at revision %d, %d photos changed since)",
                  name, saved_at, len(stale))
        return True

    def _explorer_page(self) -> dict[str, bytes]:
        """The explorer page's files for the generation's root, from the forests just used.

        Each photo's entry (its record, whether its thumbnail exists) is kept between
        refreshes and made again only for the photos the store changed or the background
        pass made thumbnails of (all, when thumbnails were made by anything else): one stat
        per photo per refresh cost ~0.2 s at 20,000 photos."""
        thumbs = self.config.store_dir / THUMBNAIL_FOLDER if self.config.thumbnails else None
        made = self.store.get_state("thumbnails_made")
        if made != self._explorer_thumbnails:
            self._explorer_photos, self._explorer_thumbnails = {}, made
        cache = self._explorer_photos
        for file_id in self._explorer_stale:
            cache.pop(file_id, None)
        self._explorer_stale = set()
        ids_array, vertices = _explorer_vertices(
            [self._indexes[a.name].key_array() for a in self.algorithms]
        )
        ids = ids_array.tolist()
        missing = [file_id for file_id in ids if file_id not in cache]
        if missing:
            wanted = None if len(missing) > 1000 else [self.catalog.paths[k] for k in missing]
            records = {r.id: r for r in self.store.files(wanted).values()}
            flat = set(self.store.flat_images())
            for file_id in missing:
                record = records[file_id]
                # (the catalog's str of the path, not the record's equal copy: one per photo)
                path = self.catalog.paths.get(file_id)
                if path != record.path:
                    path = record.path
                cache[file_id] = _explorer_photo(self.images, path, record.digest, thumbs, flat)
        photos = [cache[file_id] for file_id in ids]
        algorithms = [
            ExplorerAlgorithm(name=a.name, thresholds=a.thresholds,
                              forest=self._indexes[a.name].forest, vertices=positions)
            for a, positions in zip(self.algorithms, vertices, strict=True)
        ]  # fmt: skip
        return page_files(photos, algorithms, self._page_memo, root=os.fspath(self.images))

    def _fingerprint(self) -> str:
        # The store revision ties the output to the data it was built from: a run killed after
        # committing hashes but before swapping the output in rebuilds it on the next run.
        parts = [self.plan.decode, os.fspath(self.images), os.fspath(self.config.output)]
        parts.append(f"revision:{self.store.revision()}")
        parts += [f"{a.name}:{a.max_threshold}:{a.step}" for a in self.algorithms]
        if self.config.explorer:  # a new page version or new thumbnails: write the page again
            parts.append(f"explorer:{PAGE_VERSION}:{self.store.get_state('thumbnails_made') or 0}")
        return "|".join(parts)


def hash_plan(config: Config, *, thumbnails: bool = True) -> HashPlan:
    """How the workers hash a photo of this config (``imgclusterd similar`` hashes its photo
    the same way, without a thumbnail: the same algorithm set decides fast mode's scale)."""
    return HashPlan(
        algorithms=config.algorithm_set,
        decode=config.decode,
        exif_transpose=config.exif_transpose,
        max_image_pixels=config.max_image_pixels or None,
        max_file_bytes=config.max_file_mb * 2**20 or None,
        thumbnail_folder=(
            os.fspath(config.store_dir / THUMBNAIL_FOLDER)
            if config.thumbnails and thumbnails
            else None
        ),
        thumbnail_size=config.thumbnail_size,
    )


class StoreView(Pipeline):
    """``imgclusterd mount``: the view of a store that someone else keeps current (the daemon,
    a scan), read-only: no walking, hashing or writing, only the forests and snapshots."""

    def __init__(self, config: Config, *, progress: Progress | None = None) -> None:
        path = config.store_dir / STORE_NAME
        if not path.exists():
            raise StoreError(f"no store for {config.images} yet ({path}): run `imgclusterd "
                             "scan` or the daemon first")
        self.config = config
        self.images = config.images
        self.stop = threading.Event()
        self.progress = progress or (lambda phase, done, total: None)
        self.algorithms = config.algorithm_set
        self.plan = HashPlan(algorithms=self.algorithms, decode=config.decode)
        self.writer = None
        self.publish = None
        self._pool = None
        self._indexes = {}
        self._explorer_photos = {}
        self._explorer_stale = set()
        self._explorer_thumbnails = None
        self._page_memo = PageMemo()
        self._served = None
        self.explorer_seconds = 0.0
        self._revision: int | None = None
        self.store = Store.open(path, readonly=True)
        self.catalog = Catalog(self.store)
        self._forests_saved = None

    def __enter__(self) -> StoreView:
        return self

    def update(self) -> Snapshot | None:
        """A new snapshot when the store changed since the last call, else None."""
        revision = self.store.revision()
        if revision == self._revision:
            return None
        snapshot = self.snapshot(label=f"view-r{revision}")
        self._served = (str(revision), snapshot)
        self._revision = revision
        return snapshot


def _explorer_files(
    images: Path,
    paths: dict[int, str],
    digests: dict[int, bytes],
    flat: set[str],
    thumbs: Path | None,
    sweeps: Sequence[tuple[str, Sequence[int], Forest, Sequence[int]]],
) -> dict[str, bytes]:
    """The explorer page's files: ``paths`` and ``digests`` by file id, ``flat`` paths, the
    thumbnail folder, and each algorithm's (name, thresholds, forest, vertex keys)."""
    ids = sorted({k for _, _, _, keys in sweeps for k in keys})
    photos = [
        _explorer_photo(images, paths[file_id], digests.get(file_id), thumbs, flat)
        for file_id in ids
    ]
    return page_files(photos, _explorer_algorithms(ids, sweeps), root=os.fspath(images))


def _explorer_photo(
    images: Path, path: str, digest: bytes | None, thumbs: Path | None, flat: set[str]
) -> ExplorerPhoto:
    """One photo's entry on the explorer page (both modes make their pages with this)."""
    thumb = thumbnail_path(thumbs, digest) if thumbs and digest else None
    return ExplorerPhoto(
        path=path,
        target=os.path.join(images, path),
        thumbnail=os.fspath(thumb) if thumb and thumb.is_file() else None,
        flat=path in flat,
    )


def _explorer_vertices(key_arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The page's photo ids (sorted, each once) and each algorithm's vertices as positions
    among them, from each algorithm's keys in vertex order.

    The algorithms nearly always hold the same photos in the same order: worked out once per
    distinct key array (as lists, a set of every algorithm's keys and a look-up per key were
    ~280,000 Python operations a refresh at 20,000 photos)."""
    distinct: list[np.ndarray] = []
    which: list[int] = []
    for keys in key_arrays:
        keys = np.asarray(keys, dtype=np.int64)
        for i, seen in enumerate(distinct):
            if np.array_equal(keys, seen):
                which.append(i)
                break
        else:
            which.append(len(distinct))
            distinct.append(keys)
    ids = np.unique(np.concatenate(distinct)) if distinct else np.empty(0, np.int64)
    positions = [np.searchsorted(ids, keys) for keys in distinct]
    return ids, [positions[i] for i in which]


def _explorer_algorithms(
    ids: Sequence[int], sweeps: Iterable[tuple[str, Sequence[int], Forest, Sequence[int]]]
) -> list[ExplorerAlgorithm]:
    """Each algorithm's part of the explorer page: its forest, its vertices as positions in
    ``ids`` (the page's photo order)."""
    position = {file_id: i for i, file_id in enumerate(ids)}
    return [
        ExplorerAlgorithm(name=name, thresholds=thresholds, forest=forest,
                          vertices=[position[k] for k in keys])
        for name, thresholds, forest, keys in sweeps
    ]


class _SweepTree(Mapping[str, Sequence[ThresholdFolder]]):
    """The whole tree for the writer, each algorithm's folders made when it is read.

    The writer reads ``tree[algo]`` once per algorithm, plans and builds it, and drops it
    before reading the next (see :meth:`OutputWriter.write`): made all at once, the 14
    algorithms' folders and their plan were gigabytes at 100,000 photos. ``seconds``: the
    time spent sweeping (clustering work, counted as such in the refresh's timings).
    """

    def __init__(self) -> None:
        self.makers: dict[str, Callable[[], list[ThresholdFolder]]] = {}
        self.seconds = 0.0

    def __getitem__(self, algo: str) -> list[ThresholdFolder]:
        make = self.makers[algo]
        started = time.perf_counter()
        try:
            return make()
        finally:
            self.seconds += time.perf_counter() - started

    def __iter__(self) -> Iterator[str]:
        return iter(self.makers)

    def __len__(self) -> int:
        return len(self.makers)


def _facts_now(path: str) -> FileFacts | None:
    try:
        return FileFacts.from_stat(os.stat(path))
    except OSError:
        return None  # gone or unreachable now: deferred, looked at again next refresh


def _link_name(path: str, hexhash: str) -> str:
    stem, ext = os.path.splitext(os.path.basename(path))
    return link_name(stem, hexhash, ext)


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_layout(config: Config) -> None:
    """The store and the output never live inside the images folder: imgclusterd never writes
    there, and a watcher that sees its own writes would loop."""
    for key, path in (("output", config.output), ("state_dir", config.store_dir)):
        if _inside(path, config.images):
            raise ConfigError(
                f"{key}: {path} is inside the images folder {config.images}; imgclusterd "
                "never writes into the images folder, choose a place outside it",
                key=key,
            )
        if _inside(config.images, path):
            raise ConfigError(
                f"{key}: {path} contains the images folder {config.images}; choose a place "
                "beside it",
                key=key,
            )
    fstype = filesystem_type(config.store_dir)
    if is_network_filesystem(fstype):
        # SQLite's WAL needs shared memory and POSIX locks that network filesystems do not
        # honour across clients: a store there can be corrupted. The photos may be remote.
        raise ConfigError(
            f"state_dir: {config.store_dir} is on a network filesystem ({fstype}); the hash "
            "store needs a local disk, choose a local state_dir",
            key="state_dir",
        )

