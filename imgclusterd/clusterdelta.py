"""What changed between two sweeps of one algorithm: per threshold, which clusters and which
part of the unclustered set (added, removed, merged, split, renumbered).

Why it is cheap. Between two refreshes a few images are added, removed or *touched* (same
vertex, but its link changed: a rename). At a threshold ``t`` a component of the old graph
that holds none of them is still a component of the new graph unless an added image links to
it (the edges among survivors are the same), and a new component that holds none of them was
an old component unless it lost a removed image. So one pass finds every changed component:

    changed new = components of added or touched images, and of survivors whose old component
                  lost a removed (or touched) image
    changed old = components of removed or touched images, and of survivors whose new
                  component holds an added (or touched) image

(one round is closed: a survivor of an unchanged old component only meets added images
through an edge to one). Everything else is the same set of images; only its number may move,
since clusters are numbered by size and first path. In :func:`sweep_delta` each threshold
costs a few numpy passes over the labels (O(N) with a tiny constant) and Python work only for
what changed; :func:`sweep_delta_from` (the daemon's) gives the same deltas from what the last
refresh kept (:class:`SweepState`), walking the forests from the changed images and
renumbering from the last sweep's order, so a threshold costs its changed components.

Vertices are put in rank order first, so a component's canonical label (its smallest vertex,
as :func:`imgclusterd.cluster.sweep` keeps it) is also its first member by rank: the
numbering key needs no extra pass.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .cluster import Forest, _labels, _merge, _stable_order

__all__ = ["ClusterChange", "KeptLabels", "Numbering", "SweepState", "ThresholdDelta",
           "sweep_delta", "sweep_delta_from"]

logger = logging.getLogger(__name__)

_EMPTY = np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class ClusterChange:
    """A cluster of the new sweep whose members (or their links) are new at this threshold.

    ``base``: the number of the old cluster it is best patched from (the one sharing most
    members; each old cluster is the base of at most one change), 0 for none -- then ``added``
    holds every member. ``kind``: "added" (no member was in an old cluster), "merged" (members
    from two or more old clusters), "split" (a piece of an old cluster that fell apart) or
    "changed" (members came or went). Members = base's - ``removed`` + ``added`` (a touched
    member is in both).
    """

    number: int
    size: int
    kind: str
    base: int
    added: np.ndarray
    removed: np.ndarray


@dataclass(frozen=True)
class ThresholdDelta:
    """Changes at one threshold. Old clusters not in ``gone`` and new ones not in ``changed``
    are the same members under the same number, unless listed in ``renumbered`` (old, new)."""

    threshold: int
    clusters: int  # new number of clusters
    unclustered: int  # new size of the unclustered set
    changed: list[ClusterChange] = field(default_factory=list)
    # (old number, "removed" | "merged" | "split" | "changed"): old member sets that are gone
    gone: list[tuple[int, str]] = field(default_factory=list)
    renumbered: list[tuple[int, int]] = field(default_factory=list)
    unclustered_added: np.ndarray = field(default_factory=lambda: _EMPTY)
    unclustered_removed: np.ndarray = field(default_factory=lambda: _EMPTY)

    @property
    def unchanged(self) -> bool:
        return not (
            self.changed
            or self.gone
            or self.renumbered
            or len(self.unclustered_added)
            or len(self.unclustered_removed)
        )


class _Side:
    """One sweep in rank order: labels per threshold (canonical = first member by rank)."""

    def __init__(self, forest: Forest, keys: np.ndarray, ranks: np.ndarray) -> None:
        n = forest.n
        if len(keys) != n or len(ranks) != n:
            raise ValueError(f"need one key and one rank per vertex ({n})")
        self.n = n
        by_rank = np.argsort(ranks, kind="stable")
        position = np.empty(n, dtype=np.int64)
        position[by_rank] = np.arange(n)
        self.keys = np.asarray(keys)[by_rank]  # vertex i (rank order) -> key
        self.u = position[forest.u]
        self.v = position[forest.v]
        self.w = forest.w.astype(np.int64)
        self.limit = forest.limit
        self.labels = np.arange(n)
        self.done = 0
        self.sizes = np.ones(n, dtype=np.int64)

    def advance(self, threshold: int) -> None:
        if self.limit is not None and threshold > self.limit:
            raise ValueError(f"threshold {threshold} is above the forest's limit {self.limit}")
        k = int(np.searchsorted(self.w, threshold, side="right"))
        if k > self.done:
            self.labels = _merge(self.labels, self.u[self.done : k], self.v[self.done : k])
            self.done = k
        self.sizes = np.bincount(self.labels, minlength=self.n)

    def numbers(self) -> np.ndarray:
        """label -> cluster number (1-based; 0 for vertices that are not a cluster's label)."""
        clustered = np.flatnonzero(self.sizes >= 2)
        # size descending, then first rank (= the label itself)
        order = clustered[np.lexsort((clustered, -self.sizes[clustered]))]
        numbers = np.zeros(self.n, dtype=np.int64)
        numbers[order] = np.arange(1, len(order) + 1)
        return numbers

    def members(self, label: int) -> np.ndarray:
        return np.flatnonzero(self.labels == label)


def sweep_delta(
    old: Forest,
    old_keys: np.ndarray,
    old_ranks: np.ndarray,
    new: Forest,
    new_keys: np.ndarray,
    new_ranks: np.ndarray,
    thresholds: Sequence[int],
    touched: np.ndarray | None = None,
) -> list[ThresholdDelta]:
    """Per threshold (in the given order), what changed from ``old``'s sweep to ``new``'s.

    Vertex ``i`` of a forest is the image with key ``*_keys[i]`` (unique, comparable numpy
    values, e.g. file ids) and sort rank ``*_ranks[i]`` (the numbering's tie break, e.g. the
    position of its path). Keys in ``touched`` are in both and count as changed: those whose
    hash changed *must* be listed (their edges changed), and those whose link changed (a
    rename) should be; the clusters holding them are reported, with the key in ``added`` and
    ``removed``. Ranks of untouched survivors must keep their relative order.
    """
    a = _Side(old, old_keys, old_ranks)
    b = _Side(new, new_keys, new_ranks)
    # survivors: a-vertex ia[i] is b-vertex ib[i]
    _, ia, ib = np.intersect1d(a.keys, b.keys, assume_unique=True, return_indices=True)
    a_to_b = np.full(a.n, -1, dtype=np.int64)
    a_to_b[ia] = ib
    b_to_a = np.full(b.n, -1, dtype=np.int64)
    b_to_a[ib] = ia
    touched_keys = np.asarray(touched if touched is not None else _EMPTY)
    a_touch = np.zeros(a.n, dtype=bool)
    b_touch = np.zeros(b.n, dtype=bool)
    if len(touched_keys):
        a_touch[np.flatnonzero(np.isin(a.keys, touched_keys))] = True
        b_touch[np.flatnonzero(np.isin(b.keys, touched_keys))] = True
    a_hot = np.flatnonzero((a_to_b < 0) | a_touch)  # removed or touched
    b_hot = np.flatnonzero((b_to_a < 0) | b_touch)  # added or touched
    a_surv, b_surv = ia, ib

    # Below the lightest edge of a changed image (old forest for removed and touched ones,
    # new forest for added and touched ones) every changed image is a single on its side and
    # nothing else differs: the graphs of the other images are the same, so are their
    # components (see the module doc). Those thresholds -- most of a sweep for a photo unlike
    # the others -- only move singles in and out of the unclustered set; their counts come
    # from the new forest's degrees, with no labelling of N vertices.
    quiet_below = min(_lightest(a, a_hot), _lightest(b, b_hot))
    lightest = np.full(b.n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(lightest, b.u, b.w)
    np.minimum.at(lightest, b.v, b.w)
    lightest.sort()
    quiet_added = b.keys[b_hot]
    quiet_removed = a.keys[a_hot]
    quiet_added, quiet_removed = np.sort(quiet_added), np.sort(quiet_removed)

    result: dict[int, ThresholdDelta] = {}
    for t in sorted({int(x) for x in thresholds}):
        if t < quiet_below:
            linked = int(np.searchsorted(lightest, t, side="right"))  # images with an edge
            edges = int(np.searchsorted(b.w, t, side="right"))
            result[t] = ThresholdDelta(
                threshold=t,
                clusters=linked - edges,  # a forest: components = vertices - edges
                unclustered=b.n - linked,
                unclustered_added=quiet_added,
                unclustered_removed=quiet_removed,
            )
            continue
        a.advance(t)
        b.advance(t)
        result[t] = _delta_at(t, a, b, a_to_b, b_to_a, a_hot, b_hot, a_touch, b_touch,
                              a_surv, b_surv)  # fmt: skip
    return [result[int(t)] for t in thresholds]


def _delta_at(
    t: int,
    a: _Side,
    b: _Side,
    a_to_b: np.ndarray,
    b_to_a: np.ndarray,
    a_hot: np.ndarray,
    b_hot: np.ndarray,
    a_touch: np.ndarray,
    b_touch: np.ndarray,
    a_surv: np.ndarray,
    b_surv: np.ndarray,
) -> ThresholdDelta:
    # Changed components, by label, on each side (see the module docstring).
    a_flag = np.zeros(a.n, dtype=bool)
    b_flag = np.zeros(b.n, dtype=bool)
    a_flag[a.labels[a_hot]] = True
    b_flag[b.labels[b_hot]] = True
    a_hit = a_flag[a.labels[a_surv]]  # survivors whose old component changed
    b_hit = b_flag[b.labels[b_surv]]
    b_flag[b.labels[b_surv[a_hit]]] = True
    a_flag[a.labels[a_surv[b_hit]]] = True
    a_changed = np.flatnonzero(a_flag)
    b_changed = np.flatnonzero(b_flag)

    a_numbers = a.numbers()
    b_numbers = b.numbers()
    clusters = int(np.count_nonzero(b.sizes >= 2))
    unclustered = int(np.count_nonzero(b.sizes == 1))

    # Renumbered: unchanged old clusters (same members) whose number moved.
    a_clustered = np.flatnonzero(a_numbers)
    same = a_clustered[~a_flag[a_clustered]]
    moved_to = b_numbers[b.labels[a_to_b[same]]]
    moved = moved_to != a_numbers[same]
    renumbered = sorted(
        zip(a_numbers[same][moved].tolist(), moved_to[moved].tolist(), strict=True)
    )

    # Changed new components: members, and the old cluster each is best patched from.
    changed: list[ClusterChange] = []
    gone: list[tuple[int, str]] = []
    used_bases: set[int] = set()
    a_pieces: dict[int, int] = {}  # old label -> new components its survivors went to
    b_parts: dict[int, list[int]] = {}
    b_members: dict[int, np.ndarray] = {}
    overlaps: list[tuple[int, int, int]] = []  # (-shared, new label, old label)
    for label in b_changed.tolist():
        members = b.members(label)
        b_members[label] = members
        olds = b_to_a[members]
        olds = olds[olds >= 0]
        parts, shared = np.unique(a.labels[olds], return_counts=True)
        b_parts[label] = [p for p in parts.tolist() if a.sizes[p] >= 2]
        for part, count in zip(parts.tolist(), shared.tolist(), strict=True):
            a_pieces[part] = a_pieces.get(part, 0) + 1
            if a.sizes[part] >= 2 and b.sizes[label] >= 2:
                overlaps.append((-count, label, part))
    # Greedy: the largest overlaps get their bases first; each old cluster is used once.
    base_of: dict[int, int] = {}
    for _, label, part in sorted(overlaps):
        if label not in base_of and part not in used_bases:
            base_of[label] = part
            used_bases.add(part)

    b_unclustered_added: list[np.ndarray] = []
    a_unclustered_removed: list[np.ndarray] = []
    for label in b_changed.tolist():
        members = b_members[label]
        if b.sizes[label] < 2:  # a single: unclustered now
            vertex = members[0]
            was = b_to_a[vertex]
            if was < 0 or a.sizes[a.labels[was]] >= 2 or b_touch[vertex]:
                b_unclustered_added.append(b.keys[members])
            continue
        base = base_of.get(label)
        olds = b_to_a[members]
        if base is None:
            added = members
            removed = _EMPTY
            base_number = 0
        else:
            inside = (olds >= 0) & ~b_touch[members]
            inside[inside] = a.labels[olds[inside]] == base
            added = members[~inside]
            base_members = a.members(base)
            stays = a_to_b[base_members] >= 0
            stays[stays] = b.labels[a_to_b[base_members[stays]]] == label
            stays &= ~a_touch[base_members]
            removed = base_members[~stays]
            base_number = int(a_numbers[base])
        kind = _change_kind(b_parts[label], a_pieces)
        changed.append(
            ClusterChange(
                number=int(b_numbers[label]),
                size=int(b.sizes[label]),
                kind=kind,
                base=base_number,
                added=b.keys[added],
                removed=a.keys[removed] if len(removed) else _EMPTY,
            )
        )
    changed.sort(key=lambda change: change.number)

    for label in a_changed.tolist():
        members_a = a.members(label)
        if a.sizes[label] < 2:  # an old single: it left the unclustered set, or was touched
            vertex = members_a[0]
            now = a_to_b[vertex]
            if now < 0 or b.sizes[b.labels[now]] >= 2 or a_touch[vertex]:
                a_unclustered_removed.append(a.keys[members_a])
            continue
        targets = a_to_b[members_a]
        targets = targets[targets >= 0]
        pieces = np.unique(b.labels[targets])
        clustered_pieces = [p for p in pieces.tolist() if b.sizes[p] >= 2]
        kind = _gone_kind(len(pieces), clustered_pieces, b_parts)
        gone.append((int(a_numbers[label]), kind))
    gone.sort()

    return ThresholdDelta(
        threshold=t,
        clusters=clusters,
        unclustered=unclustered,
        changed=changed,
        gone=gone,
        renumbered=renumbered,
        unclustered_added=_concat(b_unclustered_added),
        unclustered_removed=_concat(a_unclustered_removed),
    )


def _lightest(side: _Side, vertices: np.ndarray) -> int:
    """The weight of the lightest edge touching any of ``vertices`` (a large value if none)."""
    hot = np.zeros(side.n, dtype=bool)
    hot[vertices] = True
    touching = side.w[hot[side.u] | hot[side.v]]
    return int(touching.min()) if len(touching) else np.iinfo(np.int32).max


def _change_kind(old_parts: Sequence[int], old_pieces: Mapping[int, int]) -> str:
    """How a new cluster came about, from the old clusters among its members (``old_parts``)
    and how many new clusters each old one went to (``old_pieces``)."""
    if len(old_parts) >= 2:
        return "merged"
    if not old_parts:
        return "added"
    if old_pieces.get(old_parts[0], 0) >= 2:
        return "split"
    return "changed"


def _gone_kind(
    pieces: int, clustered_pieces: Sequence[int], new_parts: Mapping[int, Sequence[int]]
) -> str:
    """What became of an old cluster's number, from the new components its members are in
    (``pieces`` of them, ``clustered_pieces`` the ones of two or more photos) and the old
    clusters each new one holds (``new_parts``)."""
    if not clustered_pieces:
        return "removed"
    if pieces >= 2:
        return "split"
    if any(len(new_parts.get(p, ())) >= 2 for p in clustered_pieces):
        return "merged"
    return "changed"


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)) if parts else _EMPTY


