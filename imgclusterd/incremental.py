"""The pipeline's incremental path: from two sweeps of an algorithm to the output's patches.

Wiring, not a stage: :class:`AlgorithmState` remembers what the last refresh handed to the
output for one algorithm (the spanning forest, its vertices' keys and ranks, their hashes and
paths, and the sweep's cluster numbering); :func:`tree_patches` asks the cluster stage what
changed since (:func:`imgclusterd.clusterdelta.sweep_delta_from`, which costs what changed) and
turns it into the output stage's folder patches (:class:`imgclusterd.output.ThresholdPatch`),
naming only the links that changed.

Link names. A folder's names are made unique by :func:`imgclusterd.output.folder_links`
(``<stem>_<hash>_2<ext>`` for the second of two equal names). Two links with the same name
have the same hash, hence distance 0, so they always share a folder: a photo's name is the same
in every folder of an algorithm, and only the few hashes held by more than one photo
(:attr:`AlgorithmState.duplicates`) need the numbering.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .algorithms import hash_hex
from .cluster import ClusterIndex, Forest
from .clusterdelta import SweepState, ThresholdDelta, sweep_delta_from
from .output import FolderPatch, Link, ThresholdPatch, folder_links, link_name

__all__ = ["AlgorithmState", "link_for", "tree_patches"]

log = logging.getLogger(__name__)


@dataclass
class AlgorithmState:
    """One algorithm as the output last saw it."""

    bits: int
    forest: Forest
    keys: np.ndarray  # vertex -> file id
    ranks: np.ndarray  # vertex -> rank (position of its path)
    packed: np.ndarray  # vertex -> hash row
    position: Mapping[int, int]  # file id -> vertex
    paths: Mapping[int, str]  # file id -> relative path
    # hash bytes held by two or more photos -> their file ids (usually empty)
    duplicates: dict[bytes, list[int]] = field(default_factory=dict)
    # the forest, keys and ranks again, with what the next delta reuses (see sweep_state)
    sweep: SweepState | None = None

    @classmethod
    def capture(
        cls,
        bits: int,
        index: ClusterIndex[int],
        paths: Mapping[int, str],
        rank: Callable[[np.ndarray], np.ndarray],
        previous: AlgorithmState | None = None,
        added: Iterable[int] = (),
        removed: Iterable[int] | None = None,
    ) -> AlgorithmState:
        """This refresh's state; ``previous`` with the keys ``added`` (or with a new hash) and
        ``removed`` since spares a look at every duplicate group (``removed`` None: unknown)."""
        keys = np.asarray(index.key_array(), dtype=np.int64)
        packed = index.packed
        state = cls(bits, index.forest, keys, rank(keys), packed, index.positions, paths)
        if previous is None:
            state.duplicates = _all_duplicates(keys, packed)
        else:
            state.duplicates = _update_duplicates(previous, state, added, removed)
            if previous.sweep is not None:  # what of it still holds (an unchanged forest)
                state.sweep = SweepState(state.forest, keys, state.ranks, state.position,
                                         previous=previous.sweep)  # fmt: skip
        return state

    def sweep_state(self) -> SweepState:
        """The sweep as :func:`imgclusterd.clusterdelta.sweep_delta_from` follows it (made
        once; its numbering is made from scratch on first need, or by the next delta)."""
        if self.sweep is None:
            self.sweep = SweepState(self.forest, self.keys, self.ranks, self.position)
        return self.sweep

    def hash_of(self, key: int) -> bytes:
        return self.packed[self.position[key]].tobytes()

    def link(self, key: int, root: str) -> Link:
        """``key``'s link in whatever folder of this algorithm holds it."""
        return link_for(key, self, root)


def _base_link(key: int, state: AlgorithmState, root: str) -> Link:
    path = state.paths[key]
    stem, ext = os.path.splitext(os.path.basename(path))
    hexhash = hash_hex(state.hash_of(key), state.bits)
    return Link(link_name(stem, hexhash, ext), os.path.join(root, path))


def link_for(key: int, state: AlgorithmState, root: str) -> Link:
    """The link of ``key``, with the folder's unique-name numbering applied."""
    link = _base_link(key, state, root)
    group = state.duplicates.get(state.hash_of(key))
    if not group:
        return link
    links = [_base_link(other, state, root) for other in group]
    same = [other for other in links if other.name == link.name]
    if len(same) < 2:
        return link
    for name, target in folder_links(same).items():
        if target == link.target:
            return Link(name, target)
    return link  # not reached: folder_links keeps every target


