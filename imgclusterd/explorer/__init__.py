"""The explorer page: ``index.html`` at the root of every output generation.

A person opens it straight from disk (``file://``, offline, no server): per algorithm, the sweep
chart, a threshold slider and the clusters at that threshold as rows of thumbnails. The browser
computes the clusters itself from each algorithm's minimum spanning forest (single linkage: the
components at threshold ``t`` are those of the forest's edges ``<= t``, see :mod:`cluster`), so
the data grows linearly with the library and moving the slider needs no other file.

:func:`page_files` is pure: photos and forests in, file name -> bytes out (the static page,
style and script, which ship as package data, plus one generated data file). The output writer
puts them into the generation's root, so the page is swapped together with the tree it shows.

Data file layout (``explorer-data.js``, a ``<script>``: ``fetch`` of a ``file://`` URL is refused
by browsers, a script is not; it holds one ``JSON.parse('...')``): one shared photo list, sorted
by relative path (the rank the tree's cluster numbering breaks ties by), and per algorithm the
forest's edges re-indexed into that list, as base64 of little-endian
``uint32 u[E] | uint32 v[E] | uint16 w[E]`` sorted by weight (about 13 bytes per photo per
algorithm).

Names are data, never markup: the data file is JSON with ``<``, ``>``, ``&`` and every
non-ASCII character escaped, and the page sets text with ``textContent`` only. Undecodable
bytes in a file name are shown as U+FFFD; links use the exact bytes, percent-encoded.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import itertools
import json
import logging
import operator
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol
from urllib.parse import quote

import numpy as np

__all__ = [
    "DATA_FILE",
    "PAGE_FILES",
    "PAGE_VERSION",
    "EdgeList",
    "ExplorerAlgorithm",
    "ExplorerPhoto",
    "PageMemo",
    "page_files",
]

log = logging.getLogger(__name__)

DATA_FILE = "explorer-data.js"
#: The static files, shipped as package data next to this module.
PAGE_FILES = ("index.html", "explorer.css", "explorer.js")
_DATA_VERSION = 1
# Characters quote() leaves as they are (with safe="/"); the page derives a photo's URL from
# its name when the name holds only these, so the data carries a URL only for the other names.
_URL_PLAIN = re.compile(r"[A-Za-z0-9_.~/-]*")


class EdgeList(Protocol):
    """A spanning forest's edges (``cluster.Forest`` is one): vertex ends and weights."""

    @property
    def u(self) -> np.ndarray: ...

    @property
    def v(self) -> np.ndarray: ...

    @property
    def w(self) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class ExplorerPhoto:
    """One photo as the page shows it.

    ``path``: relative to the images folder (shown, filtered on, and the tie-break rank of the
    tree's numbering); ``target``: the original's absolute path (what a thumbnail links to);
    ``thumbnail``: absolute path of an existing thumbnail, or None (a placeholder is shown).
    Slotted: the daemon keeps one per photo between refreshes, and the instance dict cost
    ~290 bytes more each (~29 MB at 100,000 photos).
    """

    path: str
    target: str
    thumbnail: str | None = None
    flat: bool = False


@dataclass(frozen=True)
class ExplorerAlgorithm:
    """One algorithm: its sweep and forest. Forest vertex ``i`` is ``photos[vertices[i]]``."""

    name: str
    thresholds: Sequence[int]
    forest: EdgeList
    vertices: Sequence[int] | np.ndarray


def _page_version() -> str:
    digest = hashlib.sha256()
    for name in PAGE_FILES:
        digest.update(_static(name))
    return digest.hexdigest()[:12]


