"""The hash store: one SQLite file per images folder, written only by the main process.

Why SQLite in WAL mode: ``imgclusterd status`` reads while the daemon writes, and a crash in the
middle of a commit must roll back cleanly (kill -9 mid-transaction leaves the last committed
state; ``PRAGMA integrity_check`` stays ok). Writes use ``BEGIN IMMEDIATE`` so the write lock is
taken up front and never upgraded half-way.

Paths are stored as bytes (``os.fsencode`` of the path relative to the images folder) because
photo folders do contain names that are not valid UTF-8. Hashes are stored per
(file, algorithm, decode mode), so switching ``decode`` re-hashes instead of mixing modes.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from .errors import StoreError

__all__ = ["SCHEMA_VERSION", "STORE_NAME", "Facts", "FileRecord", "SavedForest", "Store"]

log = logging.getLogger(__name__)

STORE_NAME = "store.sqlite"
APPLICATION_ID = 0x49434C44  # "ICLD": tells our store from any other SQLite file
SCHEMA_VERSION = 6

def _journal(row_id: str) -> str:
    """The trigger statement that journals ``row_id`` under the revision being written.

    Not ``INSERT OR IGNORE``: an upsert's own conflict clause overrides a trigger's."""
    return (
        f"INSERT INTO changes (revision, file_id) SELECT r, {row_id} FROM (SELECT coalesce("
        "(SELECT CAST(value AS INTEGER) FROM state WHERE key = 'revision'), 0) + 1 AS r) "
        f"WHERE NOT EXISTS (SELECT 1 FROM changes WHERE revision = r AND file_id = {row_id});"
    )


# Named migrations, applied in order; each runs in one transaction with the version bump.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "initial",
        """
        CREATE TABLE files (
            id        INTEGER PRIMARY KEY,
            path      BLOB NOT NULL UNIQUE,      -- os.fsencode(relative path)
            size      INTEGER NOT NULL,
            mtime_ns  INTEGER NOT NULL,
            inode     INTEGER NOT NULL,
            device    INTEGER NOT NULL,
            digest    BLOB,                      -- sha256 of the content, NULL if unread
            status    TEXT NOT NULL CHECK (status IN ('hashed', 'unreadable')),
            reason    TEXT,                      -- why unreadable
            decode    TEXT,                      -- decode mode of the stored hashes
            updated   REAL NOT NULL              -- unix time of the last change of this row
        );
        CREATE INDEX files_digest ON files(digest);
        CREATE INDEX files_inode ON files(device, inode);
        CREATE TABLE hashes (
            file_id   INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
            algorithm TEXT NOT NULL,
            decode    TEXT NOT NULL,
            bits      BLOB NOT NULL,
            PRIMARY KEY (file_id, algorithm, decode)
        ) WITHOUT ROWID;
        CREATE TABLE state (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL                  -- JSON
        );
        """,
    ),
    (
        2,
        "ctime and vanished rows",
        # ctime_ns: a file replaced by another with the same size and mtime (cp -p, a restore)
        # has a new inode or ctime; NULL for rows written before, filled in on the next look.
        # gone: unix time a hashed file was last seen missing. Its row and hashes are kept for
        # `vanished_retention` seconds, so a photo that comes back (moved out and in again, a
        # folder restored) is recognised by its digest instead of decoded again. Rows with
        # `gone` set are invisible to everything but the digest lookup.
        # files_size: "is there a known photo of this size?" without reading every row, for
        # a refresh that looks only at the paths that changed.
        """
        ALTER TABLE files ADD COLUMN ctime_ns INTEGER;
        ALTER TABLE files ADD COLUMN gone REAL;
        CREATE INDEX files_size ON files(size);
        """,
    ),
    (
        3,
        "flat images",
        # flat = 1: a near-constant image (blank, one colour; see hashing.FLAT_CONTRAST) whose
        # hashes carry almost no information: it matches every other flat image at threshold
        # 0, so status, export and the explorer flag it. NULL: hashed before this migration
        # (unknown until the photo is hashed again) or unreadable.
        """
        ALTER TABLE files ADD COLUMN flat INTEGER;
        CREATE INDEX files_flat ON files(flat) WHERE flat = 1;
        """,
    ),
    (
        4,
        "change journal",
        # Which files changed in which revision, written by triggers (so no code path can
        # forget it): a refresh after a few changes reads those rows instead of every hash of
        # every algorithm (14 x N rows). The revision is the one the writing transaction
        # commits (the current one + 1). Readers that fell behind `journal_floor` (pruned
        # entries) read everything again.
        """
        CREATE TABLE changes (
            revision INTEGER NOT NULL,
            file_id  INTEGER NOT NULL,
            PRIMARY KEY (revision, file_id)
        ) WITHOUT ROWID;
        CREATE TRIGGER files_added AFTER INSERT ON files BEGIN {journal(NEW.id)} END;
        CREATE TRIGGER files_changed
            AFTER UPDATE OF path, digest, status, decode, gone, updated ON files
            BEGIN {journal(NEW.id)} END;
        CREATE TRIGGER files_removed AFTER DELETE ON files BEGIN {journal(OLD.id)} END;
        CREATE TRIGGER hashes_added AFTER INSERT ON hashes BEGIN {journal(NEW.file_id)} END;
        CREATE TRIGGER hashes_changed AFTER UPDATE ON hashes BEGIN {journal(NEW.file_id)} END;
        CREATE TRIGGER hashes_removed AFTER DELETE ON hashes BEGIN {journal(OLD.file_id)} END;
        INSERT INTO state (key, value) VALUES ('journal_floor',
            (SELECT coalesce((SELECT value FROM state WHERE key = 'revision'), '0')))
        ON CONFLICT(key) DO UPDATE SET value = excluded.value
        """.replace("{journal(NEW.id)}", _journal("NEW.id"))
        .replace("{journal(OLD.id)}", _journal("OLD.id"))
        .replace("{journal(NEW.file_id)}", _journal("NEW.file_id"))
        .replace("{journal(OLD.file_id)}", _journal("OLD.file_id")),
    ),
    (
        5,
        "saved forests",
        # Each algorithm's minimum spanning forest as of store revision `revision`: vertex i
        # is file id keys[i] (int64), edges (u, v: int32; w: uint16), all little-endian
        # arrays. A daemon that starts loads it and applies the journal since `revision`
        # instead of building every forest from scratch (O(N^2): ~10 minutes of both cores
        # at 100,000 photos).
        """
        CREATE TABLE forests (
            algorithm TEXT NOT NULL,
            decode    TEXT NOT NULL,
            revision  INTEGER NOT NULL,
            lim       INTEGER NOT NULL,
            keys      BLOB NOT NULL,
            u         BLOB NOT NULL,
            v         BLOB NOT NULL,
            w         BLOB NOT NULL,
            PRIMARY KEY (algorithm, decode)
        ) WITHOUT ROWID
        """,
    ),
    (
        6,
        "live file counts",
        # Every refresh counts the photos by status (`counts`): a scan of the whole table
        # (20,000 photos: ~9 ms, 100,000: ~45 ms of each +1); this index holds just the live
        # rows' status and flat flag, so the counts read it instead (~2 ms at 20,000).
        """
        CREATE INDEX files_live ON files(status, flat) WHERE gone IS NULL
        """,
    ),
]


#: (size, mtime_ns, inode, device, ctime_ns): what tells whether a file changed. Callers may
#: pass the first four only (ctime then unknown).
Facts = tuple[int, ...]


@dataclass(frozen=True)
class SavedForest:
    """A spanning forest as saved in the store: vertex i is file id ``keys[i]``; edges
    ``(u, v, w)`` sorted by weight; ``limit``: the largest threshold it answers."""

    keys: np.ndarray
    u: np.ndarray
    v: np.ndarray
    w: np.ndarray
    limit: int


@dataclass(frozen=True)
class FileRecord:
    """One row of ``files``: what we knew of a file when we last looked at it."""

    id: int
    path: str
    size: int
    mtime_ns: int
    inode: int
    device: int
    digest: bytes | None
    status: str
    reason: str | None
    decode: str | None
    ctime_ns: int | None = None  # None: recorded before the store kept it
    gone: float | None = None  # when it was seen missing (a vanished row, see migration 2)

    @property
    def facts(self) -> Facts:
        return (self.size, self.mtime_ns, self.inode, self.device, self.ctime_ns or 0)


class Store:
    """The store of one images folder. Use :meth:`open`; close with :meth:`close` or ``with``."""

    def __init__(self, connection: sqlite3.Connection, path: Path, readonly: bool) -> None:
        self._db = connection
        self.path = path
        self.readonly = readonly

    # -- opening ----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> Store:
        """Open (and create/migrate unless ``readonly``) the store at ``path``.

        Raises StoreError for a file that is not an imgclusterd store, is corrupt, has a
        newer schema than this version knows, or cannot be created or opened at all (a path
        through a regular file, a read-only file system, no permission). A read-only open
        never creates the store or its folder.
        """
        try:
            if readonly:
                if not path.exists():
                    raise StoreError(f"no store at {path}")
                # mode=ro: SQLite fails instead of creating a missing file (race with the check
                # above), so a read-only open never creates the store.
                db = sqlite3.connect(_uri(path, "ro"), uri=True, isolation_level=None, timeout=2.0)
            else:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(
                        f"cannot create the store folder {path.parent}: {_reason(exc)}"
                    ) from None
                db = sqlite3.connect(
                    _uri(path, "rwc"), uri=True, isolation_level=None, timeout=10.0
                )
        except OSError as exc:  # e.g. path.exists() on a folder we may not search
            raise StoreError(f"cannot open the store {path}: {_reason(exc)}") from None
        except sqlite3.OperationalError as exc:
            raise _cannot_open(path, exc) from None
        store = cls(db, path, readonly)
        try:
            store._setup()
        except sqlite3.DatabaseError as exc:
            db.close()
            if _is_access_error(exc):
                # The file itself may be fine (e.g. the folder is read-only so the WAL cannot
                # be created): --reset-store would not help, so do not suggest it.
                raise _cannot_open(path, exc) from None
            raise StoreError(
                f"{path} is not a usable imgclusterd store ({exc}); "
                "run again with --reset-store to rebuild it (photos are not touched)"
            ) from None
        except StoreError:
            db.close()
            raise
        return store

    def _setup(self) -> None:
        db = self._db
        db.execute("PRAGMA busy_timeout = 10000")
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables):
            raise StoreError(
                f"{self.path} is an SQLite file that imgclusterd did not create; "
                "choose another --state-dir, or run with --reset-store to replace it"
            )
        if self.readonly:
            if app_id != APPLICATION_ID:
                raise StoreError(f"{self.path} is not initialised yet")
            if self._check_version() < SCHEMA_VERSION:
                # A reader cannot migrate; querying would fail on a column that is not there.
                raise StoreError(
                    f"{self.path} was written by an older imgclusterd; it is upgraded when "
                    "the daemon or `imgclusterd scan` next opens it"
                )
            return
        db.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode: a power cut may lose the last commits, never consistency; the
        # reconcile at start-up re-hashes whatever was lost.
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    def _check_version(self) -> int:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this imgclusterd "
                f"({SCHEMA_VERSION}); upgrade imgclusterd or run with --reset-store"
            )
        return version

    def _migrate(self) -> None:
        version = self._check_version()
        pending = [m for m in MIGRATIONS if m[0] > version]
        if not pending:
            return
        # All pending migrations in one transaction: a reader (``status``) never sees a store
        # half-way between two schema versions (it queried a column the next one adds).
        with self.transaction():
            for number, name, sql in pending:
                log.debug("store: applying migration %d (%s)", number, name)
                for statement in _statements(sql):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number}")
            self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self, *, revise: bool = True) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back if the block raises.

        A transaction that changed rows also bumps the store's :meth:`revision`, in the same
        commit: the output is rebuilt when the revision it was built from is not the current
        one, so a crash between this commit and the output swap is repaired on the next run.
        ``revise=False`` is for changes the output does not show (new facts of the same
        content): they must not cost a new generation.
        """
        self._db.execute("BEGIN IMMEDIATE")
        before = self._db.total_changes
        try:
            yield
            if revise and self._db.total_changes != before:
                self._db.execute(
                    "INSERT INTO state (key, value) VALUES ('revision', '1') "
                    "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
                )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def revision(self) -> int:
        """Bumped by every transaction that changed files or hashes (0 for a new store)."""
        return int(self.get_state("revision") or 0)

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: every query inside sees the same committed state, even while
        the daemon commits (WAL readers keep their snapshot until the transaction ends)."""
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    def integrity_ok(self) -> bool:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # -- files ------------------------------------------------------------------------------

    _COLUMNS = (
        "id, path, size, mtime_ns, inode, device, digest, status, reason, decode, ctime_ns, gone"
    )

    @staticmethod
    def _record(row: tuple[Any, ...]) -> FileRecord:
        return FileRecord(row[0], os.fsdecode(row[1]), *row[2:])

    def files(self, paths: Iterable[str] | None = None, folders: Iterable[str] = ()
              ) -> dict[str, FileRecord]:
        """Known files (not vanished) by relative path: every one, or only ``paths`` and
        those under ``folders`` (relative folder paths, "" for all) when either is given."""
        if paths is None and not folders:
            rows = self._db.execute(f"SELECT {self._COLUMNS} FROM files WHERE gone IS NULL")
            return {record.path: record for record in map(self._record, rows)}
        found: dict[str, FileRecord] = {}
        for path in paths or ():
            row = self._db.execute(
                f"SELECT {self._COLUMNS} FROM files WHERE path = ? AND gone IS NULL",
                (os.fsencode(path),),
            ).fetchone()
            if row:
                found[path] = self._record(row)
        for folder in folders:
            if not folder:
                return self.files()
            # Paths are bytes: everything under b"a/b/" sorts between b"a/b/" and b"a/b0"
            # ("0" follows "/"), so the primary key's index answers without a scan.
            low = os.fsencode(folder.rstrip("/")) + b"/"
            high = low[:-1] + b"0"
            rows = self._db.execute(
                f"SELECT {self._COLUMNS} FROM files WHERE path >= ? AND path < ? "
                "AND gone IS NULL",
                (low, high),
            )
            found.update((r.path, r) for r in map(self._record, rows))
        return found

    def find_digest(self, digest: bytes) -> FileRecord | None:
        """A hashed file with this content, if any (for copies and moves); a present file is
        preferred to a vanished one."""
        row = self._db.execute(
            f"SELECT {self._COLUMNS} FROM files WHERE digest = ? AND status = 'hashed' "
            "ORDER BY gone IS NOT NULL LIMIT 1",
            (digest,),
        ).fetchone()
        return self._record(row) if row else None

    def size_known(self, size: int) -> bool:
        """Is there a hashed file (present or vanished) with this size? Only then can a new
        file be a copy or a returning photo worth reading for its digest."""
        row = self._db.execute(
            "SELECT 1 FROM files WHERE size = ? AND status = 'hashed' AND digest IS NOT NULL "
            "LIMIT 1",
            (size,),
        ).fetchone()
        return row is not None

    def complete_ids(
        self, algorithms: Iterable[str], decode: str, ids: Iterable[int] | None = None
    ) -> set[int]:
        """Ids of hashed files that have a hash for every one of ``algorithms`` in ``decode``
        (among ``ids`` when given)."""
        names = list(algorithms)
        marks = ",".join("?" * len(names))
        query = (
            f"SELECT file_id FROM hashes WHERE decode = ? AND algorithm IN ({marks}) "
            "GROUP BY file_id HAVING count(*) = ?"
        )
        if ids is None:
            rows = self._db.execute(query, (decode, *names, len(names)))
            return {row[0] for row in rows}
        one = query.replace("WHERE", "WHERE file_id = ? AND", 1)
        return {
            file_id
            for file_id in ids
            if self._db.execute(one, (file_id, decode, *names, len(names))).fetchone()
        }

    def put_hashed(
        self,
        path: str,
        facts: Facts,
        digest: bytes | None,
        hashes: Mapping[str, bytes],
        decode: str,
        now: float,
        *,
        flat: bool = False,
    ) -> int:
        """Insert or replace a hashed file and its hashes. Call inside :meth:`transaction`.
        ``flat``: the image is near-constant (see :meth:`flat_images`)."""
        file_id = self._upsert(path, facts, digest, "hashed", None, decode, now)
        self._db.execute("UPDATE files SET flat = ? WHERE id = ?", (int(flat), file_id))
        self._db.execute("DELETE FROM hashes WHERE file_id = ?", (file_id,))
        self._db.executemany(
            "INSERT INTO hashes (file_id, algorithm, decode, bits) VALUES (?, ?, ?, ?)",
            [(file_id, name, decode, bits) for name, bits in hashes.items()],
        )
        return file_id

    def put_unreadable(self, path: str, facts: Facts, reason: str, now: float) -> int:
        """Record why a file could not be hashed; it is retried only when it changes."""
        file_id = self._upsert(path, facts, None, "unreadable", reason, None, now)
        self._db.execute("UPDATE files SET flat = NULL WHERE id = ?", (file_id,))
        self._db.execute("DELETE FROM hashes WHERE file_id = ?", (file_id,))
        return file_id

    def copy_hashes(self, source: FileRecord, path: str, facts: Facts, now: float) -> int:
        """A new path with the same content as ``source``: reuse its hashes, no decoding.

        A vanished ``source`` (a photo that left and came back) is brought back as this path:
        its row, not a copy of it, so nothing of it stays behind."""
        if source.gone is not None:
            self._db.execute(
                "DELETE FROM files WHERE path = ? AND id != ?", (os.fsencode(path), source.id)
            )
            self._db.execute(
                "UPDATE files SET path = ?, size = ?, mtime_ns = ?, inode = ?, device = ?, "
                "ctime_ns = ?, gone = NULL, updated = ? WHERE id = ?",
                (os.fsencode(path), *_facts5(facts), now, source.id),
            )
            return source.id
        file_id = self._upsert(path, facts, source.digest, "hashed", None, source.decode, now)
        self._db.execute(
            "UPDATE files SET flat = (SELECT flat FROM files WHERE id = ?) WHERE id = ?",
            (source.id, file_id),
        )
        self._db.execute("DELETE FROM hashes WHERE file_id = ?", (file_id,))
        self._db.execute(
            "INSERT INTO hashes (file_id, algorithm, decode, bits) "
            "SELECT ?, algorithm, decode, bits FROM hashes WHERE file_id = ?",
            (file_id, source.id),
        )
        return file_id

    def move(self, old: str, new: str, facts: Facts, now: float) -> None:
        """A renamed or moved file: same row (and hashes), new path and facts."""
        self._db.execute("DELETE FROM files WHERE path = ?", (os.fsencode(new),))
        self._db.execute(
            "UPDATE files SET path = ?, size = ?, mtime_ns = ?, inode = ?, device = ?, "
            "ctime_ns = ?, updated = ? WHERE path = ?",
            (os.fsencode(new), *_facts5(facts), now, os.fsencode(old)),
        )

    def update_facts(self, path: str, facts: Facts) -> None:
        """Same content under new facts (touched, chmod, restored by a copy): no new hashes.
        Changes nothing the output shows, so use a ``transaction(revise=False)``."""
        self._db.execute(
            "UPDATE files SET size = ?, mtime_ns = ?, inode = ?, device = ?, ctime_ns = ? "
            "WHERE path = ?",
            (*_facts5(facts), os.fsencode(path)),
        )

    def remove(self, paths: Iterable[str]) -> int:
        """Forget these files now, hashes and all."""
        cursor = self._db.executemany(
            "DELETE FROM files WHERE path = ?", [(os.fsencode(p),) for p in paths]
        )
        return cursor.rowcount

    def retire(self, paths: Iterable[str], now: float) -> int:
        """Files no longer on disk: hashed ones become vanished rows (kept by digest until
        :meth:`purge_vanished`), the others are forgotten. Returns how many paths left."""
        encoded = [(os.fsencode(p),) for p in paths]
        kept = self._db.executemany(
            "UPDATE files SET gone = ? WHERE path = ? AND gone IS NULL AND status = 'hashed' "
            "AND digest IS NOT NULL",
            [(now, *p) for p in encoded],
        ).rowcount
        forgotten = self._db.executemany(
            "DELETE FROM files WHERE path = ? AND gone IS NULL", encoded
        ).rowcount
        return kept + forgotten

    def purge_vanished(self, before: float) -> int:
        """Forget vanished rows seen missing before ``before`` (unix time)."""
        return self._db.execute("DELETE FROM files WHERE gone < ?", (before,)).rowcount

    def vanished_count(self) -> int:
        return int(self._db.execute(
            "SELECT count(*) FROM files WHERE gone IS NOT NULL"
        ).fetchone()[0])

    def _upsert(
        self,
        path: str,
        facts: Facts,
        digest: bytes | None,
        status: str,
        reason: str | None,
        decode: str | None,
        now: float,
    ) -> int:
        # A vanished row at this path is taken over (its old hashes are replaced by the
        # caller), so a path is never both present and vanished.
        row = self._db.execute(
            "INSERT INTO files (path, size, mtime_ns, inode, device, ctime_ns, digest, status, "
            "reason, decode, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
            "inode = excluded.inode, device = excluded.device, ctime_ns = excluded.ctime_ns, "
            "digest = excluded.digest, status = excluded.status, reason = excluded.reason, "
            "decode = excluded.decode, updated = excluded.updated, gone = NULL RETURNING id",
            (os.fsencode(path), *_facts5(facts), digest, status, reason, decode, now),
        ).fetchone()
        return int(row[0])

    # -- hashes -----------------------------------------------------------------------------

    def hashes(
        self, algorithm: str, decode: str, ids: Iterable[int] | None = None
    ) -> list[tuple[int, str, bytes]]:
        """(file id, relative path, packed bits) of every hashed file for one algorithm, or
        of those among ``ids``."""
        query = (
            "SELECT f.id, f.path, h.bits FROM hashes h JOIN files f ON f.id = h.file_id "
            "WHERE h.algorithm = ? AND h.decode = ? AND f.status = 'hashed' AND f.gone IS NULL"
        )
        if ids is None:
            rows = self._db.execute(query, (algorithm, decode))
            return [(row[0], os.fsdecode(row[1]), row[2]) for row in rows]
        found = []
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"{query} AND f.id IN ({marks})", (algorithm, decode, *chunk))
            found += [(row[0], os.fsdecode(row[1]), row[2]) for row in rows]
        return found

    def photo_paths(self, ids: Iterable[int] | None = None) -> dict[int, str]:
        """file id -> relative path of the hashed, present files (all, or among ``ids``)."""
        query = "SELECT id, path FROM files WHERE status = 'hashed' AND gone IS NULL"
        if ids is None:
            return {row[0]: os.fsdecode(row[1]) for row in self._db.execute(query)}
        found: dict[int, str] = {}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"{query} AND id IN ({marks})", chunk)
            found.update((row[0], os.fsdecode(row[1])) for row in rows)
        return found

    # -- the change journal (migration 4) ---------------------------------------------------

    def changed_since(self, revision: int) -> list[int] | None:
        """Ids of the files whose row or hashes changed after ``revision`` (whether they
        still exist or not), or None when the journal no longer reaches back that far (it
        was pruned past it): the reader must then read everything. Call inside
        :meth:`snapshot` together with :meth:`revision`."""
        if revision < int(self.get_state("journal_floor") or 0):
            return None
        rows = self._db.execute(
            "SELECT DISTINCT file_id FROM changes WHERE revision > ?", (revision,)
        )
        return [row[0] for row in rows]

    def save_forests(
        self, decode: str, revision: int, forests: Iterable[tuple[str, SavedForest]]
    ) -> None:
        """Replace the saved forests of these algorithms (one transaction, no new revision:
        the photos did not change)."""
        with self.transaction(revise=False):
            for algorithm, saved in forests:
                self._db.execute(
                    "INSERT OR REPLACE INTO forests (algorithm, decode, revision, lim, keys, u, "
                    "v, w) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (algorithm, decode, revision, saved.limit,
                     saved.keys.astype("<i8").tobytes(), saved.u.astype("<i4").tobytes(),
                     saved.v.astype("<i4").tobytes(), saved.w.astype("<u2").tobytes()),
                )  # fmt: skip

    def saved_forest(self, algorithm: str, decode: str) -> tuple[int, SavedForest] | None:
        """(revision, forest) saved for this algorithm, or None."""
        row = self._db.execute(
            "SELECT revision, lim, keys, u, v, w FROM forests WHERE algorithm = ? AND decode = ?",
            (algorithm, decode),
        ).fetchone()
        if row is None:
            return None
        revision, limit, keys, u, v, w = row
        return int(revision), SavedForest(
            keys=np.frombuffer(keys, dtype="<i8").astype(np.int64),
            u=np.frombuffer(u, dtype="<i4").astype(np.int32),
            v=np.frombuffer(v, dtype="<i4").astype(np.int32),
            w=np.frombuffer(w, dtype="<u2").astype(np.uint16),
            limit=int(limit),
        )

    def oldest_saved_forest(self) -> int | None:
        """The revision of the oldest saved forest (the journal must reach back to it)."""
        row = self._db.execute("SELECT min(revision) FROM forests").fetchone()
        return None if row[0] is None else int(row[0])

    def prune_changes(self, upto: int) -> int:
        """Drop the journal up to revision ``upto`` (a reader behind it reads everything
        again). Call inside a ``transaction(revise=False)``."""
        floor = int(self.get_state("journal_floor") or 0)
        if upto <= floor:
            return 0
        count = self._db.execute("DELETE FROM changes WHERE revision <= ?", (upto,)).rowcount
        self.set_state("journal_floor", upto)
        return count

    # -- counts and state (for status) -----------------------------------------------------

    def counts(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT status, count(*) FROM files WHERE gone IS NULL GROUP BY status"
        )
        counts = {"hashed": 0, "unreadable": 0}
        counts.update({status: n for status, n in rows})
        counts["known"] = counts["hashed"] + counts["unreadable"]
        counts["flat"] = self._db.execute(
            "SELECT count(*) FROM files WHERE flat = 1 AND status = 'hashed' AND gone IS NULL"
        ).fetchone()[0]
        return counts

    def digests(self) -> dict[int, bytes]:
        """file id -> content digest of every hashed file (the mounted view's explorer page
        captures these when a snapshot is made, a tenth of the cost of :meth:`files`)."""
        rows = self._db.execute(
            "SELECT id, digest FROM files WHERE status = 'hashed' AND gone IS NULL "
            "AND digest IS NOT NULL"
        )
        return dict(rows.fetchall())

    def flat_images(self, limit: int | None = None) -> list[str]:
        """Relative paths of the hashed photos that are *flat* (near-constant: blank pages,
        one colour), sorted; their hashes carry almost no information, so they cluster with
        each other at low thresholds whatever they show. For status, export and the explorer."""
        rows = self._db.execute(
            "SELECT path FROM files WHERE flat = 1 AND status = 'hashed' AND gone IS NULL "
            "ORDER BY path LIMIT ?",
            (-1 if limit is None else limit,),
        )
        return [os.fsdecode(path) for (path,) in rows]

    def unreadable(self, limit: int = 5) -> list[tuple[str, str]]:
        rows = self._db.execute(
            "SELECT path, reason FROM files WHERE status = 'unreadable' ORDER BY path LIMIT ?",
            (limit,),
        )
        return [(os.fsdecode(path), reason or "") for path, reason in rows]

    def get_state(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_state(self, key: str, value: Any) -> None:
        """Write one state row in its own short transaction (heartbeats, last refresh)."""
        self._db.execute(
            "INSERT INTO state (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )


def _chunks(ids: Iterable[int], size: int = 500) -> Iterator[list[int]]:
    """``ids`` in lists short enough for one ``IN (...)`` (SQLite limits host parameters)."""
    batch: list[int] = []
    for file_id in ids:
        batch.append(int(file_id))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _statements(sql: str) -> Iterator[str]:
    """The statements of a script, whole: a trigger's body holds ``;`` of its own."""
    pending = ""
    for piece in sql.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""


