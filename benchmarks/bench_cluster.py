"""Benchmark imgclusterd.cluster: spanning forests + sweeps for the 14 default algorithms.

    python -m benchmarks.bench_cluster --n 10000 20000 50000
    python -m benchmarks.bench_cluster --n 10000 --incremental 1000 5000 20000 --workers 2

Each N runs in a fresh subprocess so that peak memory (the growth of the process's max RSS
across the clustering phase, after the input hashes exist) belongs to that N alone. Hashes are
synthetic: random hashes plus planted near-duplicate groups (a base hash with a few per cent of
its bits flipped).
This is a measurement, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from imgclusterd.algorithms import DEFAULT_ALGORITHMS, Algorithm
from imgclusterd.cluster import extend_forest, remove_from_forest, spanning_forests, sweep


def synthetic(n: int, bits: int, rng: np.random.Generator, share: float = 0.3) -> np.ndarray:
    """(n, nbytes) packed hashes: ``share`` of them in near-duplicate groups of 2..6.

    Works on packed bytes in blocks so that generating the data never raises the process's
    peak memory above what the clustering itself needs.
    """
    nbytes = (bits + 7) // 8
    packed = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    planted = int(n * share)
    sizes = rng.integers(2, 7, size=planted)
    base = np.repeat(np.cumsum(np.concatenate([[0], sizes[:-1]])), sizes)[:planted]
    for start in range(0, planted, 4096):
        rows = np.arange(start, min(start + 4096, planted))
        rate = rng.uniform(0.01, 0.06, size=(len(rows), 1)).astype(np.float32)
        flips = rng.random((len(rows), bits), dtype=np.float32) < rate
        packed[rows] = packed[base[rows]] ^ np.packbits(flips, axis=1)
    if bits % 8:  # packbits leaves the padding bits of the last byte at zero
        packed[:, -1] &= np.uint8((0xFF << (8 - bits % 8)) & 0xFF)
    return packed[rng.permutation(n)]


def limit_of(algorithm: Algorithm) -> int:
    return max(algorithm.thresholds)


def hashes_for(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [synthetic(n, a.bits, rng) for a in DEFAULT_ALGORITHMS]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_full(n: int, workers: int) -> dict:
    """One N: all 14 forests (one lockstep call) + every threshold's partition."""
    packed = hashes_for(n, seed=n)
    limits = [limit_of(a) for a in DEFAULT_ALGORITHMS]
    base_rss = rss_mb()
    t0 = time.perf_counter()
    forests = spanning_forests(packed, limits, workers=workers)
    t1 = time.perf_counter()
    clusters = 0
    for a, forest in zip(DEFAULT_ALGORITHMS, forests, strict=True):
        clusters += sum(len(p.clusters) for p in sweep(forest, a.thresholds))
    t2 = time.perf_counter()
    input_mb = sum(p.nbytes for p in packed) / 2**20
    return {
        "n": n,
        "workers": workers,
        "forest_s": round(t1 - t0, 2),
        "sweep_s": round(t2 - t1, 2),
        "total_s": round(t2 - t0, 2),
        "input_mb": round(input_mb, 2),
        "rss_before_mb": round(base_rss, 1),
        "max_rss_mb": round(rss_mb(), 1),
        "growth_mb": round(rss_mb() - base_rss, 1),
        "clusters_all_thresholds": clusters,
    }


