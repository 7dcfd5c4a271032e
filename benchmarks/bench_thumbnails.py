"""What thumbnails cost the hashing stage, and what the background pass costs per photo.

    python -m benchmarks.bench_thumbnails --sources 4      # 20 twelve-megapixel JPEGs

One process, interleaved per image (each image is hashed with and without a thumbnail back to
back, so both share the machine's load): exact and fast mode, then the background pass's
``thumbnail_file`` (a second read, decoded at the smallest JPEG scale covering the thumbnail).
The thumbnail folder is emptied before every timed call, so each call really renders and
writes one. Timings are wall-clock; compare ratios within one run. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from benchmarks.corpus import build_corpus
from imgclusterd.algorithms import DEFAULT_ALGORITHMS
from imgclusterd.hashing import HashPlan, HashResult, hash_file, thumbnail_file


def timed(task: Callable[[str, HashPlan], HashResult], path: Path, plan: HashPlan,
          folder: Path | None) -> float:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    result = task(str(path), plan)
    elapsed = time.perf_counter() - started
    assert result.error is None, result.error
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=4, help="source photos (x5 variants)")
    parser.add_argument("--megapixels", type=float, default=12)
    parser.add_argument("--size", type=int, default=256, help="thumbnail_size")
    args = parser.parse_args()
    corpus = build_corpus(
        Path(tempfile.gettempdir()) / f"imgclusterd-corpus-{args.sources}x{args.megapixels:g}mp",
        args.sources, args.megapixels,
    )
    paths = corpus.images
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "thumbnails"
        totals: dict[str, float] = {}
        for decode in ("exact", "fast"):
            plain = HashPlan(DEFAULT_ALGORITHMS, decode=decode)  # type: ignore[arg-type]
            thumbs = HashPlan(DEFAULT_ALGORITHMS, decode=decode,  # type: ignore[arg-type]
                              thumbnail_folder=str(folder), thumbnail_size=args.size)
            for path in paths:
                for label, plan, target in ((decode, plain, None),
                                            (f"{decode} + thumbnail", thumbs, folder)):
                    totals[label] = totals.get(label, 0.0) + timed(hash_file, path, plan, target)
        backfill = HashPlan((), thumbnail_folder=str(folder), thumbnail_size=args.size)
        totals["background pass (thumbnail_file)"] = sum(
            timed(thumbnail_file, path, backfill, folder) for path in paths
        )
        for path in paths:  # every thumbnail once, for the size column
            thumbnail_file(str(path), backfill)
        sizes = [p.stat().st_size for p in folder.rglob("*.jpg")]
    with Image.open(paths[0]) as first:
        width, height = first.size
    print(f"## Thumbnails: {len(paths)} JPEGs ({width}x{height} and variants), "
          f"{len(DEFAULT_ALGORITHMS)} algorithms, 1 process, thumbnail_size {args.size}\n")
    print("| run | ms/image | vs without |")
    print("|---|---:|---:|")
    for label, total in totals.items():
        base = totals.get(label.split(" + ")[0]) if " + " in label else None
        ratio = f"{total / base:.2f}x" if base else ""
        print(f"| {label} | {1000 * total / len(paths):.1f} | {ratio} |")
    print(f"\nthumbnail size: mean {sum(sizes) / len(sizes) / 1024:.1f} KB over {len(sizes)}; "
          f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
