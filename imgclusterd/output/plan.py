"""Planning, pure: from an output tree to the content-addressed objects that hold it.

No file is read or written here. :func:`plan_tree` turns an :data:`OutputTree` (per algorithm,
the sweep of :class:`ThresholdFolder`) into a :class:`Plan`: every directory the tree needs as a
:class:`PlannedObject` keyed by its digest, children before parents, plus the entries of the
generation directory. The writer then builds whatever of the plan is not on disk yet.

Objects form a Merkle DAG of three levels::

    level 0  algorithm  ``thr_000_unclustered_3 -> ../<threshold digest>`` (+ extra files)
    level 1  threshold  ``001_5 -> ../<leaf digest>``, ``unclustered_3 -> ../<leaf digest>``
    level 2  leaf       a cluster or unclustered folder: ``<link name> -> /abs/image``

An object's digest is a hash of exactly its entries (names and symlink targets, or file
contents), so equal folders are one object: the same cluster at consecutive thresholds, and
everything that did not change since the last generation. Algorithm objects use
:func:`object_digest`; leaves and threshold objects use :func:`leaf_digest`, an additive set
hash (the sum of one 128-bit hash per entry, with the count), so that a folder patched with a
few entries gets its new digest from its old one without reading the rest (see ``delta``).

Each planned object carries its :data:`Role` (algorithm, slot, threshold): where it sat in the
tree, so that a retired object of the same role can be recycled into it (see ``recycle``).

Extending it (planning from a cluster delta): a planner that knows which folders changed can
reuse the previous plan's digests for the unchanged ones. What must hold for the writer: every
object a parent names is either in ``Plan.objects`` (before the parent) or already on disk,
and ``Plan.generation_links`` names the algorithm objects as ``../../objects/<digest>``.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .names import (
    Link,
    check_name,
    cluster_name,
    folder_links,
    forget_checked,
    threshold_name,
    unclustered_name,
)

__all__ = [
    "DIGEST_LEN",
    "LEAF_ROWS",
    "RAW_DIGEST",
    "LeafMemo",
    "LeafSum",
    "LeafTable",
    "OutputTree",
    "Plan",
    "PlannedObject",
    "Role",
    "ThresholdFolder",
    "ThresholdModel",
    "add_links",
    "generation_digest",
    "hex_digests",
    "leaf_digest",
    "leaf_rows",
    "object_digest",
    "plan_algorithm",
    "plan_tree",
    "plans_alive",
    "raw_digests",
    "row_digests",
    "split_extra_files",
    "tree_algorithms",
]

log = logging.getLogger(__name__)

DIGEST_LEN = 32
_PROGRESS_EVERY = 0.5  # seconds between progress callbacks while planning


@dataclass(frozen=True)
class ThresholdFolder:
    """One threshold of a sweep: clusters in output order (largest first) and the unclustered."""

    threshold: int
    clusters: Sequence[Sequence[Link]]
    unclustered: Sequence[Link]


#: algorithm name -> its sweep, in threshold order.
OutputTree = Mapping[str, Sequence[ThresholdFolder]]

#: Where an object sat in a tree, to find a similar one among the garbage:
#: (algorithm, slot, threshold) with slot "u" (unclustered), "c<n>" (cluster n) or "t"
#: (threshold folder).
Role = tuple[str, str, int]

#: A leaf folder's links (as given) -> (digest, entries with unique names). Passing the last
#: plan's memo to the next saves naming and hashing every unchanged folder again.
LeafMemo = dict[tuple[Link, ...], tuple["LeafSum", dict[str, str]]]


_MASK = (1 << 128) - 1


# An entry's bytes are ``os.fsencode(name) + b"\0" + os.fsencode(target)``. With the usual
# file-system encoding (UTF-8, surrogateescape: Linux, macOS) that is one ``str.encode`` of
# ``name + "\0" + target``: a +1 at 20,000 photos hashes ~44,000 renumbered entries of
# threshold folders, and the two fsencode calls (Python functions) were half of their cost.
_FS_UTF8 = (
    codecs.lookup(sys.getfilesystemencoding()).name == "utf-8"
    and sys.getfilesystemencodeerrors() == "surrogateescape"
)


_EMPTY_ENTRY_HASH = hashlib.blake2b(digest_size=16)  # copied, never updated


def _entry_hash(name: str, target: str) -> int:
    if _FS_UTF8:
        data = (name + "\0" + target).encode("utf-8", "surrogateescape")
    else:  # (another file-system encoding: exactly what the digest is defined as)
        data = os.fsencode(name) + b"\0" + os.fsencode(target)
    return int.from_bytes(hashlib.blake2b(data, digest_size=16).digest(), "big")


class LeafSum:
    """A leaf's set hash: how many links, and the sum of their entry hashes mod 2**128.

    Slotted, its digest made at once: the writer keeps one per folder of the tree between
    refreshes (its model, see ``delta``): ~416,000 at 100,000 photos, where a dataclass with
    a cached digest cost ~120 B more each.
    """

    __slots__ = ("count", "digest", "total")
    EMPTY: ClassVar[LeafSum]

    def __init__(self, count: int, total: int) -> None:
        self.count = count
        self.total = total
        data = f"imgclusterd-leaf-1:{count}:{total:032x}".encode()
        self.digest = hashlib.blake2b(data, digest_size=DIGEST_LEN // 2).hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LeafSum):
            return NotImplemented
        return self.count == other.count and self.total == other.total

    def __hash__(self) -> int:
        return hash((self.count, self.total))

    @classmethod
    def known(cls, count: int, total: int, digest: str) -> LeafSum:
        """The sum of a leaf whose digest was made before (a row of a model): not hashed
        again."""
        leaf = cls.__new__(cls)
        leaf.count, leaf.total, leaf.digest = count, total, digest
        return leaf

    def __repr__(self) -> str:
        return f"LeafSum(count={self.count}, total={self.total:#x})"


LeafSum.EMPTY = LeafSum(0, 0)

#: A digest's raw bytes as a numpy ``S`` item: compared and sorted as bytes, and read back only
#: through ``tobytes()`` (:func:`hex_digests`), as reading one item drops trailing NULs.
RAW_DIGEST = np.dtype(f"S{DIGEST_LEN // 2}")
#: A threshold folder's clusters, one row each in number order (see :class:`ThresholdModel`):
#: the leaf's set hash in two halves and its digest. Its link count is the cluster's size.
LEAF_ROWS = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("digest", RAW_DIGEST)])
_LOW = (1 << 64) - 1


def raw_digests(digests: Iterable[str]) -> np.ndarray:
    """Hex digests as a :data:`RAW_DIGEST` array."""
    return np.frombuffer(bytes.fromhex("".join(digests)), RAW_DIGEST).copy()


def hex_digests(raw: np.ndarray) -> list[str]:
    """A :data:`RAW_DIGEST` array's digests in hex."""
    text = np.ascontiguousarray(raw).tobytes().hex()
    return [text[i : i + DIGEST_LEN] for i in range(0, len(text), DIGEST_LEN)]


