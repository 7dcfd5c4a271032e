"""imgclusterd.cluster against a brute-force reference (all pairs + BFS), at every threshold."""

from __future__ import annotations

import random
import threading
from collections import deque

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imgclusterd.cluster as cluster
from imgclusterd.cluster import (
    BuildStopped,
    ClusterIndex,
    Forest,
    KeyPartition,
    Partition,
    build_indexes,
    distance_matrix_rows,
    extend_forest,
    remove_from_forest,
    spanning_forest,
    spanning_forests,
    sweep,
)

# ---------------------------------------------------------------- reference (deliberately plain)


def to_packed(values: list[int], bits: int) -> np.ndarray:
    """Python ints of `bits` bits -> (N, nbytes) packed rows, as np.packbits would lay them out."""
    nbytes = (bits + 7) // 8
    pad = nbytes * 8 - bits
    rows = [(v << pad).to_bytes(nbytes, "big") for v in values]
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(values), nbytes)


def brute_partition(values: list[int], t: int, ranks: list | None = None):
    """Clusters (lists, ordered by the contract) and unclustered list at threshold t."""
    n = len(values)
    ranks = list(range(n)) if ranks is None else list(ranks)
    adjacent = [
        [j for j in range(n) if j != i and bin(values[i] ^ values[j]).count("1") <= t]
        for i in range(n)
    ]
    seen = [False] * n
    components = []
    for start in range(n):
        if seen[start]:
            continue
        seen[start] = True
        queue, members = deque([start]), []
        while queue:
            i = queue.popleft()
            members.append(i)
            for j in adjacent[i]:
                if not seen[j]:
                    seen[j] = True
                    queue.append(j)
        components.append(sorted(members, key=lambda i: (ranks[i], i)))
    clusters = [c for c in components if len(c) >= 2]
    clusters.sort(key=lambda c: (-len(c), ranks[c[0]], c[0]))
    unclustered = sorted((c[0] for c in components if len(c) == 1), key=lambda i: (ranks[i], i))
    return clusters, unclustered


def as_lists(p: Partition):
    return [c.tolist() for c in p.clusters], p.unclustered.tolist()


def check_all_thresholds(values: list[int], bits: int, limit: int, ranks=None) -> None:
    packed = to_packed(values, bits)
    forest = spanning_forest(packed, limit)
    thresholds = list(range(0, limit + 1))
    rank_arr = None if ranks is None else np.asarray(ranks)
    for t, p in zip(thresholds, sweep(forest, thresholds, rank_arr), strict=True):
        assert p.threshold == t
        assert as_lists(p) == brute_partition(values, t, ranks), f"threshold {t}"


def planted(rng: random.Random, bits: int, groups: int, size: int, flips: int, noise: int):
    """Near-duplicate groups (a base hash with a few bits flipped) plus random hashes."""
    values = []
    for _ in range(groups):
        base = rng.getrandbits(bits)
        for _ in range(size):
            v = base
            for b in rng.sample(range(bits), rng.randint(0, flips)):
                v ^= 1 << b
            values.append(v)
    values += [rng.getrandbits(bits) for _ in range(noise)]
    rng.shuffle(values)
    return values


# ---------------------------------------------------------------- against the reference


