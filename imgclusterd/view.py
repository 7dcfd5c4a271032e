"""The output tree computed on demand: what ``tree`` mode writes, folder by folder (mount mode).

A :class:`Snapshot` answers "what is at this path" and "what does this folder list" for the
layout of :mod:`imgclusterd.output`, from each algorithm's minimum spanning forest
(:mod:`imgclusterd.cluster`), without ever building the whole tree: at 100,000 photos and the
default sweep the tree has ~44 million entries, a folder has at most N.

Exactness: partitions come from :func:`imgclusterd.cluster.sweep` (the same function the
pipeline calls for ``tree`` mode, so the same cluster numbering), folder names are built with the
same patterns as the writer's plan, and link names follow :func:`imgclusterd.output.link_name`
and :func:`imgclusterd.output.folder_links` (the same unique-name rules and 255-byte cap).

What costs what:

- ``/<algo>``: the name of each threshold folder holds ``U``, the number of unclustered photos.
  A photo is unclustered at ``t`` exactly when its lightest forest edge is heavier than ``t``
  (the forest's components are the graph's), so all ``U`` come from one pass over the edges.
- ``/<algo>/thr_...``: one partition (``O(N log N)`` numpy), kept in a small LRU cache.
- a leaf (cluster or unclustered folder): a gather from the algorithm's :class:`_LinkTable`.
  A photo's link name is the same in every folder of an algorithm (two equal names have equal
  hashes, distance 0, so they always share a folder: see :mod:`imgclusterd.incremental`), so
  the names are made once per algorithm and snapshot, encoded in one buffer, and a leaf's
  listing is its members' offsets into that buffer: no per-entry Python work before readdir.
  The one case where the shortcut is not exact (a numbered ``_k`` name equal to another photo's
  name) falls back to :func:`folder_links` per leaf.

A snapshot is immutable once built: the forests it holds are never modified in place (the
cluster index replaces its arrays on update), so a refresh builds a new snapshot and swaps it
in, and a listing that started on the old one finishes on it. Its top-level files (the explorer
page) may be given as a builder, run once on first read, so publishing is not delayed by them.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .algorithms import hash_hex
from .cluster import Forest, Partition, sweep
from .output import Link, folder_links, link_name

__all__ = ["AlgorithmSweep", "LazyFiles", "Listing", "Node", "Snapshot"]

log = logging.getLogger(__name__)

#: Bytes of partitions kept per snapshot, all algorithms together (a partition of 100,000
#: photos is ~1.2 MB of arrays plus ~270 B per cluster: 1-14 MB). A walk over the whole mount
#: (find, du) visits every threshold of every algorithm; this bounds what it leaves behind.
PARTITION_CACHE_BYTES = 64 * 2**20
#: Leaf entries kept per snapshot across all leaves, where names are made per leaf (rare).
LEAF_CACHE_ENTRIES = 1_000_000

_THR_RE = re.compile(r"thr_(\d+)_unclustered_(\d+)\Z")
_CLUSTER_RE = re.compile(r"(\d+)_(\d+)\Z")
_UNCLUSTERED = -1  # the leaf index of the unclustered folder
# A name of at most this many characters is at most 252 bytes in the file-system encoding
# (UTF-8: up to 4 bytes a character; surrogate escapes: 1), so it needs no 255-byte cap.
_SURELY_SHORT = 63


@dataclass(frozen=True)
class Node:
    """What a path is: ``kind`` is ``root``, ``algo``, ``threshold``, ``leaf`` or ``link``.

    ``leaf`` is a cluster's index (0-based, output order) or -1 for the unclustered folder.
    ``target`` is the photo's absolute path for a link.
    """

    kind: str
    algo: str | None = None
    threshold: int | None = None
    leaf: int | None = None
    target: str | None = None


@dataclass(frozen=True)
class Listing:
    """A folder's entries, encoded for readdir: NUL-terminated names in one ``buffer``.

    Entry ``i`` starts at byte ``starts[i]``; ``runs`` gives the kind (``dir``, ``link``,
    ``file``) of the entries from each index on. The FUSE side hands the kernel pointers into
    the buffer, so listing a 100,000-entry folder creates no Python object per entry.
    """

    buffer: bytes
    starts: np.ndarray  # int64
    runs: tuple[tuple[int, str], ...]

    @classmethod
    def of(cls, names: Sequence[str], runs: tuple[tuple[int, str], ...]) -> Listing:
        if not names:
            return cls(b"", np.empty(0, dtype=np.int64), runs)
        buffer = os.fsencode("\0".join(names)) + b"\0"
        return cls(buffer, _starts(buffer), runs)

    def __len__(self) -> int:
        return len(self.starts)

    def names(self) -> list[str]:
        buffer = self.buffer
        return [os.fsdecode(buffer[s : buffer.index(b"\0", s)]) for s in self.starts.tolist()]

    def entries(self) -> list[tuple[str, str]]:
        """(name, kind) of every entry, in order."""
        names = self.names()
        out = []
        for i, (first, kind) in enumerate(self.runs):
            last = self.runs[i + 1][0] if i + 1 < len(self.runs) else len(names)
            out += [(name, kind) for name in names[first:last]]
        return out


def _starts(buffer: bytes) -> np.ndarray:
    """Where each NUL-terminated name of ``buffer`` starts."""
    ends = np.flatnonzero(np.frombuffer(buffer, dtype=np.uint8) == 0)
    starts = np.empty(len(ends), dtype=np.int64)
    if len(ends):
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
    return starts


class _LRU:
    """A small thread-safe LRU keyed by anything, bounded by a total weight."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._weight = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._weight = 0

    def put(self, key: Hashable, value: Any, weight: int = 1) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._weight -= old[1]
            self._items[key] = (value, weight)
            self._weight += weight
            while self._weight > self.capacity and len(self._items) > 1:
                _, (_, dropped) = self._items.popitem(last=False)
                self._weight -= dropped


