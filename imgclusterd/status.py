"""``imgclusterd status``: what the daemon of one images folder is doing, from the outside.

It never talks to the daemon: it reads the store read-only (WAL lets it read while the daemon
writes) and probes the instance lock, so it answers the same whether the daemon is running,
stopped, hung or never ran. A daemon whose lock is held but whose heartbeat is older than
:data:`STALE_AFTER` is *not responding* (a hung main loop stops writing heartbeats, just as it
stops systemd's watchdog pings).

The JSON shape (``status --json``) is stable; new keys may be added, none removed or renamed:

    {
      "state": "running" | "not running" | "not responding" | "never ran",
      "pid": int | null, "uptime_seconds": float | null, "heartbeat_age_seconds": float | null,
      "phase": "starting" | "scanning" | "hashing" | "clustering" | "writing" | "idle"
               | "thumbnails" | "waiting" | "stopped" | null,
      "progress": {"done": int, "total": int} | null,
      "message": str | null,
      "counts": {"images": int, "hashed": int, "pending": int, "unreadable": int,
                 "flat": int},
                 # images = photo files known (hashed + unreadable); pending = waiting to be
                 # hashed by the running daemon (0 when it is not running); flat = hashed
                 # photos that are near-constant (blank, one colour): a warning names some
      "unreadable_examples": [{"path": str, "reason": str}, ...],
      "last_refresh": {"finished": str (ISO 8601), "seconds": float, "generation": str | null,
                       "hashed": int, "full": bool} | null,
                       # full: walked the whole folder (false: looked at changed paths only)
      "images": str, "output": str, "store": str,
      "output_mode": "tree" | "mount",
      "mount": "mounted" | "stale" | "not mounted" | "foreign:<fs type>" | null,
               # mount mode: what is at the output path now (stale: the daemon was killed
               # and left it; the next start cleans it). null in tree mode
      "watcher": {"mode": str | null, "warnings": [str, ...]},
      "warnings": [str, ...],  # problems seen from outside, e.g. the store's disk is full,
                               # and a failing refresh (see "failure")
      "refreshes": int | null, # refreshes the running daemon completed since it started
      "failure": {"message": str, "attempts": int, "since": str (ISO 8601),
                  "retry_at": str (ISO 8601)} | null   # the refresh failing right now
    }
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from typing import Any

from .config import Config
from .errors import StoreError
from .lock import holder_pid
from .store import STORE_NAME, Store

__all__ = ["EXIT_CODES", "LOCK_NAME", "STALE_AFTER", "TREE_LINKS_CHEAP", "collect", "render",
           "tree_warning"]  # fmt: skip

LOCK_NAME = "daemon.lock"
STALE_AFTER = 90.0  # seconds without a heartbeat; the daemon writes one at least every 10 s
EXIT_CODES = {"running": 0, "not responding": 1, "not running": 3, "never ran": 3}


def collect(config: Config, now: float | None = None) -> dict[str, Any]:
    """Gather the status of the daemon for ``config.images`` (see the module doc for the shape)."""
    now = time.time() if now is None else now
    store_path = config.store_dir / STORE_NAME
    status: dict[str, Any] = {
        "state": "never ran",
        "pid": None,
        "uptime_seconds": None,
        "heartbeat_age_seconds": None,
        "phase": None,
        "progress": None,
        "message": None,
        "counts": {"images": 0, "hashed": 0, "pending": 0, "unreadable": 0, "flat": 0},
        "unreadable_examples": [],
        "last_refresh": None,
        "images": str(config.images),
        "output": str(config.output),
        "store": str(store_path),
        "output_mode": config.output_mode,
        "mount": _mount_state(config),
        "watcher": {"mode": None, "warnings": []},
        "warnings": _disk_warnings(config),
        "refreshes": None,
        "failure": None,
    }
    pid = holder_pid(config.store_dir / LOCK_NAME) if config.store_dir.exists() else None
    daemon: dict[str, Any] = {}
    if store_path.exists():
        try:
            with Store.open(store_path, readonly=True) as store:
                counts = store.counts()
                daemon = store.get_state("daemon") or {}
                last = store.get_state("last_refresh")
                examples = store.unreadable(limit=5)
                status["warnings"] += store_warnings(store)
                flat = store.flat_images(limit=3)
        except StoreError as exc:
            status["message"] = str(exc)
        else:
            status["state"] = "not running"
            status["counts"] = {
                "images": counts["known"],  # files in the store: hashed + unreadable
                "hashed": counts["hashed"],
                "pending": int(daemon.get("pending", 0)) if pid else 0,
                "unreadable": counts["unreadable"],
                "flat": counts["flat"],
            }
            if flat:
                status["warnings"].append(
                    f"{counts['flat']} photo(s) are flat (near-constant: blank, one colour), "
                    "so their hashes carry almost no information and they cluster with each "
                    f"other at low thresholds, e.g. {', '.join(flat)}"
                )
            status["unreadable_examples"] = [{"path": p, "reason": r} for p, r in examples]
            warning = tree_warning(config, counts["hashed"])
            if warning and config.output_mode == "tree":
                status["warnings"].append(warning)
            if last:
                status["last_refresh"] = {
                    "finished": _iso(last["finished"]),
                    "seconds": last.get("seconds"),
                    "generation": last.get("generation"),
                    "hashed": last.get("hashed", 0),
                    "full": last.get("full", True),
                }
    if pid is not None:
        status["pid"] = pid
        heartbeat = daemon.get("heartbeat") if daemon.get("pid") == pid else None
        if heartbeat is None:
            status["state"] = "running"  # just started: lock held, no heartbeat written yet
            status["phase"] = "starting"
        else:
            age = max(0.0, now - float(heartbeat))
            status["heartbeat_age_seconds"] = round(age, 1)
            status["state"] = "running" if age <= STALE_AFTER else "not responding"
            status["uptime_seconds"] = round(now - float(daemon.get("started", now)), 1)
            status["phase"] = daemon.get("phase")
            status["progress"] = daemon.get("progress")
            status["message"] = daemon.get("message")
            status["refreshes"] = daemon.get("refreshes")
            failure = daemon.get("failure")
            if failure:
                status["failure"] = {
                    "message": failure["message"],
                    "attempts": failure["attempts"],
                    "since": _iso(failure["since"]),
                    "retry_at": _iso(failure["retry_at"]),
                }
                status["warnings"].append(
                    f"refreshes are failing ({failure['attempts']} attempt(s) since "
                    f"{_clock(failure['since'])}): {failure['message']}; next attempt at "
                    f"{_clock(failure['retry_at'])} (or now: SIGHUP)"
                )
        status["watcher"] = {
            "mode": daemon.get("watcher_mode"),
            "warnings": list(daemon.get("warnings", [])),
        }
    elif daemon:
        status["phase"] = "stopped"
    return status


def store_warnings(store: Store) -> list[str]:
    """What the last refreshes left for the user to know: folders that could not be read
    (their photos are kept), photos that vanished at once (kept for a grace period)."""
    warnings = list(store.get_state("folder_warnings") or [])
    hold = store.get_state("vanish_hold")
    if hold:
        since = dt.datetime.fromtimestamp(hold["since"]).strftime("%H:%M")
        warnings.append(
            f"{hold['missing']} of {hold['known']} known photos vanished at once (since "
            f"{since}): they stay in the store and the output in case they come back; removed "
            "only if still gone after mass_removal_grace"
        )
    return warnings


def _mount_state(config: Config) -> str | None:
    if config.output_mode != "mount":
        return None
    from .mount import mount_state  # mount mode only: it imports the view's numpy stack

    try:
        return mount_state(config.output)
    except OSError as exc:
        return f"unknown ({exc.strerror})"


#: Links in the output layout (photos x threshold folders) above which a refresh cannot stay
#: cheap: every threshold folder a new photo changes holds up to one link per photo, and a
#: changed folder is a new directory (copied in idle time, deleted when it retires). Measured
#: with benchmarks/bench_library.py; see README "Large libraries".
TREE_LINKS_CHEAP = 10_000_000


def tree_warning(config: Config, photos: int) -> str | None:
    """A warning when the default-style layout of ``photos`` gets too big to refresh cheaply."""
    algorithms = config.algorithm_set
    folders = sum(len(a.thresholds) for a in algorithms)
    links = photos * folders
    if links <= TREE_LINKS_CHEAP or config.output_mode != "tree":
        return None  # a mount writes no tree, whatever its size
    return (
        f"the output tree holds ~{links / 1e6:.0f} M links ({photos:,} photos x {folders} "
        f"threshold folders of {len(algorithms)} algorithms); above "
        f"~{TREE_LINKS_CHEAP / 1e6:.0f} M a new photo costs seconds to minutes "
        "per refresh (measured at 100,000 photos: the first write ~15 min, a new photo 22 s, "
        "the first ones after a restart ~9 min): use output_mode = \"mount\", or choose "
        "fewer algorithms or a larger "
        "threshold step (README: Large libraries)"
    )


#: Below this much free space a store commit or an output write is about to fail.
LOW_SPACE = 1 << 20


def _disk_warnings(config: Config) -> list[str]:
    """A full disk stops the daemon from writing anything, heartbeats included, so the only
    way to tell the user is to look from outside."""
    warnings = []
    for what, path in (("store", config.store_dir), ("output", config.output.parent)):
        try:
            free = shutil.disk_usage(path).free
        except OSError:
            continue
        if free < LOW_SPACE:
            warnings.append(f"the disk holding the {what} ({path}) is full ({free:,} bytes "
                            "free): refreshes fail until space is freed")
    return warnings


def render(status: dict[str, Any]) -> str:
    """The human form: a headline, then one fact per line."""
    state = status["state"]
    head = f"imgclusterd: {state}"
    if status["pid"]:
        head += f" (pid {status['pid']}"
        if status["uptime_seconds"] is not None:
            head += f", up {_duration(status['uptime_seconds'])}"
        head += ")"
    lines = [head]
    if state == "not responding":
        lines.append(
            f"  no heartbeat for {_duration(status['heartbeat_age_seconds'])}: the main loop "
            "seems hung (systemd's watchdog restarts it when run as a service)"
        )
    phase = status["phase"]
    if phase:
        progress = status["progress"]
        if progress and progress.get("total"):
            phase += f" {progress['done']}/{progress['total']}"
        lines.append(f"  phase:        {phase}")
    if status["message"]:
        lines.append(f"  message:      {status['message']}")
    c = status["counts"]
    lines.append(
        f"  photos:       {c['images']} known, {c['hashed']} hashed, {c['pending']} pending, "
        f"{c['unreadable']} unreadable, {c.get('flat', 0)} flat"
    )
    for example in status["unreadable_examples"]:
        lines.append(f"    unreadable: {example['path']}: {example['reason']}")
    last = status["last_refresh"]
    if last:
        lines.append(
            f"  last refresh: {last['finished']} ({last['seconds']} s, "
            f"generation {last['generation']})"
        )
    else:
        lines.append("  last refresh: never")
    lines.append(f"  images:       {status['images']}")
    lines.append(f"  output:       {status['output']}")
    if status.get("output_mode") == "mount":
        lines.append(f"  mode:         mount (read-only FUSE view): {status['mount']}")
    lines.append(f"  store:        {status['store']}")
    watcher = status["watcher"]
    if watcher["mode"]:
        lines.append(f"  watcher:      {watcher['mode']}")
    for warning in [*status.get("warnings", []), *watcher["warnings"]]:
        lines.append(f"  warning:      {warning}")
    return "\n".join(lines)


def to_json(status: dict[str, Any]) -> str:
    return json.dumps(status, indent=2, sort_keys=True)


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="milliseconds")


def _clock(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%H:%M:%S")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
