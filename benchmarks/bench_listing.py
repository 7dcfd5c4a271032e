"""First and later listings of the biggest folders through a real FUSE mount of one snapshot.

No daemon: the store of an indexed folder (e.g. the one ``bench_mount.py`` fills with 100,000
photos) is read by ``StoreView`` with the config given, the snapshot is published, mounted and
warmed as the daemon does, and the largest unclustered folder (lowest threshold) and the
largest cluster (top threshold) of the first algorithm are listed with ``os.listdir`` from a
child process: cold (the first listing of that threshold in the snapshot), then warm.

    .venv/bin/python -m benchmarks.bench_listing --config /tmp/mlist/cfg.toml

with a config whose ``state_dir`` and ``images`` are the indexed folder's, ``output_mode =
"mount"``, ``explorer = false`` and the one algorithm to serve (the forest is built from
scratch unless the store has it saved: ~80 s of CPU for dhash_20 at 100,000 photos).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from imgclusterd.config import load_config
from imgclusterd.mount import Mount, SnapshotHolder
from imgclusterd.pipeline import StoreView


def listdir_in_child(path: Path) -> tuple[int, float]:
    code = (f"import os, time; t = time.perf_counter(); n = len(os.listdir({str(path)!r})); "
            "print(n, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[0]), float(out[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    config = load_config(args.config).config
    holder = SnapshotHolder(config.keep_generations, config.generation_grace)
    mount = Mount(config.output, holder)
    mount.check()
    with StoreView(config) as view:
        tick = time.perf_counter()
        snapshot = view.update()
        assert snapshot is not None
        print(f"snapshot {time.perf_counter() - tick:.1f} s", flush=True)
        holder.publish(snapshot)
        mount.start()
        try:
            tick = time.perf_counter()
            snapshot.warm()
            print(f"warm {time.perf_counter() - tick:.2f} s", flush=True)
            algo = config.output / config.algorithm_set[0].name
            thresholds = sorted(os.listdir(algo))
            low, top = algo / thresholds[0], algo / thresholds[-1]
            unclustered = next(n for n in os.listdir(low) if n.startswith("unclustered"))
            cluster = sorted(n for n in os.listdir(top) if not n.startswith("unclustered"))[0]
            for folder in (low / unclustered, top / cluster):
                for label in ("cold", "warm", "warm"):
                    entries, seconds = listdir_in_child(folder)
                    print(f"{label}  {folder.relative_to(config.output)}  {entries} entries  "
                          f"{seconds:.3f} s", flush=True)
        finally:
            mount.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
