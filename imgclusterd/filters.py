"""Which names in the images folder are photos to index, shared by the walker and the watcher.

Temporary names are skipped so a photo being copied is seen once, under its final name: browsers
and copy tools write ``*.part``/``*.crdownload``/``*.tmp`` and rename at the end, and rsync
writes ``.name.XXXXXX`` (a dotfile). Dotfiles and dot-folders are private by convention.
"""

from __future__ import annotations

__all__ = ["TEMPORARY_SUFFIXES", "is_candidate", "is_temporary"]

TEMPORARY_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".swp")


def is_temporary(name: str) -> bool:
    """A name that is hidden or still being written (final name comes by rename)."""
    lowered = name.lower()
    return name.startswith((".", "~$")) or lowered.endswith(TEMPORARY_SUFFIXES)


def is_candidate(name: str, extensions: tuple[str, ...] | list[str]) -> bool:
    """A file name that should be hashed: a configured extension and not temporary."""
    if is_temporary(name):
        return False
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in extensions
