"""One photo added, in process: what each stage of a +1 refresh costs at several library sizes.

The daemon's +1 (``bench_library``) takes minutes per size and measures from outside; this
runs the same ``Pipeline.refresh`` in this process, in the daemon's order, so a stage can be
timed and profiled. For each ``--n`` (side by side, one process):

  library   ``benchmarks.bench_mount.make_library``: one-byte ``.jpg`` files whose hashes (the
            14 default algorithms, 30 % in near-duplicate groups) are put in the store directly;
            made in ``--dir``/n<N> and reused by later runs (or any such library with
            ``--library``). The output is removed first (``--keep-output`` keeps it), so the
            first refresh is a first write, as after a first index.
  first     ``refresh()``: the walk, clustering, the whole tree written; with ``--size``, the
            output area's entries, inodes and bytes after it (``bench_library.output_size``)
  drops     ``--drops`` times, as the daemon does it: ``--gap`` seconds of idle time, in which
            the writer prepares spare folders (``prepare_spares``, stopped when the gap is
            over, as an event stops the daemon's), then one real JPEG dropped into a new folder
            and ``refresh(dirty=[path])``. Old generations are kept ``--grace`` seconds
            (``generation_grace``), so which folders are retired and pooled at each drop is
            the daemon's.

Per drop: the pipeline's stage timings (scan / hash / cluster / write), the write's own split
(the writer's report: total, sync, gc; wall and CPU of ``write_delta``; objects written,
recycled and links made or removed) and what the idle time before it prepared. Per N the
median of the drops; then the ratio of each N's median to the first one's (issue 9's target:
1.5x from 5,000 to 20,000). ``--profile`` prints a cProfile of the slowest drop of each N,
``--profile-drop K`` of drop K.

    .venv/bin/python -m benchmarks.bench_refresh --n 5000 20000 --dir /tmp/bench_refresh
    .venv/bin/python -m benchmarks.bench_refresh --n 20000 --drops 3 --profile

Timings are wall-clock on whatever else the machine runs: compare the CPU column too.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.bench_library import output_size
from benchmarks.bench_mount import make_library
from imgclusterd.config import load_config
from imgclusterd.output import area_path
from imgclusterd.pipeline import Pipeline

_DROPS_FOLDER = "bench_refresh_drops"  # made by this benchmark in the generated library


def _library(root: Path, n: int, keep_output: bool, grace: float) -> Path:
    """The generated library at ``root`` (made if missing), its drops and, unless kept, its
    output removed; returns its config file."""
    if not (root / "images").is_dir() or not (root / "state").is_dir():
        if root.exists() and any(root.iterdir()):
            raise SystemExit(f"{root} exists and is not a generated library: choose another --dir")
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        make_library(root, n)
        print(f"n={n}: library made in {time.perf_counter() - started:.1f}s", flush=True)
    output = root / "out"
    shutil.rmtree(root / "images" / _DROPS_FOLDER, ignore_errors=True)
    if not keep_output:
        if os.path.islink(output):
            os.unlink(output)
        shutil.rmtree(area_path(output), ignore_errors=True)
    config = root / "bench_refresh.toml"
    config.write_text(
        f'images = "{root / "images"}"\n'
        f'output = "{output}"\n'
        f'state_dir = "{root / "state"}"\n'
        f"generation_grace = {grace}\n"
        "thumbnails = false\n",
        encoding="utf-8",
    )
    return config


def _timed(acc: dict[str, float], name: str, fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[name + "_wall"] = acc.get(name + "_wall", 0.0) + time.perf_counter() - wall
            acc[name + "_cpu"] = acc.get(name + "_cpu", 0.0) + time.process_time() - cpu

    return wrapper


def _idle(pipeline: Pipeline, gap: float) -> dict[str, float]:
    """``gap`` seconds of daemon idle time: spares until the gap is over, then nothing."""
    assert pipeline.writer is not None
    started = time.monotonic()
    deadline = started + gap
    cpu = time.process_time()
    links = pipeline.writer.prepare_spares(lambda: time.monotonic() >= deadline)
    spent = time.monotonic() - started
    left = len(pipeline.writer._pool.spare_wanted)  # (private: what the gap did not cover)
    time.sleep(max(0.0, deadline - time.monotonic()))
    return {"spares_s": spent, "spares_cpu": time.process_time() - cpu, "spare_links": links,
            "spares_left": left}


def run_size(args: argparse.Namespace, n: int) -> dict[str, Any]:
    root = Path(args.library) if args.library else Path(args.dir) / f"n{n}"
    config = load_config(_library(root, n, args.keep_output, args.grace)).config
    rng = np.random.default_rng(n)
    drops_dir = root / "images" / _DROPS_FOLDER
    result: dict[str, Any] = {"n": n, "drops": []}
    slowest: tuple[float, cProfile.Profile | None] = (-1.0, None)
    with Pipeline(config) as pipeline:
        assert pipeline.writer is not None
        acc: dict[str, float] = {}
        pipeline.writer.write_delta = _timed(  # type: ignore[method-assign]
            acc, "write_delta", pipeline.writer.write_delta
        )
        started = time.perf_counter()
        report = pipeline.refresh()
        first = {k: round(v, 2) for k, v in report.timings.items()}
        first["total"] = round(time.perf_counter() - started, 2)
        result["first"] = first
        print(f"n={n} first refresh: {first}", flush=True)
        if args.size:
            tick = time.perf_counter()
            result["output"] = output_size(config.output)
            print(f"n={n} output area after the first write: {result['output']} "
                  f"(walked in {time.perf_counter() - tick:.0f} s)", flush=True)
        # The daemon's hashing workers are up after its first index (it hashed every photo);
        # this library was hashed into the store directly: start them now, not in drop 1.
        any_photo = next(p for p in (root / "images").rglob("*.jpg"))
        list(pipeline.pool.map([str(any_photo)]))
        drops_dir.mkdir()
        for k in range(args.drops):
            idle = _idle(pipeline, args.gap)
            picture = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
            path = drops_dir / f"drop{k:03d}.jpg"
            Image.fromarray(picture, "RGB").resize((64, 64)).save(path)
            acc.clear()
            profile = cProfile.Profile() if args.profile or args.profile_drop else None
            wall, cpu = time.perf_counter(), time.process_time()
            if profile is not None:
                profile.enable()
            report = pipeline.refresh(dirty=[str(path)])
            if profile is not None:
                profile.disable()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            out = report.output
            drop: dict[str, Any] = {
                "total": wall, "cpu": cpu,
                **{k: report.timings.get(k, 0.0) for k in ("scan", "hash", "cluster", "write")},
                **acc, **idle,
            }
            if out is not None:
                drop.update(
                    planned=out.planned, sync=out.sync_seconds, gc=out.gc_seconds,
                    written=out.objects_written, recycled=out.objects_recycled,
                    links=out.links_written, removed=out.links_removed,
                    renamed=out.links_renamed, copied=out.links_copied,
                    threaded=out.patches_threaded,
                )
            result["drops"].append(drop)
            print(f"n={n} drop {k + 1}: " + _row(drop), flush=True)
            chosen = k + 1 == args.profile_drop if args.profile_drop else wall > slowest[0]
            if profile is not None and chosen:
                slowest = (wall, profile)
    for key in ("total", "cluster", "write"):
        if result["drops"]:  # (--drops 0: the first write alone, e.g. with --size)
            result[f"median_{key}"] = statistics.median(d[key] for d in result["drops"])
    if slowest[1] is not None:
        text = io.StringIO()
        stats = pstats.Stats(slowest[1], stream=text)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(25)
        which = f"drop {args.profile_drop}" if args.profile_drop else "the slowest drop"
        print(f"n={n}: profile of {which} ({slowest[0]:.2f}s)\n{text.getvalue()}")
    return result


def _row(drop: dict[str, Any]) -> str:
    parts = [f"{drop['total']:.2f}s (cpu {drop['cpu']:.2f})"]
    parts += [f"{k} {drop[k]:.2f}" for k in ("scan", "hash", "cluster", "write")]
    if "planned" in drop:
        parts.append(
            f"| write: {drop['planned']}, delta {drop.get('write_delta_wall', 0):.2f}s "
            f"(cpu {drop.get('write_delta_cpu', 0):.2f}), sync {drop['sync']:.2f}, "
            f"gc {drop['gc']:.2f}, {drop['written']} objects ({drop['recycled']} recycled), "
            f"{drop['links']} links +, {drop['removed']} -, {drop['renamed']} renamed, "
            f"{drop['copied']} copied, {drop.get('threaded', 0)} patches in the second thread"
        )
    parts.append(
        f"| idle before: spares {drop['spares_s']:.1f}s, {drop['spare_links']} links, "
        f"{drop['spares_left']} left"
    )
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[5000, 20000],
                        help="library sizes, side by side (default 5000 20000)")
    parser.add_argument("--dir", default="/tmp/bench_refresh",
                        help="where the libraries are made and kept (n<N> each)")
    parser.add_argument("--library", help="use this generated library (one --n only)")
    parser.add_argument("--drops", type=int, default=5, help="+1 refreshes per size (5)")
    parser.add_argument("--gap", type=float, default=20.0,
                        help="idle seconds before each drop, spares made meanwhile (20)")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="generation_grace: old generations kept this long (10)")
    parser.add_argument("--keep-output", action="store_true",
                        help="keep the library's output: the first refresh reuses its folders")
    parser.add_argument("--profile", action="store_true",
                        help="print a cProfile of the slowest drop of each size")
    parser.add_argument("--profile-drop", type=int, metavar="K",
                        help="print a cProfile of drop K (from 1) instead of the slowest")
    parser.add_argument("--size", action="store_true",
                        help="measure the output area (entries, inodes, bytes) after the first "
                             "write")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.library and len(args.n) != 1:
        parser.error("--library takes one --n")
    results = [run_size(args, n) for n in args.n]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    results = [r for r in results if r["drops"]]
    if not results:
        return 0
    print("\nN        +1 median   cluster   write    (each drop's total)")
    for r in results:
        drops = " / ".join(f"{d['total']:.2f}" for d in r["drops"])
        print(f"{r['n']:<8} {r['median_total']:8.2f}s {r['median_cluster']:8.2f}s "
              f"{r['median_write']:7.2f}s   ({drops})")
    base = results[0]
    for r in results[1:]:
        print(f"ratio {r['n']}/{base['n']}: +1 {r['median_total'] / base['median_total']:.2f}x, "
              f"cluster {r['median_cluster'] / max(base['median_cluster'], 1e-9):.2f}x, "
              f"write {r['median_write'] / max(base['median_write'], 1e-9):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
