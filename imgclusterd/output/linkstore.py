"""One symlink inode per distinct (name, target), hard-linked into every output folder using it.

Why: the output layout repeats each photo's link in one folder per threshold (~440 folders for
the 14 default algorithms), and every generation's changed folders repeat them again. Made with
``symlink()``, each entry is a new inode -- slow to allocate (8,000-60,000 per second measured
on ext4 here) and millions of inodes at tens of thousands of photos (20,000 photos filled this
machine's 16 M inodes). A hard link to an existing symlink inode is a directory entry only:
~200,000 per second here, and the inode count stays at about one per photo per algorithm.
Readers cannot tell the difference: ``lstat`` says symlink, ``readlink`` gives the target.

The store is ``links/<xx>/<key>`` inside the output area, ``key`` a hash of name and target.
An entry nobody links to any more (link count 1) is garbage; :meth:`LinkStore.sweep` removes
those, under the output lock, so no folder under construction can lose one it is about to use.

Where hard links are refused (a filesystem without them, or an inode at its link limit), the
entry is made as a plain symlink instead: slower, never wrong.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
from pathlib import Path

__all__ = ["LinkStore"]

log = logging.getLogger(__name__)

# Hard links unsupported or not allowed here: stop trying for this store.
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EACCES}


class LinkStore:
    """Places symlink entries into directories, sharing inodes through ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hard_links = True  # False once the filesystem refused one: plain symlinks then
        self.added = 0  # canonical entries created by this process (what sweep() may reclaim)
        self._fd: int | None = None

    def open(self) -> None:
        self.root.mkdir(exist_ok=True)
        if self._fd is None:
            self._fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def place(self, dir_fd: int, name: str, target: str) -> None:
        """Create entry ``name`` -> ``target`` in the directory ``dir_fd``."""
        if not self.hard_links or self._fd is None:
            os.symlink(target, name, dir_fd=dir_fd)
            return
        key = hashlib.sha256(os.fsencode(name) + b"\0" + os.fsencode(target)).hexdigest()[:32]
        canonical = f"{key[:2]}/{key}"
        for attempt in range(2):
            try:
                os.link(canonical, name, src_dir_fd=self._fd, dst_dir_fd=dir_fd,
                        follow_symlinks=False)  # fmt: skip
                return
            except FileNotFoundError:
                if attempt:
                    raise
                self._create(key[:2], canonical, target)  # first use of this (name, target)
            except OSError as exc:
                if exc.errno == errno.EMLINK:  # this inode is at its link limit
                    os.symlink(target, name, dir_fd=dir_fd)
                    return
                if exc.errno in _NO_HARD_LINKS:
                    log.info("no hard links in %s (%s): writing plain symlinks", self.root, exc)
                    self.hard_links = False
                    os.symlink(target, name, dir_fd=dir_fd)
                    return
                raise

    def _create(self, shard: str, canonical: str, target: str) -> None:
        # Two threads may place the same new (name, target) at once (a delta write stages
        # its patches in two, see ``staging``): the one that loses finds the entry made,
        # and an entry of this key is this name and target.
        assert self._fd is not None
        try:
            try:
                os.symlink(target, canonical, dir_fd=self._fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(shard, dir_fd=self._fd)
                os.symlink(target, canonical, dir_fd=self._fd)
        except FileExistsError:
            return
        self.added += 1

    def sweep(self) -> int:
        """Remove the entries no folder links to any more; return how many. Hold the lock."""
        if not self.root.is_dir():
            return 0
        removed = 0
        with os.scandir(self.root) as shards:
            for shard in shards:
                if not shard.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(shard.path) as entries:
                    for entry in entries:
                        try:
                            if entry.stat(follow_symlinks=False).st_nlink == 1:
                                os.unlink(entry.path)
                                removed += 1
                        except FileNotFoundError:
                            pass
        self.added = 0
        return removed
