"""Planning from a cluster delta, pure: only the folders that changed are named and hashed.

After a full write (:func:`~imgclusterd.output.plan.plan_tree`), the writer keeps a
:class:`TreeModel`: per algorithm and threshold, the clusters' sizes and leaf digests in number
order, the unclustered folder's, and the threshold object's digest -- a few numbers per cluster,
never a folder's entries. A refresh then describes what changed as a :data:`TreeDelta` (per
algorithm, only the thresholds that changed: the clusters gone, and each new or changed folder
as a :class:`FolderPatch` of its base folder), and :func:`plan_delta` plans from that alone:

- a changed leaf is a *patch*: its base folder's digest plus the links added and removed. Its
  digest comes from the base's (leaf digests are additive set hashes, see
  :func:`~imgclusterd.output.plan.leaf_digest`), so nothing of the unchanged part is read,
  named, validated or hashed;
- a threshold folder whose clusters changed is a patch of its old folder as well (its entries
  are ``<CCC>_<size> -> ../<leaf>``, its digest the same kind of set hash): only the entries
  between the first and the last changed cluster number -- through the end when the number of
  clusters changed, since the numbers after it shift -- and the unclustered entry are named;
- the algorithm folders are re-listed (one entry per threshold), the generation is new.

Unchanged thresholds are not touched at all: their digests are reused as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .names import Link, check_name, cluster_name, threshold_name, unclustered_name
from .plan import (
    LeafSum,
    LeafTable,
    Plan,
    PlannedObject,
    Role,
    ThresholdModel,
    add_links,
    object_digest,
    raw_digests,
    row_digests,
    split_extra_files,
)

__all__ = [
    "FolderPatch",
    "RefCounts",
    "ThresholdPatch",
    "TreeDelta",
    "TreeModel",
    "model_from_plan",
    "plan_delta",
    "position_changes",
    "positions",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderPatch:
    """A new or changed leaf folder at one threshold.

    ``number``: its cluster number (from 1), or 0 for the unclustered folder. ``base``: the old
    cluster number it is patched from, 0 for the old unclustered folder, None to write it from
    ``added`` alone. ``removed`` are links of the base (name and target as they were).
    """

    number: int
    size: int
    base: int | None
    added: Sequence[Link]
    removed: Sequence[Link]


@dataclass(frozen=True)
class ThresholdPatch:
    """What changed at one threshold: old cluster numbers that are gone (bases of patches
    included) and the new or changed folders. Every other cluster keeps its folder, in the
    same order (so its number shifts by the gone and new ones before it)."""

    threshold: int
    clusters: int  # clusters after the change
    gone: Sequence[int]
    patches: Sequence[FolderPatch]


#: algorithm -> the thresholds that changed (any order).
TreeDelta = Mapping[str, Sequence[ThresholdPatch]]


@dataclass
class TreeModel:
    """The last written tree, by algorithm: thresholds in sweep order, algorithm files."""

    algorithms: dict[str, list[ThresholdModel]] = field(default_factory=dict)
    algo_files: dict[str, dict[str, bytes]] = field(default_factory=dict)


def _algo_entries(thresholds: Sequence[ThresholdModel]) -> dict[str, str]:
    return {
        threshold_name(m.threshold, m.unclustered.count): "../" + m.digest for m in thresholds
    }


def plan_delta(
    model: TreeModel, delta: TreeDelta, extra_files: Mapping[str, bytes] | None = None
) -> tuple[Plan, TreeModel]:
    """The objects a delta needs (patches for leaves) and the model after it. Pure.

    Raises ValueError when the delta does not fit the model (a number out of range, sizes
    that do not add up): the caller then plans the whole tree instead.
    """
    top_files, algo_files = split_extra_files(extra_files or {})
    if set(algo_files) - set(model.algorithms):
        raise ValueError("extra files for an algorithm the model does not know")
    objects: dict[str, PlannedObject] = {}
    new_model = TreeModel(dict(model.algorithms), {})
    generation_links: dict[str, str] = {}
    for algo in sorted(model.algorithms):
        thresholds = model.algorithms[algo]
        changes = {p.threshold: p for p in delta.get(algo, ())}
        position = {m.threshold: i for i, m in enumerate(thresholds)}
        if set(changes) - set(position):
            raise ValueError(f"{algo}: delta for a threshold the model does not have")
        updated = list(thresholds)
        for t, patch in sorted(changes.items()):
            updated[position[t]] = _apply(algo, thresholds[position[t]], patch, objects)
        if updated and updated[0].table.n >= updated[0].table.compact_at:
            updated = _compacted(updated)
        files = algo_files.get(algo, {})
        new_model.algorithms[algo] = updated
        new_model.algo_files[algo] = files
        same = all(a.same_as(b) for a, b in zip(updated, thresholds, strict=True))
        if same and files == model.algo_files.get(algo, {}):
            algo_digest = None  # unchanged: keep the digest the generation names
        else:
            entries = _algo_entries(updated)
            for name in files:
                if name in entries:
                    raise ValueError(f"extra file {algo}/{name} has the name of a threshold folder")
            algo_digest = object_digest(entries, files)
            objects.setdefault(algo_digest, PlannedObject(entries, 0, None, dict(files)))
        if algo_digest is None:
            algo_digest = object_digest(_algo_entries(updated), files)
        generation_links[algo] = "../../objects/" + algo_digest
    for name in top_files:
        if name in generation_links:
            raise ValueError(f"extra file {name!r} has the name of an algorithm folder")
    return Plan(objects, generation_links, top_files, {}), new_model


def _apply(
    algo: str, old: ThresholdModel, patch: ThresholdPatch, objects: dict[str, PlannedObject]
) -> ThresholdModel:
    t = old.threshold
    count = len(old.sizes)
    numbers = [folder.number for folder in patch.patches]
    if len(set(numbers)) != len(numbers) or len(set(patch.gone)) != len(patch.gone):
        raise ValueError(f"{algo} t={t}: a folder number given twice")
    gone = sorted(set(patch.gone))
    if gone and (gone[0] < 1 or gone[-1] > count):
        raise ValueError(f"{algo} t={t}: gone cluster out of range")
    sizes, leaves = old.sizes, old.leaves  # (new arrays below: the old model stays as it is)
    if gone:
        at = np.subtract(gone, 1)
        sizes, leaves = np.delete(sizes, at), np.delete(leaves, at)
    unclustered = old.unclustered
    new_clusters: list[tuple[int, int, LeafSum]] = []
    for folder in patch.patches:
        if folder.base is None:
            base = LeafSum.EMPTY
        elif folder.base == 0:
            base = old.unclustered
        elif 1 <= folder.base <= count and folder.base in gone:
            base = old.leaf(folder.base)
        else:
            raise ValueError(f"{algo} t={t}: base {folder.base} is not a gone cluster")
        for link in folder.added:
            check_name(link.name, "link name")
            if not link.target.startswith("/") or "\0" in link.target:
                raise ValueError(f"link target {link.target!r} is not an absolute path")
        leaf = add_links(add_links(base, folder.removed, -1), folder.added, +1)
        if leaf.count != folder.size:
            raise ValueError(
                f"{algo} t={t}: folder {folder.number} has {leaf.count} links, not {folder.size}"
            )
        slot = "u" if folder.number == 0 else f"c{folder.number}"
        if leaf.digest not in objects:
            objects[leaf.digest] = PlannedObject(
                {link.name: link.target for link in folder.added},
                2,
                (algo, slot, t),
                base=None if folder.base is None else base.digest,
                removed=tuple(link.name for link in folder.removed),
                size=leaf.count,
            )
        if folder.number == 0:
            unclustered = leaf
        else:
            new_clusters.append((folder.number, folder.size, leaf))
    for number, size, leaf in sorted(new_clusters, key=lambda item: item[0]):
        if not 1 <= number <= len(sizes) + 1:
            raise ValueError(f"{algo} t={t}: cluster number {number} out of range")
        sizes = np.insert(sizes, number - 1, size)
        leaves = np.insert(leaves, number - 1, old.table.append([leaf]))
    if len(sizes) != patch.clusters:
        raise ValueError(f"{algo} t={t}: {len(sizes)} clusters planned, {patch.clusters} expected")
    # The threshold folder is a patch of the old one too: only the entries whose number,
    # size or leaf changed (none before the first changed number, and none after the last
    # one unless the count of clusters changed) are named, hashed and written.
    changed = [number for number in (*gone, *(f.number for f in patch.patches)) if number]
    removed, added = _threshold_diff(old, sizes, leaves, unclustered, changed)
    total = add_links(add_links(old.entries, removed.items(), -1), added.items(), +1)
    model = ThresholdModel(t, sizes, leaves, unclustered, total, old.table)
    if model.digest != old.digest:
        # An entry whose target stays and whose name changes (a renumbered cluster) is
        # renamed, not made again: targets are unique within a threshold folder.
        was_named = dict(zip(removed.values(), removed, strict=True))  # target -> name
        links: dict[str, str] = {}
        moved: dict[str, str] = {}
        for name, target in added.items():  # (one pass: ~20,000 entries at 20,000 photos)
            source = was_named.get(target)
            if source is None:
                links[name] = target
            else:
                moved[name] = source
        renamed = set(moved.values())
        objects.setdefault(
            model.digest,
            PlannedObject(
                links,
                1,
                (algo, "t", t),
                base=old.digest,
                removed=tuple(name for name in removed if name not in renamed),
                size=total.count,
                moved=moved,
            ),
        )
    return model


def _compacted(models: Sequence[ThresholdModel]) -> list[ThresholdModel]:
    """``models`` (one algorithm's, one table) on a new table of the rows they use: each +1
    appends its new leaves to the table and leaves the rows of the ones gone behind."""
    used = np.unique(np.concatenate([m.leaves for m in models]))
    table = LeafTable(models[0].table.rows[used])
    return [
        ThresholdModel(
            m.threshold,
            m.sizes,
            np.searchsorted(used, m.leaves).astype(np.int32),
            m.unclustered,
            m.entries,
            table,
        )
        for m in models
    ]


def _threshold_diff(
    old: ThresholdModel,
    sizes: np.ndarray,
    leaves: np.ndarray,  # rows in old.table
    unclustered: LeafSum,
    changed: Sequence[int],
) -> tuple[dict[str, str], dict[str, str]]:
    """Entries of the old threshold folder that go, and of the new one that come."""
    removed: dict[str, str] = {}
    added: dict[str, str] = {}
    if changed:
        start = min(changed) - 1
        n_old, n_new = len(old.sizes), len(sizes)
        stop = max(changed) if n_old == n_new else max(n_old, n_new)
        # Positions on both sides: compared as arrays (a +1 at 20,000 photos renumbers
        # ~20,000 clusters here), named where size or leaf differ, in number order. (Both
        # sides' rows are in one table; a leaf appended again has another row: compared.)
        both = max(start, min(stop, n_old, n_new))
        was_sizes, now_sizes = old.sizes[start:both], sizes[start:both]
        differ = (was_sizes != now_sizes) | (old.leaves[start:both] != leaves[start:both])
        at = np.flatnonzero(differ)
        was, now = old.table.rows[old.leaves[start + at]], old.table.rows[leaves[start + at]]
        real = (was_sizes[at] != now_sizes[at]) | (was[["hi", "lo"]] != now[["hi", "lo"]])
        at, was, now = at[real], was[real], now[real]
        for p, was_size, was_digest, now_size, now_digest in zip(
            (at + start + 1).tolist(),
            was_sizes[at].tolist(),
            row_digests(was),
            now_sizes[at].tolist(),
            row_digests(now),
            strict=True,
        ):
            name = cluster_name(p, was_size)  # (a renumbered cluster's size mostly stays)
            removed[name] = "../" + was_digest
            added[name if now_size == was_size else cluster_name(p, now_size)] = "../" + now_digest
        gone = slice(both, max(both, min(stop, n_old)))  # clusters only the old side has
        for p, size, digest in zip(
            range(gone.start + 1, gone.stop + 1),
            old.sizes[gone].tolist(),
            row_digests(old.rows(gone)),
            strict=True,
        ):
            removed[cluster_name(p, size)] = "../" + digest
        new = slice(both, max(both, min(stop, n_new)))  # and only the new side
        for p, size, digest in zip(
            range(new.start + 1, new.stop + 1),
            sizes[new].tolist(),
            row_digests(old.table.rows[leaves[new]]),
            strict=True,
        ):
            added[cluster_name(p, size)] = "../" + digest
    if unclustered != old.unclustered:
        removed[unclustered_name(old.unclustered.count)] = "../" + old.unclustered.digest
        added[unclustered_name(unclustered.count)] = "../" + unclustered.digest
    for name in removed.keys() & added.keys():  # same name, same target: no change
        if removed[name] == added[name]:
            del removed[name], added[name]
    return removed, added


def model_from_plan(plan: Plan) -> TreeModel:
    """The model of a tree just planned by :func:`~imgclusterd.output.plan.plan_tree`."""
    return TreeModel(
        {algo: list(models) for algo, models in plan.thresholds.items()},
        {algo: dict(files) for algo, files in plan.algo_files.items()},
    )



#: One position of the tree that changed: (object digest, +1 or -1, level, role).
Change = tuple[str, int, int, Role | None]


class RefCounts:
    """How many places of the tree each object fills, by digest: its reference count.

    Two arrays, the digests sorted (raw bytes) and their counts: the writer keeps one entry
    per object of the tree between refreshes (~25,000 at 5,000 photos), which as a Counter
    of hex str cost ~120 bytes each; here 20.
    """

    def __init__(self, digests: Iterable[str] | np.ndarray = ()) -> None:
        """One count per time a digest is given (``digests``: str, or an array of them as
        ASCII bytes)."""
        if not isinstance(digests, np.ndarray):
            digests = raw_digests(digests)
        self._keys, counts = np.unique(digests, return_counts=True)
        self._counts = counts.astype(np.int32)

    def __len__(self) -> int:
        return len(self._keys)

    def counts(self, digests: Sequence[str], default: int = 0) -> list[int]:
        """The counts of ``digests``, in one search (a write asks for a few thousand: one
        numpy search each cost ~18 us)."""
        if not digests:
            return []
        keys = raw_digests(digests)
        at = np.searchsorted(self._keys, keys)
        found = at < len(self._keys)
        found[found] = self._keys[at[found]] == keys[found]
        values = np.full(len(keys), default, dtype=np.int64)
        values[found] = self._counts[at[found]]
        return values.tolist()

    def set_counts(self, counts: Mapping[str, int]) -> None:
        """Set these objects' counts; a count of 0 or less forgets the object."""
        if not counts:
            return
        keys = raw_digests(counts)
        values = np.fromiter(counts.values(), np.int64, len(counts))
        at = np.searchsorted(self._keys, keys)
        known = at < len(self._keys)
        known[known] = self._keys[at[known]] == keys[known]
        self._counts[at[known]] = values[known]
        drop = at[known & (values <= 0)]
        if len(drop):
            self._keys, self._counts = np.delete(self._keys, drop), np.delete(self._counts, drop)
        fresh = ~known & (values > 0)
        if fresh.any():
            order = np.argsort(keys[fresh])
            new_keys, new_counts = keys[fresh][order], values[fresh][order]
            where = np.searchsorted(self._keys, new_keys)
            self._keys = np.insert(self._keys, where, new_keys)
            self._counts = np.insert(self._counts, where, new_counts.astype(np.int32))

    def clear(self) -> None:
        self._keys, self._counts = self._keys[:0], self._counts[:0]


def positions(model: TreeModel, algo_digests: Mapping[str, str]) -> RefCounts:
    """How many places of the tree (algorithm, threshold, cluster or unclustered folder) each
    object fills: its reference count. Shared objects (the same cluster at several
    thresholds) count once per place."""
    parts = [raw_digests(algo_digests.values())]
    for thresholds in model.algorithms.values():
        parts.append(raw_digests(d for m in thresholds for d in (m.digest, m.unclustered.digest)))
        parts += [m.rows(slice(None))["digest"] for m in thresholds]
    return RefCounts(np.concatenate(parts))


def position_changes(
    old: TreeModel,
    new: TreeModel,
    delta: TreeDelta,
    old_algos: Mapping[str, str],
    new_algos: Mapping[str, str],
) -> list[Change]:
    """The places a delta emptied (-1) and filled (+1), from the delta alone: the threshold
    folders it changed, their gone clusters and new or changed folders, the algorithm
    folders. Every other place keeps its object (renumbered clusters included)."""
    changes: list[Change] = []
    for algo, patches in delta.items():
        before = {m.threshold: m for m in old.algorithms[algo]}
        after = {m.threshold: m for m in new.algorithms[algo]}
        for patch in patches:
            t = patch.threshold
            o, n = before[t], after[t]
            changes += [(o.digest, -1, 1, (algo, "t", t)), (n.digest, +1, 1, (algo, "t", t))]
            for number in patch.gone:
                changes.append((o.leaf_digest(number), -1, 2, (algo, f"c{number}", t)))
            for folder in patch.patches:
                if folder.number == 0:
                    changes += [
                        (o.unclustered.digest, -1, 2, (algo, "u", t)),
                        (n.unclustered.digest, +1, 2, (algo, "u", t)),
                    ]
                else:
                    slot = f"c{folder.number}"
                    changes.append((n.leaf_digest(folder.number), +1, 2, (algo, slot, t)))
    for algo in sorted(set(old_algos) | set(new_algos)):
        if old_algos.get(algo) != new_algos.get(algo):
            if algo in old_algos:
                changes.append((old_algos[algo], -1, 0, None))
            if algo in new_algos:
                changes.append((new_algos[algo], +1, 0, None))
    return changes
