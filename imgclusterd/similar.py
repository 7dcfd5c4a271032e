"""``imgclusterd similar PHOTO``: the indexed photos nearest to a photo by Hamming distance.

PHOTO may be anywhere (inside the images folder or not). It is hashed on the fly in this
process exactly as the workers hash the folder's photos (same decode mode, EXIF rule, limits
and algorithm set, which decides fast mode's decode scale), and nothing is stored: no row, no
thumbnail. The store is read read-only, so this works beside a running daemon.

JSON (``--json``), version 1; keys may be added, none removed or renamed:

    {"version": 1, "photo": str, "algorithm": str, "hash": str, "digest": str, "flat": bool,
     "max_distance": int, "indexed": int,
     "matches": [{"path": str, "distance": int, "hash": str, "digest": str,
                  "identical": bool, "flat": bool}, ...]}      # nearest first, then by path

``identical`` is true when the indexed file has the same content (sha256) as PHOTO; ``flat``
marks a near-constant image (blank, one colour), whose hashes match every other flat image.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .algorithms import hash_hex
from .cluster import distance_matrix_rows
from .config import Config
from .errors import PhotoError, UsageError
from .export import open_store, pick_algorithm, read_snapshot
from .hashing import HashResult, hash_file
from .pipeline import hash_plan

__all__ = ["Match", "Similar", "find_similar", "render", "to_json"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Match:
    path: str  # absolute
    distance: int
    hash: str
    digest: str
    identical: bool
    flat: bool = False


@dataclass(frozen=True)
class Similar:
    photo: str
    algorithm: str
    hash: str
    digest: str
    flat: bool
    max_distance: int
    indexed: int  # photos compared against
    matches: list[Match]


def find_similar(
    config: Config,
    photo: Path,
    *,
    algorithm: str | None = None,
    max_distance: int | None = None,
    limit: int | None = None,
) -> Similar:
    """The indexed photos within ``max_distance`` of ``photo`` (default: the algorithm's
    largest threshold), nearest first, at most ``limit`` (None: all)."""
    chosen = pick_algorithm(config.algorithm_set, algorithm)
    if max_distance is None:
        max_distance = max(chosen.thresholds, default=0)
    if max_distance < 0:
        raise UsageError(f"--max-distance must be 0 or more, not {max_distance}")
    if limit is not None and limit < 0:
        raise UsageError(f"--limit must be 0 or more, not {limit}")
    store = open_store(config)  # before hashing: no store means no answer anyway
    try:
        snapshot = read_snapshot(store, [chosen], config.decode)
    finally:
        store.close()
    query = _hash_photo(photo, config)
    bits = query.hashes[chosen.name]
    rows = snapshot.rows[chosen.name]
    matches: list[Match] = []
    if rows:
        nbytes = len(bits)
        packed = np.frombuffer(b"".join(r[2] for r in rows) + bits, dtype=np.uint8)
        distances = distance_matrix_rows(
            packed.reshape(len(rows) + 1, nbytes), np.array([len(rows)])
        )[0]
        images = os.fspath(config.images)
        for i in np.flatnonzero(distances[: len(rows)] <= max_distance):
            file_id, path, their_bits = rows[i]
            digest = snapshot.digests.get(file_id)
            matches.append(
                Match(
                    path=os.path.join(images, path),
                    distance=int(distances[i]),
                    hash=hash_hex(their_bits, chosen.bits),
                    digest=(digest or b"").hex(),
                    identical=digest == query.digest,
                    flat=file_id in snapshot.flat,
                )
            )
        matches.sort(key=lambda m: (m.distance, m.path))
    if limit:
        matches = matches[:limit]
    return Similar(
        photo=os.fspath(photo.absolute()),
        algorithm=chosen.name,
        hash=hash_hex(bits, chosen.bits),
        digest=(query.digest or b"").hex(),
        flat=query.flat,
        max_distance=max_distance,
        indexed=len(rows),
        matches=matches,
    )


def _hash_photo(photo: Path, config: Config) -> HashResult:
    if not os.path.lexists(photo):
        raise PhotoError(f"{photo}: no such file")
    result = hash_file(os.fspath(photo), hash_plan(config, thumbnails=False))
    if result.unstable:
        raise PhotoError(f"{photo}: changed while it was being read; try again")
    if result.error is not None:
        reason = "no such file (or a broken link)" if result.error == "vanished" else result.error
        raise PhotoError(f"{photo}: cannot hash it: {reason}")
    return result


def render(result: Similar) -> str:
    """Human form: a headline, then ``distance  path`` lines."""
    flat = " (a flat image: it matches other flat images whatever they show)"
    lines = [
        f"{result.photo}: {result.algorithm} {result.hash}; {len(result.matches)} of "
        f"{result.indexed} indexed photos within distance {result.max_distance}"
        f"{flat if result.flat else ''}"
    ]
    for m in result.matches:
        notes = [n for n, on in (("identical file", m.identical), ("flat", m.flat)) if on]
        lines.append(f"{m.distance:4d}  {m.path}" + (f"  ({', '.join(notes)})" if notes else ""))
    return "\n".join(lines)


def to_json(result: Similar) -> str:
    data: dict[str, Any] = {"version": FORMAT_VERSION, **asdict(result)}
    return json.dumps(data, indent=2)
