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
since clusters are numbered by size and first path. Each threshold costs a few numpy passes
over the labels (O(N) with a tiny constant) and Python work only for what changed.

Vertices are put in rank order first, so a component's canonical label (its smallest vertex,
as :func:`imgclusterd.cluster.sweep` keeps it) is also its first member by rank: the
numbering key needs no extra pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .cluster import Forest, _merge

__all__ = ["ClusterChange", "ThresholdDelta", "sweep_delta"]

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
        olds_clustered = b_parts[label]
        if len(olds_clustered) >= 2:
            kind = "merged"
        elif not olds_clustered:
            kind = "added"
        elif a_pieces.get(olds_clustered[0], 0) >= 2:
            kind = "split"
        else:
            kind = "changed"
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
        if not clustered_pieces:
            kind = "removed"
        elif len(pieces) >= 2:
            kind = "split"
        elif any(len(b_parts.get(p, ())) >= 2 for p in clustered_pieces):
            kind = "merged"
        else:
            kind = "changed"
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


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)) if parts else _EMPTY
