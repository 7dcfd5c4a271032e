"""Mount mode at library size: the daemon serving the tree as a FUSE view of 100,000 photos.

The library is generated cheaply: ``--n`` one-byte ``.jpg`` files (the daemon only stats them:
their rows are already in the store) and, for each, generated hashes for the 14 default
algorithms inserted directly into a store (30 % of the photos in near-duplicate groups of 2-6:
a few bits flipped from the group's first hash, so low thresholds have real clusters). Then the
real daemon (``imgclusterd run``, ``output_mode = "mount"``) starts on it, and:

  start     its first refresh: walk + the 14 spanning forests built from scratch (no output is
            written in mount mode); the daemon's resident memory (main + workers) once idle
  list      folders listed through the mount by this process (``os.listdir``, a separate
            process from the server), cold (first listing in this snapshot) and warm:
            an algorithm folder, the threshold folder with the most clusters, the largest
            unclustered folder and the largest cluster, over all algorithms
  +1        one real JPEG dropped in: from the file's close until the mount lists it, minus the
            debounce, beside the daemon's own clustering time for that refresh
  memory    the daemon's resident memory after the listings (their caches included)

``--cluster-n`` also measures, in fresh subprocesses, what bounds a larger library: building
one algorithm's spanning forest from scratch (Prim, O(N^2 x words)) for a 1-word (64-bit) and
a 7-word (400-bit) hash at each N, time and peak memory, and extrapolates the 14 algorithms'
total to 1,000,000 photos.

    .venv/bin/python -m benchmarks.bench_mount --n 100000 --dir /tmp/bench_mount
    .venv/bin/python -m benchmarks.bench_mount --cluster-only --cluster-n 100000 200000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.bench_daemon import Daemon, timings
from imgclusterd.algorithms import DEFAULT_ALGORITHMS
from imgclusterd.store import STORE_NAME, Store

_PER_FOLDER = 1000
_GROUP_SHARE = 0.3


def make_library(root: Path, n: int, seed: int = 7) -> None:
    """``n`` files and a store that already knows them (see the module doc)."""
    images, state = root / "images", root / "state"
    images.mkdir(parents=True)
    state.mkdir()
    rng = np.random.default_rng(seed)
    algorithms = DEFAULT_ALGORITHMS
    nbytes = {a.name: (a.bits + 7) // 8 for a in algorithms}
    base = {a.name: rng.integers(0, 256, (n, nbytes[a.name]), dtype=np.uint8) for a in algorithms}
    # Groups: photo i copies photo i-1's hashes with a few bits flipped, for ~30 % of photos.
    follows = rng.random(n) < _GROUP_SHARE * 0.8
    follows[0] = False
    for a in algorithms:
        rows = base[a.name]
        for k in np.flatnonzero(follows).tolist():
            rows[k] = rows[k - 1]
            for bit in rng.integers(0, a.bits, int(rng.integers(0, max(2, a.bits // 16)))):
                rows[k, bit // 8] ^= 0x80 >> (bit % 8)
    store = Store.open(state / STORE_NAME)
    now = time.time()
    with store.transaction():
        for i in range(n):
            folder = images / f"f{i // _PER_FOLDER:04d}"
            if i % _PER_FOLDER == 0:
                folder.mkdir()
            path = folder / f"IMG_{i:07d}.jpg"
            path.write_bytes(b"x")
            st = path.stat()
            facts = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
            hashes = {a.name: base[a.name][i].tobytes() for a in algorithms}
            store.put_hashed(os.path.relpath(path, images), facts, None, hashes, "exact", now)
    store.close()


def memory(pid: int) -> tuple[int, int]:
    """Resident and proportional (PSS: shared pages split among their users) bytes of ``pid``
    and its children (the hashing pool)."""
    rss = pss = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, pss


def mib(pid: int) -> str:
    rss, pss = memory(pid)
    return f"RSS {rss / 2**20:.0f} MiB, PSS {pss / 2**20:.0f} MiB"


_SERVER: list[int] = []  # the daemon's pid, for its CPU time per listing


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_listdir(path: Path) -> tuple[float, int]:
    """Wall seconds of one os.listdir through the mount, and its entries; the daemon's CPU
    seconds for it are appended to ``SERVER_CPU`` (wall time on a loaded machine also holds
    waiting for a core and for the GIL)."""
    cpu = cpu_seconds(_SERVER[0]) if _SERVER else 0.0
    started = time.perf_counter()
    entries = os.listdir(path)
    wall = time.perf_counter() - started
    if _SERVER:
        SERVER_CPU.append(cpu_seconds(_SERVER[0]) - cpu)
    return wall, len(entries)


SERVER_CPU: list[float] = []


def measure_listings(view: Path) -> list[dict[str, Any]]:
    results = []
    largest_unclustered: tuple[int, Path] = (-1, view)
    largest_cluster: tuple[int, Path] = (-1, view)
    most_clusters: tuple[int, Path] = (-1, view)
    for algo in sorted(e.name for e in os.scandir(view) if e.is_dir()):
        cold, count = timed_listdir(view / algo)
        results.append({"folder": algo, "entries": count, "cold": cold,
                        "warm": timed_listdir(view / algo)[0]})
        for folder in os.listdir(view / algo):
            unclustered = int(folder.rsplit("_", 1)[1])
            if unclustered > largest_unclustered[0]:
                largest_unclustered = (unclustered, view / algo / folder / f"unclustered_"
                                       f"{unclustered}")
        # The first cluster is the largest; the top threshold has the largest clusters.
        top = max(os.listdir(view / algo), key=lambda f: int(f.split("_")[1]))
        cold, count = timed_listdir(view / algo / top)
        results.append({"folder": f"{algo}/{top}", "entries": count, "cold": cold,
                        "warm": timed_listdir(view / algo / top)[0]})
        first = sorted(e for e in os.listdir(view / algo / top) if e.startswith("001_"))
        if first and int(first[0].split("_")[1]) > largest_cluster[0]:
            largest_cluster = (int(first[0].split("_")[1]), view / algo / top / first[0])
        # The threshold folder with the most entries: low thresholds have the most clusters.
        for folder in sorted(os.listdir(view / algo))[:3]:
            if algo.endswith("_8"):
                count = len(os.listdir(view / algo / folder))
                if count > most_clusters[0]:
                    most_clusters = (count, view / algo / folder)
    for what, (_, path) in (("largest unclustered", largest_unclustered),
                            ("largest cluster", largest_cluster),
                            ("most clusters", most_clusters)):
        cold, count = timed_listdir(path)
        warm = timed_listdir(path)[0]
        results.append({"folder": f"{what}: {path.relative_to(view)}", "entries": count,
                        "cold": cold, "warm": warm, "cpu": SERVER_CPU[-2:]})
    return results


def drop_one(daemon: Daemon, root: Path, debounce: float) -> dict[str, float]:
    view = daemon.config.output
    lines_before = len(daemon.refresh_lines())
    before = {f for f in os.listdir(view / "phash_8") if f.startswith("thr_000_")}
    drop = len(list((root / "images" / "new").glob("*.jpg"))) if (root / "images" / "new"
                                                                   ).is_dir() else 0
    rng = np.random.default_rng(99 + drop)  # a new photo each time, not the same one again
    image = Image.fromarray(rng.integers(0, 256, (48, 64, 3), np.uint8))
    target = root / "images" / "new" / f"dropped{drop}.jpg"
    target.parent.mkdir(exist_ok=True)
    image.resize((320, 240)).save(target, quality=90)
    closed = time.monotonic()
    while True:
        now = {f for f in os.listdir(view / "phash_8") if f.startswith("thr_000_")}
        if now != before:
            break
        if time.monotonic() - closed > 1200:
            raise TimeoutError("the new photo did not appear within 1200 s")
        time.sleep(0.01)
    seen = time.monotonic()
    daemon.wait(lambda: len(daemon.refresh_lines()) > lines_before, 120, step=0.05)
    parts = timings(daemon.refresh_lines()[lines_before])
    parts["visible"] = seen - closed - debounce
    return parts


def bench_daemon(args: argparse.Namespace) -> None:
    root = args.dir
    if root.exists() and not args.reuse:
        shutil.rmtree(root)
    if not root.exists():
        started = time.monotonic()
        make_library(root, args.n)
        print(f"library of {args.n:,} photos made in {time.monotonic() - started:.0f} s")
    config = root / "cfg.toml"
    config.write_text(
        f'images = "{root / "images"}"\noutput = "{root / "view"}"\n'
        f'state_dir = "{root / "state"}"\noutput_mode = "mount"\n'
        f'debounce = {args.debounce}\nmax_delay = 30\nwatcher = "auto"\n'
        f"poll_interval = {args.poll_interval}\nworkers = 1\n"
        + "".join(f'[[algorithms]]\nname = "{a.name}"\nmax_threshold = {a.max_threshold}\n'
                  f"step = {a.step}\n" for a in DEFAULT_ALGORITHMS
                  if not args.algorithms or a.name in args.algorithms)
    )
    log_path = root / "daemon.log"
    earlier = log_path.read_text(errors="replace").count("refresh done") if log_path.exists() else 0
    daemon = Daemon(root, config)
    _SERVER[:] = [daemon.proc.pid]
    try:
        started = time.monotonic()
        daemon.wait(lambda: len(daemon.refresh_lines()) > earlier
                    and daemon.status()["phase"] == "idle", timeout=7200, step=1.0)
        first = timings(daemon.refresh_lines()[earlier])
        print(f"start: first refresh {time.monotonic() - started:.0f} s "
              f"({json.dumps(first)}), daemon {mib(daemon.proc.pid)}")
        print("| folder | entries | cold s | warm s | daemon CPU s (cold, warm) |\n"
              "|---|---:|---:|---:|---:|")
        listings = measure_listings(root / "view")
        for row in listings:
            cpu = ", ".join(f"{c:.2f}" for c in row.get("cpu", []))
            print(f"| {row['folder']} | {row['entries']:,} | {row['cold']:.3f} | "
                  f"{row['warm']:.3f} | {cpu} |")
        print(f"slowest listing: {max(r['cold'] for r in listings):.3f} s cold, "
              f"{max(r['warm'] for r in listings):.3f} s warm")
        print(f"daemon after the listings: {mib(daemon.proc.pid)}")
        for _ in range(args.repeat):
            parts = drop_one(daemon, root, args.debounce)
            print(f"+1: visible {parts['visible']:.2f} s after close (minus debounce); daemon "
                  f"refresh {json.dumps(parts)}")
            daemon.wait(lambda: daemon.status()["phase"] == "idle", 600, step=0.2)
        print(f"daemon at the end: {mib(daemon.proc.pid)}")
    finally:
        daemon.proc.terminate()
        daemon.proc.wait(timeout=120)


_FOREST = """
import resource, sys, time
import numpy as np
from imgclusterd.cluster import spanning_forest
n, nbytes, limit = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
packed = np.random.default_rng(1).integers(0, 256, (n, nbytes), dtype=np.uint8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.process_time()
wall = time.perf_counter()
forest = spanning_forest(packed, limit)
print(time.process_time() - started, time.perf_counter() - wall,
      (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024,
      packed.nbytes + forest.u.nbytes + forest.v.nbytes + forest.w.nbytes)
"""


def bench_clustering(sizes: list[int]) -> None:
    widths = {"phash_8 (64 bits, 1 word)": (8, 19), "dhash_20 (400 bits, 7 words)": (50, 195)}
    print("| algorithm | N | CPU s | wall s | peak extra RSS MiB | kept (hashes + forest) MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    cpu: dict[tuple[str, int], float] = {}
    for name, (nbytes, limit) in widths.items():
        for n in sizes:
            out = subprocess.run([sys.executable, "-c", _FOREST, str(n), str(nbytes), str(limit)],
                                 capture_output=True, text=True, check=True).stdout.split()
            seconds, wall, peak, kept = float(out[0]), float(out[1]), int(out[2]), int(out[3])
            cpu[(name, n)] = seconds
            print(f"| {name} | {n:,} | {seconds:.1f} | {wall:.1f} | {peak / 2**20:.0f} | "
                  f"{kept / 2**20:.1f} |", flush=True)
    largest = max(sizes)
    one, seven = cpu[(next(iter(widths)), largest)], cpu[(list(widths)[1], largest)]
    # The 14 defaults: 4 algorithms of 1 word, 3 of 3, 4 of 4, 3 of 7. A step of Prim costs a
    # fixed part plus a part per word: fit both from the 1- and 7-word measurements.
    per_word = (seven - one) / 6
    fixed = one - per_word
    total = sum(fixed + per_word * words for words in [1] * 4 + [3] * 3 + [4] * 4 + [7] * 3)
    factor = (1_000_000 / largest) ** 2
    print(f"14 algorithms at {largest:,}: ~{total:.0f} CPU s; at 1,000,000 (x{factor:.0f}, "
          f"O(N^2)): ~{total * factor / 3600:.1f} CPU hours for a from-scratch build")
    # What the forests keep is linear: each algorithm's packed hashes plus 10 bytes an edge.
    kept = sum((a.bits + 7) // 8 + 10 for a in DEFAULT_ALGORITHMS)
    print(f"kept by the 14 forests (hashes + edges): {kept} B a photo, "
          f"{kept * 1_000_000 / 2**20:.0f} MiB at 1,000,000")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench_mount"))
    parser.add_argument("--reuse", action="store_true", help="keep an existing library")
    parser.add_argument("--debounce", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=3, help="+1 drops")
    parser.add_argument("--poll-interval", type=float, default=1.0,
                        help="where inotify watches are exhausted the daemon polls the whole "
                        "folder this often, which competes with the FUSE server for the GIL")
    parser.add_argument("--algorithms", nargs="*", default=[],
                        help="serve only these (the store has all 14): the daemon's start-up "
                        "builds one forest per algorithm, O(N^2) each")
    parser.add_argument("--cluster-n", type=int, nargs="*", default=[])
    parser.add_argument("--cluster-only", action="store_true")
    args = parser.parse_args()
    if not args.cluster_only:
        bench_daemon(args)
    if args.cluster_n:
        bench_clustering(args.cluster_n)


if __name__ == "__main__":
    main()