# --------------------------------------------------------------------------- following a sweep
#
# sweep_delta above labels every vertex at every threshold that a change reaches: O(N) numpy
# passes, ~440 times for the default sweep, on both sides. sweep_delta_from gives the same
# deltas at the cost of what changed, from what the previous refresh kept (a SweepState):
#
# - the changed components are found by walking the two forests from the changed vertices
#   along edges <= t (their size, not N); a walk that grows past a share of N (a giant cluster
#   at the top thresholds) labels that side once instead, and the labels are kept for the next
#   refresh; a refresh that only added or only removed photos then answers a giant component
#   from the two sides' labels and the changed photos' forest edges (_changes_added,
#   _changes_removed), without listing its members;
# - cluster numbers come from the previous sweep's Numbering: the unchanged clusters keep their
#   relative order (size, then first path), so the changed ones are taken out and put back
#   with binary searches, and the numbers in between are the renumbered ones.


_NEVER = int(np.iinfo(np.int32).max)

#: A walk of a forest stops and the side is labelled instead past this many vertices, or 1/32
#: of the images (a vertex walked costs about what 1/32 of a numpy labelling pass costs).
WALK_MIN = 512


class KeptLabels(MutableMapping[int, np.ndarray]):
    """threshold -> component label of every vertex, kept between refreshes in 2 bytes a
    vertex where the labels allow it; read back as int32, values unchanged.

    Why: a delta keeps the labels of every threshold it labelled (4-9 per algorithm), which
    as int32 were the largest thing the cluster stage kept: 8.2 of the algorithm states'
    24 MB at 20,000 photos, ~41 MB at 100,000, where the daemon's idle budget is 600 MB.
    Labels are vertex numbers below n: under 65,536 they are stored as uint16; above, when
    there are at most 65,536 distinct ones (the thresholds a delta labels are those where a
    giant component forms, so few), as uint16 indices into the sorted distinct values.
    Otherwise as int32. A read is one gather (~0.2 ms at 100,000 photos).
    """

    _WIDE = 1 << 16

    def __init__(self, other: KeptLabels | None = None) -> None:
        # threshold -> (labels or their indices, distinct values or None)
        self._kept: dict[int, tuple[np.ndarray, np.ndarray | None]] = (
            dict(other._kept) if other is not None else {}
        )

    def __getitem__(self, t: int) -> np.ndarray:
        stored, values = self._kept[t]
        if values is not None:
            return values[stored]
        return stored.astype(np.int32)

    def __setitem__(self, t: int, labels: np.ndarray) -> None:
        n = len(labels)
        if n == 0 or int(labels.max()) < self._WIDE:
            self._kept[t] = (labels.astype(np.uint16), None)
            return
        present = np.zeros(int(labels.max()) + 1, dtype=bool)
        present[labels] = True
        values = np.flatnonzero(present)
        if len(values) > self._WIDE:
            self._kept[t] = (labels.astype(np.int32), None)
            return
        index = np.cumsum(present, dtype=np.int32) - 1
        self._kept[t] = (index[labels].astype(np.uint16), values.astype(np.int32))

    def __delitem__(self, t: int) -> None:
        del self._kept[t]

    def __iter__(self) -> Iterator[int]:
        return iter(self._kept)

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, t: object) -> bool:
        return t in self._kept


