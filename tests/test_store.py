"""The SQLite store: schema, per-mode hashes, moves and copies, foreign files, read-only use."""

from __future__ import annotations

import os
import sqlite3
import subprocess
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


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_readonly_open_quotes_the_path_and_creates_nothing(tmp_path: Path) -> None:
    # Unquoted, "file:.../st#x ?y%41/store.sqlite?mode=ro" meant the file ".../st", opened
    # read-write: status created a stray file next to the state dir.
    state = tmp_path / "st#x ?y%41" / "inner #?%"
    with Store.open(state / "s.sqlite") as store, store.transaction():
        store.put_unreadable("a.jpg", FACTS, "why", 0)
    # The WAL reader may leave its own -wal/-shm next to the store; nothing anywhere else.
    reader_files = {
        str((state / "s.sqlite-wal").relative_to(tmp_path)),
        str((state / "s.sqlite-shm").relative_to(tmp_path)),
    }
    before = _tree(tmp_path)
    with Store.open(state / "s.sqlite", readonly=True) as reader:
        assert reader.counts()["unreadable"] == 1
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader._db.execute("DELETE FROM files")
    with pytest.raises(StoreError, match="no store"):
        Store.open(state / "missing.sqlite", readonly=True)
    with pytest.raises(StoreError, match="no store"):
        Store.open(tmp_path / "st#y" / "s.sqlite", readonly=True)
    assert _tree(tmp_path) - reader_files == before - reader_files


def test_store_folder_through_a_regular_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "some_file").write_text("x")
    with pytest.raises(StoreError, match=r"cannot create the store folder .*some_file/st: "):
        Store.open(tmp_path / "some_file" / "st" / "s.sqlite")
    with pytest.raises(StoreError) as info:
        Store.open(tmp_path / "some_file" / "s.sqlite")  # the folder itself is a file
    assert info.value.exit_code == 74
    assert "some_file" in str(info.value)


def test_unwritable_file_system_is_a_store_error(tmp_path: Path) -> None:
    """A real read-only tmpfs (mounting needs root; skipped where it cannot be done)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1M", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.strip()}")
    try:
        with pytest.raises(StoreError, match=r"cannot create the store folder .*: Read-only"):
            Store.open(mount / "st" / "s.sqlite")
        with pytest.raises(StoreError, match=r"cannot open the store .*ro/s\.sqlite"):
            Store.open(mount / "s.sqlite")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes, so nothing is denied")
def test_permission_denied_is_a_store_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)  # readable, not writable
    try:
        with pytest.raises(StoreError, match=r"cannot create the store folder .*Permission"):
            Store.open(locked / "st" / "s.sqlite")
        with pytest.raises(StoreError, match=r"cannot open the store .*locked/s\.sqlite"):
            Store.open(locked / "s.sqlite")  # the folder exists; the database cannot be made
    finally:
        locked.chmod(0o700)


def test_migration_3_records_flat_images(tmp_path: Path) -> None:
    """A store written by the previous schema gains the flat column (unknown for its rows);
    hashed rows record it, copies inherit it, an unreadable row has none."""
    from imgclusterd.store import APPLICATION_ID, MIGRATIONS

    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    for number, _, sql in MIGRATIONS:
        if number < 3:
            old.executescript(sql)
            old.execute(f"PRAGMA user_version = {number}")
    old.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    old.execute("INSERT INTO files (path, size, mtime_ns, inode, device, digest, status, "
                "decode, updated) VALUES (?, 1, 1, 1, 1, X'00', 'hashed', 'exact', 0)",
                (b"before.jpg",))
    old.commit()
    old.close()
    with Store.open(path) as store:
        assert SCHEMA_VERSION >= 3
        assert store.flat_images() == [] and store.counts()["flat"] == 0  # before: unknown
        with store.transaction():
            store.put_hashed("blank.png", FACTS, b"b", {"phash_8": b"\0" * 8}, "exact", 0,
                             flat=True)
            store.put_hashed("photo.jpg", FACTS, b"p", {"phash_8": b"\1" * 8}, "exact", 0)
        source = store.find_digest(b"b")
        assert source is not None
        with store.transaction():
            store.copy_hashes(source, "copy of blank.png", FACTS, 1)
        assert store.flat_images() == ["blank.png", "copy of blank.png"]
        assert store.flat_images(limit=1) == ["blank.png"]
        assert store.counts()["flat"] == 2
        with store.transaction():
            store.put_unreadable("blank.png", FACTS, "truncated image", 2)
            store.put_hashed("copy of blank.png", FACTS, b"c", {"phash_8": b"\2" * 8},
                             "exact", 2)
        assert store.flat_images() == [] and store.counts()["flat"] == 0
        assert set(store.files()) == {"before.jpg", "blank.png", "copy of blank.png",
                                      "photo.jpg"}


def test_reader_of_an_older_schema_gets_a_clear_error_not_a_missing_column(
    tmp_path: Path,
) -> None:
    """``status`` opening a store written by an older imgclusterd (or caught before the daemon
    upgraded it) must not query columns the newer schema adds: one StoreError that says so."""
    from imgclusterd.store import APPLICATION_ID, MIGRATIONS

    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    number, _, sql = MIGRATIONS[0]
    old.executescript(sql)
    old.execute(f"PRAGMA user_version = {number}")
    old.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    old.commit()
    old.close()
    with pytest.raises(StoreError, match="older imgclusterd"):
        Store.open(path, readonly=True)
    with Store.open(path) as store:  # the writer upgrades every step at once
        assert store.counts()["flat"] == 0
    with Store.open(path, readonly=True) as reader:
        assert int(reader._db.execute("PRAGMA user_version").fetchone()[0]) == SCHEMA_VERSION


def test_counts_read_the_live_rows_index_not_the_table(tmp_path: Path) -> None:
    """Every refresh counts the photos: that must not scan the whole files table (the
    ``files_live`` index holds the live rows' status and flat flag)."""
    with Store.open(tmp_path / "s.sqlite") as store:
        with store.transaction():
            store.put_hashed("a.jpg", FACTS, b"d1", {"phash_8": b"\x01" * 8}, "exact", 0)
            store.put_hashed("b.jpg", (11, 1_000, 6, 7), b"d2", {"phash_8": b"\x02" * 8},
                             "exact", 0)  # fmt: skip
            store.put_unreadable("c.jpg", (12, 1_000, 8, 7), "not an image", 0)
            store.retire(["b.jpg"], 1.0)  # vanished: not counted
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        try:
            counts = store.counts()
        finally:
            store._db.set_trace_callback(None)
        assert (counts["hashed"], counts["unreadable"], counts["known"]) == (1, 1, 2)
        selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        assert selects
        for statement in selects:
            rows = store._db.execute("EXPLAIN QUERY PLAN " + statement)
            plan = " ".join(str(row[-1]) for row in rows)
            assert "files_live" in plan, (statement, plan)