def leaf_rows(leaves: Sequence[LeafSum]) -> np.ndarray:
    """``leaves`` as :data:`LEAF_ROWS` (their counts are kept as the sizes beside them)."""
    rows = np.empty(len(leaves), LEAF_ROWS)
    if leaves:
        rows["hi"] = [leaf.total >> 64 for leaf in leaves]
        rows["lo"] = [leaf.total & _LOW for leaf in leaves]
        rows["digest"] = raw_digests(leaf.digest for leaf in leaves)
    return rows


def row_digests(rows: np.ndarray) -> list[str]:
    """The digests of some :data:`LEAF_ROWS`, in hex."""
    return hex_digests(rows["digest"])


def add_links(leaf: LeafSum, links: Iterable[tuple[str, str]], sign: int = 1) -> LeafSum:
    """``leaf`` with ``links`` added (``sign=1``) or taken away (``sign=-1``)."""
    count, total = leaf.count, leaf.total
    if not _FS_UTF8:
        for name, target in links:
            count += sign
            total += sign * _entry_hash(name, target)
        return LeafSum(count, total & _MASK)
    # _entry_hash inlined (the same bytes, the same hash): no call per entry, and a copy of
    # an empty 16-byte blake2b rather than a new one (~30% less: no keyword parsing).
    empty, from_bytes = _EMPTY_ENTRY_HASH, int.from_bytes
    added = 0
    for name, target in links:
        count += sign
        h = empty.copy()
        h.update((name + "\0" + target).encode("utf-8", "surrogateescape"))
        added += from_bytes(h.digest(), "big")
    return LeafSum(count, (total + sign * added) & _MASK)