@dataclass
class Numbering:
    """The clusters of one sweep at each threshold in number order -- the key of each one's
    first member (by rank) and minus its size (so ascending) -- and the unclustered count."""

    first: dict[int, np.ndarray] = field(default_factory=dict)
    minus_sizes: dict[int, np.ndarray] = field(default_factory=dict)
    unclustered: dict[int, int] = field(default_factory=dict)

    def covers(self, thresholds: Iterable[int]) -> bool:
        return all(int(t) in self.first for t in thresholds)


class SweepState:
    """One algorithm's sweep as the output last saw it, kept for the next delta.

    ``keys[i]``/``ranks[i]``: key and sort rank of vertex ``i`` of ``forest``; ``position``:
    key -> vertex. The numbering is made from scratch on first need (or by
    :func:`sweep_delta_from`, from the previous one); arrays are never modified in place.
    ``previous``: the state before, whose forest-only parts (adjacency, labels) are taken over
    when the forest is the same object (a refresh that only renamed photos).
    """

    def __init__(
        self,
        forest: Forest,
        keys: np.ndarray,
        ranks: np.ndarray,
        position: Mapping[int, int],
        previous: SweepState | None = None,
    ) -> None:
        if len(keys) != forest.n or len(ranks) != forest.n:
            raise ValueError(f"need one key and one rank per vertex ({forest.n})")
        self.forest = forest
        self.keys = np.asarray(keys)
        self.ranks = np.asarray(ranks)
        self.position = position
        self.numbering: Numbering | None = None
        self._adjacency: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        # threshold -> labels of every vertex, at the thresholds a delta had to label: the
        # next delta, with this as its old side, reads them instead of merging the edges
        # between thresholds again (a giant cluster forms in the same few thresholds of every
        # refresh), and carries them to its new side when photos were only added.
        self.labelled = KeptLabels()
        self._by_rank: np.ndarray | None = None
        self._table: np.ndarray | None = None
        if previous is not None and previous.forest is forest:
            self._adjacency = previous._adjacency
            self.labelled = KeptLabels(previous.labelled)

    @property
    def n(self) -> int:
        return self.forest.n

    def adjacency(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, neighbour, weight): vertex i's forest edges are ``start[i]:start[i+1]``,
        lightest first."""
        if self._adjacency is None:
            f, n = self.forest, self.forest.n
            # Edge-major order keeps the forest's weight order within each vertex's list.
            ends = np.stack([f.u, f.v], axis=1).ravel()
            others = np.stack([f.v, f.u], axis=1).ravel()
            order = _stable_order(ends)
            start = np.zeros(n + 1, dtype=np.int32 if 2 * n < 2**31 else np.int64)
            np.cumsum(np.bincount(ends, minlength=n), out=start[1:])
            self._adjacency = (start, others[order], np.repeat(f.w, 2)[order])
        return self._adjacency

    def shed(self) -> None:
        """Drop what is cheap to make again on need: the adjacency (a radix pass, ~1 ms per
        algorithm at 20,000 photos; 15 bytes a photo per algorithm, ~21 MB at 100,000)."""
        self._adjacency = None

    def by_rank(self) -> np.ndarray:
        """Vertices in rank order (ties by vertex)."""
        if self._by_rank is None:
            n, ranks = self.n, self.ranks
            order = None
            # The pipeline's ranks are positions 0..n-1: a scatter, no sort.
            if np.issubdtype(ranks.dtype, np.integer) and n and ranks.min() >= 0 and (
                ranks.max() < n
            ):
                order = np.full(n, -1, dtype=np.int64)
                order[ranks] = np.arange(n)
                if order.min() < 0:  # ties
                    order = None
            self._by_rank = order if order is not None else np.lexsort((np.arange(n), ranks))
        return self._by_rank

    def drop_lookups(self) -> None:
        """Forget :meth:`by_rank` and :meth:`vertices`' table (memory: kept per algorithm)."""
        self._by_rank = self._table = None

    def vertices(self, keys: np.ndarray) -> np.ndarray:
        """The vertex of each key (-1: not in this sweep)."""
        keys = np.asarray(keys)
        if not np.issubdtype(self.keys.dtype, np.integer) or not len(self.keys):
            return np.array([self.position.get(k, -1) for k in keys.tolist()], dtype=np.int64)
        if self._table is None:  # file ids: a table over them, no sort
            self._table = np.full(int(self.keys.max()) + 1, -1, dtype=np.int64)
            if self.keys.min() < 0:
                raise ValueError("keys must not be negative")
            self._table[self.keys] = np.arange(self.n)
        inside = (keys >= 0) & (keys < len(self._table))
        found = np.full(len(keys), -1, dtype=np.int64)
        found[inside] = self._table[keys[inside]]
        return found

    def rank_key(self, vertex: int) -> tuple[object, int]:
        """The numbering's tie break of a component whose first member is ``vertex``."""
        return (self.ranks[vertex].item(), vertex)

    def numbering_for(self, thresholds: Sequence[int]) -> Numbering:
        if self.numbering is None or not self.numbering.covers(thresholds):
            self.numbering = _numbering(self.forest, self.keys, self.ranks, thresholds)
        return self.numbering


