"""A real-sized photo library under the running daemon: what the first index and each kind of
change cost at 5,000, 20,000 and 100,000 photos.

For each N, a generated library (see :func:`make_library`: small JPEGs, 30 % of them in
near-duplicate groups of 2-6 -- noisy, re-encoded and brightened variants of one picture, so the
clusters at low thresholds are real groups, not only chance) is indexed by the real daemon
(``imgclusterd run`` in a subprocess, the 14 default algorithms, real hashing of every file:
64x64 JPEGs, so ``decode`` makes no difference and the default ``exact`` is used). Then, each
measured from the file operation until ``OUTPUT`` names a generation that shows it, minus the
debounce, with the daemon's own split (scan / hash / cluster / write) from its log:

  index     the first index: scan + hash + cluster + write, and the daemon's resident memory
            (main process and every worker: the sum of their RSS, and of their PSS) once idle,
            i.e. once the hashing workers have stopped (``--idle-wait``), and its peak
  +1        one new photo (``--repeat`` drops, median), ``--gap`` seconds of idle time before
            each (the daemon prepares spare folders in idle time)
  -1        one photo deleted
  rename    one photo renamed in its folder (recognised by inode: not re-hashed)
  +100      100 photos copied in at once (refreshes counted)
(The daemon's ``write`` time includes the garbage collection after the swap, so the parts can
add up to more than ``total``.)

  output    the output area on disk: directory entries, inodes and bytes (what ``find`` and
            ``du`` say, in one walk: see :func:`output_size`)

    .venv/bin/python -m benchmarks.bench_library --n 5000 20000 --dir /tmp/bench_library

Libraries are kept in ``--dir`` and reused by a later run with ``--reuse`` (store, output and
all): only the measurements after the index are then repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from benchmarks.bench_daemon import Daemon, timings, write_config
from imgclusterd.daemon import POOL_IDLE_SECONDS
from imgclusterd.output import area_path

_PER_FOLDER = 1000
_GROUP_SHARE = 0.3  # of the photos in near-duplicate groups


def _picture(rng: np.random.Generator) -> Image.Image:
    coarse = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    return Image.fromarray(coarse, "RGB").resize((64, 64), Image.Resampling.BICUBIC)


def _variant(base: Image.Image, kind: int, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """A near-duplicate of ``base`` and its JPEG quality: what a user calls the same photo."""
    if kind == 0:
        return base, 90
    if kind == 1:
        return base, 60  # re-encoded
    if kind == 2:
        return ImageEnhance.Brightness(base).enhance(1.08), 90
    pixels = np.asarray(base, dtype=np.int16) + rng.integers(-6, 7, (64, 64, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"), 85  # noise


def _write_chunk(folder: str, start: int, stop: int, seed: int, prefix: str) -> int:
    """Photos ``start..stop-1`` of a library (deterministic per number, any chunking)."""
    written = 0
    number = start
    while number < stop:
        rng = np.random.default_rng([seed, number])
        # Photo `number` opens a group of `size` (1: a single) in a fixed pattern: about
        # _GROUP_SHARE of the photos end up in groups of 2-6.
        size = 1 if rng.random() >= _GROUP_SHARE / 2.5 else int(rng.integers(2, 7))
        size = min(size, stop - number)
        base = _picture(rng)
        for member in range(size):
            sub = Path(folder) / f"d{(number + member) // _PER_FOLDER:03d}"
            sub.mkdir(parents=True, exist_ok=True)
            image, quality = _variant(base, member % 4, rng)
            image.save(sub / f"{prefix}{number + member:06d}.jpg", quality=quality)
            written += 1
        number += size
    return written


def make_library(folder: Path, count: int, seed: int, prefix: str = "p", jobs: int = 2) -> None:
    """``count`` photos in subfolders of 1,000; groups never straddle a chunk boundary."""
    chunk = 5 * _PER_FOLDER
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [
            pool.submit(_write_chunk, str(folder), start, min(count, start + chunk), seed, prefix)
            for start in range(0, count, chunk)
        ]
        total = sum(f.result() for f in futures)
    assert total == count, (total, count)


def single_photos(folder: Path, count: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        path = folder / f"new{seed}_{number:04d}.jpg"
        _picture(np.random.default_rng([seed, 99, number])).save(path, quality=90)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------ measuring


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (the hashing workers, the fork server)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def memory(pid: int) -> dict[str, float]:
    """Resident memory of ``pid`` and its descendants in MB: RSS summed, PSS summed."""
    rss = pss = 0
    processes = 0
    for proc in descendants(pid):
        try:
            with open(f"/proc/{proc}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
            processes += 1
        except OSError:
            continue
    return {"rss_mb": rss / 1024, "pss_mb": pss / 1024, "processes": processes}


def peak_mb(pid: int) -> float:
    """The highest RSS ``pid`` itself has had (``VmHWM``), in MB."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def idle_memory(pid: int, wait: float) -> dict[str, float]:
    """:func:`memory` once the daemon is idle: its hashing workers stop after two minutes unused
    (``daemon.POOL_IDLE_SECONDS``), so wait up to ``wait`` seconds for the main process to be
    alone, then read; ``waited`` says how long that took, ``peak_main_mb`` the main process's
    high-water mark so far."""
    tick = time.monotonic()
    while time.monotonic() - tick < wait and len(descendants(pid)) > 1:
        time.sleep(2.0)
    result = memory(pid)
    result["waited"] = round(time.monotonic() - tick, 1)
    result["peak_main_mb"] = peak_mb(pid)
    return result


