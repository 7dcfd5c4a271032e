"""Patched folders staged on two cores: the file-system half of a delta write.

Why: a photo that joins a cluster renumbers the clusters between its old place and its new
one in each threshold folder it changes, and every renumbered entry is one ``rename``. At
20,000 photos a +1 renames ~17,000-22,000 entries, ~18 µs each in the kernel on ext4 here:
the biggest part of the write, and the part that grows with the library. ``rename`` and
``link`` release the GIL and two folders are two directory locks, so the patches are staged
in two threads (the writer's thread and one more). Measured on a 2-core machine: a rename
17 µs in one thread, 11 µs each in two; a +1's staging at 20,000 photos 0.26-0.34 s in one
thread, 0.11-0.23 s in two (``benchmarks/bench_refresh``).

Only the staging runs in threads, in ``tmp/``. What each patch starts from (a spare, a
retired ancestor, or a copy of its base) is decided before, in plan order, by the writer;
publishing (renaming a staged folder into ``objects/``, children before parents) stays in
the writer's loop, in plan order. A crash therefore leaves what a serial write leaves:
complete objects in ``objects/`` and unfinished folders in ``tmp/``, removed by the next write.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .area import Place, Step, apply_steps, remove_tree
from .recycle import copy_object

__all__ = ["PARALLEL_MIN", "PatchJob", "Staged", "split", "stage_patches"]

log = logging.getLogger(__name__)


#: Below this many entry operations in all, one thread stages everything: handing half of a
#: few hundred operations to another thread costs more than it saves.
PARALLEL_MIN = 2000


@dataclass(frozen=True)
class PatchJob:
    """One patch to stage in ``staging``.

    ``spare``: ``staging`` already holds a spare (or retired ancestor) of the base, and
    ``steps`` turn it into the object; when it does not match them, or without a spare, the
    object is a hard-link copy of ``base`` with ``own`` applied (the patch's own step).
    """

    digest: str
    staging: Path
    spare: bool
    steps: Step
    base: Path
    own: Step
    place: Place

    @property
    def cost(self) -> int:
        """Entry operations, roughly (a copy: one per entry of the base, guessed as big)."""
        removed, links, moved = self.steps if self.spare else self.own
        return len(removed) + len(links) + len(moved) + (0 if self.spare else 1000)


@dataclass(frozen=True)
class Staged:
    """What staging one patch did."""

    staging: Path
    added: int
    removed: int
    renamed: int
    copied: int


def stage(job: PatchJob) -> Staged:
    """Build ``job``'s folder in its staging place (not published)."""
    if job.spare:
        try:
            added, removed, renamed = apply_steps(job.staging, [job.steps], job.place)
            return Staged(job.staging, added, removed, renamed, 0)
        except (FileNotFoundError, FileExistsError) as exc:  # not what we recorded
            log.warning("recycled output folder for %s did not match (%s); copying",
                        job.digest, exc)  # fmt: skip
            remove_tree(job.staging)
    gone, links, moved = job.own
    copied = copy_object(job.base, job.staging, skip=set(gone))
    log.debug("output folder %s copied from its base (%d entries): no spare, no retired "
              "ancestor", job.digest, copied)  # fmt: skip
    added, _, renamed = apply_steps(job.staging, [((), links, moved)], job.place)
    return Staged(job.staging, added, 0, renamed, copied)


def _stage_all(jobs: Sequence[PatchJob]) -> dict[str, Staged]:
    return {job.digest: stage(job) for job in jobs}


def stage_patches(
    jobs: Sequence[PatchJob], parallel_min: int = PARALLEL_MIN
) -> tuple[dict[str, Staged], int]:
    """Stage every job: digest -> what staging it did, and how many the other thread staged.

    About half (by cost) go to one more thread when the jobs are worth it, the rest are
    staged in this one. All are staged when this returns, not when first needed: the
    writer's loop after it is Python work, and a thread coming back from each rename to a
    GIL held by that loop waits for the interpreter's switch interval (measured: the
    5,000-photo write slower than with one thread). On an error, the other thread is waited
    for before it is raised, so that nothing writes in ``tmp/`` after the write is over.
    """
    mine, other = split(jobs, parallel_min)
    if not other:
        return _stage_all(mine), 0
    with ThreadPoolExecutor(1, thread_name_prefix="imgclusterd-stage") as executor:
        theirs = executor.submit(_stage_all, other)
        done = _stage_all(mine)
        done.update(theirs.result())
    return done, len(other)


def split(
    jobs: Sequence[PatchJob], parallel_min: int = PARALLEL_MIN
) -> tuple[list[PatchJob], list[PatchJob]]:
    """Two groups of about equal cost (largest first, each to the lighter group); all in the
    first when the jobs are too few or too small to be worth a second thread."""
    costs = [job.cost for job in jobs]
    if len(jobs) < 2 or sum(costs) < parallel_min:
        return list(jobs), []
    groups: tuple[list[PatchJob], list[PatchJob]] = ([], [])
    loads = [0, 0]
    for cost, job in sorted(zip(costs, jobs, strict=True), key=lambda pair: -pair[0]):
        lighter = 0 if loads[0] <= loads[1] else 1
        groups[lighter].append(job)
        loads[lighter] += cost
    return groups