def _numbering(
    forest: Forest, keys: np.ndarray, ranks: np.ndarray, thresholds: Sequence[int]
) -> Numbering:
    """The numbering from scratch: a sweep labelling every vertex (O(N) per threshold)."""
    side = _Side(forest, keys, ranks)
    out = Numbering()
    first: np.ndarray = _EMPTY
    minus: np.ndarray = _EMPTY
    for t in sorted({int(x) for x in thresholds}):
        side.advance(t)
        clustered = np.flatnonzero(side.sizes >= 2)
        order = clustered[np.lexsort((clustered, -side.sizes[clustered]))]
        now_first, now_minus = side.keys[order], (-side.sizes[order]).astype(np.int32)
        # Thresholds with the same clusters (a plateau of the sweep) share one copy.
        if not (np.array_equal(now_first, first) and np.array_equal(now_minus, minus)):
            first, minus = now_first, now_minus
        out.first[t], out.minus_sizes[t] = first, minus
        out.unclustered[t] = int(np.count_nonzero(side.sizes == 1))
    return out


class _Found:
    """The components at threshold ``t`` of one side that hold given vertices.

    Walks the forest while that stays small; past ``cap`` vertices it labels the side once
    (O(N), in C) and answers from the labels. ``hint`` (shared by the thresholds of one
    sweep, visited rising): the lowest threshold that needed labels -- components only grow
    with the threshold, so the thresholds above it label at once instead of walking first.
    """

    def __init__(self, state: SweepState, t: int, cap: int, labelling: _Labelling) -> None:
        self.state, self.t, self.cap, self.labelling = state, t, cap, labelling
        self.comps: list[np.ndarray] = []  # members, in rank order
        self.where: dict[int, int] = {}  # walk mode: vertex -> component
        self.labels: np.ndarray | None = None  # label mode
        self.lookup = _EMPTY  # label mode: label -> component (-1: none)
        self.seeds: list[np.ndarray] = []
        # The lightest edge above t leaving a component found: below it, they are the same.
        self.escape = _NEVER

    def add(self, seeds: np.ndarray) -> None:
        self.seeds.append(seeds)
        if self.labels is None:
            if (
                len(seeds) <= self.cap
                and not self.labelling.wanted(self.t)
                and self._walk(seeds.tolist())
            ):
                return
            self.labels = self.labelling.at(self.t)
            self.lookup = np.full(len(self.labels), -1, dtype=np.int64)
            f = self.state.forest
            k = self.labelling.done
            self.escape = int(f.w[k]) if k < len(f.w) else _NEVER
            self.comps, self.where = [], {}
            seeds = _concat_members(self.seeds)
        labels = self.labels[seeds]
        fresh = np.unique(labels[self.lookup[labels] < 0])
        if not len(fresh):
            return
        first = len(self.comps)
        self.lookup[fresh] = np.arange(first, first + len(fresh))
        by_rank = self.state.by_rank()
        comp = self.lookup[self.labels[by_rank]]
        if len(fresh) == 1:
            self.comps.append(by_rank[comp == first])
            return
        inside = np.flatnonzero(comp >= first)  # in rank order; grouped by a stable sort
        inside = inside[np.argsort(comp[inside], kind="stable")]
        cuts = np.flatnonzero(np.diff(comp[inside])) + 1
        self.comps.extend(np.split(by_rank[inside], cuts))

    def _walk(self, seeds: list[int]) -> bool:
        start, neighbour, weight = self.state.adjacency()
        t, where, escape = self.t, self.where, self.escape
        for s in seeds:
            if s in where:
                continue
            number = len(self.comps)
            where[s] = number
            members, stack = [s], [s]
            while stack:
                x = stack.pop()
                a, b = int(start[x]), int(start[x + 1])
                for y, w in zip(neighbour[a:b].tolist(), weight[a:b].tolist(), strict=True):
                    if w > t:
                        escape = min(escape, w)
                        break  # lightest first
                    if y not in where:
                        where[y] = number
                        members.append(y)
                        stack.append(y)
                if len(where) > self.cap:
                    return False
            found = np.array(members, dtype=np.int64)
            self.comps.append(found[np.lexsort((found, self.state.ranks[found]))])
        self.escape = escape
        return True

    def of(self, vertices: np.ndarray) -> np.ndarray:
        """The component of each vertex (all must be in one found)."""
        if self.labels is not None:
            found = self.lookup[self.labels[vertices]]
            if len(found) and int(found.min()) < 0:
                raise KeyError("a vertex outside the components found")
            return found
        return np.array([self.where[x] for x in vertices.tolist()], dtype=np.int64)


