"""The cluster stage of a +1 refresh alone, in process: what ``Pipeline._cluster`` costs when
one photo was added, at several library sizes, without the scan and the write around it.

``bench_refresh`` times the whole +1 in the daemon's order (minutes per size: a whole-tree
write first, idle gaps); this one only clusters, so a change to the cluster stage is measured
in a minute or two and profiled without the write's noise. For each ``--n``:

  library   ``benchmarks.bench_mount.make_library`` (the 14 default algorithms, 30 % of the
            photos in near-duplicate groups), made in ``--dir``/n<N>; a copy of its store
            with the forests built is kept beside it (``pristine``), and every run starts
            from that copy, so runs (of this code or another checkout's) see the same drops.
  first     the forests (loaded from the copy) and the whole tree's plan: what the output
            holds before the drops (``AlgorithmState`` per algorithm).
  drops     ``--drops`` times: one photo's hashes put in the store (``--kind``: ``unlike``,
            random hashes, a photo like no other; ``near``, a photo of the library with two
            bits flipped per algorithm, which joins a cluster at most thresholds; ``mix``
            alternates them, starting with ``unlike``; ``picture``, a real picture made and
            hashed as ``bench_library`` drops them), then ``_cluster`` with the previous
            states, timed (wall and CPU of this process).
  -1        then the first drop removed (as ``bench_library``'s delete), timed the same way.
  rename    then the second drop moved to another name (as ``bench_library``'s rename), timed
            the same way (needs ``--drops`` 2 or more).

``--library`` takes a library of ``bench_library`` (its ``n<N>`` folder, real JPEGs whose
hashes are far from random: the real daemon's case) instead: its store is copied (never
written), its images only named.

Per N the median of the drops; then the ratio of each N's median to the first one's.
``--profile`` prints a cProfile of all drops of each N.

    .venv/bin/python -m benchmarks.bench_clusterdelta --n 5000 20000 --drops 6

Run from another checkout (``cd /tmp/old && python -m benchmarks.bench_clusterdelta``, with
this file copied there) to compare two versions on the same libraries and drops.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_library import single_photos
from benchmarks.bench_mount import make_library
from imgclusterd.config import load_config
from imgclusterd.hashing import hash_file
from imgclusterd.incremental import AlgorithmState
from imgclusterd.pipeline import Pipeline, RefreshReport

_DROPS = "bench_clusterdelta_drops"  # the drops' folder (named in the store only)


def _config(root: Path, images: Path | None = None) -> Path:
    config = root / "bench_clusterdelta.toml"
    config.write_text(
        f'images = "{images or root / "images"}"\n'
        f'output = "{root / "out"}"\n'
        f'state_dir = "{root / "state"}"\n'
        "thumbnails = false\n"
    )
    return config


def run_size(args: argparse.Namespace, n: int) -> float:
    root = Path(args.dir) / f"n{n}"
    pristine = root / "pristine"
    images = None
    if args.library:
        library = Path(args.library.replace("{n}", str(n)))
        pristine, images = library / "state", library / "images"
        root.mkdir(parents=True, exist_ok=True)
    elif not pristine.is_dir():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        started = time.perf_counter()
        make_library(root, n)
        with Pipeline(load_config(_config(root)).config) as pipeline:
            pipeline._sync_indexes()  # the forests, built from scratch once
            pipeline.save_forests()
        shutil.copytree(root / "state", pristine)
        print(f"n={n}: library and forests made in {time.perf_counter() - started:.1f}s",
              flush=True)  # fmt: skip
    shutil.rmtree(root / "state", ignore_errors=True)
    shutil.copytree(pristine, root / "state", ignore=shutil.ignore_patterns("thumbnails", "*.lock"))
    staging = root / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    pictures = single_photos(staging, args.drops, seed=3 * 10**9 + n)
    rng = np.random.default_rng(11)
    times: list[float] = []
    profile = cProfile.Profile() if args.profile else None
    with Pipeline(load_config(_config(root, images)).config) as pipeline:
        started = time.perf_counter()
        _, _, states = pipeline._cluster(RefreshReport(), {})
        print(f"n={n}: forests loaded and whole tree planned in "
              f"{time.perf_counter() - started:.1f}s", flush=True)  # fmt: skip
        for drop in range(args.drops):
            kind = args.kind if args.kind != "mix" else ("unlike", "near")[drop % 2]
            like = int(rng.integers(0, n))
            hashes = {}
            if kind == "picture":
                hashed = hash_file(str(pictures[drop]), pipeline.plan)
                hashes = hashed.hashes
            for algorithm in pipeline.algorithms if kind != "picture" else ():
                index = pipeline._indexes[algorithm.name]
                if kind == "unlike":
                    row = rng.integers(0, 256, index.nbytes, dtype=np.uint8)
                else:
                    row = index.packed[like].copy()
                    for bit in rng.integers(0, algorithm.bits, 2):
                        row[bit // 8] ^= 0x80 >> (bit % 8)
                hashes[algorithm.name] = row.tobytes()
            with pipeline.store.transaction():
                facts = (1, drop, 10**9 + drop, 1)
                pipeline.store.put_hashed(f"{_DROPS}/drop{drop:03d}.jpg", facts, None, hashes,
                                          pipeline.plan.decode, time.time())  # fmt: skip
            states, wall, cpu, patches = _timed_cluster(pipeline, states, profile)
            times.append(wall)
            print(f"n={n} drop {drop + 1} ({kind}): cluster {wall:.3f}s (cpu {cpu:.3f}), "
                  f"{patches} threshold patches", flush=True)  # fmt: skip
        if args.drops and not args.no_remove:
            with pipeline.store.transaction():
                pipeline.store.retire([f"{_DROPS}/drop000.jpg"], time.time())
            states, wall, cpu, patches = _timed_cluster(pipeline, states, profile)
            print(f"n={n} -1: cluster {wall:.3f}s (cpu {cpu:.3f}), {patches} threshold patches",
                  flush=True)  # fmt: skip
            if args.drops > 1:  # as bench_library's rename: a photo moved to another name
                with pipeline.store.transaction():
                    facts = (1, 1, 10**9 + 1, 1)
                    pipeline.store.move(f"{_DROPS}/drop001.jpg", f"{_DROPS}/renamed001.jpg",
                                        facts, time.time())  # fmt: skip
                states, wall, cpu, patches = _timed_cluster(pipeline, states, profile)
                print(f"n={n} rename: cluster {wall:.3f}s (cpu {cpu:.3f}), {patches} threshold "
                      "patches", flush=True)  # fmt: skip
    median = statistics.median(times)
    print(f"n={n}: median {median:.3f}s over {len(times)} drops", flush=True)
    if profile is not None:
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(25)
        print(out.getvalue())
    return median


def _timed_cluster(
    pipeline: Pipeline, states: dict[str, AlgorithmState], profile: cProfile.Profile | None
) -> tuple[dict[str, AlgorithmState], float, float, int]:
    """``_cluster`` from ``states``: (the next states, wall, CPU, threshold patches)."""
    wall, cpu = time.perf_counter(), time.process_time()
    if profile is not None:
        profile.enable()
    _, delta, states = pipeline._cluster(RefreshReport(), states)
    if profile is not None:
        profile.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if delta is None:
        raise SystemExit("the cluster stage planned the whole tree: not a delta")
    return states, wall, cpu, sum(len(p) for p in delta.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[5000, 20000],
                        help="library sizes (default: 5000 20000)")  # fmt: skip
    parser.add_argument("--dir", default="/tmp/bench_clusterdelta",
                        help="where the libraries are made and kept")  # fmt: skip
    parser.add_argument("--drops", type=int, default=6, help="+1 refreshes per size (6)")
    parser.add_argument("--library", help="a bench_library library (its n<N> folder; {n} is "
                        "replaced by each --n): its store is copied, never written")
    parser.add_argument("--no-remove", action="store_true", help="no -1 after the drops")
    parser.add_argument("--kind", choices=["unlike", "near", "mix", "picture"], default="mix",
                        help="what the dropped photo is like (default: mix)")  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="cProfile the drops")
    args = parser.parse_args()
    medians = {n: run_size(args, n) for n in args.n}
    first = args.n[0]
    for n, median in medians.items():
        print(f"n={n}: median {median:.3f}s, {median / medians[first]:.2f}x n={first}")


if __name__ == "__main__":
    main()