@pytest.mark.parametrize("bits", [64, 144, 256, 400])
def test_random_hashes_every_threshold(bits: int) -> None:
    rng = random.Random(bits)
    values = [rng.getrandbits(bits) for _ in range(60)]
    # Up to the mean distance: from all-unclustered to one big cluster.
    check_all_thresholds(values, bits, limit=bits // 2)


@pytest.mark.parametrize("bits", [64, 144, 256, 400])
def test_planted_near_duplicates(bits: int) -> None:
    rng = random.Random(7 * bits)
    values = planted(rng, bits, groups=6, size=5, flips=bits // 16, noise=25)
    check_all_thresholds(values, bits, limit=bits // 3)


def test_exact_duplicates_cluster_at_zero() -> None:
    values = [5, 5, 5, 9, 9, 1 << 63, 0]
    check_all_thresholds(values, 64, limit=6)
    p = sweep(spanning_forest(to_packed(values, 64), 0), [0])[0]
    assert as_lists(p) == ([[0, 1, 2], [3, 4]], [5, 6])


@pytest.mark.parametrize("n", [0, 1, 2])
def test_tiny_inputs(n: int) -> None:
    values = [0b1011, 0b0011][:n]
    check_all_thresholds(values, 64, limit=3)
    forest = spanning_forest(to_packed(values, 64), 3)
    assert forest.n == n and len(forest.u) == max(0, n - 1)


def test_zero_width_and_odd_bit_counts() -> None:
    rng = random.Random(3)
    for bits in (1, 7, 9, 63, 65, 129):
        values = [rng.getrandbits(bits) for _ in range(12)]
        check_all_thresholds(values, bits, limit=bits)


def test_limit_edge_cases() -> None:
    rng = random.Random(11)
    values = planted(rng, 64, groups=3, size=4, flips=3, noise=6)
    packed = to_packed(values, 64)
    # limit 0: only exact duplicates; limit >= bits: everything in one cluster.
    check_all_thresholds(values, 64, limit=0)
    top = spanning_forest(packed, 64)
    assert len(top.w) == len(values) - 1
    p = sweep(top, [64])[0]
    assert len(p.clusters) == 1 and len(p.unclustered) == 0
    # A negative limit keeps nothing; every image unclustered.
    none = spanning_forest(packed, -1)
    assert len(none.w) == 0
    assert as_lists(sweep(none, [-1])[0]) == ([], list(range(len(values))))
    # Edges above the limit are dropped, so thresholds above it are refused.
    forest = spanning_forest(packed, 10)
    assert int(forest.w.max(initial=0)) <= 10
    with pytest.raises(ValueError, match="above the forest's limit"):
        sweep(forest, [11])


def test_forest_edges_are_normalised_and_sorted() -> None:
    rng = random.Random(5)
    values = planted(rng, 256, groups=5, size=6, flips=20, noise=10)
    f = spanning_forest(to_packed(values, 256), 100)
    assert f.u.dtype == np.int32 and f.v.dtype == np.int32 and f.w.dtype == np.uint16
    assert (f.u < f.v).all()
    keys = list(zip(f.w.tolist(), f.u.tolist(), f.v.tolist(), strict=True))
    assert keys == sorted(keys)


def test_distance_matrix_rows() -> None:
    rng = random.Random(2)
    values = [rng.getrandbits(144) for _ in range(30)]
    d = distance_matrix_rows(to_packed(values, 144), np.array([3, 0, 29]))
    assert d.dtype == np.uint16 and d.shape == (3, 30)
    for r, i in enumerate([3, 0, 29]):
        assert d[r].tolist() == [bin(values[i] ^ v).count("1") for v in values]


def test_spanning_forests_match_one_by_one() -> None:
    rng = random.Random(9)
    sets = [
        (to_packed(planted(rng, bits, 4, 5, bits // 10, 30), bits), bits // 3)
        for bits in (64, 64, 144, 256, 400, 256)
    ]
    together = spanning_forests([p for p, _ in sets], [lim for _, lim in sets])
    threaded = spanning_forests([p for p, _ in sets], [lim for _, lim in sets], workers=2)
    for (packed, limit), a, b in zip(sets, together, threaded, strict=True):
        alone = spanning_forest(packed, limit)
        for f in (a, b):
            assert f.n == alone.n and f.limit == limit
            # Same multiset of weights <=> same partitions at every threshold.
            assert f.w.tolist() == alone.w.tolist()
            thresholds = range(limit + 1)
            assert [as_lists(p) for p in sweep(f, thresholds)] == [
                as_lists(p) for p in sweep(alone, thresholds)
            ]


def test_spanning_forests_refuses_mismatched_sizes() -> None:
    with pytest.raises(ValueError, match="same images"):
        spanning_forests([np.zeros((3, 8), np.uint8), np.zeros((4, 8), np.uint8)], [1, 1])


# ---------------------------------------------------------------- order rules


def test_order_size_then_smallest_rank() -> None:
    # Groups (by index): {0,5} size 2, {1,3,6} size 3, {2,4} size 2, {7} alone.
    values = [0x00, 0xF0F0, 0xFF00FF, 0xF0F1, 0xFF00FE, 0x01, 0xF0F3, 0xFFFF << 40]
    p = sweep(spanning_forest(to_packed(values, 64), 2), [2])[0]
    assert as_lists(p) == ([[1, 3, 6], [0, 5], [2, 4]], [7])
    # Reversed ranks: members reverse, and the pair holding 5 (rank 2) beats the one holding 4.
    ranks = np.arange(len(values))[::-1]
    p = sweep(spanning_forest(to_packed(values, 64), 2), [2], ranks)[0]
    assert as_lists(p) == ([[6, 3, 1], [5, 0], [4, 2]], [7])
    # Ranks may be any sortable values (e.g. file paths).
    paths = np.array(["b", "z", "a", "y", "c", "d", "x", "q"])
    p = sweep(spanning_forest(to_packed(values, 64), 2), [2], paths)[0]
    assert as_lists(p) == ([[6, 3, 1], [2, 4], [0, 5]], [7])
    assert as_lists(p) == brute_partition(values, 2, list(paths))


def test_ranks_must_match_vertex_count() -> None:
    forest = spanning_forest(to_packed([1, 2, 3], 64), 2)
    with pytest.raises(ValueError, match="one rank per vertex"):
        sweep(forest, [1], np.array([0, 1]))


# ---------------------------------------------------------------- property tests


@st.composite
def hash_sets(draw, max_n: int = 40):
    bits = draw(st.sampled_from([8, 64, 100, 144, 256, 400]))
    n = draw(st.integers(0, max_n))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    bases = [rng.getrandbits(bits) for _ in range(draw(st.integers(1, 6)))]
    flips = draw(st.integers(0, max(1, bits // 8)))
    values = []
    for _ in range(n):
        v = rng.choice(bases)
        for b in rng.sample(range(bits), rng.randint(0, flips)):
            v ^= 1 << b
        values.append(v if rng.random() < 0.8 else rng.getrandbits(bits))
    return bits, values


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=hash_sets(), thresholds=st.lists(st.integers(0, 400), min_size=1, max_size=5))
def test_property_matches_reference(data, thresholds) -> None:
    bits, values = data
    limit = max(thresholds)
    ranks = random.Random(len(values)).sample(range(1000), len(values))
    forest = spanning_forest(to_packed(values, bits), limit)
    for t, p in zip(thresholds, sweep(forest, thresholds, np.array(ranks)), strict=True):
        assert as_lists(p) == brute_partition(values, t, ranks)


@settings(max_examples=60, deadline=None)
@given(data=hash_sets())
def test_laws_merge_only_and_each_image_once(data) -> None:
    bits, values = data
    thresholds = list(range(0, bits + 1, max(1, bits // 20)))
    forest = spanning_forest(to_packed(values, bits), thresholds[-1])
    previous: dict[int, int] | None = None
    for p in sweep(forest, thresholds):
        everyone = [i for c in p.clusters for i in c.tolist()] + p.unclustered.tolist()
        assert sorted(everyone) == list(range(len(values)))  # each image exactly once
        assert all(len(c) >= 2 for c in p.clusters)
        group = {i: g for g, c in enumerate(p.clusters) for i in c.tolist()}
        group.update({i: -1 - i for i in p.unclustered.tolist()})
        if previous is not None:
            # Images together at a lower threshold stay together.
            for i in range(len(values)):
                for j in range(i):
                    if previous[i] == previous[j]:
                        assert group[i] == group[j]
        previous = group


# ---------------------------------------------------------------- incremental


def partitions_of(forest: Forest, limit: int):
    return [as_lists(p) for p in sweep(forest, range(limit + 1))]


@settings(max_examples=80, deadline=None)
@given(data=hash_sets(max_n=50), k=st.integers(0, 12), limit=st.integers(0, 80))
def test_extend_matches_scratch(data, k, limit) -> None:
    bits, values = data
    k = min(k, len(values))
    packed = to_packed(values, bits)
    old = spanning_forest(packed[: len(values) - k], limit)
    new_rows = np.arange(len(values) - k, len(values))
    grown = extend_forest(old, packed, new_rows, limit, rebuild_share=None)
    assert partitions_of(grown, limit) == partitions_of(spanning_forest(packed, limit), limit)


def test_extend_with_new_rows_in_the_middle() -> None:
    rng = random.Random(4)
    values = planted(rng, 64, groups=4, size=4, flips=4, noise=10)
    packed = to_packed(values, 64)
    new_rows = np.array([0, 5, 17])
    old = spanning_forest(np.delete(packed, new_rows, axis=0), 20)
    grown = extend_forest(old, packed, new_rows, 20, rebuild_share=None)
    assert partitions_of(grown, 20) == partitions_of(spanning_forest(packed, 20), 20)


def test_extend_in_small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    # Force several batches of new rows (the batch size bounds memory at large N).
    monkeypatch.setattr(cluster, "_BLOCK_ELEMENTS", 64)
    rng = random.Random(8)
    values = planted(rng, 144, groups=5, size=5, flips=10, noise=15)
    packed = to_packed(values, 144)
    old = spanning_forest(packed[:25], 50)
    grown = extend_forest(old, packed, np.arange(25, len(values)), 50, rebuild_share=None)
    assert partitions_of(grown, 50) == partitions_of(spanning_forest(packed, 50), 50)


@settings(max_examples=80, deadline=None)
@given(data=hash_sets(max_n=50), picks=st.lists(st.integers(0, 49), max_size=12),
       limit=st.integers(0, 80))
def test_remove_matches_scratch(data, picks, limit) -> None:
    bits, values = data
    removed = sorted({p for p in picks if p < len(values)})
    packed = to_packed(values, bits)
    forest = spanning_forest(packed, limit)
    shrunk, kept = remove_from_forest(forest, packed, np.array(removed, np.intp), limit,
                                      rebuild_share=None)
    assert kept.tolist() == [i for i in range(len(values)) if i not in removed]
    assert shrunk.n == len(kept)
    scratch = spanning_forest(packed[kept], limit)
    assert partitions_of(shrunk, limit) == partitions_of(scratch, limit)
    # Sweeps read the edges in (w, u, v) order with u < v: the reconnecting edges too.
    edges = list(zip(shrunk.w.tolist(), shrunk.u.tolist(), shrunk.v.tolist(), strict=True))
    assert edges == sorted(edges) and all(u < v for _, u, v in edges)
    assert (shrunk.u.dtype, shrunk.v.dtype, shrunk.w.dtype) == (np.int32, np.int32, np.uint16)


def test_remove_a_bridge_vertex_reconnects_the_pieces() -> None:
    # A chain 0-1-2-3-4 (distance 1 apart) plus a shortcut 0~4 at distance 3 once 2 is gone.
    values = [0b000, 0b001, 0b011, 0b111, 0b110]
    packed = to_packed(values, 64)
    forest = spanning_forest(packed, 3)
    shrunk, kept = remove_from_forest(forest, packed, np.array([2]), 3, rebuild_share=None)
    assert kept.tolist() == [0, 1, 3, 4]
    assert partitions_of(shrunk, 3) == [
        brute_partition([values[i] for i in kept], t) for t in range(4)
    ]


def test_incremental_refuses_a_larger_limit() -> None:
    packed = to_packed([1, 2, 3, 4], 64)
    forest = spanning_forest(packed[:3], 2)
    with pytest.raises(ValueError, match="rebuild it for limit 5"):
        extend_forest(forest, packed, np.array([3]), 5)


@st.composite
def index_scripts(draw):
    bits = draw(st.sampled_from([64, 144, 256]))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    bases = [rng.getrandbits(bits) for _ in range(4)]

    def fresh() -> int:
        v = rng.choice(bases)
        for b in rng.sample(range(bits), rng.randint(0, bits // 10)):
            v ^= 1 << b
        return v

    steps = []
    for _ in range(draw(st.integers(1, 6))):
        n_add = draw(st.integers(0, 12))
        adds = {f"k{rng.randrange(40):02d}": fresh() for _ in range(n_add)}
        removes = [f"k{rng.randrange(40):02d}" for _ in range(draw(st.integers(0, 6)))]
        steps.append((adds, removes))
    return bits, steps


@settings(max_examples=60, deadline=None)
@given(script=index_scripts(), limit=st.integers(0, 60),
       share=st.sampled_from([None, cluster.REBUILD_SHARE]))
def test_cluster_index_matches_scratch(script, limit, share) -> None:
    bits, steps = script
    index: ClusterIndex[str] = ClusterIndex(limit, (bits + 7) // 8, rebuild_share=share)
    truth: dict[str, int] = {}
    for adds, removes in steps:
        index.update({k: to_packed([v], bits)[0].tobytes() for k, v in adds.items()}, removes)
        for k in removes:
            truth.pop(k, None)
        truth.update(adds)
        keys = sorted(truth)
        assert sorted(index.keys()) == keys and len(index) == len(keys)
        thresholds = list(range(0, limit + 1, 3))
        got = index.sweep(thresholds)  # default rank: the key itself
        for t, p in zip(thresholds, got, strict=True):
            assert isinstance(p, KeyPartition) and p.threshold == t
            clusters, unclustered = brute_partition([truth[k] for k in keys], t)
            assert p.clusters == [[keys[i] for i in c] for c in clusters]
            assert p.unclustered == [keys[i] for i in unclustered]


def test_cluster_index_rank_of_and_changes() -> None:
    index: ClusterIndex[str] = ClusterIndex(limit=4, nbytes=8)
    h = {name: to_packed([v], 64)[0].tobytes() for name, v in
         {"a": 0b0, "b": 0b1, "c": 0b11 << 20, "d": 0b111 << 20}.items()}
    index.update(h, [])
    assert index.keys() == ["a", "b", "c", "d"]
    p = index.sweep([1], rank_of=lambda k: -ord(k))[0]
    assert p.clusters == [["d", "c"], ["b", "a"]] and p.unclustered == []
    # A changed hash moves the key to the end; an unchanged one is left alone.
    index.update({"a": to_packed([0xFF << 40], 64)[0].tobytes(), "b": h["b"]}, ["zz"])
    assert index.keys() == ["b", "c", "d", "a"]
    p = index.sweep([1])[0]
    assert p.clusters == [["c", "d"]] and p.unclustered == ["a", "b"]
    index.update({"b": h["b"]}, ["b"])  # "changed" to the same bytes: nothing moves
    assert index.keys() == ["b", "c", "d", "a"]
    index.update({}, ["c", "d"])
    assert index.keys() == ["b", "a"] and index.sweep([4])[0].unclustered == ["a", "b"]
    with pytest.raises(ValueError, match="expected 8"):
        index.update({"x": b"\x00"}, [])


def test_public_surface() -> None:
    assert set(cluster.__all__) == {
        "REBUILD_SHARE", "BuildStopped", "ClusterIndex", "Forest", "KeyPartition", "Partition",
        "build_indexes",
        "distance_matrix_rows", "extend_forest", "remove_from_forest", "spanning_forest",
        "spanning_forests", "sweep",
    }


def test_build_indexes_builds_in_lockstep_and_stops_when_asked() -> None:
    rng = np.random.default_rng(3)
    packed = [rng.integers(0, 256, (600, nbytes), dtype=np.uint8) for nbytes in (8, 8, 32)]
    keys = [f"k{i:04d}" for i in range(600)]
    indexes: list[ClusterIndex[str]] = [ClusterIndex(limit=12, nbytes=p.shape[1]) for p in packed]
    heard: list[tuple[int, int, int]] = []
    build_indexes(list(zip(indexes, [keys] * 3, packed, strict=True)), workers=2,
                  on_step=lambda done, total: heard.append((done, total, threading.get_ident())))
    # Progress is told from the calling thread only (the daemon writes it to SQLite).
    assert heard and {ident for _, _, ident in heard} == {threading.get_ident()}
    assert all(0 <= done <= total == 599 for done, total, _ in heard)
    for index, rows in zip(indexes, packed, strict=True):
        alone: ClusterIndex[str] = ClusterIndex(limit=12, nbytes=rows.shape[1])
        alone.update(dict(zip(keys, (r.tobytes() for r in rows), strict=True)))
        assert index.keys() == keys
        assert index.sweep([4, 12]) == alone.sweep([4, 12])
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 1  # yes on the second look

    fresh: ClusterIndex[str] = ClusterIndex(limit=12, nbytes=8)
    with pytest.raises(BuildStopped):
        build_indexes([(fresh, keys, packed[0])], should_stop=stop)
    assert len(fresh) == 0  # nothing half-loaded


@pytest.mark.parametrize("merge_key_limit", [0, cluster._MERGE_KEY_LIMIT])
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(data=hash_sets(max_n=40), limit=st.integers(0, 80))
def test_one_photo_at_a_time_matches_scratch(
    merge_key_limit: int, monkeypatch: pytest.MonkeyPatch, data, limit
) -> None:
    """The daemon's case: photos arrive one by one (the forest keeps what stays of it and merges
    the new edges in). Every step equals a forest built from scratch: same partitions at every
    threshold, same total weight, edges normalised and sorted."""
    monkeypatch.setattr(cluster, "_MERGE_KEY_LIMIT", merge_key_limit)  # 0: the sorting path
    bits, values = data
    packed = to_packed(values, bits)
    forest = spanning_forest(packed[:1], limit)
    for n in range(2, len(values) + 1):
        forest = extend_forest(forest, packed[:n], np.array([n - 1]), limit, rebuild_share=None)
        scratch = spanning_forest(packed[:n], limit)
        assert forest.n == n and len(forest.w) == len(scratch.w)
        assert int(forest.w.sum()) == int(scratch.w.sum())
        assert np.all(forest.u < forest.v)
        order = np.lexsort((forest.v, forest.u, forest.w))
        assert np.array_equal(order, np.arange(len(order)))
        assert partitions_of(forest, limit) == partitions_of(scratch, limit)


@pytest.mark.parametrize("seed", range(4))
def test_file_id_keys_behave_as_any_other_keys(seed: int) -> None:
    """File ids (non-negative ints) are kept in numpy arrays, other keys in a list and a dict:
    one script of updates gives the same keys, positions, hashes, forests and sweeps either
    way (the same ids, spelled as strings, ranked by their number)."""
    rng = random.Random(seed)
    ids: ClusterIndex[int] = ClusterIndex(limit=6, nbytes=2)
    named: ClusterIndex[str] = ClusterIndex(limit=6, nbytes=2)
    base = [rng.getrandbits(16) for _ in range(8)]  # near-duplicates of these: clusters

    def a_hash() -> bytes:
        value = rng.choice(base) ^ (1 << rng.randrange(16)) ^ (1 << rng.randrange(16))
        return value.to_bytes(2, "big") if rng.random() < 0.7 else rng.randbytes(2)

    for step in range(30):
        adds = {rng.randrange(3000 if step % 7 else 10**12): a_hash()
                for _ in range(rng.choice([0, 1, 3, 40]))}
        removes = [*rng.sample(ids.keys(), min(len(ids), rng.choice([0, 1, 5]))), 123456789]
        ids.update(adds, removes)
        named.update({str(k): v for k, v in adds.items()}, [str(k) for k in removes])
        keys = ids.keys()
        assert type(ids.positions) is not dict  # the numpy form is the one exercised here
        assert all(type(k) is int for k in keys)
        assert [str(k) for k in keys] == named.keys() and len(ids) == len(named)
        assert ids.key_array().tolist() == keys and ids.key_array().dtype == np.int64
        assert dict(ids.positions) == {int(k): i for k, i in named.positions.items()}
        assert all(ids.hash_of(k) == named.hash_of(str(k)) and k in ids for k in keys)
        assert ids.forest.n == named.forest.n and all(
            np.array_equal(getattr(ids.forest, f), getattr(named.forest, f)) for f in "uvw")
        got = ids.sweep([0, 2, 4, 6])
        want = named.sweep([0, 2, 4, 6], rank_of=int)
        for p, q in zip(got, want, strict=True):
            assert p.clusters == [[int(k) for k in c] for c in q.clusters]
            assert p.unclustered == [int(k) for k in q.unclustered]
    for absent in (-1, 10**30, "7", 2.5, None):
        assert absent not in ids and ids.positions.get(absent) is None
    with pytest.raises(KeyError):
        ids.positions[-1]
    ids.update({"text": b"\x00\x01"})  # a key that is not a file id: still one index
    assert ids.keys()[-1] == "text" and ids.positions["text"] == len(ids) - 1
    assert ids.keys()[:-1] == keys and all(ids.positions[k] == i for i, k in enumerate(keys))


@pytest.mark.parametrize("nbytes", [0, 1, 2, 3, 5, 7, 8, 9, 18, 31, 32, 50])
def test_columns_give_the_words_distances(nbytes: int) -> None:
    """An insertion reads the packed rows through unaligned views of their byte columns (no
    copy); every width (8-, 4-, 2- and 1-byte pieces, and none) gives the words' distances."""
    rng = np.random.default_rng(nbytes)
    packed = rng.integers(0, 256, (37, nbytes), dtype=np.uint8)
    rows = np.array([0, 5, 36, 5])
    want = cluster._distances(cluster._words(packed), rows)
    assert np.array_equal(cluster._distances(cluster._columns(packed), rows), want)
    cols = np.array([3, 1, 30])
    assert np.array_equal(cluster._distances(cluster._columns(packed), rows, cols), want[:, cols])
    assert cluster._columns(packed[:0])[0].shape == (0,)
