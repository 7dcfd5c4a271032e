"""``imgclusterd export``: the clusters of the store as JSON or CSV, for scripts.

Nothing is hashed and no output tree is needed: the store is read read-only inside one read
transaction (a consistent snapshot, also while the daemon commits), and every algorithm is
clustered by the cluster stage's own :class:`~imgclusterd.cluster.ClusterIndex` sweep with the
pipeline's ranking (the relative path). So cluster ``n`` at a threshold is the tree's folder
``<algorithm>/thr_<TTT>_unclustered_<U>/<nnn>_<size>``, with the same members.

JSON (``--format json``, the default), version 1; keys may be added, none removed or renamed:

    {
      "format": "imgclusterd-export", "version": 1,
      "images": str,            # the images folder (absolute)
      "decode": "exact" | "fast",
      "store_revision": int,    # changes whenever the store does
      "photos": int,            # hashed photos
      "algorithms": [
        {"name": "phash_8", "bits": 64, "max_threshold": 20, "step": 1,
         "thresholds": [
           {"threshold": 0, "folder": "thr_000_unclustered_40", "unclustered": 40,
            "clusters": [
              {"number": 1, "folder": "001_3", "size": 3,
               "members": [{"path": str, "hash": str, "digest": str, "flat": bool}, ...]},
              ...]},
           ...]},
        ...]
    }

``path`` is absolute (the target of the tree's link), ``hash`` the hex the link's name carries,
``digest`` the sha256 of the photo's content in hex (also the thumbnail's name), ``flat`` true
for a near-constant image (a blank page, one colour: its hashes carry almost no information, so
it clusters with every other flat image whatever it shows). Clusters come
largest first, then by smallest path; members by path. Photos in no cluster are only counted
(``unclustered``). The JSON is ASCII: a path that is not valid UTF-8 carries Python's
surrogate escapes (``\\udcXX``), from which ``os.fsencode`` gives the original bytes back.

CSV (``--format csv``): a header, then one row per cluster member:
``algorithm,threshold,cluster,size,path,hash,digest,flat`` (paths as raw bytes; flat 1 or 0).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, TextIO

from .algorithms import Algorithm, hash_hex
from .cluster import ClusterIndex
from .config import Config
from .errors import StoreError, UsageError
from .store import STORE_NAME, Store

__all__ = [
    "CSV_COLUMNS",
    "FORMAT_VERSION",
    "Member",
    "Snapshot",
    "ThresholdClusters",
    "export",
    "open_store",
    "pick_algorithm",
    "read_snapshot",
    "select",
    "threshold_clusters",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CSV_COLUMNS = ("algorithm", "threshold", "cluster", "size", "path", "hash", "digest", "flat")

Format = Literal["json", "csv"]


@dataclass(frozen=True)
class Member:
    """One photo of a cluster: absolute path, hash hex (as in the link name), digest hex, and
    whether it is flat (near-constant)."""

    path: str
    hash: str
    digest: str
    flat: bool = False

    def to_json(self) -> dict[str, str | bool]:
        return {"path": self.path, "hash": self.hash, "digest": self.digest, "flat": self.flat}


@dataclass(frozen=True)
class ThresholdClusters:
    """The clusters at one threshold, numbered as in the tree (index 0 is folder ``001``)."""

    threshold: int
    clusters: list[list[Member]]
    unclustered: int

    @property
    def folder(self) -> str:
        return f"thr_{str(self.threshold).zfill(3)}_unclustered_{self.unclustered}"


@dataclass(frozen=True)
class Snapshot:
    """What the store held at one instant: per algorithm (file id, relative path, bits)."""

    decode: str
    revision: int
    photos: int
    rows: dict[str, list[tuple[int, str, bytes]]]
    digests: dict[int, bytes | None]
    flat: frozenset[int] = frozenset()  # file ids of flat (near-constant) photos


def open_store(config: Config) -> Store:
    """The store of ``config.images``, read-only; a clear error when there is none yet."""
    path = config.store_dir / STORE_NAME
    if not path.exists():
        raise StoreError(
            f"no store for {config.images} yet (looked for {path}): run `imgclusterd scan` "
            "or start the daemon first (check --images / --state-dir)"
        )
    return Store.open(path, readonly=True)


def pick_algorithm(algorithms: Sequence[Algorithm], name: str | None) -> Algorithm:
    """The configured algorithm called ``name`` (None: the first one)."""
    if name is None:
        return algorithms[0]
    for algorithm in algorithms:
        if algorithm.name == name:
            return algorithm
    raise UsageError(
        f"unknown algorithm {name!r}; configured: {', '.join(a.name for a in algorithms)}"
    )


def select(
    algorithms: Sequence[Algorithm], name: str | None, threshold: int | None
) -> list[tuple[Algorithm, list[int]]]:
    """(algorithm, thresholds) to export. Without ``threshold``: every threshold of the sweep;
    with one but no ``name``: the algorithms whose sweep holds it."""
    chosen = [pick_algorithm(algorithms, name)] if name is not None else list(algorithms)
    if threshold is None:
        return [(a, list(a.thresholds)) for a in chosen]
    selected = [(a, [threshold]) for a in chosen if threshold in a.thresholds]
    if not selected:
        sweeps = "; ".join(f"{a.name}: {_sweep_text(a.thresholds)}" for a in chosen)
        where = f"{name}'s sweep" if name is not None else "any configured algorithm's sweep"
        raise UsageError(f"threshold {threshold} is not in {where} ({sweeps})")
    return selected


def read_snapshot(store: Store, algorithms: Sequence[Algorithm], decode: str) -> Snapshot:
    """Hashes of ``algorithms`` in ``decode`` mode and every digest, in one read transaction."""
    with store.snapshot():
        files = store.files()
        rows = {a.name: store.hashes(a.name, decode) for a in algorithms}
        revision = store.revision()
        flat_paths = store.flat_images()
    hashed = [record for record in files.values() if record.status == "hashed"]
    if hashed and not any(rows.values()):
        modes = sorted({r.decode for r in hashed if r.decode and r.decode != decode})
        if modes:
            raise UsageError(
                f"the store holds hashes made with decode = {' and '.join(modes)}, not "
                f"{decode!r}: pass --decode {modes[0]} (or run scan/the daemon to re-hash)"
            )
    return Snapshot(
        decode=decode,
        revision=revision,
        photos=len(hashed),
        rows=rows,
        digests={record.id: record.digest for record in files.values()},
        flat=frozenset(files[path].id for path in flat_paths if path in files),
    )


def threshold_clusters(
    algorithm: Algorithm, snapshot: Snapshot, thresholds: Sequence[int], images: str
) -> list[ThresholdClusters]:
    """The clusters of ``algorithm`` at each threshold, from the cluster stage's sweep."""
    rows = snapshot.rows[algorithm.name]
    index: ClusterIndex[int] = ClusterIndex(
        limit=max(thresholds, default=0), nbytes=(algorithm.bits + 7) // 8
    )
    index.update({file_id: bits for file_id, _, bits in rows})
    paths = {file_id: path for file_id, path, _ in rows}
    members = {
        file_id: Member(
            path=os.path.join(images, path),
            hash=hash_hex(bits, algorithm.bits),
            digest=(snapshot.digests.get(file_id) or b"").hex(),
            flat=file_id in snapshot.flat,
        )
        for file_id, path, bits in rows
    }
    # The pipeline's ranking (relative path): the tree's numbering and member order.
    return [
        ThresholdClusters(
            threshold=p.threshold,
            clusters=[[members[k] for k in cluster] for cluster in p.clusters],
            unclustered=len(p.unclustered),
        )
        for p in index.sweep(list(thresholds), rank_of=paths.__getitem__)
    ]


