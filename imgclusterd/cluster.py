"""Clusters of images at every threshold of a sweep, from one minimum spanning forest.

Two images are *linked* at threshold ``t`` when the Hamming distance of their hashes is
``<= t``; the clusters at ``t`` are the connected components (two or more members) of that
graph, and images linked to nobody are *unclustered*.

Why a spanning forest is enough (single linkage): let ``F`` be a minimum spanning forest of
the complete distance graph. For every ``t``, the edges of ``F`` with weight ``<= t`` are a
spanning forest of the graph of edges ``<= t`` (Kruskal visits edges by weight, so by the time
it has seen every edge ``<= t`` it has built exactly that). Both graphs therefore have the same
components. So we build ``F`` once -- ``N - 1`` edges, never the ``N**2 / 2`` pairs, most of
which are links at the top thresholds -- and each threshold's partition is a union-find over
a prefix of ``F``'s edges sorted by weight. Edges heavier than the largest threshold the caller
needs (``limit``) never matter and are dropped.

Building ``F`` is Prim's algorithm on the dense graph, vectorised with numpy: hashes are kept
as 64-bit words, and each of the ``N`` steps XORs + popcounts the newest tree vertex against
the vertices still outside the tree (O(N) memory, O(N**2 * words) time). Several algorithms
share the Python loop (:func:`spanning_forests`), which is how the 14 default configurations
are clustered together.

Incremental upkeep (the daemon's case):

- adding ``k`` images: ``MSF(old + new)`` uses only old forest edges and edges incident to a new
  vertex (an old non-forest edge is the heaviest on a cycle of old edges, which stays a cycle),
  so ``k * N`` distances and one Kruskal over ``~N + k*N`` candidate edges suffice;
- removing images: old forest edges between survivors stay in a minimum spanning forest (a
  subgraph has fewer cycles); only trees that lost a vertex fall into pieces, and the pieces are
  reconnected smallest piece first (its lightest edge to the rest is safe by the cut property).
  Cost: ``sum(piece size) * (size of the broken trees)`` distances -- at most a rebuild of the
  broken trees, and tiny when a leaf or a small subtree is cut off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Generic, TypeVar

import numpy as np
from scipy.sparse import coo_array, csr_array
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

__all__ = [
    "REBUILD_SHARE",
    "BuildStopped",
    "ClusterIndex",
    "Forest",
    "KeyPartition",
    "Partition",
    "build_indexes",
    "distance_matrix_rows",
    "extend_forest",
    "remove_from_forest",
    "spanning_forest",
    "spanning_forests",
    "sweep",
]

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

_FAR = np.iinfo(np.uint16).max  # "no edge yet"; real distances are <= hash bits (<< 65535)
#: Incremental updates touching more than this share of the rows rebuild from scratch instead:
#: k*N distances plus a sparse Kruskal stop paying off against Prim's N**2/2 around here.
REBUILD_SHARE = 0.25
# (weight, u, v) packed in one int64 for merging sorted edges: fits below 2**21 vertices.
_MERGE_KEY_LIMIT = 1 << 21
# Upper bound on temporaries of shape (rows, N): ~8 MB of uint64 per block.
_BLOCK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class Forest:
    """A minimum spanning forest over vertices ``0..n-1`` keeping edges of weight ``<= limit``.

    Edges are ``(u[i], v[i], w[i])`` with ``u < v``, sorted by ``(w, u, v)``. ``limit`` is the
    largest threshold the forest can answer (``None``: unknown, not checked).
    """

    n: int
    u: np.ndarray  # int32
    v: np.ndarray  # int32
    w: np.ndarray  # uint16
    limit: int | None = None


@dataclass(frozen=True)
class Partition:
    """The clusters at one threshold, in vertex indices.

    ``clusters``: each ascending by rank; ordered by size descending, then smallest rank.
    ``unclustered``: ascending by rank.
    """

    threshold: int
    clusters: list[np.ndarray]
    unclustered: np.ndarray


@dataclass(frozen=True)
class KeyPartition(Generic[K]):
    """A :class:`Partition` expressed in the keys of a :class:`ClusterIndex` (same order rules)."""

    threshold: int
    clusters: list[list[K]]
    unclustered: list[K]


# --------------------------------------------------------------------------- distances


def _words(packed: np.ndarray) -> np.ndarray:
    """(N, nbytes) packed hashes -> (W, N) uint64, zero-padded (padding XORs to 0)."""
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.ndim != 2:
        raise ValueError(f"packed hashes must be an (N, nbytes) matrix, got shape {packed.shape}")
    n, nbytes = packed.shape
    nwords = max(1, -(-nbytes // 8))
    padded = np.zeros((n, nwords * 8), dtype=np.uint8)
    padded[:, :nbytes] = packed
    return np.ascontiguousarray(padded.view(np.uint64).T)


def _columns(packed: np.ndarray) -> list[np.ndarray]:
    """(N, nbytes) packed hashes -> views of its byte columns as the widest unsigned ints that
    fit (8, then 4, 2, 1 bytes), one 1-D array of N per view: no copy.

    Why not :func:`_words`: that copies and transposes every row (~1 ms at 20,000 photos and
    400-bit hashes), which an insertion of one photo, needing one row against all, pays per
    algorithm and refresh. The views are unaligned when ``nbytes`` is not a multiple of 8;
    numpy reads them correctly, a little slower (the distances of a few rows are cheap)."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if packed.ndim != 2:
        raise ValueError(f"packed hashes must be an (N, nbytes) matrix, got shape {packed.shape}")
    n, nbytes = packed.shape
    if n == 0 or nbytes == 0:  # no rows, or zero-width hashes (all distances 0)
        return [np.zeros(n, dtype=np.uint8)]
    columns, offset = [], 0
    for size in (8, 4, 2, 1):
        while nbytes - offset >= size:
            columns.append(np.ndarray((n,), dtype=f"<u{size}", buffer=packed, offset=offset,
                                      strides=(nbytes,)))  # fmt: skip
            offset += size
    return columns


