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
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .names import Link, check_name, cluster_name, threshold_name, unclustered_name
from .plan import (
    LeafSum,
    Plan,
    PlannedObject,
    Role,
    ThresholdModel,
    add_links,
    object_digest,
    split_extra_files,
)

__all__ = [
    "FolderPatch",
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
        files = algo_files.get(algo, {})
        new_model.algorithms[algo] = updated
        new_model.algo_files[algo] = files
        if updated == thresholds and files == model.algo_files.get(algo, {}):
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
    sizes, leaves = list(old.sizes), list(old.leaves)  # (copies in C: no loop per cluster)
    for number in reversed(gone):
        del sizes[number - 1], leaves[number - 1]
    unclustered = old.unclustered
    new_clusters: list[tuple[int, int, LeafSum]] = []
    for folder in patch.patches:
        if folder.base is None:
            base = LeafSum.EMPTY
        elif folder.base == 0:
            base = old.unclustered
        elif 1 <= folder.base <= count and folder.base in gone:
            base = old.leaves[folder.base - 1]
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
        sizes.insert(number - 1, size)
        leaves.insert(number - 1, leaf)
    if len(sizes) != patch.clusters:
        raise ValueError(f"{algo} t={t}: {len(sizes)} clusters planned, {patch.clusters} expected")
    # The threshold folder is a patch of the old one too: only the entries whose number,
    # size or leaf changed (none before the first changed number, and none after the last
    # one unless the count of clusters changed) are named, hashed and written.
    changed = [number for number in (*gone, *(f.number for f in patch.patches)) if number]
    removed, added = _threshold_diff(old, sizes, leaves, unclustered, changed)
    total = add_links(add_links(old.entries, removed.items(), -1), added.items(), +1)
    model = ThresholdModel(t, sizes, leaves, unclustered, total)
    if model.digest != old.digest:
        # An entry whose target stays and whose name changes (a renumbered cluster) is
        # renamed, not made again: targets are unique within a threshold folder.
        was_named = dict(zip(removed.values(), removed, strict=True))  # target -> name
        moved = {name: was_named[target] for name, target in added.items() if target in was_named}
        renamed = set(moved.values())
        objects.setdefault(
            model.digest,
            PlannedObject(
                {name: target for name, target in added.items() if name not in moved},
                1,
                (algo, "t", t),
                base=old.digest,
                removed=tuple(name for name in removed if name not in renamed),
                size=total.count,
                moved=moved,
            ),
        )
    return model


def _threshold_diff(
    old: ThresholdModel,
    sizes: Sequence[int],
    leaves: Sequence[LeafSum],
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
        # A +1 at 20,000 photos renumbers ~20,000 clusters here: one pass over slices, no
        # tuple or LeafSum.__eq__ (a Python call) per position, and a renumbered cluster
        # next to one of its size (most are) has its name made once for both sides.
        both = min(stop, n_old, n_new)
        for p, was_size, was, now_size, now in zip(
            range(start + 1, both + 1),
            old.sizes[start:both],
            old.leaves[start:both],
            sizes[start:both],
            leaves[start:both],
            strict=True,
        ):
            if was_size == now_size:
                if was is now or (was.total == now.total and was.count == now.count):
                    continue
                name = cluster_name(p, was_size)
                removed[name] = "../" + was.digest
                added[name] = "../" + now.digest
            else:
                removed[cluster_name(p, was_size)] = "../" + was.digest
                added[cluster_name(p, now_size)] = "../" + now.digest
        for p in range(max(start, both), min(stop, n_old)):  # clusters that are gone
            removed[cluster_name(p + 1, old.sizes[p])] = "../" + old.leaves[p].digest
        for p in range(max(start, both), min(stop, n_new)):  # clusters that are new
            added[cluster_name(p + 1, sizes[p])] = "../" + leaves[p].digest
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


def positions(model: TreeModel, algo_digests: Mapping[str, str]) -> Counter[str]:
    """How many places of the tree (algorithm, threshold, cluster or unclustered folder) each
    object fills: its reference count. Shared objects (the same cluster at several
    thresholds) count once per place."""
    refs: Counter[str] = Counter(algo_digests.values())
    for thresholds in model.algorithms.values():
        for m in thresholds:
            refs[m.digest] += 1
            refs[m.unclustered.digest] += 1
            refs.update(leaf.digest for leaf in m.leaves)
    return refs


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
                changes.append((o.leaves[number - 1].digest, -1, 2, (algo, f"c{number}", t)))
            for folder in patch.patches:
                if folder.number == 0:
                    changes += [
                        (o.unclustered.digest, -1, 2, (algo, "u", t)),
                        (n.unclustered.digest, +1, 2, (algo, "u", t)),
                    ]
                else:
                    slot = f"c{folder.number}"
                    changes.append((n.leaves[folder.number - 1].digest, +1, 2, (algo, slot, t)))
    for algo in sorted(set(old_algos) | set(new_algos)):
        if old_algos.get(algo) != new_algos.get(algo):
            if algo in old_algos:
                changes.append((old_algos[algo], -1, 0, None))
            if algo in new_algos:
                changes.append((new_algos[algo], +1, 0, None))
    return changes
