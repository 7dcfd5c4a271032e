"""imgclusterd.clusterdelta against brute force: the full partitions before and after."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgclusterd import cluster, clusterdelta
from imgclusterd.cluster import ClusterIndex, Forest, sweep
from imgclusterd.clusterdelta import (
    KeptLabels,
    Numbering,
    SweepState,
    ThresholdDelta,
    sweep_delta,
    sweep_delta_from,
)

BITS = 16
THRESHOLDS = list(range(0, 9))


def packed(value: int) -> bytes:
    return value.to_bytes(BITS // 8, "big")


def partitions(
    forest: Forest, keys: list[int], rank: dict[int, float]
) -> dict[int, tuple[list[frozenset[int]], set[int]]]:
    """threshold -> (clusters by number, unclustered), in keys, from the full sweep."""
    ranks = np.array([rank[k] for k in keys])
    # sweep() wants integer ranks with no ties: positions in rank order
    order = np.argsort(ranks, kind="stable")
    positions = np.empty(len(keys), dtype=np.int64)
    positions[order] = np.arange(len(keys))
    out = {}
    for p in sweep(forest, THRESHOLDS, positions):
        out[p.threshold] = (
            [frozenset(keys[i] for i in c) for c in p.clusters],
            {keys[i] for i in p.unclustered},
        )
    return out


def check(
    delta: ThresholdDelta,
    old: tuple[list[frozenset[int]], set[int]],
    new: tuple[list[frozenset[int]], set[int]],
    touched: set[int],
) -> None:
    old_clusters, old_single = old
    new_clusters, new_single = new
    assert delta.clusters == len(new_clusters)
    assert delta.unclustered == len(new_single)
    by_number_old = {i + 1: c for i, c in enumerate(old_clusters)}
    by_number_new = {i + 1: c for i, c in enumerate(new_clusters)}
    old_sets = set(old_clusters)
    new_sets = set(new_clusters)
    # changed: exactly the new member sets that did not exist (or hold a touched key)
    expect_changed = {
        n for n, c in by_number_new.items() if c not in old_sets or c & touched
    }
    assert {c.number for c in delta.changed} == expect_changed
    expect_gone = {n for n, c in by_number_old.items() if c not in new_sets or c & touched}
    assert {n for n, _ in delta.gone} == expect_gone
    # renumbered: the unchanged sets whose number moved, and nothing else
    position_new = {c: n for n, c in by_number_new.items()}
    expect_moved = sorted(
        (n, position_new[c])
        for n, c in by_number_old.items()
        if n not in expect_gone and position_new[c] != n
    )
    assert delta.renumbered == expect_moved
    bases = [c.base for c in delta.changed if c.base]
    assert len(bases) == len(set(bases)), "an old cluster is the base of two changes"
    for change in delta.changed:
        members = by_number_new[change.number]
        assert change.size == len(members)
        added = set(change.added.tolist())
        removed = set(change.removed.tolist())
        base = by_number_old[change.base] if change.base else frozenset()
        assert change.base == 0 or change.base in expect_gone
        assert (base - removed) | added == members
        # minimal: only what differs, plus touched keys on both sides
        assert added - members == set() and removed <= base
        assert added & base <= touched and removed & members <= touched
        assert change.kind in ("added", "merged", "split", "changed")
        if change.kind == "added":
            assert not any(members & c for c in old_clusters)
        if change.kind == "merged":
            assert sum(1 for c in old_clusters if members & c) >= 2
    for number, kind in delta.gone:
        assert kind in ("removed", "merged", "split", "changed")
        if kind == "removed":
            assert not any(by_number_old[number] & c for c in new_clusters)
    u_added = set(delta.unclustered_added.tolist())
    u_removed = set(delta.unclustered_removed.tolist())
    assert (old_single - u_removed) | u_added == new_single
    assert u_added <= new_single and u_removed <= old_single
    assert u_added & old_single <= touched and u_removed & new_single <= touched
    if delta.unchanged:
        assert old_clusters == new_clusters and old_single == new_single


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[int, int], dict[int, int], list[int], set[int]]:
    """An old key -> hash map, a new one (adds, removes, changed hashes) and touched keys."""
    base = draw(st.integers(0, 2**BITS - 1))
    # values near a few centres, so that clusters form, merge and split
    def value() -> int:
        centre = draw(st.sampled_from([base, base ^ 0xFF00, base ^ 0x0F0F, 0, 2**BITS - 1]))
        flips = draw(st.lists(st.integers(0, BITS - 1), max_size=5))
        for bit in flips:
            centre ^= 1 << bit
        return centre

    n_old = draw(st.integers(0, 30))
    old = {k: value() for k in range(n_old)}
    new = dict(old)
    def some(keys: list[int], most: int) -> list[int]:
        return draw(st.lists(st.sampled_from(keys), max_size=most)) if keys else []

    for k in some(sorted(old), 6):
        new.pop(k, None)
    for k in range(n_old, n_old + draw(st.integers(0, 5))):
        new[k] = value()
    survivors = sorted(set(old) & set(new))
    for k in some(survivors, 2):
        new[k] = value()  # a changed hash: removed and added back
    touched = set(some(survivors, 2))
    return old, new, survivors, touched


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.randoms(use_true_random=False))
def test_sweep_delta_matches_brute_force(scenario, rnd: random.Random) -> None:
    old_map, new_map, _, touched = scenario
    index: ClusterIndex[int] = ClusterIndex(limit=max(THRESHOLDS), nbytes=BITS // 8)
    index.update({k: packed(v) for k, v in old_map.items()})
    old_forest, old_keys = index.forest, index.keys()
    removed = [k for k in old_map if k not in new_map]
    changed_hash = {k for k in old_map.keys() & new_map.keys() if old_map[k] != new_map[k]}
    index.update({k: packed(v) for k, v in new_map.items()}, removed)
    new_forest, new_keys = index.forest, index.keys()
    # ranks: survivors keep their relative order; touched keys (renamed) may move anywhere
    rank_old = {k: rnd.random() for k in old_map}
    rank_new = {k: (rnd.random() if k in touched or k not in old_map else rank_old[k])
                for k in new_map}  # fmt: skip
    deltas = sweep_delta(
        old_forest, np.array(old_keys, dtype=np.int64),
        np.array([rank_old[k] for k in old_keys]),
        new_forest, np.array(new_keys, dtype=np.int64),
        np.array([rank_new[k] for k in new_keys]),
        THRESHOLDS, touched=np.array(sorted(touched | changed_hash), dtype=np.int64),
    )  # fmt: skip
    before = partitions(old_forest, old_keys, rank_old)
    after = partitions(new_forest, new_keys, rank_new)
    assert [d.threshold for d in deltas] == THRESHOLDS
    for delta in deltas:
        check(delta, before[delta.threshold], after[delta.threshold], touched | changed_hash)


def test_one_photo_joining_a_cluster_is_one_change_and_a_renumbering() -> None:
    # clusters {0,1} (rank first) and {2,3}; a new photo 4 joins {2,3}: it becomes the largest
    index: ClusterIndex[int] = ClusterIndex(limit=2, nbytes=2)
    index.update({0: packed(0x0000), 1: packed(0x0001), 2: packed(0xFF00), 3: packed(0xFF01),
                  5: packed(0x0FF0)})  # fmt: skip
    old_forest, old_keys = index.forest, np.array(index.keys())
    index.update({4: packed(0xFF03)})
    new_forest, new_keys = index.forest, np.array(index.keys())
    (delta,) = sweep_delta(old_forest, old_keys, old_keys.astype(float),
                           new_forest, new_keys, new_keys.astype(float), [1])  # fmt: skip
    (change,) = delta.changed
    assert (change.number, change.size, change.kind, change.base) == (1, 3, "changed", 2)
    assert change.added.tolist() == [4] and change.removed.tolist() == []
    assert delta.gone == [(2, "changed")]
    assert delta.renumbered == [(1, 2)]  # {0,1} moved behind the bigger cluster
    assert delta.unclustered == 1 and not len(delta.unclustered_added)


def test_nothing_changed_is_unchanged_everywhere() -> None:
    index: ClusterIndex[int] = ClusterIndex(limit=8, nbytes=2)
    rng = np.random.default_rng(3)
    index.update({k: packed(int(v)) for k, v in enumerate(rng.integers(0, 2**16, 40))})
    keys = np.array(index.keys())
    deltas = sweep_delta(index.forest, keys, keys.astype(float), index.forest, keys,
                         keys.astype(float), THRESHOLDS)  # fmt: skip
    assert all(d.unchanged for d in deltas)


# ------------------------------------------------- sweep_delta_from: the same deltas, cheaper


def same_delta(got: ThresholdDelta, want: ThresholdDelta) -> None:
    assert (got.threshold, got.clusters, got.unclustered) == (
        want.threshold, want.clusters, want.unclustered)
    assert got.gone == want.gone and got.renumbered == want.renumbered
    assert got.unclustered_added.tolist() == want.unclustered_added.tolist()
    assert got.unclustered_removed.tolist() == want.unclustered_removed.tolist()
    assert [(c.number, c.size, c.kind, c.base, c.added.tolist(), c.removed.tolist())
            for c in got.changed] == [
           (c.number, c.size, c.kind, c.base, c.added.tolist(), c.removed.tolist())
            for c in want.changed]  # fmt: skip


def same_numbering(got: Numbering, want: Numbering) -> None:
    assert sorted(got.first) == sorted(want.first)
    for t in want.first:
        assert got.first[t].tolist() == want.first[t].tolist(), t
        assert got.minus_sizes[t].tolist() == want.minus_sizes[t].tolist(), t
        assert got.unclustered[t] == want.unclustered[t], t


def state_of(
    index: ClusterIndex[int], rank: dict[int, float], previous: SweepState | None = None
) -> SweepState:
    keys = np.array(index.keys(), dtype=np.int64)
    return SweepState(index.forest, keys, np.array([rank[k] for k in keys.tolist()]),
                      dict(index.positions), previous=previous)  # fmt: skip


@pytest.mark.parametrize("pure", [False, True, "moves"], ids=["mixed", "pure", "moves"])
@pytest.mark.parametrize("walk_min", [0, clusterdelta.WALK_MIN])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.integers(0, 2**32 - 1))
def test_sweep_delta_from_follows_random_changes(
    walk_min: int, pure: bool | str, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Random insert / remove / move / rehash sequences: each step's deltas equal sweep_delta's,
    and the numbering carried from step to step equals one made from scratch. walk_min 0 makes
    every side past the first vertex label itself (the giant-cluster path). ``pure``: each
    step only adds or only removes photos (a +1, a -1: the paths that follow labels only);
    ``moves``: each step only renames photos (same forest: _changes_touched)."""
    monkeypatch.setattr(clusterdelta, "WALK_MIN", walk_min)
    rnd = random.Random(seed)
    centres = [rnd.getrandbits(BITS) for _ in range(3)]

    def value() -> int:
        v = rnd.choice(centres)
        for _ in range(rnd.randint(0, 4)):
            v ^= 1 << rnd.randrange(BITS)
        return v

    index: ClusterIndex[int] = ClusterIndex(limit=max(THRESHOLDS), nbytes=BITS // 8)
    hashes = {k: value() for k in range(rnd.randint(0, 25))}
    index.update({k: packed(v) for k, v in hashes.items()})
    rank = {k: rnd.random() for k in hashes}
    state = state_of(index, rank)
    if rnd.random() < 0.5:  # the numbering from scratch, or first made by a delta
        state.numbering_for(THRESHOLDS)
    next_key = len(hashes)
    for _ in range(rnd.randint(1, 5)):
        if pure == "moves":
            adds, count = 0, 0
        elif not pure:
            adds, count = rnd.choice([0, 1, 1, 2, 5]), rnd.choice([0, 0, 1, 2])
        elif rnd.random() < 0.5:  # a +1 (or a few)
            adds, count = rnd.choice([1, 1, 2, 5]), 0
        else:  # a -1 (or two)
            adds, count = 0, rnd.choice([1, 1, 2])
        added = [next_key + i for i in range(adds)]
        next_key += len(added)
        removed = rnd.sample(sorted(hashes), min(len(hashes), count))
        rest = [k for k in hashes if k not in removed]
        moved = set(rnd.sample(rest, min(len(rest), rnd.choice(
            [1, 1, 2, 3] if pure == "moves" else [0, 0, 1])))) if pure is not True else set()
        rehashed = (set(rnd.sample(rest, min(len(rest), rnd.choice([0, 0, 1])))) if not pure
                    else set())  # fmt: skip
        fresh = {k: value() for k in [*added, *rehashed]}
        index.update({k: packed(v) for k, v in fresh.items()}, removed)
        for k in removed:
            del hashes[k]
            del rank[k]
        hashes.update(fresh)
        for k in [*added, *moved]:
            rank[k] = rnd.random()
        new = state_of(index, rank, previous=state)  # takes over an unchanged forest's parts
        touched = sorted(moved | rehashed)
        want = sweep_delta(state.forest, state.keys, state.ranks, new.forest, new.keys,
                           new.ranks, THRESHOLDS, touched=np.array(touched, dtype=np.int64))
        given_changes = rnd.random() < 0.5
        got = sweep_delta_from(state, new, THRESHOLDS, touched,
                               added=added if given_changes else None,
                               removed=removed if given_changes else None)  # fmt: skip
        for g, w in zip(got, want, strict=True):
            same_delta(g, w)
        assert new.numbering is not None
        same_numbering(new.numbering, state_of(index, rank).numbering_for(THRESHOLDS))
        state = new
        if rnd.random() < 0.3:  # the idle daemon drops what is cheap to remake
            adjacency = [a.tolist() for a in state.adjacency()]
            state.shed()
            assert [a.tolist() for a in state.adjacency()] == adjacency


def test_stable_order_is_numpys_stable_argsort() -> None:
    """The adjacency's radix order (16 bits a pass) equals numpy's stable argsort, for values
    of one pass, two passes and beyond (the general sort)."""
    rng = np.random.default_rng(5)
    for high in (7, 2**16, 70_000, 2**31 - 1, 2**40):
        for dtype in (np.int32, np.int64):
            if high >= 2**31 and dtype is np.int32:
                continue
            values = rng.integers(0, high, 3000).astype(dtype)
            assert cluster._stable_order(values).tolist() == np.argsort(
                values, kind="stable").tolist()  # fmt: skip
    assert cluster._stable_order(np.empty(0, dtype=np.int32)).tolist() == []


def test_kept_labels_read_back_as_stored_in_two_bytes_a_vertex_where_they_fit() -> None:
    """The labels a delta keeps come back with the same values, as int32, whatever the
    regime: values under 65,536; more vertices but few distinct labels (a giant component
    and small clusters: stored as indices); too many distinct labels (kept as int32)."""
    rng = np.random.default_rng(9)
    small = rng.integers(0, 40_000, 50_000)
    giant = np.where(rng.random(200_000) < 0.9, 3, rng.integers(0, 200_000, 200_000))
    singletons = rng.permutation(200_000)
    kept = KeptLabels()
    for t, labels in enumerate((small, giant, singletons, np.empty(0, dtype=np.int64))):
        kept[t] = labels
        assert kept[t].dtype == np.int32 and kept[t].tolist() == labels.tolist()
    assert sorted(kept) == [0, 1, 2, 3] and 2 in kept and 7 not in kept
    stored = {t: sum(a.nbytes for a in pair if a is not None) for t, pair in kept._kept.items()}
    assert stored[0] == 2 * len(small)
    assert stored[1] < 2 * len(giant) + 4 * 65_536  # indices, and the distinct values
    assert stored[2] == 4 * len(singletons)
    copy = KeptLabels(kept)
    del copy[0]
    assert 0 in kept and 0 not in copy and len(copy) == 3
