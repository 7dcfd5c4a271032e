"""Benchmark the hashing stage against the one-shot script's way of hashing.

    python -m benchmarks.bench_hashing                      # 15 sources x 5 variants, 12 MP
    python -m benchmarks.bench_hashing --sources 4 --baseline-images 4   # quick look

In one run, on the corpus of :mod:`benchmarks.corpus`:

1. baseline: for each image and each algorithm, ``Image.open`` + the ImageHash function, one
   process, sequential (as the script did), timed on a subset and reported per image;
2. imgclusterd exact through :class:`HashPool` with all cores (and, for reference, in-process on
   the baseline subset, which separates the one-decode gain from the parallel gain);
3. fast mode through the pool;
4. fast-mode deviation from exact per algorithm;
5. pairwise precision/recall of the clusters (connected components at ``d <= t``) against the
   known near-duplicate groups, exact and fast, at representative thresholds of each sweep.

Timings are wall-clock on whatever else the machine is doing; compare ratios within one run.
This is a measurement, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from benchmarks.corpus import Corpus, build_corpus
from imgclusterd.algorithms import DEFAULT_ALGORITHMS, Algorithm, unpack_bits
from imgclusterd.hashing import HashPlan, hash_file
from imgclusterd.pool import HashPool

_FUNCTIONS = {
    "phash": imagehash.phash,
    "average_hash": imagehash.average_hash,
    "dhash": imagehash.dhash,
    "whash": imagehash.whash,
}


def baseline_seconds_per_image(paths: list[Path], algorithms: tuple[Algorithm, ...]) -> float:
    """The script: open the file again for every algorithm and call ImageHash."""
    started = time.perf_counter()
    for path in paths:
        for algo in algorithms:
            _FUNCTIONS[algo.kind](Image.open(path), hash_size=algo.hash_size)
    return (time.perf_counter() - started) / len(paths)


def in_process_seconds_per_image(paths: list[Path], plan: HashPlan) -> float:
    started = time.perf_counter()
    for path in paths:
        hash_file(str(path), plan)
    return (time.perf_counter() - started) / len(paths)


def run_pool(paths: list[Path], plan: HashPlan, workers: int | None
             ) -> tuple[float, dict[str, dict[str, bytes]]]:
    """Wall seconds for the whole corpus through the pool (worker start-up included)."""
    started = time.perf_counter()
    with HashPool(plan, workers=workers) as pool:
        results = {r.path: r for r in pool.map([str(p) for p in paths])}
    elapsed = time.perf_counter() - started
    failed = [r for r in results.values() if r.error or r.unstable]
    if failed:
        raise SystemExit(f"{len(failed)} files failed, e.g. {failed[0]}")
    return elapsed, {Path(p).name: r.hashes for p, r in results.items()}


def bit_distance(a: bytes, b: bytes) -> int:
    xor = np.bitwise_xor(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8))
    return int(np.unpackbits(xor).sum())


def distances(hashes: dict[str, dict[str, bytes]], names: list[str], algo: Algorithm
              ) -> np.ndarray:
    flags = np.array([unpack_bits(hashes[n][algo.name], algo.bits) for n in names])
    return (flags[:, None, :] != flags[None, :, :]).sum(axis=2)


def precision_recall(dist: np.ndarray, groups: np.ndarray, threshold: int, max_threshold: int
                     ) -> tuple[float, float]:
    """Pairwise scores of the clusters (components of d <= t, d < max) vs the true groups."""
    n = len(groups)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero((dist <= threshold) & (dist < max_threshold)), strict=True):
        if i < j:
            parent[find(i)] = find(j)
    clusters = np.array([find(i) for i in range(n)])
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    predicted = (clusters[:, None] == clusters[None, :]) & upper
    actual = (groups[:, None] == groups[None, :]) & upper
    tp = int((predicted & actual).sum())
    precision = tp / predicted.sum() if predicted.sum() else 1.0
    recall = tp / actual.sum() if actual.sum() else 1.0
    return float(precision), float(recall)


def representative(thresholds: range, count: int = 5) -> list[int]:
    values = list(thresholds)
    picks = {values[round(k * (len(values) - 1) / (count - 1))] for k in range(count)}
    return sorted(picks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=None,
                        help="corpus folder (default: a cached one in the temp dir)")
    parser.add_argument("--sources", type=int, default=15, help="source photos (x5 variants)")
    parser.add_argument("--megapixels", type=float, default=12)
    parser.add_argument("--baseline-images", type=int, default=10,
                        help="images the (slow) baseline is timed on")
    parser.add_argument("--workers", type=int, default=None, help="pool size (default: cores)")
    parser.add_argument("--all-thresholds", action="store_true",
                        help="print every threshold of each sweep, not five per algorithm")
    args = parser.parse_args()

    folder = args.corpus or Path(tempfile.gettempdir()) / (
        f"imgclusterd-corpus-{args.sources}x{args.megapixels:g}mp"
    )
    corpus: Corpus = build_corpus(folder, args.sources, args.megapixels)
    paths = corpus.images
    algorithms = DEFAULT_ALGORITHMS
    exact_plan, fast_plan = HashPlan(algorithms), HashPlan(algorithms, decode="fast")
    workers = args.workers or os.cpu_count() or 1
    # The subset mixes groups: every fifth file walks across sources and variants.
    subset = paths[:: max(1, len(paths) // args.baseline_images)][: args.baseline_images]
    with Image.open(paths[0]) as first:
        size = first.size

    print(f"## Hashing benchmark: {len(paths)} JPEGs ({size[0]}x{size[1]} and variants), "
          f"{len(algorithms)} algorithms, {workers} workers, {os.cpu_count()} cores\n")
    # Interleaved per image, so that the three single-process rows share the machine's load.
    base = solo = solo_fast = 0.0
    for path in subset:
        base += baseline_seconds_per_image([path], algorithms) / len(subset)
        solo += in_process_seconds_per_image([path], exact_plan) / len(subset)
        solo_fast += in_process_seconds_per_image([path], fast_plan) / len(subset)
    exact_s, exact = run_pool(paths, exact_plan, args.workers)
    fast_s, fast = run_pool(paths, fast_plan, args.workers)

    rows = [
        ("baseline (script: open + ImageHash per algorithm, 1 process)", base, None),
        ("exact, 1 process (in-process hash_file)", solo, None),
        ("fast, 1 process (in-process hash_file)", solo_fast, None),
        (f"exact, HashPool x{workers}", exact_s / len(paths), len(paths)),
        (f"fast, HashPool x{workers}", fast_s / len(paths), len(paths)),
    ]
    print("| run | s/image | images/s | vs baseline |")
    print("|---|---:|---:|---:|")
    for label, per_image, _ in rows:
        print(f"| {label} | {per_image:.3f} | {1 / per_image:.2f} | {base / per_image:.1f}x |")
    print(f"\n(baseline and 1-process rows timed on {len(subset)} images; pool rows on all "
          f"{len(paths)}, worker start-up included; load average at the end: "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)\n")

    print("### Fast mode vs exact\n")
    print("| algorithm | bits | identical | mean bit diff | max bit diff | max threshold |")
    print("|---|---:|---:|---:|---:|---:|")
    names = sorted(exact)
    for algo in algorithms:
        diffs = [bit_distance(exact[n][algo.name], fast[n][algo.name]) for n in names]
        same = sum(d == 0 for d in diffs) / len(diffs)
        print(f"| {algo.name} | {algo.bits} | {same:.0%} | {np.mean(diffs):.2f} | "
              f"{max(diffs)} | {algo.max_threshold} |")

    print("\n### Cluster precision / recall vs the known groups (pairwise)\n")
    print("| algorithm | threshold | exact P | exact R | fast P | fast R |")
    print("|---|---:|---:|---:|---:|---:|")
    group_of = corpus.group_of()
    groups = np.array([group_of[n] for n in names])
    for algo in algorithms:
        dist_exact = distances(exact, names, algo)
        dist_fast = distances(fast, names, algo)
        sweep = algo.thresholds if args.all_thresholds else representative(algo.thresholds)
        for t in sweep:
            pe, re_ = precision_recall(dist_exact, groups, t, algo.max_threshold)
            pf, rf = precision_recall(dist_fast, groups, t, algo.max_threshold)
            print(f"| {algo.name} | {t} | {pe:.2f} | {re_:.2f} | {pf:.2f} | {rf:.2f} |")


if __name__ == "__main__":
    main()
