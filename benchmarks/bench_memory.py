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
               writer's model of the tree, the per-algorithm states, the forests, the catalog
               and explorer caches; what remains is the interpreter, modules and the heap's
               fragments
  workers      with ``--workers``: the hashing pool started (one photo hashed), then the RSS of
               the fork server and the workers (they count in the daemon's memory), and the
               RSS of this process and its children once the idle daemon's release of them
               (``Pipeline.release_idle_pool``) ran

``--again`` writes the whole tree a second time (``force_output``) and reports the peak and
idle RSS after it too: the memory a refresh leaves must not grow from one write to the next.
This is a measurement, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_library import memory
from imgclusterd.config import Config
from imgclusterd.pipeline import Pipeline


def _status(field: str) -> float:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in MB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


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


def bench(args: argparse.Namespace) -> dict[str, Any]:
    library = Path(args.library)
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    _copy_store(library / "state" / "store.sqlite", work / "state" / "store.sqlite", args.cold)
    config = Config(
        images=library / "images",
        output=work / "output",
        state_dir=work / "state",
        explorer=not args.no_explorer,
        thumbnails=False,
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
        kept: dict[str, float] = {}
        before = _trim()
        writer = pipeline.writer
        assert writer is not None
        writer._model = None
        writer._refs.clear()
        writer._algo_digests = {}
        after = _trim()
        kept["writer model + refs"], before = before - after, after
        pipeline._states = {}
        after = _trim()
        kept["algorithm states"], before = before - after, after
        pipeline._indexes = {}
        after = _trim()
        kept["forests (ClusterIndex)"], before = before - after, after
        pipeline.catalog.paths = {}
        pipeline.catalog._sorted_paths = []
        pipeline.catalog._sorted_ids = []
        pipeline.catalog._rank_by_id = None
        pipeline._explorer_photos = {}
        pipeline._page_memo = type(pipeline._page_memo)()
        after = _trim()
        kept["catalog + explorer caches"], before = before - after, after
        kept["remains"] = after
        result["kept"] = {k: round(v, 1) for k, v in kept.items()}
    for key in ("start", "peak", "idle", "idle_trimmed", "again_peak", "again_idle"):
        if key in result:
            result[key] = round(result[key], 1)
    return result


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
    parser.add_argument("--keep", action="store_true", help="keep --work afterwards")
    args = parser.parse_args(argv)
    try:
        result = bench(args)
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
