"""The store's change journal (migration 4) and the catalog that follows it: a refresh after a
few changes reads those rows, never every hash of every algorithm, and knows the same as a
fresh read of the whole store."""

from __future__ import annotations

import base64
import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import imgclusterd.pipeline as pipeline_module
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


def test_the_pipeline_keeps_the_journal_short(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = workspace
    monkeypatch.setattr(pipeline_module, "JOURNAL_KEEP", 1)
    config = load_config(write_config(ws.root / "cfg.toml", ws.images, ws.output, ws.state))
    with Pipeline(config.config) as pipeline:
        pipeline.refresh()
        follower = Catalog(pipeline.store)
        with pipeline.store.snapshot():
            follower.sync()
        saved_at = pipeline.store.oldest_saved_forest()
        assert saved_at is not None
        for seed in range(4):
            new = photo(ws.images / "new", f"p{seed}.jpg", 20 + seed)
            pipeline.refresh(dirty=[str(new)])
        store = pipeline.store
        # What the saved forests need to catch up is kept, however old...
        entries = store._db.execute("SELECT min(revision), count(*) FROM changes").fetchone()
        assert entries[0] is not None and entries[0] <= saved_at + 1, entries
        # ...and once they are saved again, the journal is cut short.
        for seed in range(4, 7):
            pipeline.save_forests()
            new = photo(ws.images / "new", f"p{seed}.jpg", 20 + seed)
            pipeline.refresh(dirty=[str(new)])
        ws.snapshot()
        revision = store.revision()
        entries = store._db.execute("SELECT min(revision), count(*) FROM changes").fetchone()
        assert entries[0] is None or entries[0] >= revision - 3, (entries, revision)
        with store.snapshot():
            assert follower.sync().full  # fell behind the pruned journal: read everything
        assert follower.paths == pipeline.catalog.paths


def test_explorer_page_after_changes_equals_a_fresh_build(workspace: Workspace) -> None:
    """The page's per-photo cache (records, thumbnails, quoted names) follows renames, new
    photos, removals and new thumbnails: a pipeline that refreshed many times writes the same
    page as one that reads the store fresh."""
    ws = workspace
    config = load_config(write_config(ws.root / "cfg.toml", ws.images, ws.output, ws.state))
    with Pipeline(config.config) as pipeline:
        pipeline.refresh()
        first = photo(ws.images / "new", "one photo.jpg", 31)
        second = photo(ws.images / "new", "two.jpg", 32)
        pipeline.refresh(dirty=[str(first), str(second)])
        renamed = first.with_name("renamed & moved.jpg")
        first.rename(renamed)
        pipeline.refresh(dirty=[str(first), str(renamed)])
        second.unlink()
        pipeline.refresh(dirty=[str(second)])
        pipeline.make_thumbnails()
        ws.snapshot()
        page = pipeline._explorer_page()
    with Pipeline(config.config) as fresh:
        fresh._sync_indexes()
        again = fresh._explorer_page()
    assert again.keys() == page.keys()
    before, after = page_data(page), page_data(again)
    assert "renamed & moved.jpg" in str(before["names"]) and "two.jpg" not in str(before)
    # Equal-weight edges make more than one minimum spanning forest: the incremental one may
    # differ from a fresh one in which of them it holds, never in its weights.
    for data in (before, after):
        for algorithm in data["algorithms"]:
            blob = base64.b64decode(algorithm.pop("edges"))
            count = algorithm["edgeCount"]
            algorithm["weights"] = np.frombuffer(blob[8 * count :], dtype="<u2").tolist()
    assert before == after


def page_data(files: dict[str, bytes]) -> dict[str, Any]:
    """The JSON inside explorer-data.js (``JSON.parse('...')`` of one escaped string)."""
    text = files["explorer-data.js"].decode("ascii")
    literal = text[text.index("JSON.parse('") + len("JSON.parse('") : text.rindex("');")]
    return dict(json.loads(literal.replace("\\'", "'").replace("\\\\", "\\")))


def test_a_cold_build_reports_progress(workspace: Workspace) -> None:
    """The first refresh builds every forest from scratch (minutes at 100,000 photos): it
    must tell its progress, which is also what keeps the daemon's heartbeat and systemd's
    watchdog alive meanwhile."""
    ws = workspace
    config = load_config(write_config(ws.root / "cfg.toml", ws.images, ws.output, ws.state))
    heard: list[tuple[str, int, int]] = []
    with Pipeline(config.config, progress=lambda *p: heard.append(p)) as pipeline:
        report = pipeline.refresh()
    steps = [(done, total) for phase, done, total in heard if phase == "clustering"]
    assert (0, report.images) in steps  # announced before the build
    assert (report.images - 1, report.images - 1) in steps  # and its end


def sweeps(pipeline: Pipeline) -> dict[str, list[Any]]:
    """Every algorithm's partitions in file ids (the forest itself may differ where edges tie)."""
    return {
        name: index.sweep(list(range(0, index.limit + 1, 3)))
        for name, index in sorted(pipeline._indexes.items())
    }


def fresh_sweeps(config: Any) -> dict[str, list[Any]]:
    with Pipeline(config) as fresh:
        # From scratch, and saving nothing: the store's saved forests stay as they are.
        fresh.save_forests = lambda *a, **k: False  # type: ignore[method-assign]
        fresh.store.saved_forest = lambda *a: None  # type: ignore[method-assign]
        fresh._sync_indexes()
        return sweeps(fresh)


def test_a_restart_loads_the_saved_forests_and_catches_up(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = workspace
    config = load_config(write_config(ws.root / "cfg.toml", ws.images, ws.output, ws.state)).config
    with Pipeline(config) as pipeline:
        pipeline.refresh()  # builds from scratch, saves
    with Store.open(ws.state / "store.sqlite") as store:
        saved = store.saved_forest("phash_8", "exact")
        assert saved is not None and len(saved[1].keys) > 10
        # While no daemon runs, the store changes (a photo's hash, one gone, one new).
        records = sorted(store.files().values(), key=lambda r: r.path)
        with store.transaction():
            store.put_hashed(records[0].path, records[0].facts, records[0].digest,
                             {"phash_8": b"\xff" * 8, "dhash_8": b"\x0f" * 8}, "exact", 1.0)
            store.retire([records[1].path], 1.0)
            store.put_hashed("elsewhere/new.jpg", (1, 2, 3, 4, 5), b"n" * 32,
                             {"phash_8": b"\x01" * 8, "dhash_8": b"\x02" * 8}, "exact", 1.0)
    expected = fresh_sweeps(config)

    def no_cold_build(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("built from scratch although saved forests were there")

    with Store.open(ws.state / "store.sqlite") as store:
        kept = store.saved_forest("phash_8", "exact")  # the old one, to catch up from
        assert kept is not None and kept[0] == saved[0]
    with Pipeline(config) as restarted:
        monkeypatch.setattr(pipeline_module, "build_indexes", no_cold_build)
        restarted._sync_indexes()
        assert sweeps(restarted) == expected
        monkeypatch.undo()


def test_a_saved_forest_the_journal_cannot_reach_is_built_again(workspace: Workspace) -> None:
    ws = workspace
    config = load_config(write_config(ws.root / "cfg.toml", ws.images, ws.output, ws.state)).config
    with Pipeline(config) as pipeline:
        pipeline.refresh()
    with Store.open(ws.state / "store.sqlite") as store:
        record = min(store.files().values(), key=lambda r: r.path)
        with store.transaction():
            store.put_hashed(record.path, record.facts, record.digest,
                             {"phash_8": b"\xaa" * 8, "dhash_8": b"\x55" * 8}, "exact", 1.0)
        with store.transaction(revise=False):  # as if an old version had pruned it all
            store.prune_changes(store.revision())
    expected = fresh_sweeps(config)
    built: list[int] = []
    real = pipeline_module.build_indexes

    def counting(jobs: Any, **kwargs: Any) -> None:
        built.append(len(jobs))
        real(jobs, **kwargs)

    with Pipeline(config) as restarted:
        pipeline_module.build_indexes = counting  # type: ignore[assignment]
        try:
            restarted._sync_indexes()
        finally:
            pipeline_module.build_indexes = real
        assert built == [2] and sweeps(restarted) == expected
