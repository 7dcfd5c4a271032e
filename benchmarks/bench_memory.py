"""The daemon's memory in tree mode: what a whole-tree write peaks at, and what stays.

    .venv/bin/python -m benchmarks.bench_memory --library /tmp/bl/n20000 --work /tmp/bm20k

In process, one :class:`~imgclusterd.pipeline.Pipeline` (what the daemon runs) on a library
made by ``bench_library`` (``<library>/images`` and ``<library>/state/store.sqlite``, every
photo hashed). The store is copied into ``--work`` (saved forests included, unless
``--cold``: then they are dropped and the 14 forests are built from scratch) and the output
is written there, so the library is left as it is. Measured, in MB:

  start        resident memory (RSS) with the pipeline open, nothing read yet
  peak         the process's peak RSS (VmHWM, reset before the refresh) during the first
               refresh: sync + forests + the whole-tree write
  idle         RSS once the refresh returned (the pipeline trims the heap after a write)
  kept         what each structure kept between refreshes is worth: the RSS given back when
               it is dropped (gc + malloc_trim), one after the other, in this order: the
               writer's lineage (the patches of its last writes), its model of the tree, the
               per-algorithm states, the forests, the catalog and explorer caches; what
               remains is the interpreter, modules and the heap's fragments
  workers      with ``--workers``: the hashing pool started (one photo hashed), then the RSS of
               the fork server and the workers (they count in the daemon's memory), and the
               RSS of this process and its children once the idle daemon's release of them
               (``Pipeline.release_idle_pool``) ran

``--again`` writes the whole tree a second time (``force_output``) and reports the peak and
idle RSS after it too: the memory a refresh leaves must not grow from one write to the next.

``changes`` (unless ``--drops 0``): then, in the daemon's order, ``--drops`` single photos
dropped one at a time, one of them deleted, one renamed, and a burst of ``--burst`` photos
(what ``bench_library`` does to the real daemon, whose main process grew from 764 MB to
~1.1 GB at 100,000 photos over those). Before each, ``--gap`` seconds of idle time in which
the writer prepares spare folders, as the daemon does, followed by the daemon's end-of-idle-work
trim; each change is one ``refresh(dirty=[...])``. Per change: the RSS right after the
refresh and after the idle time that follows it; then ``idle_after_changes``: the RSS once the
hashing processes are released (the daemon after 120 s), the main process only. The photos are
real JPEGs written into ``<library>/images/bench_memory_drops-<pid>``, removed at the end.
This is a measurement, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_library import memory, single_photos
from imgclusterd.config import Config
from imgclusterd.pipeline import Pipeline

try:  # what the daemon does once its idle work is done (session 6)
    from imgclusterd.memory import give_back
except ImportError:  # before: nothing
    give_back = None  # type: ignore[assignment]

# Made by this benchmark in the library's images, then removed (one per run: two runs on one
# library must not share it).
_DROPS = f"bench_memory_drops-{os.getpid()}"


def _status(field: str) -> float:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in MB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _pymalloc() -> dict[str, float]:
    """Python's small-object allocator (sys._debugmallocstats, written to fd 2), in MB: its
    arenas (1 MiB mappings, given back only when empty), and the bytes in live blocks."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as text:
        os.dup2(text.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        text.seek(0)
        lines = text.read().decode(errors="replace").splitlines()
    found: dict[str, float] = {}
    for line in lines:
        if line.startswith("# arenas allocated current"):
            found["arenas"] = float(line.split("=")[1].replace(",", ""))  # 1 MiB each
        elif line.startswith("# bytes in allocated blocks"):
            found["live"] = int(line.split("=")[1].replace(",", "")) / 2**20
    return {k: round(v, 1) for k, v in found.items()}


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _live() -> float:
    """Live bytes in MB: Python's small objects plus what malloc has handed out and not got
    back (glibc >= 2.33 ``mallinfo2``: in use in its arenas, and its mmapped blocks)."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return _pymalloc().get("live", 0.0)
    mallinfo2.restype = _Mallinfo2
    info = mallinfo2()
    return _pymalloc().get("live", 0.0) + (info.uordblks + info.hblkhd) / 2**20


def _where() -> dict[str, float]:
    """Where the resident memory is (MB): the brk heap, Python's small-object arenas, other
    anonymous mappings (numpy arrays, thread arenas, stacks), files (code, the store's mmap)."""
    rss = {"heap": 0, "anonymous": 0, "files": 0}
    kind = "files"
    with open("/proc/self/smaps") as handle:
        for line in handle:
            first = line.split(maxsplit=6)
            if "-" in first[0] and len(first) >= 5 and not first[0].endswith(":"):
                name = first[5].strip() if len(first) > 5 else ""
                kind = "heap" if name == "[heap]" else "files" if name.startswith("/") else (
                    "anonymous")
            elif first[0] == "Rss:":
                rss[kind] += int(first[1])
    out = {k: round(v / 1024, 1) for k, v in rss.items()}
    pymalloc = _pymalloc()
    out["pymalloc_arenas"] = pymalloc.get("arenas", 0.0)
    out["pymalloc_live"] = pymalloc.get("live", 0.0)
    out["live"] = round(_live(), 1)
    return out


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _trim() -> float:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return _status("VmRSS")


def _copy_store(source: Path, dest: Path, cold: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest.unlink()
    with sqlite3.connect(source) as src, sqlite3.connect(dest) as dst:
        src.backup(dst)
        if cold:
            dst.execute("DELETE FROM forests")
    src.close()
    dst.close()


def _idle(pipeline: Pipeline, gap: float) -> float:
    """``gap`` seconds of the daemon's idle time: spare folders until it is over, then the
    end-of-idle-work shedding and trim; returns the RSS after it."""
    assert pipeline.writer is not None
    deadline = time.monotonic() + gap
    pipeline.writer.prepare_spares(lambda: time.monotonic() >= deadline)
    pipeline.shed_idle()  # as the daemon does before its trim
    if give_back is not None:
        give_back("idle work")
    time.sleep(max(0.0, deadline - time.monotonic()))
    return _status("VmRSS")


def _changes(args: argparse.Namespace, pipeline: Pipeline, images: Path) -> dict[str, Any]:
    """Single drops, a delete, a rename and a burst, each after idle time (see the doc)."""
    folder = images / _DROPS
    staging = Path(args.work) / "staging"
    singles = single_photos(staging / "one", args.drops, seed=10**7 + 1)
    burst = single_photos(staging / "burst", args.burst, seed=2 * 10**7 + 1)
    folder.mkdir()
    steps: list[tuple[str, Any, list[Path]]] = []
    for number, staged in enumerate(singles):
        target = folder / staged.name
        steps.append((f"+1 #{number + 1}", lambda s=staged, t=target: shutil.copyfile(s, t),
                      [target]))
    if singles:
        victim = folder / singles[0].name
        steps.append(("-1", victim.unlink, [victim]))
    if len(singles) > 1:
        source = folder / singles[-1].name
        moved = folder / f"renamed-{singles[-1].name}"
        steps.append(("rename", lambda: os.rename(source, moved), [source, moved]))
    if burst:
        into = folder / "burst"

        def copy_burst() -> None:
            into.mkdir()
            for staged in burst:
                shutil.copyfile(staged, into / staged.name)

        steps.append((f"+{len(burst)}", copy_burst, [into]))
    out: dict[str, Any] = {}
    _reset_peak()
    for name, action, dirty in steps:
        before_idle = _idle(pipeline, args.gap)
        action()
        started = time.perf_counter()
        pipeline.refresh(dirty=[str(p) for p in dirty])
        out[name] = {"s": round(time.perf_counter() - started, 1),
                     "rss_idle_before": round(before_idle, 1),
                     "rss_after_refresh": round(_status("VmRSS"), 1)}
        print(f"{name}: {out[name]}", file=sys.stderr, flush=True)
    out["rss_idle_after_last"] = round(_idle(pipeline, args.gap), 1)
    out["peak"] = round(_status("VmHWM"), 1)
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    library = Path(args.library)
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    shutil.rmtree(library / "images" / _DROPS, ignore_errors=True)
    _copy_store(library / "state" / "store.sqlite", work / "state" / "store.sqlite", args.cold)
    config = Config(
        images=library / "images",
        output=work / "output",
        state_dir=work / "state",
        explorer=not args.no_explorer,
        thumbnails=False,
        generation_grace=args.grace,
    )
    result: dict[str, Any] = {"library": str(library)}
    with Pipeline(config) as pipeline:
        result["start"] = _status("VmRSS")
        _reset_peak()
        started = time.perf_counter()
        report = pipeline.refresh(force_output=True)
        result["first_refresh_s"] = round(time.perf_counter() - started, 1)
        result["timings"] = {k: round(v, 1) for k, v in report.timings.items()}
        result["photos"] = report.images
        result["peak"] = _status("VmHWM")
        result["idle"] = _status("VmRSS")
        result["idle_trimmed"] = _trim()
        result["where_idle"] = _where()
        if args.again:
            _reset_peak()
            pipeline.refresh(force_output=True)
            result["again_peak"] = _status("VmHWM")
            result["again_idle"] = _trim()
        if args.workers:
            first = next(iter(pipeline.catalog.paths.values()))
            list(pipeline.pool.map([os.path.join(config.images, first)]))
            together = memory(os.getpid())
            result["workers"] = round(together["rss_mb"] - _status("VmRSS"), 1)
            result["workers_processes"] = together["processes"] - 1
            pipeline.release_idle_pool(0.0)  # what the idle daemon does after 120 s
            result["after_pool_released"] = round(memory(os.getpid())["rss_mb"], 1)
        if args.drops or args.burst:
            result["changes"] = _changes(args, pipeline, library / "images")
            pipeline.release_idle_pool(0.0)  # what the idle daemon does after 120 s
            result["idle_after_changes"] = round(_status("VmRSS"), 1)
            result["where_after_changes"] = _where()
        # Per structure dropped: the RSS given back, and the live bytes freed (Python's
        # small objects + malloc's in-use bytes): RSS undercounts what a fragmented heap frees.
        kept: dict[str, float] = {}
        freed: dict[str, float] = {}
        writer = pipeline.writer
        assert writer is not None

        def catalog_and_explorer() -> None:
            pipeline.catalog.paths = {}
            pipeline.catalog._sorted_paths = []
            pipeline.catalog._sorted_ids = []
            pipeline.catalog._rank_by_id = None
            pipeline._explorer_photos = {}
            pipeline._page_memo = type(pipeline._page_memo)()

        def model_and_refs() -> None:
            writer._model = None
            writer._refs.clear()
            writer._algo_digests = {}

        drops: list[tuple[str, Any]] = [
            ("writer lineage (patches of the last writes)",
             lambda: setattr(writer, "_lineage", {})),
            ("writer model + refs", model_and_refs),
            ("algorithm states", lambda: setattr(pipeline, "_states", {})),
            ("forests (ClusterIndex)", lambda: setattr(pipeline, "_indexes", {})),
            ("catalog + explorer caches", catalog_and_explorer),
        ]
        result["arrays"] = _arrays_by_part(pipeline)
        before, live = _trim(), _live()
        for name, drop in drops:
            drop()
            after, now = _trim(), _live()
            kept[name], freed[name] = round(before - after, 1), round(live - now, 1)
            before, live = after, now
        kept["remains"] = round(before, 1)
        freed["remains"] = round(live, 1)
        result["kept"] = kept
        result["kept_live"] = freed
        result["where_remains"] = _where()
    for key in ("start", "peak", "idle", "idle_trimmed", "again_peak", "again_idle"):
        if key in result:
            result[key] = round(result[key], 1)
    return result


def _array_bytes(obj: Any, seen: set[int], depth: int = 0) -> int:
    """The bytes of the numpy arrays ``obj`` holds (through attributes, dicts, lists and
    tuples), each array's memory counted once across calls sharing ``seen``."""
    if depth > 6 or id(obj) in seen or isinstance(obj, (str, bytes, int, float)):
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        owner = obj if obj.base is None else obj.base
        if owner is not obj and id(owner) in seen:
            return 0
        seen.add(id(owner))
        return int(getattr(owner, "nbytes", obj.nbytes))
    if isinstance(obj, dict):
        items: Any = list(obj.values())
        if items and not isinstance(items[0], (np.ndarray, dict, list, tuple)) and not hasattr(
            items[0], "__dict__"
        ):
            return 0  # a dict of plain values (paths, positions): no arrays in it
    elif isinstance(obj, (list, tuple)):
        items = obj
    elif hasattr(obj, "__dict__") or hasattr(obj, "__slots__"):
        names = list(getattr(obj, "__dict__", {})) + list(getattr(obj, "__slots__", ()))
        items = [getattr(obj, name, None) for name in names]
    else:
        return 0
    return sum(_array_bytes(item, seen, depth + 1) for item in items)


def _arrays_by_part(pipeline: Pipeline) -> dict[str, float]:
    """MB of numpy arrays each kept structure holds, by attribute (first owner counts a
    shared array): the forests, then what the per-algorithm states add to them."""
    seen: set[int] = set()
    parts: dict[str, int] = {}

    def add(name: str, value: Any) -> None:
        parts[name] = parts.get(name, 0) + _array_bytes(value, seen)

    for index in pipeline._indexes.values():
        for name, value in vars(index).items():
            add(f"forests.{name}", value)
    for state in pipeline._states.values():
        for name, value in vars(state).items():
            if name == "sweep" and value is not None:
                for sweep_name, sweep_value in vars(value).items():
                    add(f"states.sweep.{sweep_name}", sweep_value)
            else:
                add(f"states.{name}", value)
    writer = pipeline.writer
    if writer is not None:
        add("writer.model", writer._model)
        add("writer.refs", writer._refs)
    return {k: round(v / 2**20, 1) for k, v in sorted(parts.items()) if v >= 2**16}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", required=True,
                        help="a bench_library library: <dir>/images and <dir>/state")
    parser.add_argument("--work", required=True, help="scratch folder (store copy, output)")
    parser.add_argument("--cold", action="store_true",
                        help="drop the saved forests: build all 14 from scratch")
    parser.add_argument("--again", action="store_true",
                        help="write the whole tree a second time and measure again")
    parser.add_argument("--workers", action="store_true",
                        help="start the hashing pool and measure its processes")
    parser.add_argument("--no-explorer", action="store_true", help="explorer = false")
    parser.add_argument("--drops", type=int, default=3,
                        help="single photos dropped after the index (then -1, rename; 0: none)")
    parser.add_argument("--burst", type=int, default=100,
                        help="photos added at once after the drops (0: none)")
    parser.add_argument("--gap", type=float, default=20.0,
                        help="seconds of idle time (spare folders) before each change")
    parser.add_argument("--mmap-threshold", type=int, default=0,
                        help="pin glibc's mmap threshold to this many bytes first (mallopt "
                             "M_MMAP_THRESHOLD; 0: glibc's dynamic default)")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="generation_grace (bench_library's runs used 10)")
    parser.add_argument("--keep", action="store_true", help="keep --work afterwards")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")
    logging.getLogger("imgclusterd.memory").setLevel(logging.DEBUG)  # what each trim gave
    if args.mmap_threshold:  # an experiment: big blocks always mmapped, never in the heap
        ctypes.CDLL("libc.so.6").mallopt(-3, args.mmap_threshold)  # M_MMAP_THRESHOLD
    try:
        result = bench(args)
    finally:
        shutil.rmtree(Path(args.library) / "images" / _DROPS, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