class _Cut:
    """One threshold of one algorithm: its partition, folder names, and each vertex's leaf."""

    def __init__(self, partition: Partition, n: int) -> None:
        self.partition = partition
        p = partition
        self.children = {f"{str(i).zfill(3)}_{len(c)}": i - 1 for i, c in enumerate(p.clusters, 1)}
        self.children[f"unclustered_{len(p.unclustered)}"] = _UNCLUSTERED
        self._n = n
        self._labels: np.ndarray | None = None

    def members(self, leaf: int) -> np.ndarray:
        p = self.partition
        return p.unclustered if leaf == _UNCLUSTERED else p.clusters[leaf]

    def leaf_of(self, vertex: int) -> int:
        if self._labels is None:  # built on the first link looked up at this threshold
            labels = np.full(self._n, _UNCLUSTERED, dtype=np.int32)
            clusters = self.partition.clusters
            if clusters:
                sizes = np.fromiter(map(len, clusters), dtype=np.int64, count=len(clusters))
                labels[np.concatenate(clusters)] = np.repeat(
                    np.arange(len(clusters), dtype=np.int32), sizes)
            self._labels = labels
        return int(self._labels[vertex])


class _LinkTable:
    """Every vertex's link name in one algorithm, as in every folder of it (module doc).

    ``buffer`` holds the names, NUL-terminated, in vertex order; ``starts[v]`` is where
    vertex ``v``'s begins. ``exact`` is False where a folder's own numbering could differ
    (then leaves are named one by one with :func:`folder_links`).
    """

    def __init__(self, buffer: bytes, starts: np.ndarray, exact: bool,
                 numbered: bool = False, made_from: tuple[Any, ...] = ()) -> None:
        self.buffer = buffer
        self.starts = starts
        self.exact = exact
        self.numbered = numbered  # some names carry a folder's _k (not plain link names)
        self.made_from = made_from  # (keys, packed, paths, root): to hand the names on
        self._lock = threading.Lock()
        self._hashes: tuple[np.ndarray, np.ndarray] | None = None

    def vertex(self, name: bytes) -> int | None:
        """The vertex named ``name``: a sorted array of the names' hashes (8 bytes a photo,
        not a dict of N names), built on the first lookup."""
        with self._lock:
            if self._hashes is None:
                names = self.buffer.split(b"\0")[:-1]
                values = np.fromiter(map(hash, names), dtype=np.int64, count=len(names))
                order = np.argsort(values, kind="stable")
                self._hashes = (values[order], order)
        values, order = self._hashes
        wanted = hash(name)
        at = int(np.searchsorted(values, wanted))
        buffer = self.buffer
        while at < len(values) and values[at] == wanted:
            v = int(order[at])
            start = int(self.starts[v])
            if buffer[start : start + len(name) + 1] == name + b"\0":
                return v
            at += 1
        return None

    @classmethod
    def build(cls, sweep_: AlgorithmSweep, previous: _LinkTable | None = None) -> _LinkTable:
        """The names of ``sweep_``'s vertices; those of ``previous`` (the same algorithm in
        the snapshot before) are reused when its vertices are the first ones here with the same
        paths and hashes -- a refresh that adds photos names only the new ones."""
        keys, packed, files = sweep_.keys, sweep_.packed, sweep_.files
        made_from = (keys, packed, files.paths, files.root)
        if not files.targets_ok():
            return cls(b"", np.empty(0, dtype=np.int64), False)  # folder_links says why
        start = _reusable(previous, keys, packed, files) if previous is not None else 0
        vertices = np.arange(start, len(keys))
        names = _plain_names(files.stems(keys[start:]), sweep_.hexes(vertices))
        text = "\0".join(names)
        # folder_links refuses a name with "/" or NUL: leave that to it, leaf by leaf.
        if "/" in text or text.count("\0") != max(0, len(names) - 1):
            return cls(b"", np.empty(0, dtype=np.int64), False)
        if start:
            assert previous is not None
            part = os.fsencode(text) + b"\0" if names else b""
            taken = set(previous.buffer.split(b"\0"))
            added = part.split(b"\0")[:-1]
            if len(set(added)) == len(added) and taken.isdisjoint(added):
                buffer = previous.buffer + part
                starts = np.concatenate([previous.starts, _starts(part) + len(previous.buffer)])
                return cls(buffer, starts, True, False, made_from)
            # A new photo has an earlier one's name: name them all, numbering included.
            names = _plain_names(files.stems(keys), sweep_.hexes())
            text = "\0".join(names)
        numbered = _number_duplicates(names, lambda v: files.target(keys[v]))
        if numbered is None:  # a folder could number differently: folder_links per leaf
            return cls(b"", np.empty(0, dtype=np.int64), False)
        if numbered is not names:
            text = "\0".join(numbered)  # equal names numbered: join again
        buffer = os.fsencode(text) + b"\0" if names else b""
        return cls(buffer, _starts(buffer), True, numbered is not names, made_from)


