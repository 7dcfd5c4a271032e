"""Benchmark the whole ``imgclusterd scan`` against the one-shot script's way, in one run.

    python -m benchmarks.bench_scan                        # 15 sources x 5 variants, 12 MP
    python -m benchmarks.bench_scan --sources 4 --baseline-images 4   # quick look

On the camera-size corpus of :mod:`benchmarks.corpus` (real photographs from skimage.data):

1. baseline: the script's hashing (open + ImageHash per algorithm, one process), timed per image
   on a subset and extrapolated to the corpus, plus the script's clustering and writing of the
   full link tree (all pairs per algorithm, every link written), run for real;
2. ``imgclusterd scan`` as a subprocess (the real command, default 14 algorithms) with
   ``--decode exact`` and ``--decode fast``, each on a fresh store and output; stage times come
   from the store's ``last_refresh`` row (scan, hash, cluster, write);
3. a second ``scan`` of the unchanged folder (the no-op).

Prints images/s and ratios for the hashing stage and the whole scan, with output writing shown
separately. Wall-clock on a shared machine: compare ratios within one run. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imagehash

from benchmarks.bench_hashing import baseline_seconds_per_image
from benchmarks.corpus import build_corpus
from imgclusterd.algorithms import DEFAULT_ALGORITHMS, unpack_bits


def script_cluster_and_write(hashes: dict[str, dict[str, imagehash.ImageHash]], images: Path,
                             out: Path) -> float:
    """The script's clustering (all pairs, per threshold) and its full link tree, timed."""
    started = time.perf_counter()
    for algo in DEFAULT_ALGORITHMS:
        per_file = hashes[algo.name]
        files = sorted(per_file)
        diffs = [(per_file[a] - per_file[b], a, b) for a, b in itertools.combinations(files, 2)]
        for t in algo.thresholds:
            parent = {f: f for f in files}

            def find(x: str, parent: dict[str, str] = parent) -> str:
                while parent[x] != x:
                    parent[x] = parent[parent[x]]
                    x = parent[x]
                return x

            for d, a, b in diffs:
                if d <= t:
                    parent[find(a)] = find(b)
            groups: dict[str, list[str]] = {}
            for f in files:
                groups.setdefault(find(f), []).append(f)
            clusters = sorted((g for g in groups.values() if len(g) > 1), key=len, reverse=True)
            unclustered = [g[0] for g in groups.values() if len(g) == 1]
            dest = out / algo.name / f"thr_{t:03d}_unclustered_{len(unclustered)}"
            for n, members in enumerate([*clusters, unclustered]):
                name = "unclustered" if n == len(clusters) else f"{n + 1:03d}"
                folder = dest / f"{name}_{len(members)}"
                folder.mkdir(parents=True)
                for f in members:
                    stem, ext = os.path.splitext(f)
                    os.symlink(images / f, folder / f"{stem}_{per_file[f]}{ext}")
    os.sync()
    return time.perf_counter() - started


def run_scan(images: Path, work: Path, decode: str) -> tuple[float, dict]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "imgclusterd", "scan", "--quiet", "--images", str(images),
         "--output", str(work / "output"), "--state-dir", str(work / "state"),
         "--decode", decode],
        capture_output=True, text=True, check=False,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"scan failed: {result.stderr}")
    db = sqlite3.connect(work / "state" / "store.sqlite")
    row = db.execute("SELECT value FROM state WHERE key = 'last_refresh'").fetchone()
    db.close()
    return seconds, json.loads(row[0])


def stored_hashes(store: Path) -> dict[str, dict[str, imagehash.ImageHash]]:
    db = sqlite3.connect(store)
    result: dict[str, dict[str, imagehash.ImageHash]] = {a.name: {} for a in DEFAULT_ALGORITHMS}
    bits = {a.name: a.bits for a in DEFAULT_ALGORITHMS}
    rows = db.execute("SELECT f.path, h.algorithm, h.bits FROM hashes h JOIN files f "
                      "ON f.id = h.file_id WHERE h.decode = 'exact'")
    for path, algorithm, packed in rows:
        if algorithm in result:
            flat = unpack_bits(packed, bits[algorithm])
            result[algorithm][os.fsdecode(path)] = imagehash.ImageHash(flat)
    db.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=15, help="photographs (5 variants each)")
    parser.add_argument("--baseline-images", type=int, default=6,
                        help="images the script's hashing is timed on (extrapolated)")
    parser.add_argument("--corpus", type=Path,
                        default=Path(tempfile.gettempdir()) / "imgclusterd-corpus-{n}x12mp")
    args = parser.parse_args()
    corpus = build_corpus(Path(str(args.corpus).format(n=args.sources)), args.sources)
    images = corpus.root
    paths = sorted(p for p in images.iterdir() if p.suffix == ".jpg")
    n = len(paths)
    print(f"corpus: {n} photos at camera size in {images}")

    per_image = baseline_seconds_per_image(paths[: args.baseline_images], DEFAULT_ALGORITHMS)
    baseline_hash = per_image * n

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for decode in ("exact", "fast"):
            work = Path(tmp) / decode
            seconds, last = run_scan(images, work, decode)
            rows.append((f"scan --decode {decode}", seconds, last["timings"]))
            again, last2 = run_scan(images, work, decode)
            rows.append((f"  second scan, unchanged ({decode})", again, last2["timings"]))
        # The script's clustering and writing, on the exact hashes (bit-identical to ImageHash's,
        # as tests/test_hashing.py proves), so the baseline does not hash everything 14 times.
        hashes = stored_hashes(Path(tmp) / "exact" / "state" / "store.sqlite")
        baseline_rest = script_cluster_and_write(hashes, images, Path(tmp) / "script-output")
    links = n * sum(len(a.thresholds) for a in DEFAULT_ALGORITHMS)
    baseline_total = baseline_hash + baseline_rest
    print(f"baseline (the script): hashing {baseline_hash:.1f} s ({per_image:.2f} s/photo, "
          f"timed on {args.baseline_images}, extrapolated), clustering + writing {links:,} links "
          f"{baseline_rest:.1f} s, total {baseline_total:.1f} s\n")

    print("| run | wall s | images/s | hash s | cluster s | write s | hashing vs baseline "
          "| whole scan vs baseline |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, seconds, t in rows:
        hash_s = t.get("hash", 0.0)
        hash_ratio = f"{baseline_hash / hash_s:.1f}x" if hash_s > 0.5 else "-"
        whole = f"{baseline_total / seconds:.1f}x"
        print(f"| {name} | {seconds:.1f} | {n / seconds:.2f} | {hash_s:.1f} | "
              f"{t.get('cluster', 0):.2f} | {t.get('write', 0):.2f} | {hash_ratio} | {whole} |")


if __name__ == "__main__":
    main()