class _Labelling:
    """Labels of one side for the thresholds of one sweep, visited rising: the first one that
    needs them labels every vertex, the next ones merge only the edges in between; labels the
    state kept (``SweepState.labelled``) are read, and each threshold's are kept in it.

    ``carry``: the old side, when photos were only added (old vertex i is new vertex i): its
    kept labels, merged along the new forest's edges that touch an added photo, are this
    side's -- its other edges are old ones (see :mod:`imgclusterd.cluster`), so the old
    components are new components or parts of one through an added photo."""

    def __init__(
        self, state: SweepState, carry: SweepState | None = None, removed: np.ndarray = _EMPTY
    ) -> None:
        self.state = state
        self.t: int | None = None  # lowest threshold that needed labels, then the last
        self.labels = _EMPTY
        self.done = 0
        self.carry = carry
        # With ``carry``: the old side's vertices that this side lacks (photos only removed;
        # the others keep their order), or none (photos only added).
        self.removed = removed
        self._touching: np.ndarray | None = None

    def wanted(self, t: int) -> bool:
        """Labels were needed below ``t``: the components only grow, so they are needed now."""
        return self.t is not None and self.t <= t

    def at(self, t: int) -> np.ndarray:
        state, f = self.state, self.state.forest
        k = int(np.searchsorted(f.w, t, side="right"))
        kept = state.labelled.get(t)
        if kept is None:
            kept = self._carried(t)
        if kept is not None:
            self.labels = kept
        else:
            if self.t is None or self.t > t:
                below = [s for s in state.labelled if s <= t]
                if below:  # kept by the last delta: merge from there
                    self.labels = state.labelled[max(below)]
                    self.done = int(np.searchsorted(f.w, max(below), side="right"))
                else:
                    self.labels = _labels(f.n, f.u[:k], f.v[:k])
                    self.done = k
            if k > self.done:
                self.labels = _merge(self.labels, f.u[self.done : k], f.v[self.done : k])
            if len(self.labels) and self.labels.dtype != np.int32 and f.n < 2**31:
                self.labels = self.labels.astype(np.int32)  # kept: half the memory
            state.labelled[t] = self.labels
        self.t, self.done = t, k
        return self.labels

    def _carried_removal(self, t: int, old: SweepState) -> np.ndarray | None:
        """Photos only removed, each with at most one old forest edge <= ``t`` (a leaf there,
        as a photo added last often is): no component at ``t`` falls apart, so this side's
        labels are the old ones without the removed photos'. None otherwise."""
        start, _, weight = old.adjacency()
        for r in self.removed.tolist():
            a, b = int(start[r]), int(start[r + 1])
            if b - a > 1 and int(weight[a + 1]) <= t:  # lightest first: a second edge <= t
                return None
        labels = np.delete(old.labelled[t], self.removed)
        n = len(labels)
        present = np.zeros(old.n, dtype=bool)
        present[labels] = True
        high = np.flatnonzero(present[n:]) + n
        if len(high):  # label values must stay below n (they index arrays of n)
            mapping = np.arange(old.n, dtype=labels.dtype)
            mapping[high] = np.flatnonzero(~present[:n])[: len(high)]
            labels = mapping[labels]
        self.state.labelled[t] = labels
        return labels

    def touching(self) -> np.ndarray:
        """The forest's edges (indices) that touch a vertex the ``carry`` side lacks."""
        if self._touching is None:
            f, n_old = self.state.forest, self.carry.n if self.carry is not None else 0
            self._touching = np.flatnonzero((f.u >= n_old) | (f.v >= n_old))
        return self._touching

    def _carried(self, t: int) -> np.ndarray | None:
        """The labels at ``t`` from the old side's kept ones (see the class doc), or None."""
        old = self.carry
        if old is None or t not in old.labelled:
            return None
        if len(self.removed):
            return self._carried_removal(t, old)
        f, n_old = self.state.forest, old.n
        touching = self.touching()
        touching = touching[f.w[touching] <= t]
        kept = old.labelled[t]
        labels = np.concatenate([kept, np.arange(n_old, f.n, dtype=kept.dtype)])
        # A few edges per added photo: relabelling costs less than a graph's components.
        for x, y in zip(f.u[touching].tolist(), f.v[touching].tolist(), strict=True):
            a, b = labels[x], labels[y]
            if a != b:
                labels[labels == max(a, b)] = min(a, b)
        self.state.labelled[t] = labels
        return labels


class _Survivors:
    """Old vertex <-> new vertex of the images in both sweeps (-1: not in the other)."""

    _SMALL = 64

    def __init__(self, old: SweepState, new: SweepState) -> None:
        self.old, self.new = old, new

    def to_new(self, vertices: np.ndarray) -> np.ndarray:
        return self._map(self.old, self.new, vertices)

    def to_old(self, vertices: np.ndarray) -> np.ndarray:
        return self._map(self.new, self.old, vertices)

    def _map(self, here: SweepState, there: SweepState, vertices: np.ndarray) -> np.ndarray:
        keys = here.keys[vertices]
        if len(vertices) > self._SMALL:
            return there.vertices(keys)
        position = there.position
        return np.array([position.get(k, -1) for k in keys.tolist()], dtype=np.int64)