def _plain_names(stems: Sequence[tuple[str, str]], hexes: Sequence[str]) -> list[str]:
    """:func:`link_name` of each (stem, extension) and hash hex."""
    names = [f"{s}_{h}{e}" for (s, e), h in zip(stems, hexes, strict=True)]
    for v in [v for v, name in enumerate(names) if len(name) > _SURELY_SHORT]:
        stem, ext = stems[v]
        names[v] = link_name(stem, hexes[v], ext)
    return names


def _reusable(previous: _LinkTable, keys: Sequence[Hashable], packed: np.ndarray,
              files: _Files) -> int:
    """How many of the first vertices keep ``previous``'s names: all of its vertices when
    they lead ``keys`` with the same hashes and paths, else 0."""
    if not previous.exact or previous.numbered or not previous.made_from:
        return 0
    old_keys, old_packed, old_paths, old_root = previous.made_from
    m = len(old_keys)
    if (
        m == 0 or m > len(keys) or old_root != files.root
        or list(keys[:m]) != list(old_keys)
        or not np.array_equal(packed[:m], old_packed)
    ):
        return 0
    paths = files.paths
    if old_paths is not paths and any(paths.get(k) != old_paths[k] for k in old_keys):
        return 0
    return m


def _number_duplicates(names: list[str], target: Callable[[int], str]) -> list[str] | None:
    """The names with each group of equal names numbered as :func:`folder_links` numbers it
    (``names`` itself when all differ), or None when a folder could number differently: a
    numbered name equal to another photo's name, which folder_links skips only in the folders
    where that photo is."""
    seen = set(names)
    if len(seen) == len(names):
        return names
    counted: set[str] = set()
    equal = {name for name in names if name in counted or counted.add(name)}  # type: ignore[func-returns-value]
    groups: dict[str, list[int]] = {}
    for v, name in enumerate(names):
        if name in equal:
            groups.setdefault(name, []).append(v)
    out = list(names)
    given: set[str] = set()
    for name, vertices in groups.items():
        by_target = {target(v): v for v in vertices}
        for numbered, path in folder_links([Link(name, t) for t in by_target]).items():
            if numbered != name:
                if numbered in seen or numbered in given:
                    return None
                given.add(numbered)
            out[by_target[path]] = numbered
    return out