def _all_duplicates(keys: np.ndarray, packed: np.ndarray) -> dict[bytes, list[int]]:
    if len(keys) < 2:
        return {}
    rows = np.ascontiguousarray(packed).view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
    found: dict[bytes, list[int]] = {}
    for vertex in np.flatnonzero(counts[inverse] >= 2).tolist():
        found.setdefault(packed[vertex].tobytes(), []).append(int(keys[vertex]))
    return found


def _update_duplicates(
    previous: AlgorithmState,
    state: AlgorithmState,
    added: Iterable[int],
    removed: Iterable[int] | None,
) -> dict[bytes, list[int]]:
    """The duplicate groups after a refresh: drop vanished keys, look up each added hash.

    With ``removed`` known, only the groups of keys removed or re-hashed are looked at (a
    library of photo bursts has thousands of groups; a refresh changes a few)."""
    added = list(added)
    old = previous.duplicates
    if removed is None:
        stale = list(old)
        found: dict[bytes, list[int]] = {}
    else:
        found = dict(old)
        stale = [
            previous.hash_of(key)
            for key in {*added, *removed}
            if key in previous.position
        ]
    for value in stale:
        group = old.get(value)
        if group is None:
            continue
        alive = [k for k in group if k in state.position and state.hash_of(k) == value]
        if len(alive) >= 2:
            found[value] = alive
        else:
            found.pop(value, None)
    for key in added:
        row = state.packed[state.position[key]]
        same = np.flatnonzero((state.packed == row).all(axis=1))
        if len(same) >= 2:
            found[row.tobytes()] = sorted(int(k) for k in state.keys[same])
    return found


def _group_keys(state: AlgorithmState, keys: Iterable[int]) -> set[int]:
    """Every key sharing a duplicate group with one of ``keys``."""
    out: set[int] = set()
    for key in keys:
        if key in state.position:
            out.update(state.duplicates.get(state.hash_of(key), ()))
    return out


def tree_patches(
    old: AlgorithmState,
    new: AlgorithmState,
    thresholds: Sequence[int],
    root: str,
    changed: Iterable[int] = (),
    *,
    moved: Iterable[int] | None = None,
    added: Iterable[int] | None = None,
    removed: Iterable[int] | None = None,
) -> tuple[list[ThresholdPatch], list[ThresholdDelta]]:
    """The output patches for one algorithm, and the cluster deltas they come from.

    ``changed``: keys whose hash changed (removed and added back with other bits). What the
    caller knows changed -- ``moved`` (keys whose path changed; more is fine), ``added``
    (keys new to ``new``), ``removed`` (keys ``old`` had and ``new`` lacks) -- spares a
    comparison of every key and path (O(N) per algorithm, the bulk of a small refresh); when
    not given it is worked out from the two states.
    """
    added = None if added is None else list(added)
    removed = None if removed is None else list(removed)
    if moved is None:
        moved = {
            k for k, path in new.paths.items()
            if k in old.position and old.paths.get(k) != path
        }  # fmt: skip
    touched = {k for k in moved if k in old.position and k in new.position}
    touched |= set(changed)
    # Keys whose group of equal names changed: their numbering may change with it.
    if added is None or removed is None:
        hot = set(old.position).symmetric_difference(new.position) | touched
    else:
        hot = set(added) | set(removed) | touched
    touched |= {
        k
        for k in _group_keys(old, hot) | _group_keys(new, hot)
        if k in old.position and k in new.position
    }
    deltas = sweep_delta_from(
        old.sweep_state(), new.sweep_state(), thresholds, sorted(touched),
        added=added, removed=removed,
    )  # fmt: skip
    patches = []
    for delta in deltas:
        if delta.unchanged:
            continue
        folders = [
            FolderPatch(
                number=c.number,
                size=c.size,
                base=c.base or None,
                added=[link_for(int(k), new, root) for k in c.added],
                removed=[link_for(int(k), old, root) for k in c.removed],
            )
            for c in delta.changed
        ]
        if len(delta.unclustered_added) or len(delta.unclustered_removed):
            folders.append(
                FolderPatch(
                    number=0,
                    size=delta.unclustered,
                    base=0,
                    added=[link_for(int(k), new, root) for k in delta.unclustered_added],
                    removed=[link_for(int(k), old, root) for k in delta.unclustered_removed],
                )
            )
        patches.append(
            ThresholdPatch(delta.threshold, delta.clusters, [n for n, _ in delta.gone], folders)
        )
    return patches, deltas
