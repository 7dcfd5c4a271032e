"""Retention: which generations stay, and what happens to the objects nobody reaches.

After each write (and at start-up) garbage is collected: generations beyond the newest
``keep_generations`` *and* superseded more than ``grace_seconds`` ago are removed, never the
current one; objects no kept generation reaches are moved to ``pool/`` (for recycling, see
``recycle``) or deleted. Everything a kept generation reaches stays in ``objects/``, unchanged,
for as long as that generation is kept. Parents are removed before children, so ``objects/``
never holds a parent whose child is gone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

from .area import DIGEST_RE, GENERATION_RE, Area, remove_tree
from .plan import Role
from .recycle import Pool, pool_entry_name

__all__ = ["SWEEP_LINKS_AFTER", "collect", "kept_generations"]

log = logging.getLogger(__name__)

SWEEP_LINKS_AFTER = 50_000  # new link-store entries between two sweeps of it


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
) -> int:
    """Drop generations, pool what no kept generation reaches, purge ``purge``'s leftovers.

    Returns how many objects and pool entries were deleted.
    """
    kept, dropped = kept_generations(
        area.generation_names(), area.current_name(), now, keep, grace_seconds, swapped_at
    )
    roles: dict[str, tuple[int, Role | None]] = {}
    for name in dropped:
        for digest, level, role in area.walk(name):
            roles.setdefault(digest, (level, role))
    for name in dropped:
        area.drop_generation(name)
    reachable: set[str] = set()
    for name in kept:
        reachable |= area.reachable(name)
    area.reach = {name: area.reach[name] for name in kept if name in area.reach}
    deleted = 0
    garbage = [d for d in os.listdir(area.objects) if DIGEST_RE.match(d)]
    garbage = [d for d in garbage if d not in reachable]
    levels = {d: roles[d][0] if d in roles else area.peek_level(d) for d in garbage}
    for digest in sorted(garbage, key=lambda d: levels[d]):  # parents before children
        level, role = roles.get(digest, (levels[digest], None))
        if role is not None and level > 0:
            os.rename(area.objects / digest, area.pool / pool_entry_name(digest, role))
        else:
            dead = area.tmp / f"dead-{digest}"
            os.rename(area.objects / digest, dead)
            remove_tree(dead)
            deleted += 1
        area.children.pop(digest, None)
    deleted += pool.purge(purge)
    alive = pool.forget()
    area.children = {d: c for d, c in area.children.items() if d in alive}
    if sweep_links or area.links.added >= SWEEP_LINKS_AFTER:
        # Photos moved or deleted leave link entries nobody uses; reclaim them now and
        # then (a full sweep lstat()s every entry: ~1 per photo per algorithm).
        deleted += area.links.sweep()
    return deleted
