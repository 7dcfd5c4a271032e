"""The store's change journal (migration 4) and the catalog that follows it: a refresh after a
few changes reads those rows, never every hash of every algorithm, and knows the same as a
fresh read of the whole store."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import numpy as np

from imgclusterd.catalog import Catalog
from imgclusterd.config import load_config
from imgclusterd.pipeline import Pipeline
from imgclusterd.store import Store

from .conftest import Workspace
from .test_bad_input import write_config
from .test_incremental import photo

FACTS = (1, 2, 3, 4, 5)


def put(store: Store, path: str, bits: bytes = b"\x00" * 8) -> int:
    return store.put_hashed(path, FACTS, path.encode(), {"phash_8": bits}, "exact", 0.0)


def test_journal_lists_what_changed_and_says_when_it_was_pruned(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.sqlite") as store:
        with store.transaction():
            a, b = put(store, "a.jpg"), put(store, "b.jpg")
        start = store.revision()
        assert store.changed_since(start) == []
        with store.transaction():
            store.move("a.jpg", "c.jpg", FACTS, 1.0)
        assert store.changed_since(start) == [a]
        # New facts of the same content change nothing the output shows: not journaled.
        with store.transaction(revise=False):
            store.update_facts("b.jpg", (9, 9, 9, 9, 9))
        assert store.changed_since(start) == [a]
        with store.transaction():
            store.retire(["b.jpg"], 2.0)
        assert sorted(store.changed_since(start) or []) == [a, b]
        with store.transaction():
            store.put_unreadable("d.jpg", FACTS, "broken", 3.0)
        with store.transaction(revise=False):
            assert store.prune_changes(store.revision() - 1) > 0
        assert store.changed_since(start) is None  # too old: read everything
        assert store.changed_since(store.revision() - 1) is not None


def test_catalog_follows_the_store_like_a_fresh_read(tmp_path: Path) -> None:
    rnd = random.Random(5)
    with Store.open(tmp_path / "s.sqlite") as store:
        catalog = Catalog(store)
        names = [f"{c}{i}.jpg" for c in "abc" for i in range(5)]
        present: set[str] = set()
        for _ in range(60):
            with store.transaction():
                for _ in range(rnd.randint(1, 3)):
                    kind = rnd.random()
                    if kind < 0.4 or not present:
                        name = rnd.choice(names)
                        put(store, name, rnd.randbytes(8))
                        present.add(name)
                    elif kind < 0.7:
                        old = rnd.choice(sorted(present))
                        new = rnd.choice([n for n in names if n != old])
                        store.move(old, new, FACTS, 1.0)
                        present.discard(old)
                        present.add(new)
                    else:
                        gone = rnd.choice(sorted(present))
                        store.retire([gone], 1.0)
                        present.discard(gone)
            if rnd.random() < 0.1:  # another reader pruned the journal
                with store.transaction(revise=False):
                    store.prune_changes(store.revision())
            with store.snapshot():
                catalog.sync()
            fresh = Catalog(store)
            with store.snapshot():
                assert fresh.sync().full
            assert catalog.paths == fresh.paths
            assert set(catalog.paths.values()) == present
            keys = np.array(sorted(catalog.paths), dtype=np.int64)
            order = sorted(catalog.paths, key=catalog.paths.__getitem__)
            assert catalog.ranks(keys).tolist() == [order.index(k) for k in keys.tolist()]


def test_swapped_names_keep_their_ranks_right(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.sqlite") as store:
        with store.transaction():
            a, b, c = put(store, "a.jpg"), put(store, "b.jpg"), put(store, "c.jpg")
        catalog = Catalog(store)
        with store.snapshot():
            catalog.sync()
        with store.transaction():  # a <-> c through a temporary name, one transaction
            store.move("a.jpg", "tmp.jpg", FACTS, 1.0)
            store.move("c.jpg", "a.jpg", FACTS, 1.0)
            store.move("tmp.jpg", "c.jpg", FACTS, 1.0)
        with store.snapshot():
            change = catalog.sync()
        assert not change.full and change.moved == {a, c}
        assert change.old_paths == {a: "a.jpg", c: "c.jpg"}
        assert catalog.ranks(np.array([a, b, c])).tolist() == [2, 1, 0]


def test_a_small_refresh_reads_only_the_changed_hashes(workspace: Workspace) -> None:
    ws = workspace
    config = load_config(write_config(ws.root / "cfg.toml", ws.images, ws.output, ws.state))
    statements: list[str] = []
    with Pipeline(config.config) as pipeline:
        pipeline.refresh()
        connection: sqlite3.Connection = pipeline.store._db
        connection.set_trace_callback(statements.append)
        new = photo(ws.images / "new", "a.jpg", 7)
        ws.snapshot()
        report = pipeline.refresh(dirty=[str(new)])
        connection.set_trace_callback(None)
    assert report.hashed == 1 and report.generation
    hash_reads = [s for s in statements if "FROM hashes h JOIN files f" in s]
    assert hash_reads, "the refresh read no hashes at all"
    # Every read of hashes names the changed files; none reads a whole algorithm.
    assert all(" IN (" in s for s in hash_reads), hash_reads[:3]
