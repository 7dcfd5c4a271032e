"""What a refresh of the running daemon costs, seen from the outside.

For each N: N small distinct JPEGs are indexed by the real daemon (``imgclusterd run`` in a
subprocess, the 14 default algorithms), then

  +1     one new photo is dropped in; measured from its close until ``OUTPUT`` names a new
         generation that contains it, minus the debounce, and split into scan / hash / cluster /
         write from the daemon's ``refresh done ... (scan Xs, hash Xs, cluster Xs, write Xs)``
         line. The rest ("detect") is the watcher noticing the file (up to ``poll_interval`` in
         polling mode) plus process scheduling. Repeated ``--repeat`` times: from the third
         refresh on the output writer recycles retired folders (its steady state).
  +500   500 photos dropped at once; the refreshes until all are in the output are counted.

Between single drops the daemon is idle for ``--gap`` seconds (default: debounce + 2 polls). In
idle time it prepares spare copies of the folders its last refresh changed; a gap long enough
for those to finish shows the steady state of photos arriving one by one.

Photos are 64x64 smooth random JPEGs: hashing cost per photo is not the point, refresh cost is.

    /tmp/venv/bin/python -m benchmarks.bench_daemon --n 1000 5000 20000 --dir /tmp/bench_daemon
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgclusterd import status as status_module
from imgclusterd.config import load_config

_TIMINGS_RE = re.compile(r"(\w+) ([\d.]+)s")


def make_photos(folder: Path, count: int, seed: int, per_folder: int = 1000) -> list[Path]:
    """``count`` distinct 64x64 JPEGs in subfolders of ``per_folder``."""
    rng = np.random.default_rng(seed)
    written = []
    for number in range(count):
        sub = folder / f"d{number // per_folder:03d}"
        if number % per_folder == 0:
            sub.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
        image = Image.fromarray(coarse, "RGB").resize((64, 64), Image.Resampling.BICUBIC)
        path = sub / f"p{seed}_{number:06d}.jpg"
        image.save(path, quality=90)
        written.append(path)
    return written


def write_config(root: Path, args: argparse.Namespace) -> Path:
    path = root / "cfg.toml"
    path.write_text(
        f'images = "{root / "images"}"\n'
        f'output = "{root / "output"}"\n'
        f'state_dir = "{root / "state"}"\n'
        f"debounce = {args.debounce}\n"
        f"max_delay = {args.max_delay}\n"
        f"poll_interval = {args.poll_interval}\n"
        f'watcher = "{args.watcher}"\n'
        f"workers = {args.workers}\n"
        + (f"generation_grace = {args.grace}\n" if args.grace is not None else "")
        # bench_library --set KEY=VALUE: any other setting, as a TOML line
        + "".join(f"{setting}\n" for setting in getattr(args, "set", None) or [])
    )
    return path


class Daemon:
    def __init__(self, root: Path, config: Path) -> None:
        self.config = load_config(config).config
        self.log_path = root / "daemon.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "imgclusterd", "run", "--config", str(config)],
                cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )

    def status(self) -> dict[str, Any]:
        if self.proc.poll() is not None:
            raise SystemExit(f"the daemon exited ({self.proc.returncode}); see {self.log_path}")
        return status_module.collect(self.config)

    def refresh_lines(self) -> list[str]:
        text = self.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if "refresh done" in line]

    def wait(self, condition: Any, timeout: float, step: float = 0.5) -> float:
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout:
                raise TimeoutError
            time.sleep(step)
        return time.monotonic() - started

    def settled(self, images: int) -> bool:
        st = self.status()
        return (st["phase"] == "idle" and st["counts"]["images"] == images
                and st["counts"]["pending"] == 0 and st["last_refresh"] is not None)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def generation_contains(output: Path, target: str) -> bool:
    """Does the current generation's first algorithm list ``target`` at threshold 0?"""
    root = Path(os.path.realpath(output))
    algorithm = sorted(os.listdir(root))[0]
    first = sorted(os.listdir(root / algorithm))[0]
    for directory, _, files in os.walk(root / algorithm / first, followlinks=True):
        for name in files:
            if os.readlink(os.path.join(directory, name)) == target:
                return True
    return False


def timings(line: str) -> dict[str, float]:
    inside = line[line.rfind("(") + 1:]
    return {k: float(v) for k, v in _TIMINGS_RE.findall(inside)}


def drop_one(daemon: Daemon, root: Path, staged: Path, debounce: float) -> dict[str, float]:
    output = daemon.config.output
    before = os.readlink(output)
    lines_before = len(daemon.refresh_lines())
    target = root / "images" / "new" / staged.name
    target.parent.mkdir(exist_ok=True)
    data = staged.read_bytes()
    with open(target, "wb") as handle:
        handle.write(data)
    closed = time.monotonic()
    while os.readlink(output) == before:
        if time.monotonic() - closed > 600:
            raise TimeoutError("no new generation within 600 s")
        time.sleep(0.005)
    swapped = time.monotonic()
    if not generation_contains(output, str(target)):
        raise AssertionError(f"the new generation does not list {target}")
    daemon.wait(lambda: len(daemon.refresh_lines()) > lines_before, 60, step=0.05)
    parts = timings(daemon.refresh_lines()[lines_before])
    total = swapped - closed - debounce
    parts["total"] = total
    parts["detect+other"] = total - sum(
        parts.get(k, 0.0) for k in ("scan", "hash", "cluster", "write")
    )
    return parts