def export(
    config: Config,
    out: TextIO,
    *,
    algorithm: str | None = None,
    threshold: int | None = None,
    fmt: Format = "json",
) -> None:
    """Write the clusters of the configured algorithms to ``out`` (see the module doc)."""
    if fmt not in ("json", "csv"):
        raise UsageError(f"unknown format {fmt!r}; use json or csv")
    selection = select(config.algorithm_set, algorithm, threshold)
    with open_store(config) as store:
        snapshot = read_snapshot(store, [a for a, _ in selection], config.decode)
    images = os.fspath(config.images)
    parts = (
        (a, threshold_clusters(a, snapshot, thresholds, images)) for a, thresholds in selection
    )
    if fmt == "csv":
        _write_csv(out, parts)
    else:
        _write_json(out, snapshot, images, parts)


# -- writers -------------------------------------------------------------------------------


def _write_json(
    out: TextIO,
    snapshot: Snapshot,
    images: str,
    parts: Iterator[tuple[Algorithm, list[ThresholdClusters]]],
) -> None:
    """Streamed one threshold at a time: the whole document can be large (N x thresholds)."""
    head = {
        "format": "imgclusterd-export",
        "version": FORMAT_VERSION,
        "images": images,
        "decode": snapshot.decode,
        "store_revision": snapshot.revision,
        "photos": snapshot.photos,
    }
    out.write(json.dumps(head)[:-1] + ', "algorithms": [')
    for i, (algorithm, thresholds) in enumerate(parts):
        info = {
            "name": algorithm.name,
            "bits": algorithm.bits,
            "max_threshold": algorithm.max_threshold,
            "step": algorithm.step,
        }
        out.write(("," if i else "") + "\n " + json.dumps(info)[:-1] + ', "thresholds": [')
        encoded: dict[int, str] = {}  # each member serialised once, not once per threshold
        for j, part in enumerate(thresholds):
            out.write(("," if j else "") + "\n  " + _threshold_json(part, encoded))
        out.write("\n ]}")
    out.write("\n]}\n")


def _threshold_json(part: ThresholdClusters, encoded: dict[int, str]) -> str:
    def member(m: Member) -> str:
        text = encoded.get(id(m))
        if text is None:
            text = encoded[id(m)] = json.dumps(m.to_json())
        return text

    clusters = ",".join(
        f'{{"number": {number}, "folder": "{str(number).zfill(3)}_{len(cluster)}", '
        f'"size": {len(cluster)}, "members": [{", ".join(map(member, cluster))}]}}'
        for number, cluster in enumerate(part.clusters, start=1)
    )
    head = json.dumps(
        {"threshold": part.threshold, "folder": part.folder, "unclustered": part.unclustered}
    )
    return f'{head[:-1]}, "clusters": [{clusters}]}}'


def _write_csv(out: TextIO, parts: Iterator[tuple[Algorithm, list[ThresholdClusters]]]) -> None:
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for algorithm, thresholds in parts:
        for part in thresholds:
            for number, cluster in enumerate(part.clusters, start=1):
                for m in cluster:
                    writer.writerow(
                        (algorithm.name, part.threshold, number, len(cluster), m.path, m.hash,
                         m.digest, int(m.flat))
                    )  # fmt: skip


def _sweep_text(thresholds: range) -> str:
    values = list(thresholds)
    if len(values) <= 4:
        return ", ".join(map(str, values))
    if thresholds.step == 1:
        return f"{values[0]}-{values[-1]}"
    return f"{values[0]}, {values[1]}, ..., {values[-1]}"
