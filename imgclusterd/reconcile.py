"""Reconcile: compare what is on disk with what the store knows, and say what to do.

The walk is cheap (``os.scandir`` + one ``stat`` per file) and runs at start-up, after every
burst of events and periodically, because file events can be lost (inotify queue overflows are
dropped silently by watchdog); the walk is the ground truth. Planning is pure: given the disk
listing and the store's records it returns the work (hash, move, forget), never touching either.
"""

from __future__ import annotations

import logging
import os
import stat as stat_module
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .filters import is_candidate, is_temporary
from .store import FileRecord

__all__ = ["Facts", "Listing", "Plan", "plan", "walk"]

log = logging.getLogger(__name__)

#: (size, mtime_ns, inode, device) as the store keeps them.
Facts = tuple[int, int, int, int]


def facts_of(st: os.stat_result) -> Facts:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


@dataclass
class Listing:
    """The photos found under the images folder, by path relative to it."""

    files: dict[str, Facts] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why) worth reporting


def walk(
    root: Path,
    extensions: Iterable[str],
    *,
    follow_symlinks: bool = False,
    exclude: Iterable[Path] = (),
) -> Listing:
    """List candidate photos under ``root`` recursively.

    Symlinks are not followed unless asked; when they are, a directory reached twice (a loop,
    or two links to one folder) is walked once. ``exclude`` holds folders never to enter (our
    own output or state when a user places them inside the images folder).
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
            continue
        key = (dir_stat.st_dev, dir_stat.st_ino)
        if prefix and key in seen_dirs:
            continue
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            listing.skipped.append((prefix or ".", f"cannot list folder: {exc.strerror}"))
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
                listing.skipped.append((rel, f"cannot stat: {exc.strerror or exc}"))
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


@dataclass
class Plan:
    """What one reconcile decided. Paths are relative to the images folder."""

    to_hash: list[str] = field(default_factory=list)  # new, changed, or missing a hash
    moved: list[tuple[str, str]] = field(default_factory=list)  # (old, new): same inode/facts
    removed: list[str] = field(default_factory=list)  # gone from disk
    unchanged: int = 0
    unreadable: int = 0  # known unreadable and unchanged: not retried

    @property
    def changes(self) -> int:
        return len(self.to_hash) + len(self.moved) + len(self.removed)


def plan(
    disk: Mapping[str, Facts],
    known: Mapping[str, FileRecord],
    complete: set[int],
    decode: str,
) -> Plan:
    """Decide per path: unchanged, hash, moved (recognised by inode + size + mtime), removed.

    ``complete`` holds the ids of records that have every configured hash in ``decode`` mode;
    anything else with unchanged facts is re-hashed (a new algorithm, or a mode switch).
    Content-based recognition (same digest under a new inode, e.g. a copy or a move across
    filesystems) needs file reads and is done by the caller on ``to_hash``.
    """
    result = Plan()
    new_paths: list[str] = []
    for path, facts in disk.items():
        record = known.get(path)
        if record is None:
            new_paths.append(path)
        elif (record.size, record.mtime_ns) != facts[:2]:
            result.to_hash.append(path)
        elif record.status == "unreadable":
            result.unreadable += 1
        elif record.id in complete and record.decode == decode:
            result.unchanged += 1
        else:
            result.to_hash.append(path)
    gone = {path: record for path, record in known.items() if path not in disk}
    by_identity = {(r.inode, r.device, r.size, r.mtime_ns): p for p, r in gone.items()}
    for path in new_paths:
        size, mtime_ns, inode, device = disk[path]
        old = by_identity.pop((inode, device, size, mtime_ns), None)
        if old is not None and gone[old].status == "hashed":
            result.moved.append((old, path))
            del gone[old]
        else:
            result.to_hash.append(path)
    result.removed = sorted(gone)
    result.to_hash.sort()
    return result