def sweep_delta_from(
    old: SweepState,
    new: SweepState,
    thresholds: Sequence[int],
    touched: Iterable[int] = (),
    *,
    added: Iterable[int] | None = None,
    removed: Iterable[int] | None = None,
) -> list[ThresholdDelta]:
    """:func:`sweep_delta` (same arguments' meaning, same deltas) at the cost of what changed,
    and ``new.numbering`` set for the next call.

    ``added``/``removed``: keys new to ``new`` / gone from ``old``, when the caller knows them
    (otherwise every key is compared). A key in both sweeps that is listed in either counts as
    touched.
    """
    wanted = sorted({int(t) for t in thresholds})
    before = old.numbering_for(wanted)
    hot = {int(k) for k in touched}
    if added is None or removed is None:
        hot |= set(old.position).symmetric_difference(new.position)
    else:
        hot |= {int(k) for k in added} | {int(k) for k in removed}
    a_hot = np.array(sorted(old.position[k] for k in hot if k in old.position), dtype=np.int64)
    b_hot = np.array(sorted(new.position[k] for k in hot if k in new.position), dtype=np.int64)
    both = [k for k in hot if k in old.position and k in new.position]
    a_touch = np.array(sorted(old.position[k] for k in both), dtype=np.int64)
    b_touch = np.array(sorted(new.position[k] for k in both), dtype=np.int64)
    survivors = _Survivors(old, new)
    cap = max(WALK_MIN, max(old.n, new.n) // 32)
    # Photos only added, old vertices kept their numbers: every old component is inside one
    # new component (see _changes_added).
    added_only = not len(a_hot) and new.n >= old.n and np.array_equal(new.keys[: old.n], old.keys)
    # Photos only removed, the others in their order: the new side's labels may come from the
    # old side's (see _Labelling).
    removed_only = (
        not len(b_hot) and len(a_hot) > 0 and new.n == old.n - len(a_hot)
        and np.array_equal(np.delete(old.keys, a_hot), new.keys)
    )  # fmt: skip
    # Photos only touched (renamed, moved: same forest, same vertices, new ranks): every
    # component keeps its members (see _changes_touched).
    touched_only = (
        len(a_touch) > 0 and len(a_hot) == len(a_touch) and len(b_hot) == len(b_touch)
        and old.forest is new.forest and np.array_equal(old.keys, new.keys)
    )  # fmt: skip
    labellings = (
        _Labelling(old),
        _Labelling(new, old if added_only or removed_only else None,
                   a_hot if removed_only else _EMPTY),
    )  # fmt: skip

    # Below the lightest edge of a changed image every changed image is a single on its side
    # and nothing else differs (see sweep_delta).
    quiet_below = min(_lightest_edge(old, a_hot), _lightest_edge(new, b_hot))
    quiet_added = np.sort(new.keys[b_hot])
    quiet_removed = np.sort(old.keys[a_hot])

    after = Numbering()
    result: dict[int, ThresholdDelta] = {}
    local: _Local | None = None
    memo: dict[tuple[int, int, int], tuple[ThresholdDelta, tuple[object, ...]]] = {}
    for t in wanted:
        if t < quiet_below:
            after.first[t] = before.first[t]
            after.minus_sizes[t] = before.minus_sizes[t]
            after.unclustered[t] = before.unclustered[t] - len(a_hot) + len(b_hot)
            result[t] = ThresholdDelta(
                threshold=t,
                clusters=len(before.first[t]),
                unclustered=after.unclustered[t],
                unclustered_added=quiet_added,
                unclustered_removed=quiet_removed,
            )
            continue
        if local is None or t >= local.escape:
            if removed_only and (labellings[0].wanted(t) or t in old.labelled):
                local = _changes_removed(t, old, new, labellings, a_hot)
            elif touched_only and (labellings[0].wanted(t) or t in old.labelled):
                local = _changes_touched(t, old, new, labellings, a_touch)
            else:
                local = _changes_at(t, old, new, survivors, cap, labellings,
                                    a_hot, b_hot, a_touch, b_touch, added_only)  # fmt: skip
        result[t] = _numbered(t, local, old, new, before, after, memo)
    new.numbering = after
    for state in (old, new):  # cheap to make again; the adjacency is what is worth keeping
        state.drop_lookups()
    return [result[int(t)] for t in thresholds]


def _lightest_edge(state: SweepState, vertices: np.ndarray) -> int:
    if not len(vertices):
        return _NEVER
    start, _, weight = state.adjacency()
    first = start[vertices]
    has = first < start[vertices + 1]
    return int(weight[first[has]].min()) if has.any() else _NEVER


@dataclass
class _Local:
    """What changed at a threshold, but the numbers: the same at every threshold up to
    ``escape`` (exclusive), since no edge lighter than that leaves a component found."""

    escape: int
    a_comps: list[tuple[int, int]]  # changed old components: (first member by rank, size)
    b_comps: list[tuple[int, int]]  # changed new components
    # (new component, kind, old component it is patched from or None, added keys, removed keys)
    changes: list[tuple[int, str, int | None, np.ndarray, np.ndarray]]
    gone: list[tuple[int, str]]  # (old component, kind) of the old clusters among them
    unclustered_added: np.ndarray
    unclustered_removed: np.ndarray
    singles: int  # new singles - old singles among them


def _changes_at(
    t: int,
    old: SweepState,
    new: SweepState,
    survivors: _Survivors,
    cap: int,
    labellings: tuple[_Labelling, _Labelling],
    a_hot: np.ndarray,
    b_hot: np.ndarray,
    a_touch: np.ndarray,
    b_touch: np.ndarray,
    added_only: bool = False,
) -> _Local:
    if added_only and (labellings[1].wanted(t) or t in old.labelled):
        return _changes_added(t, old, new, labellings, b_hot)  # no walk: labels are at hand
    # Changed components on each side (see the module docstring): one round is closed.
    a = _Found(old, t, cap, labellings[0])
    b = _Found(new, t, cap, labellings[1])
    a.add(a_hot)
    b.add(b_hot)
    if added_only and b.labels is not None:  # a giant component: no member lists
        return _changes_added(t, old, new, labellings, b_hot)
    to_b = survivors.to_new(_concat_members(a.comps))
    to_a = survivors.to_old(_concat_members(b.comps))
    b.add(to_b[to_b >= 0])
    a.add(to_a[to_a >= 0])
    a_size = [len(c) for c in a.comps]
    b_size = [len(c) for c in b.comps]
    a_touched = set(a_touch.tolist())
    b_touched = set(b_touch.tolist())

    # Changed new components: members, and the old cluster each is best patched from.
    a_pieces: dict[int, int] = {}  # old component -> new components its survivors went to
    b_parts: dict[int, list[int]] = {}
    b_olds: dict[int, np.ndarray] = {}
    overlaps: list[tuple[int, tuple[object, int], tuple[object, int], int, int]] = []
    for j, members in enumerate(b.comps):
        olds = survivors.to_old(members)
        b_olds[j] = olds
        counts = _count(a.of(olds[olds >= 0]))
        b_parts[j] = [p for p in counts if a_size[p] >= 2]
        for part, count in counts.items():
            a_pieces[part] = a_pieces.get(part, 0) + 1
            if a_size[part] >= 2 and b_size[j] >= 2:
                overlaps.append((-count, new.rank_key(int(members[0])),
                                 old.rank_key(int(a.comps[part][0])), j, part))  # fmt: skip
    base_of: dict[int, int] = {}
    used: set[int] = set()
    for _, _, _, j, part in sorted(overlaps, key=lambda o: o[:3]):
        if j not in base_of and part not in used:
            base_of[j] = part
            used.add(part)

    changes: list[tuple[int, str, int | None, np.ndarray, np.ndarray]] = []
    unclustered_added: list[np.ndarray] = []
    for j, members in enumerate(b.comps):
        olds = b_olds[j]
        if b_size[j] < 2:  # a single: unclustered now
            was = int(olds[0])
            if was < 0 or a_size[int(a.of(olds[:1])[0])] >= 2 or int(members[0]) in b_touched:
                unclustered_added.append(new.keys[members])
            continue
        base = base_of.get(j)
        if base is None:
            added, removed = members, _EMPTY
        else:
            inside = (olds >= 0) & ~_among(members, b_touched)
            inside[inside] = a.of(olds[inside]) == base
            added = members[~inside]
            base_members = a.comps[base]
            targets = survivors.to_new(base_members)
            stays = targets >= 0
            stays[stays] = b.of(targets[stays]) == j
            stays &= ~_among(base_members, a_touched)
            removed = base_members[~stays]
        kind = _change_kind(b_parts[j], a_pieces)
        changes.append((j, kind, base, new.keys[added],
                        old.keys[removed] if len(removed) else _EMPTY))  # fmt: skip

    gone: list[tuple[int, str]] = []
    unclustered_removed: list[np.ndarray] = []
    for i, members in enumerate(a.comps):
        targets = survivors.to_new(members)
        if a_size[i] < 2:  # an old single: it left the unclustered set, or was touched
            now = int(targets[0])
            if now < 0 or b_size[int(b.of(targets[:1])[0])] >= 2 or int(members[0]) in a_touched:
                unclustered_removed.append(old.keys[members])
            continue
        pieces = list(_count(b.of(targets[targets >= 0])))
        clustered_pieces = [p for p in pieces if b_size[p] >= 2]
        gone.append((i, _gone_kind(len(pieces), clustered_pieces, b_parts)))
    return _Local(
        escape=min(a.escape, b.escape),
        a_comps=[(int(c[0]), len(c)) for c in a.comps],
        b_comps=[(int(c[0]), len(c)) for c in b.comps],
        changes=changes,
        gone=gone,
        unclustered_added=_concat(unclustered_added),
        unclustered_removed=_concat(unclustered_removed),
        singles=b_size.count(1) - a_size.count(1),
    )


def _labels_at(
    t: int, labellings: tuple[_Labelling, _Labelling]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Both sides' labels at ``t`` and the escape: the lightest edge either labelling has
    not merged yet once labelled there (for the label-based paths below)."""
    la, lb = labellings[0].at(t), labellings[1].at(t)  # (first: they merge edges up to t)
    escape = _NEVER
    for labelling in labellings:
        w, k = labelling.state.forest.w, labelling.done
        if k < len(w):
            escape = min(escape, int(w[k]))
    return la, lb, escape


@dataclass
class _Gathered:
    """What a label-based path finds at one threshold, gathered into its :class:`_Local`."""

    a_comps: list[tuple[int, int]] = field(default_factory=list)
    b_comps: list[tuple[int, int]] = field(default_factory=list)
    changes: list[tuple[int, str, int | None, np.ndarray, np.ndarray]] = field(
        default_factory=list
    )
    gone: list[tuple[int, str]] = field(default_factory=list)
    unclustered_added: list[np.ndarray] = field(default_factory=list)
    unclustered_removed: list[np.ndarray] = field(default_factory=list)

    def local(self, escape: int) -> _Local:
        """The :class:`_Local` of it (sizes from the components found)."""
        a_comps, b_comps = self.a_comps, self.b_comps
        return _Local(
            escape=escape,
            a_comps=a_comps,
            b_comps=b_comps,
            changes=self.changes,
            gone=self.gone,
            unclustered_added=_concat(self.unclustered_added),
            unclustered_removed=_concat(self.unclustered_removed),
            singles=sum(size == 1 for _, size in b_comps)
            - sum(size == 1 for _, size in a_comps),
        )


def _changes_added(
    t: int,
    old: SweepState,
    new: SweepState,
    labellings: tuple[_Labelling, _Labelling],
    b_hot: np.ndarray,
) -> _Local:
    """:func:`_changes_at` when photos were only added (old vertex i is new vertex i) and a
    changed component is too big to walk: from both sides' labels at ``t``, a few O(N) numpy
    passes and no member list of the giant component.

    Why it holds: with only additions, the edges among old photos are the same graph, so every
    old component at ``t`` lies whole inside one new component; a new component holding no
    added photo is an old one. The changed new components are those of the added photos, the
    changed old ones the old components inside them (each goes to one new component: nothing
    splits, and nothing is removed from a base). The new forest's edges between old photos are
    old edges, so each old component inside a new one is linked to an added photo of it by an
    edge <= ``t``: the old components are found from the added photos' edges."""
    la, lb, escape = _labels_at(t, labellings)
    n_old = old.n
    touching = labellings[1].touching()
    f = new.forest
    touching = touching[f.w[touching] <= t]
    eu, ev = f.u[touching].astype(np.int64), f.v[touching].astype(np.int64)
    found = _Gathered()
    hot_labels = lb[b_hot]
    for label in np.unique(hot_labels).tolist():
        xs = b_hot[hot_labels == label]  # the added photos in it
        linked = np.isin(eu, xs) | np.isin(ev, xs)
        ends = np.concatenate([eu[linked], ev[linked]])
        j = len(found.b_comps)
        comp_of: dict[int, int] = {}
        members_of: dict[int, np.ndarray] = {}
        for part in np.unique(la[ends[ends < n_old]]).tolist():
            members = np.flatnonzero(la == part)
            comp_of[part] = len(found.a_comps)
            members_of[part] = members
            # First by rank (ties: the smallest vertex, listed first).
            found.a_comps.append((int(members[np.argmin(old.ranks[members])]), len(members)))
        size = len(xs) + sum(len(m) for m in members_of.values())
        leaders = [*xs.tolist(), *(found.a_comps[c][0] for c in comp_of.values())]
        found.b_comps.append((min(leaders, key=new.rank_key), size))
        clustered = [p for p in comp_of if found.a_comps[comp_of[p]][1] >= 2]
        if size < 2:  # an added photo alone
            found.unclustered_added.append(new.keys[xs])
            continue
        for part in comp_of:
            if found.a_comps[comp_of[part]][1] < 2:  # an old single, clustered now
                found.unclustered_removed.append(old.keys[members_of[part]])
        kind = "merged" if len(clustered) >= 2 else "changed" if clustered else "added"
        for part in clustered:
            found.gone.append((comp_of[part], "merged" if kind == "merged" else "changed"))
        # The base: the largest old cluster inside (ties: its first member's rank).
        base = min(clustered, key=lambda p: (-found.a_comps[comp_of[p]][1],
                                             old.rank_key(found.a_comps[comp_of[p]][0])),
                   default=None)  # fmt: skip
        added = np.concatenate([xs, *(m for p, m in members_of.items() if p != base)])
        added = added[np.lexsort((added, new.ranks[added]))]  # rank order
        found.changes.append((j, kind, None if base is None else comp_of[base], new.keys[added],
                        _EMPTY))  # fmt: skip
    return found.local(escape)


def _changes_removed(
    t: int,
    old: SweepState,
    new: SweepState,
    labellings: tuple[_Labelling, _Labelling],
    a_hot: np.ndarray,
) -> _Local:
    """:func:`_changes_at` when photos were only removed (the others keep their order) and the
    old side's labels at ``t`` are at hand: no member list of a giant component, no walk.

    Why it holds: the new graph is the old one without the removed photos, so every new
    component lies inside one old component; the changed old components are those of the
    removed photos, the changed new ones the pieces of their survivors. The old forest inside
    such a component is a tree: without the removed photos it falls into subtrees, each holding
    an old forest neighbour of a removed photo, and each piece is a union of them -- so the
    pieces are the new components of those neighbours."""
    la, lb, escape = _labels_at(t, labellings)
    gone_old = np.zeros(old.n, dtype=bool)
    gone_old[a_hot] = True
    remap = np.cumsum(~gone_old) - 1  # old vertex -> new vertex (survivors)
    kept = np.flatnonzero(~gone_old)  # new vertex -> old vertex
    start, neighbour, weight = old.adjacency()
    found = _Gathered()
    hot_labels = la[a_hot]
    for label in np.unique(hot_labels).tolist():
        members = np.flatnonzero(la == label)
        i = len(found.a_comps)
        found.a_comps.append((int(members[np.argmin(old.ranks[members])]), len(members)))
        if len(members) < 2:  # a removed photo alone
            found.unclustered_removed.append(old.keys[members])
            continue
        near: list[int] = []
        for r in a_hot[hot_labels == label].tolist():
            a, b = int(start[r]), int(start[r + 1])
            near += [y for y, w in zip(neighbour[a:b].tolist(), weight[a:b].tolist(),
                                       strict=True) if w <= t and not gone_old[y]]  # fmt: skip
        pieces: list[tuple[int, np.ndarray]] = []  # (new label, new members)
        for piece in np.unique(lb[remap[np.array(near, dtype=np.int64)]]).tolist():
            inside = np.flatnonzero(lb == piece)
            j = len(found.b_comps)
            found.b_comps.append((int(inside[np.argmin(new.ranks[inside])]), len(inside)))
            pieces.append((j, inside))
        clustered = [(j, inside) for j, inside in pieces if len(inside) >= 2]
        for _, inside in pieces:
            if len(inside) < 2:  # a survivor alone now
                found.unclustered_added.append(new.keys[inside])
        if not clustered:
            found.gone.append((i, "removed"))
            continue
        found.gone.append((i, "split" if len(pieces) >= 2 else "changed"))
        kind = "split" if len(pieces) >= 2 else "changed"
        # The base: the largest piece (ties: its first member's rank); the others are new.
        base_j, base_members = min(clustered, key=lambda c: (-len(c[1]),
                                                           new.rank_key(found.b_comps[c[0]][0])))
        for j, inside in clustered:
            if j != base_j:
                found.changes.append((j, kind, None, new.keys[inside[np.argsort(
                    new.ranks[inside], kind="stable")]], _EMPTY))  # fmt: skip
        stays = np.zeros(old.n, dtype=bool)
        stays[kept[base_members]] = True
        left = members[~stays[members]]
        left = left[np.lexsort((left, old.ranks[left]))]  # rank order
        found.changes.append((base_j, kind, i, new.keys[_EMPTY], old.keys[left]))
    return found.local(escape)


def _changes_touched(
    t: int,
    old: SweepState,
    new: SweepState,
    labellings: tuple[_Labelling, _Labelling],
    a_touch: np.ndarray,
) -> _Local:
    """:func:`_changes_at` when photos were only touched with the forest unchanged (a rename:
    same vertices, same edges, new ranks) and the labels at ``t`` are at hand: no member list
    mapped from side to side, no walk.

    Why it holds: both sides are the same graph, so every component keeps its members; the
    changed ones are those holding a touched photo, each patched from itself (its touched
    photos removed by their old links and added by their new ones), and only their first
    member by rank may differ. A rename at 20,000 photos went through the general path with
    the giant components' member lists (~0.3 s of CPU of the 14 algorithms)."""
    la, _, escape = _labels_at(t, labellings)
    found = _Gathered()
    hot_labels = la[a_touch]
    for label in np.unique(hot_labels).tolist():
        touched = a_touch[hot_labels == label]
        members = np.flatnonzero(la == label)
        i, j = len(found.a_comps), len(found.b_comps)
        # First by rank on each side (ties: the smallest vertex, listed first).
        found.a_comps.append((int(members[np.argmin(old.ranks[members])]), len(members)))
        found.b_comps.append((int(members[np.argmin(new.ranks[members])]), len(members)))
        if len(members) < 2:  # a touched single: out of the unclustered set and back in
            found.unclustered_removed.append(old.keys[members])
            found.unclustered_added.append(new.keys[members])
            continue
        found.gone.append((i, "changed"))
        added = touched[np.lexsort((touched, new.ranks[touched]))]  # rank order
        removed = touched[np.lexsort((touched, old.ranks[touched]))]
        found.changes.append((j, "changed", i, new.keys[added], old.keys[removed]))
    return found.local(escape)


def _numbered(
    t: int,
    local: _Local,
    old: SweepState,
    new: SweepState,
    before: Numbering,
    after: Numbering,
    memo: dict[tuple[int, int, int], tuple[ThresholdDelta, tuple[object, ...]]],
) -> ThresholdDelta:
    """The delta at ``t``: ``local``'s changes numbered from ``before``'s order at ``t``, whose
    changed clusters leave it and new ones enter it (``after``, for the next refresh).

    ``memo``: the same changes on the same order (a plateau of the sweep) number the same, and
    share the order they make."""
    old_first, old_minus = before.first[t], before.minus_sizes[t]
    after.unclustered[t] = before.unclustered[t] + local.singles
    key = (id(local), id(old_first), id(old_minus))
    # Each entry holds on to the objects of its key, so no id is reused while the memo lives.
    seen = memo[key][0] if key in memo else None
    if seen is not None:
        after.first[t], after.minus_sizes[t] = after.first[seen.threshold], after.minus_sizes[
            seen.threshold]  # fmt: skip
        return replace(seen, threshold=t, unclustered=after.unclustered[t])
    at_old = {
        i: _locate(old_first, old_minus, old.keys[first].item(), size)
        for i, (first, size) in enumerate(local.a_comps)
        if size >= 2
    }
    leaving = sorted(at_old.values())
    kept_first = np.delete(old_first, leaving) if leaving else old_first
    kept_minus = np.delete(old_minus, leaving) if leaving else old_minus
    entering = sorted(
        (-size, new.rank_key(first), j) for j, (first, size) in enumerate(local.b_comps)
        if size >= 2
    )
    rank_of, position = new.ranks, new.position

    def key_at(i: int) -> tuple[object, int]:
        vertex = position[kept_first[i].item()]
        return (rank_of[vertex].item(), vertex)

    at: list[int] = []
    for minus, rank_key, _ in entering:
        lo = int(np.searchsorted(kept_minus, minus, side="left"))
        hi = int(np.searchsorted(kept_minus, minus, side="right"))
        at.append(bisect.bisect_left(range(lo, hi), rank_key, key=key_at) + lo)
    number = {j: at[i] + i + 1 for i, (_, _, j) in enumerate(entering)}
    renumbered: list[tuple[int, int]] = []
    if leaving or entering:
        after.first[t] = np.insert(kept_first, at,
                                   [new.keys[local.b_comps[j][0]] for _, _, j in entering])
        after.minus_sizes[t] = np.insert(kept_minus, at, [m for m, _, _ in entering])
        # Only the unchanged clusters from the first change on may move; past the last one,
        # all move by the same step (none when as many clusters enter as leave).
        start = min([*leaving, *at])
        stop = len(old_first)
        if len(at) == len(leaving):
            stop = min(stop, max([p + 1 for p in leaving] + [a + len(leaving) + 1 for a in at]))
        kept_old = np.delete(np.arange(start, stop), [p - start for p in leaving])
        here = np.arange(start, start + len(kept_old))
        final = here + np.searchsorted(np.asarray(at, dtype=np.int64), here, side="right")
        moved = final != kept_old
        renumbered = list(zip((kept_old[moved] + 1).tolist(), (final[moved] + 1).tolist(),
                              strict=True))  # fmt: skip
    else:
        after.first[t], after.minus_sizes[t] = old_first, old_minus
    changed = sorted(
        (
            ClusterChange(
                number=number[j],
                size=local.b_comps[j][1],
                kind=kind,
                base=at_old[base] + 1 if base is not None else 0,
                added=added,
                removed=removed,
            )
            for j, kind, base, added, removed in local.changes
        ),
        key=lambda change: change.number,
    )
    delta = ThresholdDelta(
        threshold=t,
        clusters=len(after.first[t]),
        unclustered=after.unclustered[t],
        changed=changed,
        gone=sorted((at_old[i] + 1, kind) for i, kind in local.gone),
        renumbered=renumbered,
        unclustered_added=local.unclustered_added,
        unclustered_removed=local.unclustered_removed,
    )
    memo[key] = (delta, (local, old_first, old_minus))
    return delta


def _count(values: np.ndarray) -> dict[int, int]:
    """value -> occurrences, in ascending value order."""
    if len(values) > 64:
        found, counts = np.unique(values, return_counts=True)
        return dict(zip(found.tolist(), counts.tolist(), strict=True))
    out: dict[int, int] = {}
    for v in sorted(values.tolist()):
        out[v] = out.get(v, 0) + 1
    return out


def _among(vertices: np.ndarray, chosen: set[int]) -> np.ndarray:
    """Whether each of ``vertices`` is in ``chosen`` (a few touched photos), in numpy: the
    vertices can be a giant component's members (a rename at 20,000 photos asked this of ~3
    million members in Python, ~0.7 s of its ~1.1 s cluster stage)."""
    if not chosen or not len(vertices):
        return np.zeros(len(vertices), dtype=bool)
    if len(chosen) > 8:
        return np.isin(vertices, np.fromiter(chosen, dtype=np.int64, count=len(chosen)))
    found = vertices == next(iter(chosen))
    for vertex in chosen:
        found |= vertices == vertex
    return found


def _concat_members(comps: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(comps) if comps else _EMPTY


def _locate(first: np.ndarray, minus_sizes: np.ndarray, key: object, size: int) -> int:
    """Index of the cluster of ``size`` whose first member is ``key`` in a numbering."""
    lo = int(np.searchsorted(minus_sizes, -size, side="left"))
    hi = int(np.searchsorted(minus_sizes, -size, side="right"))
    hits = np.flatnonzero(first[lo:hi] == key)
    if not len(hits):
        raise ValueError(f"no cluster of size {size} led by {key!r}: the numbering is stale")
    return lo + int(hits[0])