class AlgorithmSweep:
    """One algorithm's folders at every threshold, computed when asked, from its forest.

    Vertex ``v`` of ``forest`` is the photo ``keys[v]``; ``packed[v]`` is its hash (``nbits``
    bits, packed big-endian as the store keeps it); ``rank(keys)`` gives each vertex's sort
    key position (the photo's path order), the tie-break of the cluster numbering.
    """

    def __init__(
        self,
        name: str,
        thresholds: Sequence[int],
        nbits: int,
        forest: Forest,
        keys: Sequence[Hashable],
        packed: np.ndarray,
        files: _Files,
    ) -> None:
        if len(keys) != forest.n or len(packed) != forest.n:
            raise ValueError(f"{name}: {forest.n} vertices but {len(keys)} keys, "
                             f"{len(packed)} hashes")
        self.name = name
        self.thresholds = tuple(int(t) for t in thresholds)
        self.nbits = nbits
        self.forest = forest
        self.keys = keys
        self.packed = packed
        self.files = files
        self._lock = threading.Lock()
        self._ranks: np.ndarray | None = None
        self._folders: dict[str, int] | None = None  # threshold folder name -> threshold
        self._unclustered: dict[int, int] | None = None
        self.cuts = _LRU(PARTITION_CACHE_BYTES)  # the snapshot's, shared by its algorithms
        self._table: _LinkTable | None = None
        self._table_lock = threading.Lock()
        self.inherited: _LinkTable | None = None  # the previous snapshot's names

    def __len__(self) -> int:
        return self.forest.n

    # -- counts without partitions --------------------------------------------------------

    def unclustered_counts(self) -> dict[int, int]:
        """threshold -> number of unclustered photos, for every threshold of the sweep."""
        with self._lock:
            if self._unclustered is None:
                f = self.forest
                lightest = np.full(f.n, np.iinfo(np.int64).max, dtype=np.int64)
                weights = f.w.astype(np.int64)
                np.minimum.at(lightest, f.u, weights)
                np.minimum.at(lightest, f.v, weights)
                lightest.sort()
                # Unclustered at t: lightest incident forest edge > t (or none).
                self._unclustered = {
                    t: int(f.n - np.searchsorted(lightest, t, side="right"))
                    for t in self.thresholds
                }
            return self._unclustered

    def cluster_count(self, threshold: int) -> int:
        """Clusters (two or more photos) at ``threshold``: components minus singletons."""
        edges = int(np.searchsorted(self.forest.w, threshold, side="right"))
        return self.forest.n - edges - self.unclustered_counts()[threshold]

    def folder_names(self) -> dict[str, int]:
        """``thr_<TTT>_unclustered_<U>`` -> threshold, in sweep order."""
        if self._folders is None:
            counts = self.unclustered_counts()
            self._folders = {
                f"thr_{str(t).zfill(3)}_unclustered_{counts[t]}": t for t in self.thresholds
            }
        return self._folders

    # -- partitions ---------------------------------------------------------------------------

    def ranks(self) -> np.ndarray:
        with self._lock:
            if self._ranks is None:
                self._ranks = self.files.ranks(self.keys)
            return self._ranks

    def cut(self, threshold: int) -> _Cut:
        found = self.cuts.get((self.name, threshold))
        if found is None:
            found = _Cut(sweep(self.forest, [threshold], self.ranks())[0], self.forest.n)
            size = 12 * self.forest.n + 270 * len(found.partition.clusters)
            self.cuts.put((self.name, threshold), found, size)
        return found

    def partition(self, threshold: int) -> Partition:
        return self.cut(threshold).partition

    def children(self, threshold: int) -> dict[str, int]:
        """The entries of a threshold folder: ``<CCC>_<size>`` -> cluster index, and
        ``unclustered_<U>`` -> -1 (the writer's names, in its order)."""
        return self.cut(threshold).children

    def members(self, threshold: int, leaf: int) -> np.ndarray:
        return self.cut(threshold).members(leaf)

    # -- link names -----------------------------------------------------------------------------

    def hexes(self, vertices: np.ndarray | None = None) -> list[str]:
        """The hash hex of these vertices (default: all), as ImageHash prints it."""
        rows = self.packed if vertices is None else self.packed[vertices]
        nbytes = rows.shape[1] if rows.ndim == 2 else 0
        if self.nbits == nbytes * 8:
            # hash_hex of a whole number of bytes is their hex: one call for all rows.
            text = np.ascontiguousarray(rows).tobytes().hex()
            step = 2 * nbytes
            return [text[i : i + step] for i in range(0, len(text), step)]
        return [hash_hex(row.tobytes(), self.nbits) for row in rows]

    def table(self) -> _LinkTable:
        """The link names of every vertex (built on the first leaf listed in this snapshot,
        from the previous snapshot's names where they still hold)."""
        with self._table_lock:
            if self._table is None:
                started = time.perf_counter()
                self._table = _LinkTable.build(self, self.inherited)
                self.inherited = None
                log.debug("%s: %d link names in %.3f s (exact: %s)", self.name, len(self.keys),
                          time.perf_counter() - started, self._table.exact)
            return self._table

    def handed_on(self) -> _LinkTable | None:
        """The names the next snapshot may start from: this one's, or what it was given (only
        ever one table back, so snapshots never hold on to a chain of old ones)."""
        return self._table or self.inherited

    def links(self, vertices: np.ndarray) -> list[Link]:
        """The links of these vertices, named as the pipeline names them for ``tree`` mode
        (before a folder's unique-name numbering)."""
        stems = self.files.stems([self.keys[v] for v in vertices.tolist()])
        out = []
        for v, (stem, ext), hexhash in zip(vertices.tolist(), stems, self.hexes(vertices),
                                           strict=True):
            out.append(Link(link_name(stem, hexhash, ext), self.files.target(self.keys[v])))
        return out