def _distances(
    words: np.ndarray | Sequence[np.ndarray], rows: np.ndarray, cols: np.ndarray | None = None
) -> np.ndarray:
    """Hamming distances ``rows x cols`` as uint16, from (W, N) words (:func:`_words`) or a
    list of 1-D columns (:func:`_columns`); blocked to bound memory."""
    ncols = len(words[0]) if cols is None else len(cols)
    out = np.zeros((len(rows), ncols), dtype=np.uint16)
    step = max(1, _BLOCK_ELEMENTS // max(1, ncols))
    cnt = np.empty((min(step, len(rows)), ncols), dtype=np.uint8)
    for word in words:
        target = word if cols is None else word[cols]
        tmp = np.empty(cnt.shape, dtype=word.dtype)
        for start in range(0, len(rows), step):
            block = rows[start : start + step]
            b = len(block)
            np.bitwise_xor(target[None, :], word[block][:, None], out=tmp[:b])
            np.bitwise_count(tmp[:b], out=cnt[:b])
            out[start : start + b] += cnt[:b]
    return out


def distance_matrix_rows(packed: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Hamming distances from ``packed[rows]`` to every row: (len(rows), N) uint16."""
    return _distances(_words(packed), np.asarray(rows, dtype=np.intp).ravel())


# --------------------------------------------------------------------------- building


def _empty_forest(n: int, limit: int | None) -> Forest:
    return Forest(
        n,
        np.empty(0, np.int32),
        np.empty(0, np.int32),
        np.empty(0, np.uint16),
        limit,
    )


def _make_forest(n: int, u: np.ndarray, v: np.ndarray, w: np.ndarray, limit: int) -> Forest:
    """Normalise edges (u < v, weight <= limit) and sort them by (w, u, v)."""
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    keep = w <= limit
    lo, hi, w = np.minimum(u, v)[keep], np.maximum(u, v)[keep], w[keep]
    order = np.lexsort((hi, lo, w))
    return Forest(
        n,
        lo[order].astype(np.int32),
        hi[order].astype(np.int32),
        w[order].astype(np.uint16),
        limit,
    )


class BuildStopped(Exception):
    """A from-scratch build gave up because ``should_stop()`` said so (the daemon stopping)."""


#: Steps of Prim's loop between two looks at ``should_stop`` (a step at 100,000 photos and 14
#: algorithms is a few milliseconds, so a stop is noticed within a second or two).
_STOP_CHECK_STEPS = 256


def _prim_lockstep(
    words_list: list[np.ndarray],
    limits: list[int],
    n: int,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> list[Forest]:
    """Prim's algorithm for several hash sets over the same N vertices, one Python loop.

    Each algorithm keeps its own vertex order: the vertices outside its tree occupy positions
    ``0..m-1`` and the vertex added last sits at ``m`` (swap-with-last, O(W) per step), so the
    distance pass only touches the shrinking active prefix -- half the work of a full pass.
    Algorithms with the same word count are stacked into one (W, A, N) array, so a step is a
    handful of numpy calls per word count however many algorithms there are.
    """
    count = len(words_list)
    if n < 2:
        return [_empty_forest(n, limit) for limit in limits]
    by_width: dict[int, list[int]] = {}
    for a, words in enumerate(words_list):
        by_width.setdefault(words.shape[0], []).append(a)
    order = [a for width in sorted(by_width) for a in by_width[width]]  # row of key/parent -> a
    groups = []  # (stacked words, rows of key/parent, xor buffer, popcount buffer)
    row = 0
    for width in sorted(by_width):
        members = by_width[width]
        stacked = np.stack([words_list[a] for a in members], axis=1)  # (W, A_g, N)
        groups.append(
            (
                stacked,
                slice(row, row + len(members)),
                np.empty_like(stacked),
                np.empty(stacked.shape, dtype=np.uint8),
            )
        )
        row += len(members)

    key = np.full((count, n), _FAR, dtype=np.uint16)  # lightest edge into the tree so far
    parent = np.zeros((count, n), dtype=np.int32)  # tree end of that edge
    ids = np.tile(np.arange(n, dtype=np.int32), (count, 1))  # position -> vertex
    dist = np.empty((count, n), dtype=np.uint16)
    less = np.empty((count, n), dtype=bool)
    every = np.arange(count)
    eu = np.empty((count, n - 1), dtype=np.int32)
    ev = np.empty((count, n - 1), dtype=np.int32)
    ew = np.empty((count, n - 1), dtype=np.uint16)

    m = n - 1  # vertex at position n-1 starts every tree
    for step in range(n - 1):
        if step % _STOP_CHECK_STEPS == 0:
            if should_stop is not None and should_stop():
                raise BuildStopped(f"stopped at step {step} of {n - 1}")
            if on_step is not None:
                on_step(step, n - 1)
        for stacked, rows, xor, pop in groups:
            np.bitwise_xor(stacked[:, :, :m], stacked[:, :, m : m + 1], out=xor[:, :, :m])
            np.bitwise_count(xor[:, :, :m], out=pop[:, :, :m])
            np.add.reduce(pop[:, :, :m], axis=0, dtype=np.uint16, out=dist[rows, :m])
        np.less(dist[:, :m], key[:, :m], out=less[:, :m])
        np.copyto(parent[:, :m], ids[:, m : m + 1], where=less[:, :m])
        np.minimum(key[:, :m], dist[:, :m], out=key[:, :m])
        j = key[:, :m].argmin(axis=1)
        eu[:, step] = parent[every, j]
        ev[:, step] = ids[every, j]
        ew[:, step] = key[every, j]
        # Move the chosen vertex to position m-1 (it becomes "the newest tree vertex").
        last = m - 1
        for table in (key, parent, ids):
            picked = table[every, j]
            table[every, j] = table[every, last]
            table[every, last] = picked
        for stacked, rows, _, _ in groups:
            jg = j[rows]
            g = np.arange(len(jg))
            picked = stacked[:, g, jg]
            stacked[:, g, jg] = stacked[:, g, last]
            stacked[:, g, last] = picked
        m = last

    forests: list[Forest | None] = [None] * count
    for r, a in enumerate(order):
        forests[a] = _make_forest(n, eu[r], ev[r], ew[r], limits[a])
    return [f for f in forests if f is not None]


def spanning_forests(
    packed_list: Sequence[np.ndarray],
    limits: Sequence[int],
    workers: int = 1,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> list[Forest]:
    """:func:`spanning_forest` for several hash sets of the same N images (e.g. 14 algorithms).

    ``workers > 1`` splits the algorithms into that many lockstep groups of about equal word
    counts and runs them in threads (numpy releases the GIL inside the distance passes).
    ``should_stop()`` is asked every few hundred steps; when it says yes,
    :class:`BuildStopped` is raised. ``on_step(done, total)`` hears of the progress then
    (from each thread: the steps of its loop).
    """
    if len(packed_list) != len(limits):
        raise ValueError("need one limit per hash set")
    words_list = [_words(p) for p in packed_list]
    sizes = {w.shape[1] for w in words_list}
    if len(sizes) > 1:
        raise ValueError(f"all hash sets must cover the same images, got sizes {sorted(sizes)}")
    n = sizes.pop() if sizes else 0
    limit_list = [int(x) for x in limits]
    workers = max(1, min(workers, len(words_list)))
    if workers == 1:
        return _prim_lockstep(words_list, limit_list, n, should_stop, on_step)
    # Greedy balance by word count (the cost of a step is proportional to it).
    bins: list[list[int]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for a in sorted(range(len(words_list)), key=lambda a: -words_list[a].shape[0]):
        b = loads.index(min(loads))
        bins[b].append(a)
        loads[b] += words_list[a].shape[0]
    result: list[Forest | None] = [None] * len(words_list)
    # The threads only record their step; on_step is called from this (the caller's) thread,
    # which may do things bound to it (the daemon writes its status to SQLite).
    steps = [0] * workers

    def recorder(slot: int) -> Callable[[int, int], None]:
        def record(done: int, total: int) -> None:
            steps[slot] = done

        return record

    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = [
            (
                members,
                pool.submit(
                    _prim_lockstep,
                    [words_list[a] for a in members],
                    [limit_list[a] for a in members],
                    n,
                    should_stop,
                    recorder(slot),
                ),
            )
            for slot, members in enumerate(bins)
            if members
        ]
        futures = [job for _, job in jobs]
        if on_step is not None:
            on_step(0, n - 1)
        while wait(futures, timeout=1.0, return_when=FIRST_EXCEPTION).done != set(futures):
            if any(f.done() and f.exception() is not None for f in futures):
                break
            if on_step is not None:
                on_step(min(steps[: len(futures)]), n - 1)
        for members, job in jobs:
            for a, forest in zip(members, job.result(), strict=True):
                result[a] = forest
        if on_step is not None:
            on_step(n - 1, n - 1)
    return [f for f in result if f is not None]


def spanning_forest(packed: np.ndarray, limit: int) -> Forest:
    """The minimum spanning forest of ``packed``'s rows, keeping edges of weight ``<= limit``."""
    return spanning_forests([packed], [limit])[0]


# --------------------------------------------------------------------------- incremental


def _check_limit(forest: Forest, limit: int) -> Forest:
    """The forest cut down to ``limit``; refuse a limit the forest cannot answer."""
    if forest.limit is not None and limit > forest.limit:
        raise ValueError(
            f"the forest only keeps edges <= {forest.limit}; rebuild it for limit {limit}"
        )
    keep = forest.w <= limit
    return Forest(forest.n, forest.u[keep], forest.v[keep], forest.w[keep], limit)


def _stable_order(values: np.ndarray) -> np.ndarray:
    """``np.argsort(values, kind="stable")`` for non-negative ints below 2**32, in O(N): numpy
    sorts 16-bit ints stably by radix (one pass per 16 bits; a general stable sort of the 2N
    ends of a forest's edges was ~6 ms per algorithm and refresh at 20,000 photos, 8x this)."""
    if not len(values) or int(values.max()) >= 2**32 or int(values.min()) < 0:
        return np.argsort(values, kind="stable")
    order = np.argsort((values & 0xFFFF).astype(np.uint16), kind="stable")
    if int(values.max()) < 2**16:
        return order
    high = (values[order] >> 16).astype(np.uint16)
    return order[np.argsort(high, kind="stable")]


def _kruskal_add(
    n: int,
    u: np.ndarray,
    v: np.ndarray,
    w: np.ndarray,
    eu: np.ndarray,
    ev: np.ndarray,
    ew: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum spanning forest of a forest ``(u, v, w)`` (normalised and sorted, as in
    :class:`Forest`) plus extra edges ``(eu, ev, ew)`` (no pair twice), normalised and sorted.

    Why not a Kruskal and a sort of everything: the result is the forest minus a few edges
    plus a few extra ones. Each candidate gets a distinct weight ``w * (E + 1) + index`` (the
    forest's edges first on equal ``w``), so the tree scipy returns names its candidates by
    index: what stays of the forest is still sorted, and only the extra edges kept are sorted
    and merged in.
    """
    m = len(w)
    lo, hi = np.minimum(eu, ev), np.maximum(eu, ev)
    total = m + len(ew)
    if not len(ew):
        return u, v, w
    data = np.concatenate([w, ew]).astype(np.float64) * (total + 1) + np.arange(1, total + 1)
    # The graph in compressed rows, made here: a row per edge's first end (the extra ones in
    # their new photo's row). scipy's own conversion from coordinates sorts and sums
    # duplicates (there are none) and its tree copies the graph again (overwrite=True: not
    # ours to keep): ~2 ms of the ~7 per algorithm and +1 at 20,000 photos.
    rows = np.concatenate([u, hi])
    order = _stable_order(rows)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    graph = csr_array(
        (data[order], np.concatenate([v, lo])[order], indptr), shape=(n, n), copy=False
    )
    tree = minimum_spanning_tree(graph, overwrite=True)
    picked = np.rint(tree.data).astype(np.int64) % (total + 1) - 1
    keep = np.zeros(total, dtype=bool)
    keep[picked] = True
    ku, kv, kw = u[keep[:m]], v[keep[:m]], w[keep[:m]]
    extra = np.flatnonzero(keep[m:])
    xu, xv, xw = lo[extra], hi[extra], np.asarray(ew)[extra]
    if not len(extra):
        return ku, kv, kw
    return _merge_edges(n, (ku, kv, kw), (xu, xv, xw))


def _merge_edges(
    n: int,
    kept: tuple[np.ndarray, np.ndarray, np.ndarray],
    extra: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges ``kept`` (normalised, sorted by (w, u, v)) with a few normalised ``extra`` ones
    put in their places: one int64 key for the few, no sort of the many."""
    (ku, kv, kw), (xu, xv, xw) = kept, extra
    if n >= _MERGE_KEY_LIMIT:  # the merge key below would overflow: sort everything
        au, av, aw = (np.concatenate(pair) for pair in ((ku, xu), (kv, xv), (kw, xw)))
        f = _make_forest(n, au, av, aw, int(_FAR))
        return f.u, f.v, f.w

    def key(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        return (c.astype(np.int64) * n + a) * n + b

    order = np.argsort(key(xu, xv, xw))
    at = np.searchsorted(key(ku, kv, kw), key(xu, xv, xw)[order])
    return (
        np.insert(ku, at, xu[order]),
        np.insert(kv, at, xv[order]),
        np.insert(kw, at, xw[order]),
    )


def extend_forest(
    forest: Forest,
    packed: np.ndarray,
    new_rows: np.ndarray,
    limit: int,
    rebuild_share: float | None = REBUILD_SHARE,
) -> Forest:
    """The forest of all rows of ``packed``, given ``forest`` over the rows not in ``new_rows``.

    Old vertex ``i`` is the ``i``-th row of ``packed`` not in ``new_rows`` (normally the old rows
    come first and ``new_rows`` is ``arange(old_n, N)``). Costs ``k * N`` distances; when the
    new rows are more than ``rebuild_share`` of all rows, a from-scratch build (same partitions)
    is cheaper and is used instead (``None``: never).
    """
    words = _columns(packed)
    n = len(words[0])
    new = np.unique(np.asarray(new_rows, dtype=np.intp))
    if new.size and (new[0] < 0 or new[-1] >= n):
        raise ValueError("new_rows out of range")
    if forest.n != n - len(new):
        raise ValueError(f"forest has {forest.n} vertices but packed has {n} rows, {len(new)} new")
    forest = _check_limit(forest, limit)
    if rebuild_share is not None and len(new) > rebuild_share * n:
        return spanning_forest(packed, limit)
    if not len(new) or new[0] == n - len(new):  # new rows last: the index's case
        old = np.arange(n - len(new))
        u, v, w = forest.u, forest.v, forest.w
    else:
        old = np.setdiff1d(np.arange(n), new)
        u, v, w = old[forest.u], old[forest.v], forest.w  # re-indexed into packed's rows
    present = np.zeros(n, dtype=bool)
    present[old] = True
    # Batches keep the candidate edge list (and the k x N distance block) bounded.
    batch = max(1, _BLOCK_ELEMENTS // max(1, n))
    for start in range(0, len(new), batch):
        rows = new[start : start + batch]
        dist = _distances(words, rows)
        to_old = (dist <= limit) & present[None, :]
        ri, cols = np.nonzero(to_old)
        # Pairs inside the batch, once each (i > j).
        inner = dist[:, rows]
        bi, bj = np.tril_indices(len(rows), -1)
        close = inner[bi, bj] <= limit
        bi, bj = bi[close], bj[close]
        u, v, w = _kruskal_add(
            n, u, v, w,
            np.concatenate([rows[ri], rows[bi]]),
            np.concatenate([cols, rows[bj]]),
            np.concatenate([dist[ri, cols], inner[bi, bj]]),
        )  # fmt: skip
        present[rows] = True
    return Forest(n, u.astype(np.int32), v.astype(np.int32), w.astype(np.uint16), limit)


def _labels(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Component label of each vertex for the graph with edges (u, v)."""
    if n == 0:
        return np.empty(0, dtype=np.int32)
    graph = coo_array((np.ones(len(u), np.int8), (u, v)), shape=(n, n)).tocsr()
    return connected_components(graph, directed=False)[1]


def remove_from_forest(
    forest: Forest,
    packed: np.ndarray,
    removed: np.ndarray,
    limit: int,
    rebuild_share: float | None = REBUILD_SHARE,
) -> tuple[Forest, np.ndarray]:
    """The forest without the ``removed`` rows, and ``kept``: new vertex ``i`` is old ``kept[i]``.

    ``packed`` holds the rows of the old forest (removed ones included). Survivors keep their
    order and are renumbered ``0..n-k-1``. Above ``rebuild_share`` of the rows removed, the
    survivors' forest is rebuilt from scratch (``None``: never).
    """
    words = _columns(packed)
    n = len(words[0])
    if forest.n != n:
        raise ValueError(f"forest has {forest.n} vertices but packed has {n} rows")
    gone = np.zeros(n, dtype=bool)
    gone[np.asarray(removed, dtype=np.intp)] = True
    kept = np.flatnonzero(~gone)
    forest = _check_limit(forest, limit)
    if rebuild_share is not None and int(gone.sum()) > rebuild_share * n:  # many holes
        return spanning_forest(np.asarray(packed)[kept], limit), kept
    survives = ~gone[forest.u] & ~gone[forest.v]
    u, v, w = forest.u[survives], forest.v[survives], forest.w[survives]
    remap = np.cumsum(~gone) - 1  # old vertex -> new index
    ends = np.concatenate([forest.u[~survives], forest.v[~survives]])
    if not len(ends) or int(np.bincount(ends[gone[ends]]).max()) <= 1:
        # Every removed photo had at most one forest edge (a leaf, as a photo added last often
        # is): a leaf lies on no path between two others, so no tree falls apart and the
        # survivors' edges are their forest, in order. No labelling of the N photos.
        return Forest(len(kept), remap[u].astype(np.int32), remap[v].astype(np.int32), w,
                      limit), kept  # fmt: skip
    piece_of = _labels(n, u, v)
    # Vertices of trees that lost a vertex; other trees are untouched (no edge <= limit leaves
    # a tree, so nothing outside the broken trees can join them). A broken tree's survivors are
    # the pieces holding a removed photo's forest neighbours (each piece has an edge to one).
    near = ends[~gone[ends]]
    broken = np.zeros(n, dtype=bool)
    broken[piece_of[near]] = True
    affected = np.flatnonzero(broken[piece_of] & ~gone)
    piece = piece_of[affected]
    add_u: list[int] = []
    add_v: list[int] = []
    add_w: list[int] = []
    # Smallest piece first: its lightest edge to any other live piece is in some MSF.
    live = np.ones(len(affected), dtype=bool)
    while True:
        sizes = np.bincount(piece[live]) if live.any() else np.zeros(0, np.intp)
        labels_alive = np.flatnonzero(sizes)
        if len(labels_alive) < 2:
            break
        smallest = labels_alive[np.argmin(sizes[labels_alive])]
        inside = piece == smallest
        outside = live & ~inside
        src, dst = affected[inside], affected[outside]
        best = (_FAR, -1, -1)
        step = max(1, _BLOCK_ELEMENTS // max(1, len(dst)))
        for start in range(0, len(src), step):
            dist = _distances(words, src[start : start + step], dst)
            i, k = np.unravel_index(int(dist.argmin()), dist.shape)
            if dist[i, k] < best[0]:
                best = (int(dist[i, k]), int(src[start + i]), int(dst[k]))
        weight, a, b = best
        if weight > limit:  # a finished tree: nothing <= limit reaches it
            live &= ~inside
            continue
        add_u.append(a)
        add_v.append(b)
        add_w.append(weight)
        piece[inside] = piece[np.searchsorted(affected, b)]
    # The survivors' edges stay normalised and sorted (the renumbering keeps the order): only
    # the few reconnecting edges are sorted and put in their places.
    fresh = _make_forest(len(kept), remap[np.asarray(add_u, np.int64)],
                         remap[np.asarray(add_v, np.int64)], np.asarray(add_w, np.uint16),
                         limit)  # fmt: skip
    mu, mv, mw = _merge_edges(
        len(kept), (remap[u].astype(np.int32), remap[v].astype(np.int32), w),
        (fresh.u, fresh.v, fresh.w),
    )  # fmt: skip
    return Forest(len(kept), mu.astype(np.int32), mv.astype(np.int32), mw.astype(np.uint16),
                  limit), kept  # fmt: skip


# --------------------------------------------------------------------------- partitions


def _rank_positions(n: int, ranks: np.ndarray | None) -> np.ndarray:
    """Vertices in rank order (ties by index)."""
    if ranks is None:
        return np.arange(n)
    ranks = np.asarray(ranks)
    if ranks.shape != (n,):
        raise ValueError(f"need one rank per vertex ({n}), got shape {ranks.shape}")
    return np.argsort(ranks, kind="stable")


def _partition(threshold: int, labels: np.ndarray, by_rank: np.ndarray) -> Partition:
    n = len(labels)
    lab = labels[by_rank]  # labels seen in rank order
    sizes = np.bincount(lab, minlength=1)
    first = np.full(len(sizes), n, dtype=np.int64)
    np.minimum.at(first, lab, np.arange(n))
    clustered = np.flatnonzero(sizes[lab] >= 2)
    unclustered = by_rank[np.flatnonzero(sizes[lab] == 1)]
    # Size descending, then the smallest rank; a stable sort keeps members in rank order.
    cluster_key = (n - sizes[lab[clustered]]) * (n + 1) + first[lab[clustered]]
    order = np.argsort(cluster_key, kind="stable")
    members = by_rank[clustered[order]]
    cuts = np.flatnonzero(np.diff(cluster_key[order])) + 1
    bounds = np.concatenate([[0], cuts, [len(members)]]).tolist() if len(members) else [0]
    # Plain slices: np.split costs several Python calls per piece, and there can be N/2 pieces.
    clusters = [members[a:b] for a, b in pairwise(bounds)]
    return Partition(threshold, clusters, unclustered)


def sweep(
    forest: Forest, thresholds: Sequence[int], ranks: np.ndarray | None = None
) -> list[Partition]:
    """The partition at each threshold (same order as ``thresholds``).

    ``ranks``: a sort key per vertex (e.g. the position of its file path); default: the index.
    """
    by_rank = _rank_positions(forest.n, ranks)
    wanted = [int(t) for t in thresholds]
    for t in wanted:
        if forest.limit is not None and t > forest.limit:
            raise ValueError(f"threshold {t} is above the forest's limit {forest.limit}")
    weights = forest.w.astype(np.int64)
    # Rising thresholds only add edges, so labels are carried over and only the components the
    # new edges touch are merged (O(N) gather per threshold instead of a full graph rebuild).
    labels = np.arange(forest.n)
    done = 0
    result: dict[int, Partition] = {}
    for t in sorted(set(wanted)):
        k = int(np.searchsorted(weights, t, side="right"))
        if k > done:
            labels = _merge(labels, forest.u[done:k], forest.v[done:k])
            done = k
        result[t] = _partition(t, labels, by_rank)
    return [result[t] for t in wanted]


def _merge(labels: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Labels after adding edges (u, v): each merged component takes its smallest label."""
    ends = np.concatenate([labels[u], labels[v]])
    nodes, inverse = np.unique(ends, return_inverse=True)
    sub = _labels(len(nodes), inverse[: len(u)], inverse[len(u) :])
    smallest = np.full(int(sub.max()) + 1, labels.size, dtype=labels.dtype)
    np.minimum.at(smallest, sub, nodes)
    mapping = np.arange(labels.size)
    mapping[nodes] = smallest[sub]
    return mapping[labels]


# --------------------------------------------------------------------------- daemon state


def build_indexes(
    jobs: Sequence[tuple[ClusterIndex[Any], Sequence[Any], np.ndarray]],
    workers: int = 1,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> None:
    """Load every ``(index, keys, packed)`` and build their forests from scratch together.

    Why together: :func:`spanning_forests` runs the algorithms that cover the same keys in one
    lockstep Prim loop, split over ``workers`` threads, instead of one loop after the other
    (a cold start of the 14 default algorithms at 100,000 photos is dominated by this).
    Raises :class:`BuildStopped` when ``should_stop()`` says so (indexes not loaded yet stay
    as they were).
    """
    groups: dict[tuple[Any, ...], list[int]] = {}
    for number, (_, keys, _) in enumerate(jobs):
        groups.setdefault(tuple(keys), []).append(number)
    for members in groups.values():
        forests = spanning_forests(
            [np.ascontiguousarray(jobs[m][2]) for m in members],
            [jobs[m][0].limit for m in members],
            workers=workers,
            should_stop=should_stop,
            on_step=on_step,
        )
        for m, forest in zip(members, forests, strict=True):
            index, keys, packed = jobs[m]
            index.load(keys, packed, forest)


def _id_array(keys: Iterable[Any]) -> np.ndarray | None:
    """``keys`` as an int64 array when every one is a non-negative integer (file ids), else
    None (e.g. strings: kept in a list and a dict)."""
    try:
        array = np.asarray(keys if isinstance(keys, np.ndarray) else list(keys))
    except (ValueError, OverflowError):
        return None
    if array.ndim != 1 or array.dtype.kind not in "iu":  # bool, str, object, float: no
        return None
    if len(array) and (array.min() < 0 or array.max() > np.iinfo(np.int64).max):
        return None
    return array.astype(np.int64)


class _IdPositions(Mapping[Any, int]):
    """file id -> vertex over numpy arrays, replaced (never modified) on update.

    Why: a dict and a list of Python ints cost ~120 bytes per photo per algorithm (100,000
    photos, 14 algorithms: ~160 MB of the idle daemon); the keys in vertex order, sorted, and
    each sorted key's vertex cost 20. A lookup is a binary search (a few microseconds).
    """

    __slots__ = ("_keys", "_order", "_sorted")

    def __init__(self, keys: np.ndarray) -> None:
        self._keys = keys
        self._order = np.argsort(keys, kind="stable").astype(np.int32)
        self._sorted = keys[self._order]

    def _find(self, key: Any) -> int:
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            return -1
        if not 0 <= key <= np.iinfo(np.int64).max:
            return -1
        at = int(np.searchsorted(self._sorted, key))
        if at < len(self._sorted) and self._sorted[at] == key:
            return int(self._order[at])
        return -1

    def __getitem__(self, key: Any) -> int:
        vertex = self._find(key)
        if vertex < 0:
            raise KeyError(key)
        return vertex

    def __contains__(self, key: object) -> bool:
        return self._find(key) >= 0

    def get(self, key: Any, default: Any = None) -> Any:
        vertex = self._find(key)
        return default if vertex < 0 else vertex

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._keys.tolist())


class ClusterIndex(Generic[K]):
    """One algorithm's hashes and forest, by key (e.g. a file id), kept across refreshes.

    Vertex order is insertion order (survivors keep theirs, additions go last). Partitions come
    out as :class:`KeyPartition` of keys. Keys that are all non-negative integers (the
    pipeline's file ids) are kept in numpy arrays (:class:`_IdPositions`); any other keys in a
    list and a dict. Both behave the same.
    """

    def __init__(
        self, limit: int, nbytes: int, rebuild_share: float | None = REBUILD_SHARE
    ) -> None:
        self.limit = int(limit)
        self.nbytes = int(nbytes)
        self.rebuild_share = rebuild_share
        self._set_keys(np.empty(0, dtype=np.int64))
        self._packed = np.empty((0, self.nbytes), dtype=np.uint8)
        self._forest = _empty_forest(0, self.limit)

    def _set_keys(self, keys: Sequence[Any] | np.ndarray) -> None:
        """Keys in vertex order, and the key -> vertex mapping (a new one: see positions)."""
        ids = _id_array(keys)
        if ids is not None:
            ids.setflags(write=False)  # handed out by key_array(): nobody may change it
            self._ids: np.ndarray | None = ids
            self._keys: list[Any] | None = None
            self._index: Mapping[Any, int] = _IdPositions(ids)
        else:
            self._ids = None
            self._keys = list(keys.tolist() if isinstance(keys, np.ndarray) else keys)
            self._index = {key: i for i, key in enumerate(self._keys)}
        self._key_array: np.ndarray | None = ids

    def __len__(self) -> int:
        return len(self._ids) if self._ids is not None else len(self._keys or ())

    def __contains__(self, key: object) -> bool:
        return key in self._index

    @property
    def forest(self) -> Forest:
        return self._forest

    def keys(self) -> list[K]:
        """Current keys in vertex order."""
        if self._ids is not None:
            return self._ids.tolist()
        return list(self._keys or ())

    def key_array(self) -> np.ndarray:
        """Keys in vertex order as a numpy array (kept until the next update: don't modify)."""
        if self._key_array is None:
            self._key_array = np.asarray(self._keys)
        return self._key_array

    def hash_of(self, key: K) -> bytes:
        return self._packed[self._index[key]].tobytes()

    def load(self, keys: Sequence[K], packed: np.ndarray, forest: Forest | None = None) -> None:
        """Replace everything with ``keys`` and their hashes ``packed`` (row i is key i), and
        ``forest`` over them when already built (see :func:`build_indexes`)."""
        packed = np.ascontiguousarray(packed, dtype=np.uint8).reshape(len(keys), self.nbytes)
        if forest is None:
            forest = spanning_forest(packed, self.limit)
        if forest.n != len(keys):
            raise ValueError(f"forest has {forest.n} vertices for {len(keys)} keys")
        self._set_keys(keys)
        self._packed = packed
        self._forest = _check_limit(forest, self.limit)

    @property
    def packed(self) -> np.ndarray:
        """Hashes in vertex order, (N, nbytes) uint8. Replaced on update, never modified in
        place, so a reader (the mounted view's snapshot) may keep it."""
        return self._packed

    @property
    def positions(self) -> Mapping[K, int]:
        """key -> vertex. Replaced, never modified, by :meth:`update` (as :attr:`packed`)."""
        return self._index

    def update(self, added: Mapping[K, bytes], removed: Iterable[K] = ()) -> None:
        """Remove ``removed`` (unknown keys are ignored), then add or replace ``added``.

        A key in ``added`` that is already indexed is a changed hash: removed, then added at
        the end (nothing happens when the bytes are the same, even if the key is in ``removed``).
        """
        for key, value in added.items():
            if len(value) != self.nbytes:
                raise ValueError(f"hash for {key!r} has {len(value)} bytes, expected {self.nbytes}")
        gone = {key for key in removed if key in self._index}
        fresh: dict[K, bytes] = {}
        for key, value in added.items():
            at = self._index.get(key)
            if at is not None and self._packed[at].tobytes() == value:
                gone.discard(key)  # unchanged: keep the vertex (and everyone's order) as is
                continue
            if at is not None:
                gone.add(key)
            fresh[key] = value
        if not gone and not fresh:
            return
        keys: list[Any] | np.ndarray = self._ids if self._ids is not None else self._keys or []
        if gone:
            rows = np.array(sorted(self._index[key] for key in gone), dtype=np.intp)
            self._forest, kept = remove_from_forest(
                self._forest, self._packed, rows, self.limit, self.rebuild_share
            )
            self._packed = self._packed[kept]
            keys = keys[kept] if isinstance(keys, np.ndarray) else [keys[i] for i in kept]
        if fresh:
            old_n = len(keys)
            rows_new = np.frombuffer(b"".join(fresh.values()), dtype=np.uint8)
            self._packed = np.vstack([self._packed, rows_new.reshape(len(fresh), self.nbytes)])
            more = _id_array(fresh) if isinstance(keys, np.ndarray) else None
            if more is not None:
                keys = np.concatenate([keys, more])
            else:  # a key that is not a file id: a list from now on
                keys = [*(keys.tolist() if isinstance(keys, np.ndarray) else keys), *fresh]
            new_rows = np.arange(old_n, len(keys))
            self._forest = extend_forest(
                self._forest, self._packed, new_rows, self.limit, self.rebuild_share
            )
        if isinstance(keys, np.ndarray) or gone or self._ids is not None:
            self._set_keys(keys)  # (the last case: file ids until now, a list from now on)
        else:
            # Additions only: survivors keep their vertices, so copy (C speed) and extend
            # rather than rebuild; a copy, since a reader may hold the old mapping.
            index = dict(self._index)
            start = len(keys) - len(fresh)
            index.update(zip(fresh, range(start, len(keys)), strict=True))
            self._keys, self._index, self._key_array = keys, index, None

    def sweep(
        self, thresholds: Sequence[int], rank_of: Callable[[K], Any] | None = None
    ) -> list[KeyPartition[K]]:
        """Partitions in keys. Rank = ``rank_of(key)`` (default: the key itself; must sort)."""
        rank = rank_of if rank_of is not None else (lambda key: key)
        keys = self.keys()
        by_rank = sorted(range(len(keys)), key=lambda i: rank(keys[i]))
        ranks = np.empty(len(by_rank), dtype=np.int64)
        ranks[by_rank] = np.arange(len(by_rank))
        return [
            KeyPartition(
                p.threshold,
                [[keys[i] for i in c] for c in p.clusters],
                [keys[i] for i in p.unclustered],
            )
            for p in sweep(self._forest, thresholds, ranks)
        ]