_SETTLED = "after refreshes and idle work"  # the daemon's give_back line once idle work is over


def settled_count(log_path: Path) -> int:
    """How many times the daemon's log says its refreshes and idle work were over."""
    return log_path.read_text(errors="replace").count(_SETTLED) if log_path.exists() else 0


def settle(log_path: Path, wait: float, before: int) -> float:
    """Wait up to ``wait`` seconds for the daemon to log, for the ``before``+1-th time, that
    its refreshes and idle work are over (it then hands its freed memory back: the idle
    state a reading, or a user's next photo, meets); return the seconds waited. Minutes at
    100,000 photos (spares of the folders the next photo changes, the purge of unused ones)."""
    tick = time.monotonic()
    while time.monotonic() - tick < wait and settled_count(log_path) <= before:
        time.sleep(2.0)
    return round(time.monotonic() - tick, 1)


def output_size(output: Path) -> dict[str, int]:
    """Entries, inodes and bytes of the output area (all generations, objects, pool, links):
    what ``find AREA | wc -l``, ``du -s --inodes AREA`` and ``du -s -B1 AREA`` say.

    One walk in this process instead: each directory listed once (``scandir``: an entry's
    inode number comes with the listing), every directory and each distinct inode of the
    rest (a photo's link is one symlink inode hard-linked into every folder that lists it)
    stat'ed once. ``find`` and two ``du`` runs took more than 14 minutes at 100,000 photos
    (23 million entries); this is one pass, the same figures (checked against them at 5,000
    photos with the three commands above, see benchmarks/README.md).
    """
    area = area_path(output)
    top = os.lstat(area)
    entries, dirs, used = 1, 1, top.st_blocks * 512  # (find and du count the area itself)
    others: set[int] = set()
    stack = [os.fspath(area)]
    while stack:
        with os.scandir(stack.pop()) as listing:
            for entry in listing:
                entries += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                    dirs += 1
                    used += entry.stat(follow_symlinks=False).st_blocks * 512
                elif entry.inode() not in others:
                    others.add(entry.inode())
                    used += entry.stat(follow_symlinks=False).st_blocks * 512
    return {"entries": entries, "inodes": dirs + len(others), "bytes": used}


def listed(output: Path, target: str) -> bool:
    """Does the current generation list ``target`` (first algorithm, threshold 0)?"""
    root = Path(os.path.realpath(output))
    algorithm = sorted(os.listdir(root))[0]
    first = sorted(os.listdir(root / algorithm))[0]
    for directory, _, files in os.walk(root / algorithm / first, followlinks=True):
        for name in files:
            if os.readlink(os.path.join(directory, name)) == target:
                return True
    return False


#: Counts in the daemon's refresh line (the rest are seconds).
_COUNTS_RE = re.compile(r"(\d+) (renamed|copied)\b")
_COUNTS = ("refreshes", "renamed", "copied")


def change(daemon: Daemon, action: Any, visible: Any, debounce: float) -> dict[str, float]:
    """Do ``action()``; wait until a new generation makes ``visible()`` true; the timings."""
    output = daemon.config.output
    lines_before = len(daemon.refresh_lines())
    before = os.readlink(output)
    action()
    started = time.monotonic()
    swapped = None
    while True:
        now = os.readlink(output)
        if now != before:  # a new generation: does it show the change yet?
            swapped, before = time.monotonic(), now
        if swapped is not None and visible():
            break
        if time.monotonic() - started > 1800:
            raise TimeoutError("not visible within 1800 s")
        time.sleep(0.005 if swapped is None else 0.2)
    daemon.wait(lambda: len(daemon.refresh_lines()) > lines_before, 120, step=0.05)
    lines = daemon.refresh_lines()[lines_before:]
    parts: dict[str, float] = {}
    for line in lines:
        for key, value in timings(line).items():
            parts[key] = parts.get(key, 0.0) + value
        # Entries renamed (renumbered clusters): what makes one drop cost more than another.
        for value, key in _COUNTS_RE.findall(line[line.rfind("(") + 1 :]):
            parts[key] = parts.get(key, 0.0) + int(value)
    total = swapped - started - debounce
    parts["total"] = total
    parts["refreshes"] = len(lines)
    return parts


