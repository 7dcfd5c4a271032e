"""What writing the output tree costs: the script's full tree vs. the generation writer.

For each N: synthetic perceptual hashes for the 14 default algorithms (images drawn around
"scenes", so there are near-duplicate groups, with biased bits as real hashes have), clustered
with :mod:`imgclusterd.cluster`, then

  naive     every folder and every link written, as the one-shot script does
  first     the first write with :class:`OutputWriter` into an empty area
  +1 (k)    the k-th refresh in a row, each after adding one image (k = 1 has an empty pool;
            from k = 3 on, retired objects are recycled: the steady state of a daemon)
  +500      a refresh after adding 500 images

Link targets are absolute paths of files that need not exist (only the writing is measured).

    /tmp/venv/bin/python benchmarks/bench_output.py --sizes 153 1000 5000 --dir /tmp/bench_output
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from imgclusterd.algorithms import DEFAULT_ALGORITHMS, Algorithm, hash_hex
from imgclusterd.cluster import spanning_forests, sweep
from imgclusterd.output import (
    Link,
    OutputTree,
    OutputWriter,
    ThresholdFolder,
    WriteReport,
    folder_links,
    link_name,
)


def synthetic_hashes(n: int, seed: int) -> dict[str, np.ndarray]:
    """Packed hashes per algorithm; image i is the same photo in every algorithm."""
    rng = np.random.default_rng(seed)
    scenes = max(1, n // 3)
    scene_of = np.minimum(rng.zipf(1.6, size=n) - 1, scenes - 1)
    scene_of = (scene_of * 7919 + rng.integers(0, scenes, size=n)) % scenes
    noise = rng.uniform(0.01, 0.2, size=n)
    out: dict[str, np.ndarray] = {}
    for algo in DEFAULT_ALGORITHMS:
        arng = np.random.default_rng([seed, algo.hash_size, hash(algo.kind) & 0xFFFF])
        bias = arng.beta(2, 2, size=algo.bits)
        centres = arng.random((scenes, algo.bits)) < bias
        flips = arng.random((n, algo.bits)) < noise[:, None]
        bits = centres[scene_of] ^ flips
        out[algo.name] = np.packbits(bits, axis=1)
    return out


def hashes_for(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    """The first ``n`` images of one fixed population (adding images keeps the old ones)."""
    if seed not in _POPULATION:
        _POPULATION[seed] = synthetic_hashes(MAX_IMAGES, seed)
    return {name: packed[:n] for name, packed in _POPULATION[seed].items()}


MAX_IMAGES = 6000
_POPULATION: dict[int, dict[str, np.ndarray]] = {}


def build_tree(n: int, image_root: Path) -> OutputTree:
    hashes = hashes_for(n)
    algos: list[Algorithm] = list(DEFAULT_ALGORITHMS)
    forests = spanning_forests(
        [hashes[a.name] for a in algos], [a.max_threshold for a in algos], workers=2
    )
    tree: dict[str, list[ThresholdFolder]] = {}
    for algo, forest in zip(algos, forests, strict=True):
        packed = hashes[algo.name]
        links = [
            Link(
                link_name(f"IMG_{i:05d}", hash_hex(packed[i].tobytes(), algo.bits), ".jpg"),
                str(image_root / f"IMG_{i:05d}.jpg"),
            )
            for i in range(n)
        ]
        tree[algo.name] = [
            ThresholdFolder(
                p.threshold,
                [[links[i] for i in c.tolist()] for c in p.clusters],
                [links[i] for i in p.unclustered.tolist()],
            )
            for p in sweep(forest, list(algo.thresholds))
        ]
    return tree


def naive_write(tree: OutputTree, output: Path) -> tuple[int, float]:
    """The script's way: every folder made, every link written. Returns (links, seconds)."""
    started = time.perf_counter()
    links = 0
    for algo, sweep_ in tree.items():
        for folder in sweep_:
            u = len(folder.unclustered)
            thr = output / algo / f"thr_{str(folder.threshold).zfill(3)}_unclustered_{u}"
            named = [
                (f"{str(i).zfill(3)}_{len(c)}", c) for i, c in enumerate(folder.clusters, 1)
            ]
            for name, members in [*named, (f"unclustered_{u}", folder.unclustered)]:
                path = thr / name
                path.mkdir(parents=True)
                for link_name_, target in folder_links(members).items():
                    os.symlink(target, path / link_name_)
                    links += 1
    os.sync()
    return links, time.perf_counter() - started


def row(label: str, r: WriteReport) -> str:
    return (
        f"  {label:<10} objects written {r.objects_written:>6} (recycled {r.objects_recycled:>5})"
        f" reused {r.objects_reused:>6}  links written {r.links_written:>8}"
        f" removed {r.links_removed:>6}  deleted objs {r.objects_deleted:>6}"
        f"  {r.seconds:7.2f}s (sync {r.sync_seconds:.2f}s, gc {r.gc_seconds:.2f}s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[153, 1000, 5000])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench_output"))
    parser.add_argument("--refreshes", type=int, default=4, help="+1 refreshes in a row")
    parser.add_argument("--no-naive", action="store_true", help="skip the script's full tree")
    args = parser.parse_args(argv)
    if max(args.sizes) + 500 + args.refreshes > MAX_IMAGES:
        parser.error(f"sizes up to {MAX_IMAGES - 500 - args.refreshes}")
    for n in args.sizes:
        root = args.dir / f"n{n}"
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        images = root / "images"
        t0 = time.perf_counter()
        tree = build_tree(n, images)
        total = sum(
            len(f.unclustered) + sum(len(c) for c in f.clusters) for s in tree.values() for f in s
        )
        folders = sum(len(f.clusters) + 1 for s in tree.values() for f in s)
        took = time.perf_counter() - t0
        print(f"N = {n}: {total} links in {folders} folders (clustering {took:.1f}s)")
        if not args.no_naive:
            links, seconds = naive_write(tree, root / "naive")
            print(f"  naive      links written {links:>8}  {seconds:7.2f}s (incl. one sync)")
            shutil.rmtree(root / "naive")
        writer = OutputWriter(root / "output", grace_seconds=0)
        print(row("first", writer.write(tree)))
        size = n
        for k in range(1, args.refreshes + 1):
            size += 1
            print(row(f"+1 ({k})", writer.write(build_tree(size, images))))
        size += 500
        print(row("+500", writer.write(build_tree(size, images))))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
