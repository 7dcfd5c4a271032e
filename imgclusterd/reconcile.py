"""Reconcile: compare what is on disk with what the store knows, and say what to do.

The walk (``os.scandir`` + one ``stat`` per file) runs at start-up, periodically, on SIGHUP
and after a watcher overflow, because file events can be lost (inotify queue overflows are
dropped silently by watchdog); the walk is the ground truth. After an ordinary burst of events
the daemon only *looks* at the paths the watcher reported (:func:`look`), so a refresh costs
what changed, not the size of the library. Planning is pure: given the disk listing and the
store's records it returns the work (hash, verify, move, forget), never touching either.

What could not be seen is never taken for gone: photos under a folder that cannot be listed
(permissions, an I/O error) and entries that cannot be stat'ed are kept as they are.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_module
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .filters import is_candidate, is_temporary
from .store import FileRecord

__all__ = ["Facts", "Listing", "Plan", "facts_of", "look", "plan", "walk"]

log = logging.getLogger(__name__)

#: (size, mtime_ns, inode, device, ctime_ns) as the store keeps them.
Facts = tuple[int, int, int, int, int]

#: stat errors that mean "not there" (anything else, e.g. EACCES or EIO, means "cannot tell").
_ABSENT = (errno.ENOENT, errno.ENOTDIR)


def facts_of(st: os.stat_result) -> Facts:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns)


@dataclass
class Listing:
    """The photos found under the images folder, by path relative to it."""

    files: dict[str, Facts] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why) worth reporting
    #: Folders ("" = the images folder itself) that could not be listed: what the store knows
    #: under them is kept, not taken for deleted.
    unlisted: list[str] = field(default_factory=list)
    #: Entries seen but not stat'able (a folder with read but no search permission): kept.
    unknown: set[str] = field(default_factory=set)

    def unseen(self, path: str) -> bool:
        """True when ``path`` may exist although it is not in :attr:`files`."""
        for prefix in (*self.unlisted, *self.unknown):
            if not prefix or path == prefix or path.startswith(prefix + "/"):
                return True
        return False


def walk(
    root: Path,
    extensions: Iterable[str],
    *,
    follow_symlinks: bool = False,
    exclude: Iterable[Path] = (),
    on_folder: Callable[[str], None] | None = None,
) -> Listing:
    """List candidate photos under ``root`` recursively.

    Symlinks are not followed unless asked; when they are, a directory reached twice (a loop,
    or two links to one folder) is walked once. ``exclude`` holds folders never to enter (our
    own output or state when a user places them inside the images folder). ``on_folder`` is
    called with each folder's path before it is listed (tests count what a refresh lists).
    """
    exts = tuple(e.lower() for e in extensions)
    excluded = {os.path.realpath(p) for p in exclude}
    listing = Listing()
    seen_dirs: set[tuple[int, int]] = set()
    stack: list[tuple[str, str]] = [(os.fspath(root), "")]
    # Folders reached through a symlink wait until every real folder is walked, so a photo
    # reachable both ways is listed under its real path.
    linked: list[tuple[str, str]] = []
    while stack or linked:
        directory, prefix = stack.pop() if stack else linked.pop(0)
        try:
            dir_stat = os.stat(directory)
        except OSError as exc:
            listing.skipped.append((prefix or ".", f"cannot stat folder: {exc.strerror}"))
            if exc.errno not in _ABSENT:
                listing.unlisted.append(prefix.rstrip("/"))
            continue
        key = (dir_stat.st_dev, dir_stat.st_ino)
        if prefix and key in seen_dirs:
            continue
        seen_dirs.add(key)
        if on_folder is not None:
            on_folder(directory)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            listing.skipped.append((prefix or ".", f"cannot list folder: {exc.strerror}"))
            if exc.errno not in _ABSENT:
                listing.unlisted.append(prefix.rstrip("/"))
            continue
        for entry in entries:
            rel = prefix + entry.name
            try:
                is_link = entry.is_symlink()
                if is_link and not follow_symlinks:
                    if not is_temporary(entry.name):
                        listing.skipped.append((rel, "symlink not followed (follow_symlinks)"))
                    continue
                st = entry.stat(follow_symlinks=True)
            except OSError as exc:
                if exc.errno in _ABSENT:
                    continue  # deleted between the listing and the stat
                listing.skipped.append((rel, f"cannot stat: {exc.strerror or exc}"))
                listing.unknown.add(rel)
                continue
            if stat_module.S_ISDIR(st.st_mode):
                if is_temporary(entry.name):
                    continue
                if os.path.realpath(entry.path) in excluded:
                    continue
                (linked if is_link else stack).append((entry.path, rel + "/"))
            elif stat_module.S_ISREG(st.st_mode) and is_candidate(entry.name, exts):
                listing.files[rel] = facts_of(st)
    return listing


def look(
    root: Path,
    paths: Iterable[str],
    extensions: Iterable[str],
    *,
    exclude: Iterable[Path] = (),
    on_folder: Callable[[str], None] | None = None,
) -> tuple[Listing, list[str]]:
    """What :func:`walk` would list for just these paths (relative to ``root``): a file is
    stat'ed, a folder is walked. Returns the listing and the folders walked (relative).

    The same rules as the walk: symlinks are not followed (a full walk is needed to follow
    them, see the pipeline), temporary names and excluded folders are left out, and a path
    that cannot be stat'ed for any reason but "not there" is :attr:`Listing.unknown`.
    ``on_folder`` is passed on to :func:`walk` for the folders among ``paths``.
    """
    exts = tuple(e.lower() for e in extensions)
    excluded = {os.path.realpath(p) for p in exclude}
    listing = Listing()
    folders: list[str] = []
    base = os.fspath(root)
    for rel in sorted(set(paths)):
        parts = rel.split("/")
        if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            continue  # not under the images folder
        if any(is_temporary(part) for part in parts):
            continue
        full = os.path.join(base, rel)
        try:
            st = os.lstat(full)
        except OSError as exc:
            if exc.errno not in _ABSENT:
                listing.skipped.append((rel, f"cannot stat: {exc.strerror or exc}"))
                listing.unknown.add(rel)
            continue
        if stat_module.S_ISDIR(st.st_mode):
            if os.path.realpath(full) in excluded:
                continue
            sub = walk(Path(full), exts, exclude=exclude, on_folder=on_folder)
            folders.append(rel)
            listing.files.update((f"{rel}/{p}", facts) for p, facts in sub.files.items())
            listing.skipped += [(f"{rel}/{p}" if p != "." else rel, why) for p, why in sub.skipped]
            listing.unlisted += [f"{rel}/{p}" if p else rel for p in sub.unlisted]
            listing.unknown |= {f"{rel}/{p}" for p in sub.unknown}
        elif stat_module.S_ISLNK(st.st_mode):
            listing.skipped.append((rel, "symlink not followed (follow_symlinks)"))
        elif stat_module.S_ISREG(st.st_mode) and is_candidate(parts[-1], exts):
            listing.files[rel] = facts_of(st)
    return listing, folders


@dataclass
class Plan:
    """What one reconcile decided. Paths are relative to the images folder."""

    to_hash: list[str] = field(default_factory=list)  # new, changed, or missing a hash
    #: Known and hashed, same size, but mtime, inode or ctime differ (touched, replaced, copied
    #: back): the caller compares the content digest; only a different one is decoded again.
    to_verify: list[str] = field(default_factory=list)
    moved: list[tuple[str, str]] = field(default_factory=list)  # (old, new): same inode/facts
    removed: list[str] = field(default_factory=list)  # gone from disk
    kept: list[str] = field(default_factory=list)  # not seen but maybe there: left alone
    backfill: list[str] = field(default_factory=list)  # unchanged, the store lacks the ctime
    unchanged: int = 0
    unreadable: int = 0  # known unreadable and unchanged: not retried

    @property
    def changes(self) -> int:
        return len(self.to_hash) + len(self.to_verify) + len(self.moved) + len(self.removed)


def plan(
    disk: Mapping[str, Facts],
    known: Mapping[str, FileRecord],
    complete: set[int],
    decode: str,
    *,
    unseen: Callable[[str], bool] = lambda path: False,
) -> Plan:
    """Decide per path: unchanged, hash, verify, moved (same inode, size and mtime), removed.

    ``complete`` holds the ids of records that have every configured hash in ``decode`` mode;
    anything else with unchanged facts is re-hashed (a new algorithm, or a mode switch).
    A known path missing from ``disk`` is removed unless ``unseen(path)`` says it may still be
    there (its folder could not be listed). Content-based recognition (same digest under new
    facts or a new path, e.g. a touch, a copy or a move across filesystems) needs file reads
    and is done by the caller on ``to_verify`` and ``to_hash``.
    """
    result = Plan()
    new_paths: list[str] = []
    for path, facts in disk.items():
        record = known.get(path)
        if record is None:
            new_paths.append(path)
        elif record.size != facts[0]:
            result.to_hash.append(path)
        elif not _same_facts(record, facts):
            usable = record.status == "hashed" and record.digest is not None
            if usable and record.id in complete and record.decode == decode:
                result.to_verify.append(path)
            else:
                result.to_hash.append(path)  # an unreadable file changed: try it again
        elif record.status == "unreadable":
            result.unreadable += 1
        elif record.id in complete and record.decode == decode:
            result.unchanged += 1
            if record.ctime_ns is None:
                result.backfill.append(path)
        else:
            result.to_hash.append(path)
    gone: dict[str, FileRecord] = {}
    for path, record in known.items():
        if path in disk:
            continue
        if unseen(path):
            result.kept.append(path)
        else:
            gone[path] = record
    by_identity = {(r.inode, r.device, r.size, r.mtime_ns): p for p, r in gone.items()}
    for path in new_paths:
        size, mtime_ns, inode, device = disk[path][:4]
        old = by_identity.pop((inode, device, size, mtime_ns), None)
        if old is not None and gone[old].status == "hashed":
            result.moved.append((old, path))
            del gone[old]
        else:
            result.to_hash.append(path)
    result.removed = sorted(gone)
    result.to_hash.sort()
    result.to_verify.sort()
    result.kept.sort()
    return result


def _same_facts(record: FileRecord, facts: Facts) -> bool:
    """Same mtime, inode and device, and the same ctime where the store has one: a file
    replaced by another of the same size and mtime (``cp -p``, a restore from backup) has a
    new inode, or at least a new ctime."""
    if (record.mtime_ns, record.inode, record.device) != tuple(facts[1:4]):
        return False
    return record.ctime_ns is None or len(facts) < 5 or record.ctime_ns == facts[4]