def _split_name(path: str) -> tuple[str, str]:
    """``os.path.splitext(os.path.basename(path))``, a third of its cost (no generic path)."""
    base = path.rpartition("/")[2]
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem.lstrip("."):  # no dot, or only leading dots: no extension
        return base, ""
    return stem, dot + ext


class _Files:
    """The photos of a snapshot: key -> relative path, with what a link name needs.

    ``stems`` (relative path -> stem, extension) are kept as leaves are named and handed on to
    the next snapshot: splitting 100,000 paths costs more than naming their links, and paths
    rarely change between refreshes.
    """

    def __init__(self, root: str, paths: Mapping[Any, str],
                 parts: dict[str, tuple[str, str]] | None = None) -> None:
        self.root = root
        self.paths = paths
        self._parts: dict[str, tuple[str, str]] = parts if parts is not None else {}
        self._lock = threading.Lock()
        self._rank: tuple[Sequence[Hashable], np.ndarray] | None = None
        self._targets_ok: bool | None = None

    def stems(self, keys: Sequence[Hashable]) -> list[tuple[str, str]]:
        """Each key's (stem, extension), as ``os.path.splitext`` of its file name."""
        paths = self.paths
        with self._lock:
            parts = self._parts
            wanted = [paths[k] for k in keys]
            new = [p for p in wanted if p not in parts]
            parts.update(zip(new, map(_split_name, new), strict=True))
            return [parts[p] for p in wanted]

    def target(self, key: Hashable) -> str:
        return os.path.join(self.root, self.paths[key])

    def targets_ok(self) -> bool:
        """Every target absolute and free of NUL (what folder_links checks), for all keys."""
        if self._targets_ok is None:
            text = "\n".join(self.paths.values())
            self._targets_ok = (
                "\0" not in self.root and "\0" not in text
                and (os.path.isabs(self.root) or all(map(os.path.isabs, self.paths.values())))
            )
        return self._targets_ok

    def handed_on(self, root: str, paths: Mapping[Any, str]) -> _Files:
        """The files of the next snapshot, keeping what this one learnt about paths."""
        with self._lock:
            parts = self._parts if root == self.root else {}
            if len(parts) > 2 * len(paths) + 1000:  # many photos gone: drop theirs
                wanted = set(paths.values())
                parts = {p: v for p, v in parts.items() if p in wanted}
            return _Files(root, paths, parts)

    def ranks(self, keys: Sequence[Hashable]) -> np.ndarray:
        """Each key's position in the path order of ``keys`` (the pipeline ranks by path over
        all photos: the same order among these keys, which is all a sweep uses). Algorithms
        usually index the same keys in the same order: one sort serves them all."""
        with self._lock:
            if self._rank is not None and self._rank[0] == keys:
                return self._rank[1]
            paths = [self.paths[k] for k in keys]
            order = np.fromiter(sorted(range(len(paths)), key=paths.__getitem__),
                                dtype=np.intp, count=len(paths))
            ranks = np.empty(len(paths), dtype=np.int64)
            ranks[order] = np.arange(len(paths))
            self._rank = (keys, ranks)
            return ranks


