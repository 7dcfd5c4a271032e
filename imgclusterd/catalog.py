"""The photos of the store, kept in memory between refreshes: paths, their order, what changed.

Why it exists: a refresh used to read every hash of every algorithm from the store and rebuild
dictionaries of them (14 x N rows, then per algorithm a dict of paths and a rank per photo) to
find the one photo that arrived: at 20,000 photos that was about a second of a one-photo
refresh, and ~200 MB of resident dicts at 100,000. The catalog follows the store's change
journal (store migration 4) instead: a sync reads only the files changed since the revision it
last saw, and reports them, so that each algorithm's index reads only their hashes.

Ranks: the cluster numbering breaks ties by the first member's path, so every vertex needs the
position of its path in path order. The catalog keeps the paths sorted (``bisect``: a few
changes cost O(log N) comparisons and a memmove) and hands out ranks as one numpy gather.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .store import Store

__all__ = ["Catalog", "CatalogSync"]

log = logging.getLogger(__name__)


@dataclass
class CatalogSync:
    """What one :meth:`Catalog.sync` found.

    ``full``: everything was read again (the first sync, or the journal was pruned past the
    catalog's revision); ``ids`` is then empty and readers must read everything too.
    ``ids``: files whose row or hashes changed (present now or not). ``moved``: present
    before and after under another path. ``old_paths``: the path before this sync of every id
    in ``ids`` that had one (what the previous output shows for it).
    """

    full: bool
    revision: int
    ids: list[int] = field(default_factory=list)
    moved: set[int] = field(default_factory=set)
    old_paths: dict[int, str] = field(default_factory=dict)


class Catalog:
    """file id -> relative path of every hashed, present photo, and their ranks."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.paths: dict[int, str] = {}
        self.revision: int | None = None  # of the store, as of the last sync
        self._sorted_paths: list[str] = []
        self._sorted_ids: list[int] = []
        self._rank_by_id: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def sync(self) -> CatalogSync:
        """Bring the catalog up to date with the store. Call inside ``store.snapshot()``, with
        whatever else must see the same state (the indexes' hash reads)."""
        revision = self.store.revision()
        ids = None if self.revision is None else self.store.changed_since(self.revision)
        if ids is None:
            self.paths = self.store.photo_paths()
            pairs = sorted((path, file_id) for file_id, path in self.paths.items())
            self._sorted_paths = [path for path, _ in pairs]
            self._sorted_ids = [file_id for _, file_id in pairs]
            self._rank_by_id = None
            self.revision = revision
            return CatalogSync(full=True, revision=revision)
        now = self.store.photo_paths(ids) if ids else {}
        change = CatalogSync(full=False, revision=revision, ids=ids)
        moves = []
        for file_id in ids:
            before, after = self.paths.get(file_id), now.get(file_id)
            if before != after:
                moves.append((file_id, before, after))
        # All removals before all insertions: two photos that swapped names must not meet.
        for file_id, before, _ in moves:
            if before is not None:
                change.old_paths[file_id] = before
                self._unlist(before)
                del self.paths[file_id]
        for file_id, before, after in moves:
            if after is not None:
                self.paths[file_id] = after
                self._list(after, file_id)
                if before is not None:
                    change.moved.add(file_id)
        if moves:
            self._rank_by_id = None
        self.revision = revision
        return change

    def ranks(self, keys: Iterable[int] | np.ndarray) -> np.ndarray:
        """The rank (position in path order) of each file id in ``keys``."""
        if self._rank_by_id is None:
            ids = np.asarray(self._sorted_ids, dtype=np.int64)
            # int32: every algorithm's sweep state keeps its photos' ranks (14 x 100,000).
            wide = np.int32 if len(ids) < 2**31 else np.int64
            table = np.full(int(ids.max()) + 1 if len(ids) else 0, -1, dtype=wide)
            table[ids] = np.arange(len(ids))
            self._rank_by_id = table
        found = self._rank_by_id[np.asarray(keys, dtype=np.int64)]
        if len(found) and int(found.min()) < 0:
            raise KeyError("a key that is not in the catalog")
        return found

    def _list(self, path: str, file_id: int) -> None:
        at = bisect.bisect_left(self._sorted_paths, path)
        self._sorted_paths.insert(at, path)
        self._sorted_ids.insert(at, file_id)

    def _unlist(self, path: str) -> None:
        at = bisect.bisect_left(self._sorted_paths, path)
        if at < len(self._sorted_paths) and self._sorted_paths[at] == path:
            del self._sorted_paths[at]
            del self._sorted_ids[at]