def show(parts: dict[str, float]) -> str:
    return ", ".join(
        f"{k} {v:.0f}" if k in _COUNTS else f"{k} {v:.2f}s" for k, v in parts.items()
    )


def bench(n: int, args: argparse.Namespace) -> dict[str, Any]:
    root = args.dir / f"n{n}"
    result: dict[str, Any] = {"n": n}
    if root.exists() and not args.reuse:
        shutil.rmtree(root)
    images = root / "images"
    if not images.exists():
        tick = time.perf_counter()
        make_library(images, n, seed=n)
        print(f"N={n}: generated {n} photos in {time.perf_counter() - tick:.1f} s", flush=True)
    for leftover in ("new", "burst"):
        shutil.rmtree(images / leftover, ignore_errors=True)
    staging = root / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    # New pictures on every run: a --reuse run's store still knows the last run's drops (kept
    # as vanished rows), and would recognise them as copies instead of hashing them.
    runs = root / "runs"
    run = int(runs.read_text()) + 1 if runs.exists() else 1
    runs.write_text(str(run))
    singles = single_photos(staging / "one", args.repeat, seed=10**7 + n + 10**6 * run)
    burst = single_photos(staging / "burst", args.burst, seed=2 * 10**9 + n + 10**6 * run)
    config = write_config(root, args)

    settled_before = settled_count(root / "daemon.log")
    daemon = Daemon(root, config)
    try:
        tick = time.monotonic()
        daemon.wait(lambda: daemon.settled(n), args.index_timeout, step=2.0)
        lines = daemon.refresh_lines()
        index = {}
        for line in lines:
            for key, value in timings(line).items():
                index[key] = index.get(key, 0.0) + value
        index["total"] = time.monotonic() - tick
        result["index"] = index
        print(f"N={n}: initial index {show(index)} "
              f"(watcher {daemon.status()['watcher']['mode']})", flush=True)
        time.sleep(args.gap)
        if args.settle:  # a running daemon's next photo, not one 20 s after its restart
            result["settled_after_index"] = settle(daemon.log_path, args.settle, settled_before)
            print(f"N={n}: idle work after the index over in "
                  f"{args.gap + result['settled_after_index']:.0f} s", flush=True)
        result["memory_idle"] = idle_memory(daemon.proc.pid, args.idle_wait)
        print(f"N={n}: idle after index: {result['memory_idle']}", flush=True)

        count = n
        drops = []
        (images / "new").mkdir()
        for number, staged in enumerate(singles):
            time.sleep(args.gap)
            target = images / "new" / staged.name

            def drop(staged: Path = staged, target: Path = target) -> None:
                with open(target, "wb") as handle:
                    handle.write(staged.read_bytes())

            parts = change(daemon, drop, lambda t=str(target): listed(daemon.config.output, t),
                           args.debounce)
            count += 1
            daemon.wait(lambda c=count: daemon.settled(c), 600, step=0.2)
            drops.append(parts)
            print(f"N={n}: +1 #{number + 1}: {show(parts)}", flush=True)
        result["add_one"] = drops
        result["add_one_median"] = statistics.median(d["total"] for d in drops)
        print(f"N={n}: +1 median {result['add_one_median']:.2f} s", flush=True)
        # Which drop costs what is mostly how many clusters it renumbers (where the photo
        # lands in the numbering by size and first path): a median of few drops moves with it.
        by_renames = sorted(drops, key=lambda d: d.get("renamed", 0))
        print(f"N={n}: +1 by entries renamed: " + ", ".join(
            f"{d.get('renamed', 0):.0f} -> {d['total']:.2f} s" for d in by_renames), flush=True)

        # Delete and rename photos of the drops: the library itself stays as generated.
        victim = images / "new" / singles[0].name
        time.sleep(args.gap)
        result["delete_one"] = change(
            daemon, victim.unlink, lambda: not listed(daemon.config.output, str(victim)),
            args.debounce,
        )
        count -= 1
        daemon.wait(lambda c=count: daemon.settled(c), 600, step=0.2)
        print(f"N={n}: -1: {show(result['delete_one'])}", flush=True)

        moved_from = images / "new" / singles[-1].name
        moved_to = images / "new" / f"renamed-{singles[-1].name}"
        time.sleep(args.gap)
        result["rename_one"] = change(
            daemon, lambda: os.rename(moved_from, moved_to),
            lambda: listed(daemon.config.output, str(moved_to)), args.debounce,
        )
        daemon.wait(lambda c=count: daemon.settled(c), 600, step=0.2)
        print(f"N={n}: rename: {show(result['rename_one'])}", flush=True)

        time.sleep(args.gap)
        destination = images / "burst"
        destination.mkdir()

        def copy_burst() -> None:
            for staged in burst:
                shutil.copyfile(staged, destination / staged.name)

        last = str(destination / burst[-1].name)
        count += len(burst)
        settled_before = settled_count(daemon.log_path)
        result["add_burst"] = change(
            daemon, copy_burst,
            lambda: daemon.settled(count) and listed(daemon.config.output, last), args.debounce,
        )
        print(f"N={n}: +{len(burst)} at once: {show(result['add_burst'])}", flush=True)

        time.sleep(args.gap)
        if args.settle:
            result["settled"] = settle(daemon.log_path, args.settle, settled_before)
        result["memory_end"] = idle_memory(daemon.proc.pid, args.idle_wait)
        print(f"N={n}: idle at the end: {result['memory_end']}", flush=True)
    finally:
        code = daemon.stop()
        if code != 0:
            print(f"N={n}: daemon exit code {code}; see {daemon.log_path}", flush=True)
    if not args.no_size:
        result["output"] = output_size(daemon.config.output)
        print(f"N={n}: output area {result['output']}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[5000, 20000, 100000])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench_library"))
    parser.add_argument("--reuse", action="store_true",
                        help="keep an existing library, store and output (index is then quick)")
    parser.add_argument("--repeat", type=int, default=5, help="single-photo drops per N")
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--gap", type=float, default=10.0,
                        help="seconds of idle time before each change (spares are made then)")
    parser.add_argument("--debounce", type=float, default=0.5)
    parser.add_argument("--max-delay", type=float, default=10.0)
    parser.add_argument("--poll-interval", type=float, default=0.5)
    parser.add_argument("--watcher", default="auto", choices=["auto", "inotify", "polling"])
    parser.add_argument("--workers", type=int, default=0, help="0 = one per core")
    parser.add_argument("--grace", type=float, default=None,
                        help="generation_grace (default: the config default, 60 s)")
    parser.add_argument("--idle-wait", type=float, default=POOL_IDLE_SECONDS + 30.0,
                        help="seconds to wait, before reading idle memory, for the hashing "
                             f"workers to stop (they stop after {POOL_IDLE_SECONDS:.0f} s unused)")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="after the index (before the first drop) and after the last "
                             "change (before the idle reading at the end), wait up to this many "
                             "seconds for the daemon to log that its idle work is over and it "
                             "handed its freed memory back (spares and purge: minutes at "
                             "100,000 photos); 0: do not wait")
    parser.add_argument("--ratio-to", type=int, default=None, metavar="N",
                        help="the size whose +1 median the summary's ratios are against "
                             "(default: the first of --n)")
    parser.add_argument("--index-timeout", type=float, default=4 * 3600.0)
    parser.add_argument("--no-size", action="store_true",
                        help="skip measuring the output area (a walk of every entry)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="another config setting, as a TOML line (repeatable), e.g. "
                             "--set explorer=false")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, debounce {args.debounce}s, "
          f"gap {args.gap}s, generation_grace "
          f"{'default' if args.grace is None else args.grace}"
          + "".join(f", {setting}" for setting in args.set or []), flush=True)
    results = []
    for n in args.n:
        results.append(bench(n, args))
        (args.dir / "results.json").write_text(json.dumps(results, indent=1))
    print_summary(results, args.ratio_to)
    return 0


