"""The output tree computed on demand: what ``tree`` mode writes, folder by folder (mount mode).

A :class:`Snapshot` answers "what is at this path" and "what does this folder list" for the
layout of :mod:`imgclusterd.output`, from each algorithm's minimum spanning forest
(:mod:`imgclusterd.cluster`), without ever building the whole tree: at 100,000 photos and the
default sweep the tree has ~44 million entries, a folder has at most N.

Exactness: partitions come from :func:`imgclusterd.cluster.sweep` (the same function the
pipeline calls for ``tree`` mode, so the same cluster numbering), folder names are built with the
same patterns as the writer's plan, and link names with :func:`imgclusterd.output.link_name` and
:func:`imgclusterd.output.folder_links` (the same unique-name rules and 255-byte cap).

What costs what:

- ``/<algo>``: the name of each threshold folder holds ``U``, the number of unclustered photos.
  A photo is unclustered at ``t`` exactly when its lightest forest edge is heavier than ``t``
  (the forest's components are the graph's), so all ``U`` come from one pass over the edges.
- ``/<algo>/thr_...``: one partition (``O(N log N)`` numpy), kept in a small LRU cache.
- a leaf (cluster or unclustered folder): its members' link names; also cached, by entries.

A snapshot is immutable once built: the forests it holds are never modified in place (the
cluster index replaces its arrays on update), so a refresh builds a new snapshot and swaps it
in, and a listing that started on the old one finishes on it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .algorithms import hash_hex
from .cluster import Forest, Partition, sweep
from .output import Link, folder_links, link_name

__all__ = ["AlgorithmSweep", "Node", "Snapshot"]

log = logging.getLogger(__name__)

#: Partitions kept per algorithm (~2 arrays of N integers each).
PARTITION_CACHE = 8
#: Leaf entries kept per snapshot across all leaves (names + targets).
LEAF_CACHE_ENTRIES = 1_000_000

_THR_RE = re.compile(r"thr_(\d+)_unclustered_(\d+)\Z")
_CLUSTER_RE = re.compile(r"(\d+)_(\d+)\Z")
_UNCLUSTERED = -1  # the leaf index of the unclustered folder


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
        self._partitions = _LRU(PARTITION_CACHE)
        self._children = _LRU(PARTITION_CACHE)

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

    def partition(self, threshold: int) -> Partition:
        found = self._partitions.get(threshold)
        if found is None:
            found = sweep(self.forest, [threshold], self.ranks())[0]
            self._partitions.put(threshold, found)
        return found

    def children(self, threshold: int) -> dict[str, int]:
        """The entries of a threshold folder: ``<CCC>_<size>`` -> cluster index, and
        ``unclustered_<U>`` -> -1 (the writer's names, in its order)."""
        found = self._children.get(threshold)
        if found is None:
            p = self.partition(threshold)
            found = {f"{str(i).zfill(3)}_{len(c)}": i - 1 for i, c in enumerate(p.clusters, 1)}
            found[f"unclustered_{len(p.unclustered)}"] = _UNCLUSTERED
            self._children.put(threshold, found)
        return found

    def members(self, threshold: int, leaf: int) -> np.ndarray:
        p = self.partition(threshold)
        return p.unclustered if leaf == _UNCLUSTERED else p.clusters[leaf]

    def links(self, vertices: np.ndarray) -> list[Link]:
        """The links of these vertices, named as the pipeline names them for ``tree`` mode."""
        nbytes = self.packed.shape[1] if self.packed.ndim == 2 else 0
        rows = self.packed[vertices]
        if self.nbits == nbytes * 8:
            # hash_hex of a whole number of bytes is their hex: one call for the whole leaf.
            text = rows.tobytes().hex()
            step = 2 * nbytes
            hexes = [text[i : i + step] for i in range(0, len(text), step)]
        else:
            hexes = [hash_hex(row.tobytes(), self.nbits) for row in rows]
        keys = self.keys
        files = self.files
        out = []
        for v, hexhash in zip(vertices.tolist(), hexes, strict=True):
            stem, ext, target = files.parts(keys[v])
            out.append(Link(link_name(stem, hexhash, ext), target))
        return out


class _Files:
    """The photos of a snapshot: key -> relative path, with the parts a link needs.

    ``parts`` (relative path -> stem, extension, absolute target) is filled as leaves are
    listed and handed on to the next snapshot: splitting a path costs more than naming its
    link, and paths rarely change between refreshes.
    """

    def __init__(self, root: str, paths: Mapping[Any, str],
                 parts: dict[str, tuple[str, str, str]] | None = None) -> None:
        self.root = root
        self.paths = paths
        self._parts: dict[str, tuple[str, str, str]] = parts if parts is not None else {}
        self._lock = threading.Lock()
        self._rank: dict[Hashable, int] | None = None

    def parts(self, key: Hashable) -> tuple[str, str, str]:
        path = self.paths[key]
        found = self._parts.get(path)
        if found is None:
            stem, ext = os.path.splitext(os.path.basename(path))
            found = self._parts[path] = (stem, ext, os.path.join(self.root, path))
        return found

    def handed_on(self, root: str, paths: Mapping[Any, str]) -> _Files:
        """The files of the next snapshot, keeping what this one learnt about paths."""
        parts = self._parts if root == self.root else {}
        if len(parts) > 2 * len(paths) + 1000:  # many photos gone: drop theirs
            wanted = set(paths.values())
            parts = {p: v for p, v in parts.items() if p in wanted}
        return _Files(root, paths, parts)

    def ranks(self, keys: Sequence[Hashable]) -> np.ndarray:
        """Each key's position in path order (the pipeline's ``rank_of=path``)."""
        with self._lock:
            if self._rank is None:
                ordered = sorted(self.paths, key=self.paths.__getitem__)
                self._rank = {key: i for i, key in enumerate(ordered)}
            rank = self._rank
        return np.fromiter((rank[k] for k in keys), dtype=np.int64, count=len(keys))


class Snapshot:
    """The whole output tree at one moment, resolved and listed on demand (see module doc).

    ``extra_files``: files at the top level of the tree (name -> content), as the writer puts
    into each generation.
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
        self.extra_files = dict(extra_files or {})
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
        return snapshot

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
        leaf = sweep_.children(threshold).get(parts[2])
        if leaf is None:
            return None
        if len(parts) == 3:
            return Node("leaf", parts[0], threshold, leaf)
        if len(parts) > 4:
            return None
        target = self.leaf_entries(sweep_, threshold, leaf).get(parts[3])
        return None if target is None else Node("link", parts[0], threshold, leaf, target)

    def listdir(self, node: Node) -> list[tuple[str, str]]:
        """A folder's entries as (name, kind): kind ``dir``, ``link`` or ``file``."""
        if node.kind == "root":
            return [(name, "dir") for name in self.algorithms] + [
                (name, "file") for name in self.extra_files
            ]
        assert node.algo is not None
        sweep_ = self.algorithms[node.algo]
        if node.kind == "algo":
            return [(name, "dir") for name in sweep_.folder_names()]
        assert node.threshold is not None
        if node.kind == "threshold":
            return [(name, "dir") for name in sweep_.children(node.threshold)]
        if node.kind == "leaf":
            assert node.leaf is not None
            return [(n, "link") for n in self.leaf_entries(sweep_, node.threshold, node.leaf)]
        raise NotADirectoryError(node.kind)

    def leaf_entries(self, sweep_: AlgorithmSweep, threshold: int, leaf: int) -> dict[str, str]:
        key = (sweep_.name, threshold, leaf)
        found = self._leaves.get(key)
        if found is None:
            found = folder_links(sweep_.links(sweep_.members(threshold, leaf)))
            self._leaves.put(key, found, max(1, len(found)))
        return found

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