def bench(n: int, args: argparse.Namespace) -> None:
    root = args.dir / f"n{n}"
    if root.exists() and not args.reuse:
        shutil.rmtree(root)
    images = root / "images"
    if not images.exists():
        tick = time.perf_counter()
        make_photos(images, n, seed=n)
        print(f"N={n}: generated {n} photos in {time.perf_counter() - tick:.1f} s", flush=True)
    for leftover in (images / "new", images / "burst"):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = root / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    singles = make_photos(staging / "one", args.repeat, seed=10**7 + n)
    burst = make_photos(staging / "burst", args.burst, seed=2 * 10**7 + n)
    config = write_config(root, args)

    daemon = Daemon(root, config)
    try:
        tick = time.monotonic()
        try:
            daemon.wait(lambda: daemon.settled(n), args.index_timeout, step=2.0)
        except TimeoutError:
            st = daemon.status()
            print(f"N={n}: not indexed within {args.index_timeout:.0f} s "
                  f"(phase {st['phase']}, progress {st['progress']}, "
                  f"{st['counts']['images']} hashed); giving up on this N", flush=True)
            return
        lines = daemon.refresh_lines()
        print(f"N={n}: initial index in {time.monotonic() - tick:.1f} s "
              f"(watcher {daemon.status()['watcher']['mode']}); {lines[-1].split(': ', 1)[1]}",
              flush=True)
        count = n
        results = []
        for index, staged in enumerate(singles):
            time.sleep(args.gap if args.gap is not None
                       else args.debounce + 2 * args.poll_interval)  # quiet before the drop
            parts = drop_one(daemon, root, staged, args.debounce)
            count += 1
            daemon.wait(lambda c=count: daemon.settled(c), 120, step=0.2)
            results.append(parts)
            print(f"N={n}: +1 #{index + 1}: " + ", ".join(
                f"{k} {v:.2f}s" for k, v in parts.items()), flush=True)
        if results:
            median = statistics.median(r["total"] for r in results)
            print(f"N={n}: +1 median (close -> output, minus debounce {args.debounce}s): "
                  f"{median:.2f} s", flush=True)

        time.sleep(args.debounce + 2 * args.poll_interval)
        lines_before = len(daemon.refresh_lines())
        destination = images / "burst"
        destination.mkdir()
        tick = time.monotonic()
        for staged in burst:
            shutil.copyfile(staged, destination / staged.name)
        copied = time.monotonic() - tick
        count += len(burst)
        waited = daemon.wait(lambda c=count: daemon.settled(c), 1800, step=0.2)
        time.sleep(args.debounce + 3 * args.poll_interval)  # a trailing refresh would show now
        daemon.wait(lambda c=count: daemon.settled(c), 600, step=0.2)
        new_lines = daemon.refresh_lines()[lines_before:]
        print(f"N={n}: +{len(burst)} at once (copied in {copied:.2f} s): {len(new_lines)} "
              f"refreshes, all indexed {waited:.1f} s after the copy", flush=True)
        for line in new_lines:
            print(f"    {line.split(': ', 1)[1]}", flush=True)
    finally:
        code = daemon.stop()
        if code != 0:
            print(f"N={n}: daemon exit code {code}; see {daemon.log_path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench_daemon"))
    parser.add_argument("--reuse", action="store_true",
                        help="keep an existing folder and store (skip the initial index)")
    parser.add_argument("--repeat", type=int, default=4, help="single-photo drops per N")
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--gap", type=float, default=None,
                        help="seconds idle before each single drop (default: debounce + 2 polls);"
                        " a longer gap lets the daemon finish its spare folders first")
    parser.add_argument("--debounce", type=float, default=0.5)
    parser.add_argument("--max-delay", type=float, default=10.0)
    parser.add_argument("--poll-interval", type=float, default=0.5)
    parser.add_argument("--watcher", default="auto", choices=["auto", "inotify", "polling"])
    parser.add_argument("--workers", type=int, default=0, help="0 = one per core")
    parser.add_argument("--grace", type=float, default=None,
                        help="generation_grace (default: the config default, 60 s); old "
                        "generations are recycled into new ones only once past it")
    parser.add_argument("--index-timeout", type=float, default=3600.0,
                        help="seconds allowed for the initial index of N photos")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, debounce {args.debounce}s, "
          f"max_delay {args.max_delay}s, poll_interval {args.poll_interval}s, "
          f"generation_grace {'default' if args.grace is None else args.grace}", flush=True)
    for n in args.n:
        bench(n, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