def print_summary(results: list[dict[str, Any]], ratio_to: int | None = None) -> None:
    """One line per N, and each N's +1 against the ``ratio_to`` N's (default the first N's;
    the issue's ratio is 20,000 against 5,000)."""
    bases = [r for r in results if ratio_to is None or r["n"] == ratio_to]
    base = bases[0].get("add_one_median") if bases else None
    against = f"vs {bases[0]['n']}" if bases else "vs -"
    print(f"\nN        +1 median  {against:>9}  -1       rename   +100     idle RSS/PSS MB")
    for r in results:
        median = r.get("add_one_median")
        ratio = f"{median / base:.2f}x" if median and base else "-"
        idle = r.get("memory_idle", {})
        print(
            f"{r['n']:<8} {median or float('nan'):>7.2f} s  {ratio:>9}  "
            f"{r.get('delete_one', {}).get('total', float('nan')):>6.2f} s "
            f"{r.get('rename_one', {}).get('total', float('nan')):>6.2f} s "
            f"{r.get('add_burst', {}).get('total', float('nan')):>6.2f} s "
            f"{idle.get('rss_mb', float('nan')):>7.0f}/{idle.get('pss_mb', float('nan')):.0f}",
            flush=True,
        )


if __name__ == "__main__":
    raise SystemExit(main())