class PageMemo:
    """What :func:`page_files` worked out for the last page, kept for the next one: the
    photos in path order and, beside each, its entry (display name, URL, thumbnail URL).

    The daemon writes the page on every refresh. Quoting and relativising every photo's paths
    again cost ~1 s at 20,000 photos for one new photo; sorting every photo by path and going
    through them all in Python again, ~0.03 s (~0.15 s at 100,000). Kept, a +1 is one
    insertion, and what is still done for every photo is done by numpy or one ``join``.
    Photos are told apart by identity (the pipeline keeps one object per photo between
    refreshes; hashing the frozen dataclass was ~15 ms at 20,000 photos): each is kept here,
    so its id is not reused meanwhile, and an equal photo in a new object is worked out again.
    """

    def __init__(self) -> None:
        self.reset()
        self.afresh = 0  # pages made by sorting every photo (the others: by insertions)

    def reset(self, roots: tuple[str, str | None] | None = None) -> None:
        """Forget the last page (its entries are relative to ``roots``)."""
        self.roots = roots
        self.ranked: list[ExplorerPhoto] = []  # the photos, by path
        # Their paths are unique: the order is the paths' alone, and a new photo can be put
        # in its place (else the order of equal paths is the input's: sort afresh).
        self.ordered = False
        # Each one's name, URL (None: the page derives it from the name) and thumbnail URL,
        # as escaped JSON text (see data_script).
        self.names: list[str] = []
        self.urls: list[str | None] = []
        self.thumbs: list[str] = []
        self.thumbnails: list[str] = []  # every photo's thumbnail path there is, sorted


def page_files(
    photos: Sequence[ExplorerPhoto],
    algorithms: Sequence[ExplorerAlgorithm],
    memo: PageMemo | None = None,
    root: str | None = None,
) -> dict[str, bytes]:
    """The explorer's files for a generation's root: file name -> content. ``memo``: kept by
    a caller that writes the page again and again (same result, less work). ``root``: the
    images folder, when every photo's ``target`` is ``root/path`` (else worked out)."""
    files = {name: _static(name) for name in PAGE_FILES}
    files[DATA_FILE] = data_script(photos, algorithms, memo, root)
    return files


def data_script(
    photos: Sequence[ExplorerPhoto],
    algorithms: Sequence[ExplorerAlgorithm],
    memo: PageMemo | None = None,
    root: str | None = None,
) -> bytes:
    """The generated data file (see the module doc for its layout)."""
    memo = memo if memo is not None else PageMemo()
    photo_root = root if root is not None else _photo_root(photos)
    rank = _update(photos, memo, photo_root)
    if rank is None:
        rank = _make_afresh(photos, memo, photo_root)
    ranked = memo.ranked
    thumb_root = memo.roots[1] if memo.roots else None
    # The entries are kept as escaped JSON text (see _escape: it maps single characters, so
    # escaping the parts is escaping the whole) and joined: dumping and escaping the
    # ~20,000-entry lists again was most of the page's cost of a +1.
    # (compress and map: the passes over every photo left run in C)
    with_url = itertools.compress(range(len(ranked)), map(operator.is_not, memo.urls, _NONES))
    urls = [f'"{i}":{memo.urls[i]}' for i in with_url]
    head = {"version": _DATA_VERSION, "photoRoot": _file_url(photo_root) if ranked else ""}
    parts = [_escape(json.dumps(head, ensure_ascii=True, separators=(",", ":"))[:-1])]
    parts += [',"names":[', ",".join(memo.names), '],"urls":{', ",".join(urls), "}"]
    if thumb_root is not None:
        parts += [',"thumbRoot":', _js(_file_url(thumb_root))]
        parts += [',"thumbs":[', ",".join(memo.thumbs), "]"]
    flat = list(itertools.compress(range(len(ranked)), map(_FLAT, ranked)))
    if flat:
        parts.append(',"flat":' + json.dumps(flat, separators=(",", ":")))
    # The algorithms: their edges and members (base64, ~85% of the file) go in as they are
    # -- JSON strings of themselves, and nothing in them to escape -- instead of being copied
    # through five replace passes.
    parts.append(',"algorithms":[')
    for k, algorithm in enumerate(algorithms):
        fields = _algorithm(algorithm, rank, len(photos))
        blobs = [(key, fields.pop(key)) for key in ("edges", "members") if key in fields]
        if k:
            parts.append(",")
        parts.append(_escape(json.dumps(fields, ensure_ascii=True, separators=(",", ":"))[:-1]))
        parts += [f',"{key}":"{blob}"' for key, blob in blobs]
        parts.append("}")
    parts.append("]}")
    return (
        "// imgclusterd explorer data, generated with the output tree beside it.\n"
        "window.IMGCLUSTERD_DATA = JSON.parse('" + "".join(parts) + "');\n"
    ).encode("ascii")


_NONES = itertools.repeat(None)
_FLAT = operator.attrgetter("flat")
_PATH = operator.attrgetter("path")