def leaf_digest(links: Mapping[str, str]) -> LeafSum:
    """The set hash of a leaf holding exactly these symlinks (names already unique)."""
    return add_links(LeafSum.EMPTY, links.items())


@dataclass
class PlannedObject:
    """One directory of the DAG: its symlinks (and, for algorithm objects, files).

    A *patch* (``base`` set, leaves and threshold folders): the object is ``base`` without
    the entries ``removed``, with the entries ``moved`` renamed (new name -> old name) and
    with ``links`` added; ``size`` is its entry count. Planned from a delta
    (see ``delta``), so its full entries are never listed in memory.
    """

    links: dict[str, str]
    level: int  # 0 algorithm, 1 threshold, 2 leaf
    role: Role | None
    files: dict[str, bytes] = field(default_factory=dict)
    base: str | None = None
    removed: tuple[str, ...] = ()
    size: int = 0
    moved: dict[str, str] = field(default_factory=dict)  # of a patch: new name -> base's name

    @property
    def entry_count(self) -> int:
        if self.base is not None:
            return self.size
        return len(self.links) + len(self.files)


class LeafTable:
    """The distinct leaves of one algorithm's model, a :data:`LEAF_ROWS` row each, named by
    row number from its thresholds' arrays (see :class:`ThresholdModel`).

    Rows are only ever appended (a model made from another by a delta shares the table), so
    a row number keeps its meaning; :meth:`compacted` makes a new table of the rows a model
    still uses.
    """

    def __init__(self, rows: np.ndarray | None = None) -> None:
        self.rows = rows if rows is not None else np.empty(0, LEAF_ROWS)
        self.n = len(self.rows)
        self.compact_at = 2 * self.n + _COMPACT_MIN  # (see delta: compacted when reached)

    def append(self, leaves: Sequence[LeafSum]) -> np.ndarray:
        """Rows for ``leaves``; their numbers (int32)."""
        if self.n + len(leaves) > len(self.rows):  # grown by a quarter: little unused room
            grown = np.empty(max(self.n + len(leaves), self.n + self.n // 4 + 64), LEAF_ROWS)
            grown[: self.n] = self.rows[: self.n]
            self.rows = grown
        self.rows[self.n : self.n + len(leaves)] = leaf_rows(leaves)
        self.n += len(leaves)
        return np.arange(self.n - len(leaves), self.n, dtype=np.int32)

    def leaf(self, row: int, count: int) -> LeafSum:
        found = self.rows[row]
        total = (int(found["hi"]) << 64) | int(found["lo"])
        return LeafSum.known(count, total, hex_digests(self.rows["digest"][row : row + 1])[0])


#: A table is compacted when it holds twice the rows it had after its last compaction, and at
#: least this many more: each +1 appends a few hundred rows of new leaves.
_COMPACT_MIN = 4096


@dataclass(eq=False)
class ThresholdModel:
    """One threshold folder as planned: cluster sizes and leaves in number order, the
    unclustered leaf, the folder's set hash. What a delta plan starts from (see ``delta``).

    The clusters are two int32 arrays, never changed in place (a delta makes new ones):
    sizes, and row numbers in the algorithm's :class:`LeafTable`. Why: the writer keeps a
    model of the whole tree between refreshes, one entry per cluster per threshold (~20 per
    photo: 100,000 at 5,000 photos) for ~4x fewer distinct leaves (the same cluster at
    several thresholds). As Python objects (list slots, a LeafSum with its 128-bit int and
    hex str per leaf) that was the biggest structure the daemon kept; as rows per entry,
    36 bytes each; now 8 bytes an entry and 32 a distinct leaf.
    """

    threshold: int
    sizes: np.ndarray  # int32: cluster sizes (= their leaves' link counts), in number order
    leaves: np.ndarray  # int32: their rows in ``table``, same order
    unclustered: LeafSum
    entries: LeafSum  # of the folder's own entries (``001_5 -> ../<leaf>``...)
    table: LeafTable

    @property
    def digest(self) -> str:
        return self.entries.digest

    def leaf(self, number: int) -> LeafSum:
        """Cluster ``number``'s leaf (from 1)."""
        return self.table.leaf(int(self.leaves[number - 1]), int(self.sizes[number - 1]))

    def leaf_digest(self, number: int) -> str:
        """Cluster ``number``'s leaf digest (from 1)."""
        return self.table.leaf(int(self.leaves[number - 1]), 0).digest

    def rows(self, part: slice | np.ndarray) -> np.ndarray:
        """The :data:`LEAF_ROWS` of some of its clusters (by position from 0)."""
        return self.table.rows[self.leaves[part]]

    def same_as(self, other: ThresholdModel) -> bool:
        """The same folder (same threshold, entries and unclustered folder)."""
        return self is other or (
            self.threshold == other.threshold
            and self.entries == other.entries
            and self.unclustered == other.unclustered
        )


@dataclass
class Plan:
    """Everything one generation needs. ``objects`` is ordered children before parents."""

    objects: dict[str, PlannedObject]
    generation_links: dict[str, str]  # algorithm -> ../../objects/<digest>
    top_files: dict[str, bytes]  # files at the root of the generation directory
    leaf_memo: LeafMemo  # hand to the next plan_tree()
    # per algorithm, each threshold folder as planned, and the algorithm's extra files
    thresholds: dict[str, list[ThresholdModel]] = field(default_factory=dict)
    algo_files: dict[str, dict[str, bytes]] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """The generation's digest (the last part of its name)."""
        return generation_digest(self.generation_links, self.top_files)


#: How many plans made by plan_algorithm are still referenced (see plans_alive).
_PLANS_ALIVE = [0]


def _plan_freed() -> None:
    _PLANS_ALIVE[0] -= 1


def plans_alive() -> int:
    """How many per-algorithm plans (:func:`plan_algorithm`) are still alive: the writer's
    promise is at most one at a time (tests check it at the writer's hook points)."""
    return _PLANS_ALIVE[0]


def object_digest(links: Mapping[str, str], files: Mapping[str, bytes] | None = None) -> str:
    """Content address of a directory holding exactly these symlinks and files."""
    parts = ["imgclusterd-object-1"]
    for name in sorted(links):
        parts += ("L", name, links[name])
    for name in sorted(files or {}):
        parts += ("F", name, hashlib.sha256(files[name]).hexdigest())  # type: ignore[index]
    return hashlib.sha256(os.fsencode("\0".join(parts))).hexdigest()[:DIGEST_LEN]


def generation_digest(links: Mapping[str, str], files: Mapping[str, bytes]) -> str:
    """The 16 hex digits naming a generation with these algorithm links and root files."""
    return object_digest(links, files)[:16]


def split_extra_files(
    extra_files: Mapping[str, bytes],
) -> tuple[dict[str, bytes], dict[str, dict[str, bytes]]]:
    """``{"index.html": .., "phash_8/x": ..}`` -> (root files, algorithm -> its files)."""
    algo_files: dict[str, dict[str, bytes]] = {}
    top_files: dict[str, bytes] = {}
    for path, content in extra_files.items():
        parts = path.split("/")
        for part in parts:
            check_name(part, "extra file path component")
        if len(parts) == 1:
            top_files[parts[0]] = bytes(content)
        elif len(parts) == 2:
            algo_files.setdefault(parts[0], {})[parts[1]] = bytes(content)
        else:
            raise ValueError(f"extra file {path!r}: only <name> or <algo>/<name> are supported")
    return top_files, algo_files


def plan_tree(
    tree: OutputTree,
    extra_files: Mapping[str, bytes] | None = None,
    memo: LeafMemo | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Plan:
    """Every object ``tree`` needs (children first), and the generation's entries.

    ``extra_files``: ``<name>`` lands at the root of the generation directory, ``<algo>/<name>``
    in that algorithm's folder. ``memo``: the previous plan's ``leaf_memo``. Raises ValueError
    on a name that cannot be a file name, a threshold listed twice, or an extra file that
    collides with a folder. Hashing millions of link names takes seconds at tens of thousands
    of photos, so this reports ``progress(0, 0)`` about twice a second (the daemon's watchdog
    pings ride on it). The writer plans a whole tree one algorithm at a time instead
    (:func:`plan_algorithm`); this is the same, all at once.
    """
    top_files, algo_files = split_extra_files(extra_files or {})
    new_memo: LeafMemo = {}
    plan = Plan({}, {}, top_files, new_memo)
    for algo in tree_algorithms(tree, top_files, algo_files):
        part = plan_algorithm(
            algo, tree.get(algo, ()), algo_files.get(algo, {}), memo or {}, new_memo, progress
        )
        for digest, obj in part.objects.items():  # (an object two algorithms share: once)
            plan.objects.setdefault(digest, obj)
        plan.generation_links.update(part.generation_links)
        plan.thresholds.update(part.thresholds)
        plan.algo_files.update(part.algo_files)
    return plan


def tree_algorithms(
    tree: OutputTree, top_files: Mapping[str, bytes], algo_files: Mapping[str, object]
) -> list[str]:
    """The algorithm folders of a tree with these extra files, in order; ValueError on a name
    that cannot be a folder or that a root file takes. Checked before anything is written."""
    algos = sorted(set(tree) | set(algo_files))
    for algo in algos:
        check_name(algo, "algorithm name")
        if algo in top_files:
            raise ValueError(f"extra file {algo!r} has the name of an algorithm folder")
    return algos


def plan_algorithm(
    algo: str,
    sweep: Sequence[ThresholdFolder],
    files: Mapping[str, bytes],
    old_memo: LeafMemo,
    new_memo: LeafMemo,
    progress: Callable[[int, int], None] | None = None,
) -> Plan:
    """The objects of one algorithm's folder (children first) and its generation entry.

    A :class:`Plan` of that algorithm alone (no root files): the writer plans, builds and
    drops one of these at a time, so a whole-tree write never holds more than one
    algorithm's folders in memory (at 100,000 photos the whole plan was 3.3 GB). Leaves are
    looked up in ``old_memo`` and recorded in ``new_memo`` (see :data:`LeafMemo`).
    """
    reported = time.monotonic()
    objects: dict[str, PlannedObject] = {}
    models: list[ThresholdModel] = []
    table = LeafTable()  # the algorithm's distinct leaves, rows filled in at the end
    distinct: dict[str, int] = {}  # leaf digest -> its row
    distinct_leaves: list[LeafSum] = []

    def leaf(links: Sequence[Link], role: Role) -> LeafSum:
        key = tuple(links)
        found = new_memo.get(key) or old_memo.get(key)
        if found is None:
            entries = folder_links(key)
            found = (leaf_digest(entries), entries)
        new_memo[key] = found
        digest, entries = found
        if digest.digest not in objects:
            objects[digest.digest] = PlannedObject(entries, 2, role)
        return digest

    algo_links: dict[str, str] = {}
    thresholds: set[int] = set()
    for folder in sweep:
        if progress is not None and time.monotonic() - reported >= _PROGRESS_EVERY:
            reported = time.monotonic()
            progress(0, 0)
        t = folder.threshold
        entries: dict[str, str] = {}
        rows = []
        for i, cluster in enumerate(folder.clusters, 1):
            leaf_sum = leaf(cluster, (algo, f"c{i}", t))
            row = distinct.setdefault(leaf_sum.digest, len(distinct))
            if row == len(distinct_leaves):
                distinct_leaves.append(leaf_sum)
            rows.append(row)
            entries[cluster_name(i, len(cluster))] = "../" + leaf_sum.digest
        unclustered = len(folder.unclustered)
        unclustered_sum = leaf(folder.unclustered, (algo, "u", t))
        entries[unclustered_name(unclustered)] = "../" + unclustered_sum.digest
        entries_sum = leaf_digest(entries)
        digest = entries_sum.digest
        models.append(
            ThresholdModel(
                t,
                np.fromiter((len(c) for c in folder.clusters), np.int32, len(folder.clusters)),
                np.array(rows, dtype=np.int32),
                unclustered_sum,
                entries_sum,
                table,
            )
        )
        objects.setdefault(digest, PlannedObject(entries, 1, (algo, "t", t)))
        if t in thresholds:
            raise ValueError(f"{algo}: threshold {t} appears twice in the sweep")
        thresholds.add(t)
        algo_links[threshold_name(t, unclustered)] = "../" + digest
    for name in files:
        if name in algo_links:
            raise ValueError(f"extra file {algo}/{name} has the name of a threshold folder")
    digest = object_digest(algo_links, files)
    objects.setdefault(digest, PlannedObject(algo_links, 0, None, dict(files)))
    forget_checked()  # names are per algorithm (they carry its hash): not seen again
    table.append(distinct_leaves)
    table.compact_at = 2 * table.n + _COMPACT_MIN
    del distinct, distinct_leaves
    plan = Plan(
        objects,
        {algo: "../../objects/" + digest},
        {},
        new_memo,
        {algo: models},
        {algo: dict(files)},
    )
    _PLANS_ALIVE[0] += 1
    weakref.finalize(plan, _plan_freed)
    return plan
