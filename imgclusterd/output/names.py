"""Names in the output tree: link names, unique names within a folder, folder names.

What readers see (the compatibility contract with the one-shot script)::

    OUTPUT/<algo>/thr_<TTT>_unclustered_<U>/<CCC>_<size>/<stem>_<hexhash><ext>  -> /abs/image
    OUTPUT/<algo>/thr_<TTT>_unclustered_<U>/unclustered_<U>/<stem>_<hexhash><ext> -> /abs/image

Link names inside one folder are unique: links are grouped by name; within a group, sorted by
target path, the first keeps ``<stem>_<hexhash><ext>`` and the k-th (k >= 2) becomes
``<stem>_<hexhash>_<k><ext>`` (skipping any name already taken). Every name is capped at 255
bytes by shortening the stem, keeping the hash and extension.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

__all__ = [
    "CLUSTER_RE",
    "NAME_MAX",
    "THRESHOLD_RE",
    "Link",
    "check_name",
    "cluster_name",
    "folder_links",
    "forget_checked",
    "link_name",
    "threshold_name",
    "unclustered_name",
]

log = logging.getLogger(__name__)

NAME_MAX = 255

#: ``thr_<TTT>_unclustered_<U>``: group 1 is the threshold.
THRESHOLD_RE = re.compile(r"thr_(-?\d+)_unclustered_\d+\Z")
#: ``<CCC>_<size>``: group 1 is the cluster number.
CLUSTER_RE = re.compile(r"(\d+)_\d+\Z")


class Link(NamedTuple):
    """One image in one folder: ``name`` (``<stem>_<hexhash><ext>``) -> absolute ``target``.

    A named tuple rather than a dataclass: folders are compared and hashed as tuples of
    thousands of links on every refresh, and tuple hashing stays in C.
    """

    name: str
    target: str


def threshold_name(threshold: int, unclustered: int) -> str:
    """``thr_<TTT>_unclustered_<U>``: an algorithm folder's entry for one threshold."""
    return f"thr_{str(threshold).zfill(3)}_unclustered_{unclustered}"


def cluster_name(number: int, size: int) -> str:
    """``<CCC>_<size>``: cluster ``number`` (from 1, largest first) of a threshold folder."""
    return f"{str(number).zfill(3)}_{size}"


def unclustered_name(unclustered: int) -> str:
    """``unclustered_<U>``: a threshold folder's folder of images linked to nobody."""
    return f"unclustered_{unclustered}"


def _truncate(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose file-system encoding fits ``limit`` bytes."""
    if len(os.fsencode(text)) <= limit:
        return text
    used = 0
    for i, char in enumerate(text):
        used += len(os.fsencode(char))
        if used > limit:
            return text[:i]
    return text


def _cap(stem: str, tail: str) -> str:
    """``stem + tail`` in at most 255 bytes: shorten the stem, and the tail only if it must."""
    name = stem + tail
    if len(os.fsencode(name)) <= NAME_MAX:
        return name
    budget = NAME_MAX - len(os.fsencode(tail))
    if budget < 0:  # an absurd extension: keep what fits, from the start of the tail
        return _truncate(tail, NAME_MAX)
    return _truncate(stem, budget) + tail


def link_name(stem: str, hexhash: str, ext: str) -> str:
    """The contract's link name ``<stem>_<hexhash><ext>``, capped at 255 bytes (stem shortened)."""
    return _cap(stem, f"_{hexhash}{ext}")


def _numbered(name: str, k: int) -> str:
    """``<stem>_<hexhash><ext>`` -> ``<stem>_<hexhash>_<k><ext>`` (still within 255 bytes)."""
    base, ext = os.path.splitext(name)
    stem, sep, hexhash = base.rpartition("_")
    if not sep:
        stem, hexhash = "", base
        return _cap(hexhash, f"_{k}{ext}")
    return _cap(stem, f"_{hexhash}_{k}{ext}")


def check_name(name: str, what: str) -> None:
    """Raise ValueError unless ``name`` is one valid file name (no ``/``, at most 255 bytes)."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"{what} {name!r} is not a valid file name")
    if len(os.fsencode(name)) > NAME_MAX:
        raise ValueError(f"{what} {name!r} is longer than {NAME_MAX} bytes")


def folder_links(links: Sequence[Link]) -> dict[str, str]:
    """The entries of one folder, name -> target, with names made unique (see module doc)."""
    entries = dict(links)
    _validate(entries)
    if len(entries) == len(links):
        return entries
    taken = set(entries)
    entries = {}
    for link in sorted(links):  # by name, then target
        name = link.name
        if name in entries:
            k = 2
            while (name := _numbered(link.name, k)) in taken:
                k += 1
            taken.add(name)
        entries[name] = link.target
    return entries


# Names and targets already found valid: a refresh re-checks only what is new (set difference
# in C), not the ~N x thresholds entries of every changed folder. Cleared when large.
_CHECKED_NAMES: set[str] = set()
_CHECKED_TARGETS: set[str] = set()
_CHECKED_MAX = 2_000_000


def forget_checked() -> None:
    """Forget the names and targets found valid. A whole-tree write calls it after each
    algorithm: that algorithm's link names never come again (they carry its hash), and kept
    they were the biggest thing left after a write (~1.4 million names at 100,000 photos)."""
    _CHECKED_NAMES.clear()
    _CHECKED_TARGETS.clear()


def _validate(entries: Mapping[str, str]) -> None:
    names = entries.keys() - _CHECKED_NAMES
    targets = set(entries.values()) - _CHECKED_TARGETS
    for name in names:
        check_name(name, "link name")
    for target in targets:
        if not os.path.isabs(target) or "\0" in target:
            raise ValueError(f"link target {target!r} is not an absolute path")
    if len(_CHECKED_NAMES) + len(names) > _CHECKED_MAX:
        _CHECKED_NAMES.clear()
        _CHECKED_TARGETS.clear()
    _CHECKED_NAMES.update(names)
    _CHECKED_TARGETS.update(targets)
