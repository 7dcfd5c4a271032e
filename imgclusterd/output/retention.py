"""Retention: which generations stay, and what happens to the objects nobody reaches.

After each write (and at start-up) garbage is collected: generations beyond the newest
``keep_generations`` *and* superseded more than ``grace_seconds`` ago are removed, never the
current one; objects no kept generation reaches are moved to ``pool/`` (for recycling, see
``recycle``) or deleted. Everything a kept generation reaches stays in ``objects/``, unchanged,
for as long as that generation is kept. Parents are removed before children, so ``objects/``
never holds a parent whose child is gone.

Records: what a collection costs. Which objects no kept generation reaches could be found by
walking every kept generation (one visit per folder of the tree, on every write); instead each
generation carries a *record* (``records/<generation>``, written before the swap and flushed
with the generation): its parent (the generation current when it was built) and, against that
parent, the objects it no longer reaches (with their level and role) and the ones it newly
reaches. A delta write knows both from the positions it changed (reference counts of the
tree's folders). Along the chain of generations on disk, each with the record of its step from
the one before, whether an object is reached by a generation follows from those steps alone,
so a collection looks only at the objects the steps mention: the cost of what changed. The
full walk remains for whole-tree writes and start-up (where a crash's leftovers -- objects of
a generation never swapped in -- are found), and whenever a record is missing or does not
chain (an old area, a crash, a record deleted): then nothing is assumed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .area import DIGEST_RE, GENERATION_RE, Area, remove_tree
from .plan import DIGEST_LEN, Role
from .recycle import Pool, pool_entry_name

__all__ = [
    "SWEEP_LINKS_AFTER",
    "Record",
    "collect",
    "kept_generations",
    "read_record",
    "write_record",
]

log = logging.getLogger(__name__)

SWEEP_LINKS_AFTER = 50_000  # new link-store entries between two sweeps of it


@dataclass
class Record:
    """One generation's step from its parent: objects it no longer reaches, with (level,
    role) for the pool, and objects it newly reaches. ``parent`` None: built on nothing."""

    parent: str | None
    retired: dict[str, tuple[int, Role | None]] = field(default_factory=dict)
    added: set[str] = field(default_factory=set)


def write_record(area: Area, generation: str, record: Record) -> None:
    """Write ``records/<generation>`` (complete or not at all: built in ``tmp/``)."""
    retired = [
        [digest, level, *(role if role is not None else (None, None, None))]
        for digest, (level, role) in sorted(record.retired.items())
    ]
    data = {"v": 1, "parent": record.parent, "retired": retired, "added": sorted(record.added)}
    staging = area.tmp / f"record-{generation}"
    staging.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
    os.rename(staging, area.records / generation)


def read_record(area: Area, generation: str) -> Record | None:
    """The record of ``generation``; None if it is missing or not one we can read."""
    try:
        data = json.loads((area.records / generation).read_text(encoding="utf-8"))
        if data.get("v") != 1:
            return None
        retired: dict[str, tuple[int, Role | None]] = {}
        for digest, level, algo, slot, threshold in data["retired"]:
            role = None if algo is None else (str(algo), str(slot), int(threshold))
            retired[str(digest)] = (int(level), role)
        parent = data["parent"]
        return Record(
            None if parent is None else str(parent), retired, {str(d) for d in data["added"]}
        )
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.warning("unreadable output record %s (%s): collecting by a full walk",
                        area.records / generation, exc)
        return None


def kept_generations(
    names: Sequence[str],
    current: str | None,
    now: float,
    keep: int,
    grace_seconds: float,
    swapped_at: Mapping[str, float] | None = None,
) -> tuple[list[str], list[str]]:
    """Split generation names (oldest first) into kept and dropped. Pure.

    Kept: the current one, the newest ``keep``, and any superseded less than ``grace_seconds``
    before ``now``. A generation is superseded when its successor was swapped in:
    ``swapped_at[successor]`` where this process did the swap, else the time in the
    successor's name (when it was named, a flush before its swap). With no current generation
    of ours, everything is kept.
    """
    now_ms = now * 1000
    swapped_at = swapped_at or {}
    kept: list[str] = []
    dropped: list[str] = []
    for i, name in enumerate(names):
        newer = names[i + 1] if i + 1 < len(names) else None
        superseded_ms: float | None = None
        if newer is not None:
            superseded_ms = int(GENERATION_RE.match(newer)[2])  # type: ignore[index]
            if newer in swapped_at:
                superseded_ms = max(superseded_ms, swapped_at[newer] * 1000)
        keep_it = (
            name == current
            or current is None
            or i >= len(names) - keep
            or superseded_ms is None
            or now_ms - superseded_ms < grace_seconds * 1000
        )
        (kept if keep_it else dropped).append(name)
    return kept, dropped


def collect(
    area: Area,
    pool: Pool,
    *,
    keep: int,
    grace_seconds: float,
    now: float,
    purge: set[str],
    sweep_links: bool = False,
    swapped_at: Mapping[str, float] | None = None,
    from_records: bool = False,
    walk: bool = True,
) -> int:
    """Drop generations, pool what no kept generation reaches, purge ``purge``'s leftovers.

    ``from_records``: find the garbage from the generations' records where they chain (see
    the module doc), by a full walk otherwise -- or, with ``walk`` false, not at all: then
    nothing is dropped, pooled or purged. Returns how many objects and pool entries were
    deleted.
    """
    names = area.generation_names()
    kept, dropped = kept_generations(
        names, area.current_name(), now, keep, grace_seconds, swapped_at
    )
    if not dropped and not walk and not purge:
        return 0  # nothing to drop, and no walk wanted: the records need not be read
    found = _from_records(area, names, set(kept)) if from_records else None
    if found is None and not walk:
        return 0
    if found is None:
        roles: dict[str, tuple[int, Role | None]] = {}
        for name in dropped:
            for digest, level, role in area.walk(name):
                roles.setdefault(digest, (level, role))
    for name in dropped:
        area.drop_generation(name)
    deleted = 0
    if found is not None:
        garbage = [d for d in found if os.path.isdir(os.path.join(area.objects, d))]
        roles = found
        levels = {d: roles[d][0] for d in garbage}
    else:
        reachable: set[str] = set()
        for name in kept:
            reachable |= area.reachable(name)
        garbage = [d for d in os.listdir(area.objects) if DIGEST_RE.match(d)]
        garbage = [d for d in garbage if d not in reachable]
        levels = {d: roles[d][0] if d in roles else area.peek_level(d) for d in garbage}
    area.reach = {name: area.reach[name] for name in kept if name in area.reach}
    for digest in sorted(garbage, key=lambda d: levels[d]):  # parents before children
        level, role = roles.get(digest, (levels[digest], None))
        pooled = area.pool / pool_entry_name(digest, role) if role is not None else None
        # (a spare of it may be there already, under the same name: one copy is enough)
        if pooled is not None and level > 0 and not os.path.lexists(pooled):
            os.rename(area.objects / digest, pooled)
        else:
            dead = area.tmp / f"dead-{digest}"
            os.rename(area.objects / digest, dead)
            remove_tree(dead)
            deleted += 1
        area.children.pop(digest, None)
    _forget_records(area, set(names) - set(dropped))
    deleted += pool.purge(purge)
    if found is not None:  # what may have left: the garbage, the purged pool entries
        pool.forget(set(garbage) | {entry[:DIGEST_LEN] for entry in purge})
    else:
        alive = pool.forget()
        assert alive is not None
        area.children = {d: c for d, c in area.children.items() if d in alive}
    if sweep_links or area.links.added >= SWEEP_LINKS_AFTER:
        # Photos moved or deleted leave link entries nobody uses; reclaim them now and
        # then (a full sweep lstat()s every entry: ~1 per photo per algorithm).
        deleted += area.links.sweep()
    return deleted


def _from_records(
    area: Area, names: Sequence[str], kept: set[str]
) -> dict[str, tuple[int, Role | None]] | None:
    """Objects no kept generation reaches, among those the records mention, with their
    (level, role); None when the records do not chain (then walk).

    ``names``: the generations on disk, oldest first. Each but the oldest needs the record of
    its step from the one before. An object no record mentions is reached by all of them or
    by none (then it is not ours to find here: a full walk finds such leftovers). For one
    that a record mentions, membership before its first mention is what that mention
    implies (retired: it was reached; added: it was not), and each step after changes it.
    """
    steps: list[Record] = []
    for before, name in itertools.pairwise(names):
        try:  # on disk, where a crash or a person may have removed it; read once
            identity = os.lstat(area.records / name).st_ino
        except OSError:
            return None
        cached = area.record_cache.get(name)
        record = cached[1] if cached and cached[0] == identity else read_record(area, name)
        if record is None or record.parent != before:
            return None
        area.record_cache[name] = (identity, record)
        steps.append(record)
    first: dict[str, bool] = {}  # object -> reached by the oldest generation?
    last_role: dict[str, tuple[int, Role | None]] = {}
    for record in steps:
        for digest in record.added:
            first.setdefault(digest, False)
        for digest, level_role in record.retired.items():
            first.setdefault(digest, True)
            last_role[digest] = level_role
    reached = {digest for digest, was in first.items() if was}
    alive: set[str] = set(reached) if names and names[0] in kept else set()
    for name, record in zip(names[1:], steps, strict=True):
        reached.difference_update(record.retired)
        reached.update(record.added)
        if name in kept:
            alive |= reached
    # (an object no kept generation reaches was retired by the last step that mentions it)
    return {d: last_role[d] for d in first if d not in alive and d in last_role}


def _forget_records(area: Area, generations: Iterable[str]) -> None:
    """Delete the records of generations that are gone (dropped, never swapped in)."""
    keep = set(generations)
    area.record_cache = {n: r for n, r in area.record_cache.items() if n in keep}
    try:
        entries = os.listdir(area.records)
    except FileNotFoundError:
        return
    for entry in entries:
        if entry not in keep and GENERATION_RE.match(entry):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(area.records / entry)
