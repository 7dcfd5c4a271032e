"""How long ``imgclusterd export`` and ``imgclusterd similar`` take on a large store.

    python -m benchmarks.bench_export --photos 20000

Fills a real store (SQLite, the Store API) with N photos' hashes for the 14 default
algorithms: groups of 1-6 near-duplicates (a random hash per group, each member a few bits
off), so every threshold has clusters of several sizes. Then times, in this process: the export
of one algorithm at one threshold, of one algorithm at every threshold, and of all 14 at every
threshold (JSON into /dev/null, size counted), and the store read + distance pass of
``similar`` (hashing the query photo itself is the hashing benchmark's business). Nothing is
asserted; wall-clock and this process's CPU time are both shown (the machine is shared).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from imgclusterd.algorithms import DEFAULT_ALGORITHMS
from imgclusterd.cluster import distance_matrix_rows
from imgclusterd.config import Config
from imgclusterd.export import export, open_store, read_snapshot
from imgclusterd.store import STORE_NAME, Store


class _Counter(io.TextIOBase):
    """A text sink that only counts characters (the JSON is ASCII: characters = bytes)."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, text: str) -> int:
        self.count += len(text)
        return len(text)


def fill(store: Store, photos: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    sizes = {a.name: (a.bits + 7) // 8 for a in DEFAULT_ALGORITHMS}
    done = 0
    with store.transaction():
        while done < photos:
            members = min(int(rng.integers(1, 7)), photos - done)
            base = {name: rng.integers(0, 256, n, dtype=np.uint8) for name, n in sizes.items()}
            for _ in range(members):
                hashes = {}
                for name, bits in base.items():
                    flipped = bits.copy()
                    for _ in range(int(rng.integers(0, 4))):
                        i = int(rng.integers(0, len(bits)))
                        flipped[i] ^= 1 << int(rng.integers(0, 8))
                    hashes[name] = flipped.tobytes()
                path = f"folder{done // 1000:03d}/photo{done:06d}.jpg"
                digest = hashlib.sha256(path.encode()).digest()
                store.put_hashed(path, (1000, done, done, 1), digest, hashes, "exact", 0.0)
                done += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        config = Config(images=Path(tmp) / "images", output=Path(tmp) / "output",
                        state_dir=state)
        started = time.perf_counter()
        with Store.open(state / STORE_NAME) as store:
            fill(store, args.photos)
        print(f"## export / similar on {args.photos:,} photos, 14 algorithms "
              f"(store filled in {time.perf_counter() - started:.1f} s)\n")
        print("| run | wall s | CPU s | JSON MB |")
        print("|---|---:|---:|---:|")
        for label, options in (
            ("export phash_8 at threshold 10", {"algorithm": "phash_8", "threshold": 10}),
            ("export phash_8, all 20 thresholds", {"algorithm": "phash_8"}),
            ("export phash_20, all 40 thresholds", {"algorithm": "phash_20"}),
            ("export all 14 algorithms, every threshold", {}),
        ):
            sink = _Counter()
            started, cpu = time.perf_counter(), time.process_time()
            export(config, sink, **options)  # type: ignore[arg-type]
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            print(f"| {label} | {seconds:.2f} | {cpu:.2f} | {sink.count / 1e6:.1f} |")
        started, cpu = time.perf_counter(), time.process_time()
        phash = DEFAULT_ALGORITHMS[0]
        with open_store(config) as store:
            rows = read_snapshot(store, [phash], "exact").rows[phash.name]
        query = rows[123][2]
        packed = np.frombuffer(b"".join(r[2] for r in rows) + query, dtype=np.uint8)
        distance_matrix_rows(packed.reshape(len(rows) + 1, -1), np.array([len(rows)]))
        print(f"| similar: store read + distances (phash_8) | "
              f"{time.perf_counter() - started:.2f} | {time.process_time() - cpu:.2f} | |")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\npeak RSS of the whole run {peak:.0f} MB; load average at the end: "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