def _facts5(facts: Facts) -> tuple[int, int, int, int, int | None]:
    """(size, mtime_ns, inode, device, ctime_ns or None when not given)."""
    size, mtime_ns, inode, device = facts[:4]
    return (size, mtime_ns, inode, device, facts[4] if len(facts) > 4 else None)


def _uri(path: Path, mode: str) -> str:
    """An SQLite URI for ``path``, percent-quoted.

    Unquoted, ``#`` starts a fragment and ``?`` the query, so a folder named ``st#x`` meant the
    file ``st`` and lost ``mode=ro`` (``status`` then created and wrote the wrong file); ``%``
    would be decoded. Quoting the bytes (not the str) also keeps non-UTF-8 names intact. The
    path is made absolute so the URI is always ``file:///...`` with an empty authority (a path
    starting with ``//`` would otherwise be read as a host name).
    """
    quoted = quote(os.fsencode(path.absolute()), safe="/")
    return f"file://{quoted}?mode={mode}"


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _is_access_error(exc: sqlite3.Error) -> bool:
    """SQLITE_CANTOPEN or SQLITE_READONLY: the file system refused, the content is not at fault."""
    # Extended codes (e.g. SQLITE_READONLY_DIRECTORY) carry the primary code in the low byte;
    # errors raised by the sqlite3 module itself have no code at all.
    code = getattr(exc, "sqlite_errorcode", 0)
    return code & 0xFF in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY)


def _cannot_open(path: Path, exc: sqlite3.Error) -> StoreError:
    # SQLite does not tell the OS reason ("unable to open database file"), so name the usual
    # causes; a sqlite error that is not about access is passed on as it is.
    if _is_access_error(exc):
        return StoreError(
            f"cannot open the store {path}: {exc} "
            "(check that its folder exists and is writable by this user)"
        )
    return StoreError(f"cannot open the store {path}: {exc}")