#: A photo's entry: name, URL (None: the page derives it from the name) and thumbnail URL,
#: each as escaped JSON text.
_Entry = tuple[str, str | None, str]


def _entry(photo: ExplorerPhoto, photo_root: str, thumb_root: str | None) -> _Entry:
    name = _display(photo.path)
    rel = _url_path(_relative(photo.target, photo_root))
    url = rel if rel != name or not _URL_PLAIN.fullmatch(name) else None
    thumb = (
        "" if photo.thumbnail is None or thumb_root is None
        else _url_path(_relative(photo.thumbnail, thumb_root))
    )  # fmt: skip
    return (_js(name), None if url is None else _js(url), _js(thumb))


def _make_afresh(
    photos: Sequence[ExplorerPhoto], memo: PageMemo, photo_root: str
) -> np.ndarray:
    """``memo`` made from ``photos``: sorted by path, entries reused where the last page had
    the same photo object and the same roots. Returns each photo's place in path order."""
    thumbnails = sorted(p.thumbnail for p in photos if p.thumbnail is not None)
    roots = (photo_root, _common_folder(thumbnails[:1] + thumbnails[-1:]))
    known: dict[int, _Entry] = {}
    if memo.roots == roots:
        entries = zip(memo.names, memo.urls, memo.thumbs, strict=True)
        known = {id(photo): entry for photo, entry in zip(memo.ranked, entries, strict=True)}
    memo.reset(roots)
    memo.afresh += 1
    order = sorted(range(len(photos)), key=lambda i: photos[i].path)  # (stable: the rank)
    rank = np.empty(len(photos), dtype=np.int64)
    rank[order] = np.arange(len(photos))
    ranked = [photos[i] for i in order]
    for photo in ranked:
        entry = known.get(id(photo)) or _entry(photo, photo_root, roots[1])
        memo.names.append(entry[0])
        memo.urls.append(entry[1])
        memo.thumbs.append(entry[2])
    memo.ranked, memo.thumbnails = ranked, thumbnails
    memo.ordered = all(a.path != b.path for a, b in itertools.pairwise(ranked))
    return rank