def run_incremental(n: int, workers: int, added: tuple[int, ...] = (1, 500)) -> dict:
    """Index n images, then add k more (extend_forest + sweep) vs recomputing everything."""
    biggest = max(added)
    packed = hashes_for(n + biggest, seed=7 * n)
    limits = [limit_of(a) for a in DEFAULT_ALGORITHMS]
    t0 = time.perf_counter()
    base = spanning_forests([p[:n] for p in packed], limits, workers=workers)
    result: dict = {"n": n, "initial_build_s": round(time.perf_counter() - t0, 2)}
    for k in added:
        t0 = time.perf_counter()
        for a, forest, p in zip(DEFAULT_ALGORITHMS, base, packed, strict=True):
            grown = extend_forest(forest, p[: n + k], np.arange(n, n + k), limit_of(a))
            sweep(grown, a.thresholds)
        incremental = time.perf_counter() - t0
        t0 = time.perf_counter()
        full = spanning_forests([p[: n + k] for p in packed], limits, workers=workers)
        for a, forest in zip(DEFAULT_ALGORITHMS, full, strict=True):
            sweep(forest, a.thresholds)
        scratch = time.perf_counter() - t0
        result[f"add_{k}"] = {
            "incremental_s": round(incremental, 3),
            "full_s": round(scratch, 3),
            "speedup": round(scratch / incremental, 1),
        }
    # Removing one random image (reconnects the broken tree's pieces).
    victim = np.array([n // 3])
    t0 = time.perf_counter()
    for a, forest, p in zip(DEFAULT_ALGORITHMS, base, packed, strict=True):
        shrunk, _ = remove_from_forest(forest, p[:n], victim, limit_of(a))
        sweep(shrunk, a.thresholds)
    result["remove_1_s"] = round(time.perf_counter() - t0, 3)
    return result


def child(args: argparse.Namespace) -> None:
    if args.child_mode == "full":
        out = run_full(args.child_n, args.workers)
    else:
        out = run_incremental(args.child_n, args.workers)
    print(json.dumps(out))


def in_subprocess(mode: str, n: int, workers: int) -> dict:
    cmd = [
        sys.executable, "-m", "benchmarks.bench_cluster",
        "--child-mode", mode, "--child-n", str(n), "--workers", str(workers),
    ]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="*", default=[10_000, 20_000],
                        help="image counts for the full build (default: 10000 20000)")
    parser.add_argument("--incremental", type=int, nargs="*", default=[1_000, 5_000, 20_000],
                        help="indexed sizes for the add-1 / add-500 comparison ([] to skip)")
    parser.add_argument("--workers", type=int, default=1,
                        help="threads for spanning_forests (default 1)")
    parser.add_argument("--child-mode", choices=["full", "incremental"], help=argparse.SUPPRESS)
    parser.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_mode:
        child(args)
        return
    print(f"14 algorithms: {', '.join(a.name for a in DEFAULT_ALGORITHMS)}")
    print(f"{'N':>7} {'forest s':>9} {'sweep s':>8} {'total s':>8} {'input MB':>9} "
          f"{'RSS before MB':>14} {'max RSS MB':>11} {'growth MB':>10} {'growth/N (B)':>13}")
    for n in args.n:
        r = in_subprocess("full", n, args.workers)
        print(f"{n:>7} {r['forest_s']:>9} {r['sweep_s']:>8} {r['total_s']:>8} "
              f"{r['input_mb']:>9} {r['rss_before_mb']:>14} {r['max_rss_mb']:>11} "
              f"{r['growth_mb']:>10} {r['growth_mb'] * 2**20 / n:>13.0f}", flush=True)
    if args.incremental:
        print("\nincremental, all 14 algorithms: extend_forest + sweep"
              " vs spanning_forests + sweep (ratio = full / incremental)")
        print(f"{'N':>7} {'build s':>8} {'add 1 s':>8} {'full s':>7} {'ratio':>6} "
              f"{'add 500 s':>10} {'full s':>7} {'ratio':>6} {'remove 1 s':>11}")
        for n in args.incremental:
            r = in_subprocess("incremental", n, args.workers)
            a1, a500 = r["add_1"], r["add_500"]
            print(f"{n:>7} {r['initial_build_s']:>8} {a1['incremental_s']:>8} {a1['full_s']:>7} "
                  f"{a1['speedup']:>6} {a500['incremental_s']:>10} {a500['full_s']:>7} "
                  f"{a500['speedup']:>6} {r['remove_1_s']:>11}", flush=True)


if __name__ == "__main__":
    main()