class LazyFiles(Mapping[str, bytes]):
    """Files whose names are known now and whose contents are made on first read, once.

    The explorer page at 100,000 photos takes seconds to build; a snapshot is published
    without it, and the first reader of any of its files builds them all (from what the
    snapshot's builder captured, so the page matches the snapshot, not a later store).
    """

    def __init__(self, names: Sequence[str], build: Callable[[], Mapping[str, bytes]]) -> None:
        self._names = tuple(names)
        self._build: Callable[[], Mapping[str, bytes]] | None = build
        self._files: Mapping[str, bytes] | None = None
        self._lock = threading.Lock()

    @property
    def built(self) -> bool:
        return self._files is not None

    def _contents(self) -> Mapping[str, bytes]:
        with self._lock:
            if self._files is None:
                assert self._build is not None
                started = time.perf_counter()
                files = self._build()
                missing = set(self._names) - set(files)
                if missing:
                    raise ValueError(f"the builder did not make {sorted(missing)}")
                self._files, self._build = files, None  # drop what the builder captured
                log.info("top-level files built on first read in %.2f s",
                         time.perf_counter() - started)
            return self._files

    def __getitem__(self, name: str) -> bytes:
        if name not in self._names:
            raise KeyError(name)
        return self._contents()[name]

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class Snapshot:
    """The whole output tree at one moment, resolved and listed on demand (see module doc).

    ``extra_files``: files at the top level of the tree (name -> content), as the writer puts
    into each generation; a :class:`LazyFiles` to build them on first read.
    """

    def __init__(
        self,
        algorithms: Sequence[AlgorithmSweep],
        *,
        label: str = "",
        extra_files: Mapping[str, bytes] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.algorithms = {a.name: a for a in algorithms}
        self.label = label
        self.created = clock()
        self.extra_files: Mapping[str, bytes] = (
            extra_files if isinstance(extra_files, LazyFiles) else dict(extra_files or {})
        )
        self._leaves = _LRU(LEAF_CACHE_ENTRIES)
        self._files = _Files("", {})

    @classmethod
    def build(
        cls,
        root: str,
        paths: Mapping[Any, str],
        algorithms: Sequence[tuple[str, Sequence[int], int, Forest, Sequence[Hashable],
                                   np.ndarray]],
        previous: Snapshot | None = None,
        **kwargs: Any,
    ) -> Snapshot:
        """From ``(name, thresholds, nbits, forest, keys, packed)`` per algorithm and the
        photos' relative ``paths`` by key under ``root``. ``previous``: the snapshot this one
        replaces (what it learnt about paths is reused)."""
        files = previous._files.handed_on(root, paths) if previous else _Files(root, paths)
        snapshot = cls([AlgorithmSweep(*a, files=files) for a in algorithms], **kwargs)
        snapshot._files = files
        cuts = _LRU(PARTITION_CACHE_BYTES)
        for sweep_ in snapshot.algorithms.values():
            sweep_.cuts = cuts
        if previous is not None:
            for name, sweep_ in snapshot.algorithms.items():
                before = previous.algorithms.get(name)
                if before is not None and before.nbits == sweep_.nbits:
                    sweep_.inherited = before.handed_on()
        return snapshot

    def warm(self) -> None:
        """Work out now what every first listing would otherwise: each photo's path split
        (stem and extension), each algorithm's link names (from the previous snapshot's where
        they hold) and ranks. Called right after the snapshot is published, from the
        refreshing thread: a listing that comes first waits for (or does) the same work, so
        nothing is done twice, and the first listing of a 98,000-photo folder costs its
        partition and a gather instead of 0.77 s of naming."""
        for sweep_ in self.algorithms.values():
            self._files.stems(sweep_.keys)
            break  # the same photos in every algorithm, give or take a few
        for sweep_ in self.algorithms.values():
            sweep_.table()
            sweep_.ranks()

    @classmethod
    def empty(cls, label: str = "empty") -> Snapshot:
        return cls([], label=label)

    # -- resolving --------------------------------------------------------------------------

    def resolve(self, path: str) -> Node | None:
        """The node at ``path`` ("/", "/phash_8/thr_000_unclustered_3/...") or None."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            return Node("root")
        sweep_ = self.algorithms.get(parts[0])
        if sweep_ is None:
            if len(parts) == 1 and parts[0] in self.extra_files:
                return Node("file", target=parts[0])
            return None
        if len(parts) == 1:
            return Node("algo", parts[0])
        threshold = sweep_.folder_names().get(parts[1])
        if threshold is None:
            return None
        if len(parts) == 2:
            return Node("threshold", parts[0], threshold)
        cut = sweep_.cut(threshold)
        leaf = cut.children.get(parts[2])
        if leaf is None:
            return None
        if len(parts) == 3:
            return Node("leaf", parts[0], threshold, leaf)
        if len(parts) > 4:
            return None
        table = sweep_.table()
        if table.exact:
            v = table.vertex(os.fsencode(parts[3]))
            if v is None or cut.leaf_of(v) != leaf:
                return None
            target: str | None = sweep_.files.target(sweep_.keys[v])
        else:
            target = self.leaf_entries(sweep_, threshold, leaf).get(parts[3])
        return None if target is None else Node("link", parts[0], threshold, leaf, target)

    def listing(self, node: Node) -> Listing:
        """A folder's entries, encoded (see :class:`Listing`)."""
        if node.kind == "root":
            return Listing.of([*self.algorithms, *self.extra_files],
                              ((0, "dir"), (len(self.algorithms), "file")))
        assert node.algo is not None
        sweep_ = self.algorithms[node.algo]
        if node.kind == "algo":
            return Listing.of(list(sweep_.folder_names()), ((0, "dir"),))
        assert node.threshold is not None
        if node.kind == "threshold":
            return Listing.of(list(sweep_.children(node.threshold)), ((0, "dir"),))
        if node.kind == "leaf":
            assert node.leaf is not None
            table = sweep_.table()
            if table.exact:
                members = sweep_.members(node.threshold, node.leaf)
                return Listing(table.buffer, table.starts[members], ((0, "link"),))
            names = list(self.leaf_entries(sweep_, node.threshold, node.leaf))
            return Listing.of(names, ((0, "link"),))
        raise NotADirectoryError(node.kind)

    def listdir(self, node: Node) -> list[tuple[str, str]]:
        """A folder's entries as (name, kind): kind ``dir``, ``link`` or ``file``."""
        return self.listing(node).entries()

    def leaf_entries(self, sweep_: AlgorithmSweep, threshold: int, leaf: int) -> dict[str, str]:
        """A leaf's name -> target, made for this leaf alone with :func:`folder_links`."""
        key = (sweep_.name, threshold, leaf)
        found = self._leaves.get(key)
        if found is None:
            found = folder_links(sweep_.links(sweep_.members(threshold, leaf)))
            self._leaves.put(key, found, max(1, len(found)))
        return found

    def retire(self) -> None:
        """No longer the snapshot served: drop what it caches (partitions, per-leaf names).
        It still answers a reader inside it, recomputing what that reader asks for; kept
        caches would hold up to PARTITION_CACHE_BYTES per snapshot kept for the grace period."""
        self._leaves.clear()
        for sweep_ in self.algorithms.values():
            sweep_.cuts.clear()

    # -- for status and the log ---------------------------------------------------------------

    @property
    def photos(self) -> int:
        return max((len(a) for a in self.algorithms.values()), default=0)

    def clusters_mid_sweep(self) -> dict[str, int]:
        """algorithm -> clusters at its middle threshold (the pipeline's summary figure)."""
        out = {}
        for name, sweep_ in self.algorithms.items():
            if sweep_.thresholds:
                out[name] = sweep_.cluster_count(sweep_.thresholds[len(sweep_.thresholds) // 2])
        return out