def _update(
    photos: Sequence[ExplorerPhoto], memo: PageMemo, photo_root: str
) -> np.ndarray | None:
    """Bring ``memo`` to ``photos`` by taking out the photos that went and putting in the new
    ones in their places (a +1: one insertion); each photo's place in path order. None when
    it cannot (nothing kept, many changes, a photo or a path twice, another thumbnail
    folder): make it afresh then."""
    if not memo.ordered or not memo.ranked or memo.roots is None or memo.roots[0] != photo_root:
        return None
    identities = np.fromiter(map(id, photos), np.uint64, len(photos))
    kept, by_identity = _by_identity(memo.ranked)
    at = np.minimum(np.searchsorted(kept, identities), len(kept) - 1)
    known = kept[at] == identities
    stays = np.zeros(len(kept), dtype=bool)
    stays[by_identity[at[known]]] = True
    new = [photos[i] for i in np.flatnonzero(~known).tolist()]
    gone = np.flatnonzero(~stays).tolist()
    if (
        int(stays.sum()) != int(known.sum())  # a kept photo given twice
        or len({id(photo) for photo in new}) != len(new)  # a new one given twice
        or len(new) + len(gone) > max(64, len(photos) // 64)  # many: sorting is cheaper
    ):
        return None
    thumbnails = list(memo.thumbnails)
    for i in gone:
        if (thumbnail := memo.ranked[i].thumbnail) is not None:
            del thumbnails[bisect.bisect_left(thumbnails, thumbnail)]
    for photo in new:
        if photo.thumbnail is not None:
            bisect.insort(thumbnails, photo.thumbnail)
    if _common_folder(thumbnails[:1] + thumbnails[-1:]) != memo.roots[1]:
        return None  # every thumbnail URL changes
    for i in reversed(gone):
        for column in (memo.ranked, memo.names, memo.urls, memo.thumbs):
            del column[i]
    for photo in sorted(new, key=_PATH):
        place = bisect.bisect_left(memo.ranked, photo.path, key=_PATH)
        if place < len(memo.ranked) and memo.ranked[place].path == photo.path:
            return None  # a path twice: the order of equals is the input's
        name, url, thumb = _entry(photo, photo_root, memo.roots[1])
        memo.ranked.insert(place, photo)
        memo.names.insert(place, name)
        memo.urls.insert(place, url)
        memo.thumbs.insert(place, thumb)
    memo.thumbnails = thumbnails
    # Each photo's place in path order, by identity (numpy: no pass in Python).
    kept, by_identity = _by_identity(memo.ranked)
    return by_identity[np.searchsorted(kept, identities)].astype(np.int64)


def _by_identity(photos: Sequence[ExplorerPhoto]) -> tuple[np.ndarray, np.ndarray]:
    """The photos' identities sorted, and the order that sorts them."""
    identities = np.fromiter(map(id, photos), np.uint64, len(photos))
    order = np.argsort(identities)
    return identities[order], order


def _js(value: str) -> str:
    """``value`` as escaped JSON text, a part of the data file's string literal."""
    return _escape(json.dumps(value, ensure_ascii=True))


def _escape(text: str) -> str:
    """JSON text made safe inside a script and inside the page's one-quoted string literal.

    JSON inside a script: never let a name close a tag or open a comment, even though this
    is a file of its own (a page that inlines it later must stay safe too). JSON.parse of
    one string literal, not an object literal: V8 parses megabytes of JSON several times
    faster than the same data as JavaScript (measured: 0.16 s against 1.1 s for 20,000
    photos). The text is ASCII without line breaks; escape \\ and ' for the quotes.
    """
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _algorithm(algorithm: ExplorerAlgorithm, rank: np.ndarray, n: int) -> dict[str, Any]:
    vertices = np.asarray(algorithm.vertices, dtype=np.int64)
    forest = algorithm.forest
    to_photo = rank[vertices] if len(vertices) else np.empty(0, np.int64)
    u = to_photo[np.asarray(forest.u, dtype=np.int64)].astype("<u4")
    v = to_photo[np.asarray(forest.v, dtype=np.int64)].astype("<u4")
    w = np.asarray(forest.w)
    order = np.argsort(w, kind="stable")  # the page takes a prefix per threshold
    blob = u[order].tobytes() + v[order].tobytes() + w[order].astype("<u2").tobytes()
    entry: dict[str, Any] = {
        "name": algorithm.name,
        "thresholds": [int(t) for t in algorithm.thresholds],
        "edgeCount": len(u),
        "edges": base64.b64encode(blob).decode("ascii"),
    }
    if len(vertices) != n:  # the algorithm knows only some of the photos
        present = np.sort(to_photo).astype("<u4")
        entry["members"] = base64.b64encode(present.tobytes()).decode("ascii")
    return entry


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


def _display(path: str) -> str:
    """A path as text: undecodable bytes (surrogate escapes) become U+FFFD."""
    return os.fsencode(path).decode("utf-8", "replace")


def _url_path(path: str) -> str:
    """Percent-encoded bytes of a relative path, ``/`` kept."""
    if _URL_PLAIN.fullmatch(path):  # most names: nothing to encode (quote costs ~10 us each)
        return path
    return quote(os.fsencode(path), safe="/")


def _relative(path: str, root: str) -> str:
    """``path`` relative to ``root``, one of its folders (string slicing: relpath normalises
    both paths each time, half the cost of the data file at 20,000 photos)."""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, root)


def _file_url(folder: str) -> str:
    return "file://" + quote(os.fsencode(folder.rstrip("/") + "/"), safe="/")


def _photo_root(photos: Sequence[ExplorerPhoto]) -> str:
    """The folder the photos' relative paths start from (the images folder, normally)."""
    bases = set()
    for photo in photos:
        tail = os.sep + photo.path
        bases.add(photo.target[: -len(tail)] if photo.target.endswith(tail) else None)
    if len(bases) == 1 and None not in bases:
        return str(bases.pop())
    return _common_folder([p.target for p in photos]) or "/"


def _common_folder(paths: list[str]) -> str | None:
    """The deepest folder holding every one of these absolute paths."""
    if not paths:
        return None
    # Every string between the smallest and the largest shares their common prefix, so two
    # paths decide it: O(N) comparisons instead of splitting all 20,000 paths.
    lo, hi = min(paths), max(paths)
    return os.path.dirname(lo) if lo == hi else os.path.commonpath([lo, hi])


#: Changes with the page's own files: an output written by an older page is rewritten.
PAGE_VERSION = _page_version()
