"""The SQLite store: schema, per-mode hashes, moves and copies, foreign files, read-only use."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from imgclusterd.errors import StoreError
from imgclusterd.store import SCHEMA_VERSION, Store

FACTS = (10, 1_000, 5, 7)


def test_schema_and_wal(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.sqlite") as store:
        assert store.integrity_ok()
    db = sqlite3.connect(tmp_path / "s.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_hashes_are_kept_per_decode_mode(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.sqlite") as store:
        with store.transaction():
            file_id = store.put_hashed("a.jpg", FACTS, b"d1", {"phash_8": b"\x01" * 8}, "exact", 0)
        assert store.complete_ids(["phash_8"], "exact") == {file_id}
        assert store.complete_ids(["phash_8"], "fast") == set()
        assert store.complete_ids(["phash_8", "dhash_8"], "exact") == set()


def test_move_keeps_hashes_and_copy_reuses_them(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.sqlite") as store:
        with store.transaction():
            store.put_hashed("a.jpg", FACTS, b"dig", {"phash_8": b"\x02" * 8}, "exact", 0)
            store.move("a.jpg", "sub/b.jpg", (10, 2_000, 6, 7), 1)
        assert set(store.files()) == {"sub/b.jpg"}
        assert store.hashes("phash_8", "exact")[0][1:] == ("sub/b.jpg", b"\x02" * 8)
        source = store.find_digest(b"dig")
        assert source is not None
        with store.transaction():
            store.copy_hashes(source, "copy.jpg", (10, 3_000, 9, 7), 2)
        stored = sorted(p for _, p, _ in store.hashes("phash_8", "exact"))
        assert stored == ["copy.jpg", "sub/b.jpg"]
        with store.transaction():
            assert store.remove(["copy.jpg"]) == 1
        assert len(store.hashes("phash_8", "exact")) == 1  # cascade removed its hashes


def test_non_utf8_paths_round_trip(tmp_path: Path) -> None:
    name = b"caf\xe9/\xff photo\n.jpg".decode("utf-8", "surrogateescape")
    with Store.open(tmp_path / "s.sqlite") as store:
        with store.transaction():
            store.put_unreadable(name, FACTS, "truncated image", 0)
        assert list(store.files()) == [name]
        assert store.unreadable() == [(name, "truncated image")]


def test_rollback_on_error(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.sqlite") as store:
        with pytest.raises(RuntimeError), store.transaction():
            store.put_unreadable("x.jpg", FACTS, "why", 0)
            raise RuntimeError
        assert store.files() == {}


def test_foreign_and_corrupt_files_are_refused_clearly(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE photos (x)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"did not create.*--reset-store"):
        Store.open(foreign)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="--reset-store"):
        Store.open(garbage)
    assert garbage.read_bytes() == b"this is not a database" * 100


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Store.open(tmp_path / "s.sqlite").close()
    db = sqlite3.connect(tmp_path / "s.sqlite")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store.open(tmp_path / "s.sqlite")


def test_readonly_reader_while_writer_holds_a_transaction(tmp_path: Path) -> None:
    writer = Store.open(tmp_path / "s.sqlite")
    with writer.transaction():
        writer.put_unreadable("a.jpg", FACTS, "why", 0)
    writer.set_state("daemon", {"phase": "idle"})
    reader = Store.open(tmp_path / "s.sqlite", readonly=True)
    with writer.transaction():
        writer.put_unreadable("b.jpg", FACTS, "why", 0)
        assert reader.counts()["unreadable"] == 1  # sees the last commit, not blocked
        assert reader.get_state("daemon") == {"phase": "idle"}
    assert reader.counts()["unreadable"] == 2
    with pytest.raises(sqlite3.OperationalError):
        reader._db.execute("DELETE FROM files")
    reader.close()
    writer.close()
    with pytest.raises(StoreError):
        Store.open(tmp_path / "missing.sqlite", readonly=True)
