"""Benchmark the reconcile stage of a refresh: the full walk against a look at the dirty paths.

    python -m benchmarks.bench_reconcile --n 5000 20000 100000

For each N: N small files in folders of 200 (the files' content does not matter to reconcile,
only their stat facts), a real store holding a record of each one (with two hashes), then one
new file. Timed: what ``Pipeline._look`` + ``reconcile.plan`` do for a full refresh (walk the
folder, read every record, the complete-hash query, plan) and for a refresh of the one dirty
path (stat it, read its record, plan). Median of 5. Hashing, clustering and the output are
not part of it (see bench_library for a whole refresh).
This is a measurement, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from imgclusterd import reconcile
from imgclusterd.store import Store

EXTS = (".jpg",)
NAMES = ["phash_8", "dhash_8"]


def build(root: Path, n: int) -> tuple[Path, Store]:
    images = root / "images"
    store = Store.open(root / "store.sqlite")
    with store.transaction():
        for i in range(n):
            folder = images / f"f{i // 200:04d}"
            if i % 200 == 0:
                folder.mkdir(parents=True)
            path = folder / f"p{i:06d}.jpg"
            path.write_bytes(i.to_bytes(4, "big"))
            facts = reconcile.facts_of(path.stat())
            store.put_hashed(str(path.relative_to(images)), facts, i.to_bytes(32, "big"),
                             {name: b"\0" * 8 for name in NAMES}, "exact", 0.0)
    return images, store


def full(images: Path, store: Store) -> reconcile.Plan:
    listing = reconcile.walk(images, EXTS)
    known = store.files()
    complete = store.complete_ids(NAMES, "exact")
    return reconcile.plan(listing.files, known, complete, "exact", unseen=listing.unseen)


def dirty(images: Path, store: Store, paths: list[str]) -> reconcile.Plan:
    listing, _ = reconcile.look(images, paths, EXTS)
    known = store.files(paths=paths, folders=paths)
    complete = store.complete_ids(NAMES, "exact", [r.id for r in known.values()])
    return reconcile.plan(listing.files, known, complete, "exact", unseen=listing.unseen)


def median_seconds(function: object, *args: object) -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        function(*args)  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[5000, 20000])
    args = parser.parse_args()
    print(f"{'N':>8} {'full walk + plan':>18} {'dirty path + plan':>18} {'ratio':>8}")
    for n in args.n:
        with tempfile.TemporaryDirectory() as tmp:
            images, store = build(Path(tmp), n)
            (images / "f0000" / "new.jpg").write_bytes(b"new")
            assert full(images, store).to_hash == ["f0000/new.jpg"]
            assert dirty(images, store, ["f0000/new.jpg"]).to_hash == ["f0000/new.jpg"]
            walk = median_seconds(full, images, store)
            look = median_seconds(dirty, images, store, ["f0000/new.jpg"])
            store.close()
        print(f"{n:>8} {walk * 1000:>15.1f} ms {look * 1000:>15.2f} ms {walk / look:>7.0f}x")


if __name__ == "__main__":
    main()
