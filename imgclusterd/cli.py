"""The command line: parse, load the config, call one function of the core, report.

Every command maps imgclusterd's own errors (:mod:`imgclusterd.errors`) to one line on stderr
and the error's exit code; nothing else is caught, so a real bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config, LoadedConfig, load_config
from .errors import ImagesFolderError, ImgclusterdError
from .store import STORE_NAME

__all__ = ["main"]

log = logging.getLogger("imgclusterd")

Command = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    _setup_logging(getattr(args, "verbose", False), getattr(args, "quiet", False))
    try:
        code: int = args.handler(args)
        return code
    except ImgclusterdError as exc:
        print(f"imgclusterd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # `imgclusterd status | head`: the reader left; not an error worth a traceback.
        # Only then: a broken pipe inside the core (e.g. multiprocessing's resource tracker
        # failed to start) once ended here too, closing stderr and exiting 0 mid-scan.
        if not _stdout_reader_gone():
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("imgclusterd: interrupted", file=sys.stderr)
        return 130


def _stdout_reader_gone() -> bool:
    """True when stdout is a pipe whose reader has closed it (poll reports POLLERR)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgclusterd",
        description="Keeps a photo folder grouped by perceptual similarity: hashes every photo "
        "with ImageHash (phash, average, difference and wavelet hashes) and writes, for every "
        "algorithm and threshold, a folder of symlinks per cluster of near-duplicates.",
        epilog="Run `imgclusterd COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"imgclusterd {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    scan = commands.add_parser(
        "scan",
        help="hash what changed, cluster, and refresh the output once, then exit",
        description="One pass of the pipeline: reconcile the images folder with the store, "
        "hash new or changed photos, cluster every algorithm at every threshold and swap in "
        "a refreshed output tree. A second run hashes nothing that did not change.",
    )
    _add_config_options(scan)
    scan.add_argument("--reset-store", action="store_true",
                      help="set the store aside (renamed, not deleted) and start a new one; "
                      "the way out of a corrupt or foreign store file")
    scan.add_argument("-q", "--quiet", action="store_true", help="only errors and the summary")
    scan.add_argument("-v", "--verbose", action="store_true", help="log every decision")
    scan.set_defaults(handler=cmd_scan)

    config = commands.add_parser(
        "config",
        help="print the effective configuration and where each value came from",
        description="Prints the configuration imgclusterd would use, with the source of each "
        "value (command line, config file, default). With --check FILE, only validates FILE.",
    )
    _add_config_options(config)
    config.add_argument("--check", type=Path, metavar="FILE",
                        help="validate FILE and exit 0 if it is valid")
    config.set_defaults(handler=cmd_config)

    run = commands.add_parser(
        "run",
        help="the daemon: watch the images folder and keep the output current (foreground)",
        description="Watches the images folder (recursively) and, shortly after each burst of "
        "changes, hashes what changed and swaps in a refreshed output tree. Runs in the "
        "foreground until SIGTERM or Ctrl-C; this is what the systemd user service starts. "
        "One daemon per images folder. Signals: SIGHUP rescans the whole folder now (and "
        "retries a failed refresh at once; `systemctl --user reload imgclusterd` sends it); "
        "SIGTERM, SIGINT, SIGQUIT stop in order; SIGUSR1, SIGUSR2, SIGALRM, SIGPIPE and the "
        "other signals are logged and ignored.",
    )
    _add_config_options(run)
    run.add_argument("--reset-store", action="store_true",
                     help="set the store aside (renamed, not deleted) and start a new one")
    run.add_argument("-v", "--verbose", action="store_true", help="log every decision")
    run.set_defaults(handler=cmd_run)

    status = commands.add_parser(
        "status",
        help="say whether the daemon runs and what it is doing",
        description="Reports running / not running / not responding, pid and uptime, phase, "
        "counts, last refresh, paths and watcher warnings. Works whether the daemon is "
        "running, stopped, hung or never ran. Exit code: 0 running, 3 not running, "
        "1 not responding.",
    )
    _add_config_options(status)
    status.add_argument("--json", action="store_true",
                        help="machine-readable output (shape documented in imgclusterd.status)")
    status.set_defaults(handler=cmd_status)

    mount = commands.add_parser(
        "mount",
        help="browse the clusters as a read-only folder at MOUNTPOINT (FUSE), until Ctrl-C",
        description="Mounts the output tree of an indexed images folder -- exactly the tree "
        "`scan` writes: same folders, numbering and link names -- as a read-only FUSE "
        "filesystem at MOUNTPOINT, computed on demand from the hash store (nothing is written "
        "for it). Runs in the foreground and follows the store as a daemon or a scan updates "
        "it; Ctrl-C (or SIGTERM) unmounts. MOUNTPOINT must be missing, an empty folder or a "
        "stale imgclusterd mount. Needs imgclusterd[mount] and fusermount3 (Debian: fuse3).",
    )
    mount.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT",
                       help="where to mount the view (made if missing, removed again after)")
    _add_config_options(mount)
    mount.add_argument("-v", "--verbose", action="store_true", help="log every decision")
    mount.set_defaults(handler=cmd_mount)

    install = commands.add_parser(
        "install-service",
        help="install (and with --now start) imgclusterd as a systemd user service",
        description="Writes the config file (absolute paths) into the user config dir, the "
        "unit into ~/.config/systemd/user/, reloads systemd --user and enables the service "
        "(--now also starts it). Safe to run again after changing options.",
    )
    install.add_argument("--images", type=Path, metavar="DIR", help="the photos to watch")
    install.add_argument("--output", type=Path, metavar="DIR", help="where the output tree goes")
    install.add_argument("--state-dir", type=Path, metavar="DIR", help="where the store lives")
    install.add_argument("--now", action="store_true", help="start (or restart) it now")
    install.set_defaults(handler=cmd_install_service)

    uninstall = commands.add_parser(
        "uninstall-service",
        help="stop, disable and remove the systemd user service (photos, store, config and "
        "output are left alone)",
        description="Stops and disables the user service and removes its unit file. Never "
        "touches the images, the store, the config file or the output.",
    )
    uninstall.set_defaults(handler=cmd_uninstall_service)

    export = commands.add_parser(
        "export",
        help="print the clusters from the store as JSON or CSV (for scripts)",
        description="Prints the clusters of every configured algorithm at every threshold of "
        "its sweep, from the store: nothing is re-hashed and no output tree is needed, and it "
        "works while the daemon runs. Clusters are numbered exactly as the output tree's "
        "folders; every member has its path, hash and content digest. The JSON schema is in "
        "the README.",
    )
    _add_config_options(export)
    export.add_argument("--algorithm", metavar="A",
                        help="only this algorithm (e.g. phash_8; default: all configured)")
    export.add_argument("--threshold", type=int, metavar="T",
                        help="only this threshold (default: every threshold of the sweep; "
                        "without --algorithm: the algorithms whose sweep holds T)")
    export.add_argument("--format", choices=["json", "csv"], default="json",
                        help="json (default; schema in the README) or csv (one row per "
                        "member: algorithm,threshold,cluster,size,path,hash,digest,flat)")
    export.set_defaults(handler=cmd_export)

    similar = commands.add_parser(
        "similar",
        help="list the indexed photos nearest to PHOTO by Hamming distance",
        description="Hashes PHOTO on the fly (it may be outside the images folder; nothing is "
        "stored) the way the daemon hashes, and lists the indexed photos nearest to it, "
        "nearest first. Works while the daemon runs.",
    )
    _add_config_options(similar)
    similar.add_argument("photo", type=Path, metavar="PHOTO", help="the photo to look up")
    similar.add_argument("--algorithm", metavar="A",
                         help="the hash to compare (default: the first configured, phash_8)")
    similar.add_argument("--max-distance", type=int, metavar="D",
                         help="farthest Hamming distance listed (default: the algorithm's "
                         "largest threshold)")
    similar.add_argument("--limit", type=int, default=20, metavar="N",
                         help="at most N photos (default: 20; 0: all within the distance)")
    similar.add_argument("--json", action="store_true",
                         help="machine-readable output (shape in the README)")
    similar.set_defaults(handler=cmd_similar)

    sample = commands.add_parser(
        "sample",
        help="write a small folder of sample photos with near-duplicates (for trying it out)",
        description="Writes 44 generated photos (8 scenes x 5 variants, 4 singles) into "
        "FOLDER, never overwriting a file. Nothing is downloaded.",
    )
    sample.add_argument("folder", type=Path, nargs="?", default=Path("data/images"),
                        help="where to write them (default: data/images)")
    sample.set_defaults(handler=cmd_sample)
    return parser


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration (flags override the config file)")
    group.add_argument("--config", type=Path, metavar="FILE",
                       help="config file (default: $IMGCLUSTERD_CONFIG, then the user config "
                       "file, then built-in defaults)")
    group.add_argument("--images", type=Path, metavar="DIR",
                       help="the photos to cluster (default: data/images); never modified")
    group.add_argument("--output", type=Path, metavar="DIR",
                       help="where the output tree goes (default: data/output)")
    group.add_argument("--state-dir", type=Path, metavar="DIR",
                       help="where the hash store lives (default: the user state dir)")
    group.add_argument("--decode", choices=["exact", "fast"],
                       help="exact: ImageHash's hashes bit for bit (default); fast: reduced-size "
                       "JPEG decoding, several times faster, a few bits may differ")
    group.add_argument("--workers", type=int, metavar="N",
                       help="hashing processes (default: one per core)")
    group.add_argument("--output-mode", choices=["tree", "mount"],
                       help="tree: write the output tree of symlinks (default); mount: serve "
                       "the same tree as a read-only FUSE filesystem at the output path, "
                       "computed on demand (needs imgclusterd[mount])")


def _load(args: argparse.Namespace) -> LoadedConfig:
    overrides: dict[str, Any] = {
        "images": args.images,
        "output": args.output,
        "state_dir": args.state_dir,
        "decode": args.decode,
        "workers": args.workers,
        "output_mode": args.output_mode,
    }
    return load_config(args.config, overrides)


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    # Under systemd journald stamps every line itself; elsewhere a time helps.
    under_systemd = "INVOCATION_ID" in os.environ or "JOURNAL_STREAM" in os.environ
    fmt = "%(levelname)s %(message)s" if under_systemd else "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("watchdog").setLevel(logging.WARNING)
    logging.getLogger("PIL").setLevel(logging.WARNING)


def reset_store(config: Config) -> None:
    """Rename the store aside (never delete: it may be someone else's file)."""
    store = config.store_dir / STORE_NAME
    if not store.exists():
        return
    aside = store.with_name(f"{STORE_NAME}.reset-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{store}{suffix}")
        if part.exists():
            part.rename(Path(f"{aside}{suffix}"))
    print(f"imgclusterd: the old store was set aside as {aside}", file=sys.stderr)


# -- commands ----------------------------------------------------------------------------------


def cmd_scan(args: argparse.Namespace) -> int:
    from .errors import AlreadyRunning
    from .lock import InstanceLock
    from .pipeline import Pipeline, check_layout
    from .progress import ProgressPrinter
    from .status import LOCK_NAME

    config = _load(args).config
    if not config.images.is_dir():
        # Checked before the store is created: a typo must not leave a store behind.
        raise ImagesFolderError(f"images folder {config.images} does not exist or is not a "
                                "folder (set `images` in the config or pass --images)")
    check_layout(config)  # before the lock file is made: never write inside the images folder
    # The daemon's lock: a scan beside a running daemon would race it for the store and the
    # output, and --reset-store must never pull the store from under a live daemon.
    try:
        lock = InstanceLock(config.store_dir / LOCK_NAME)
        lock.acquire()
    except AlreadyRunning as exc:
        raise AlreadyRunning(exc.pid, "the daemon keeps this folder up to date; see "
                             "`imgclusterd status`, or stop it to scan by hand") from None
    try:
        if args.reset_store:
            reset_store(config)
        printer = ProgressPrinter() if not args.quiet else None
        stop = threading.Event()
        with Pipeline(config, stop=stop, progress=printer) as pipeline:
            report = pipeline.refresh()
            if not report.interrupted:
                # Photos hashed before thumbnails existed (new ones got theirs while hashed).
                report.thumbnails_made, _ = pipeline.make_thumbnails()
                if report.thumbnails_made and config.explorer:
                    # The page just written lacks them: write it again (the tree is reused;
                    # the folder, just walked, is not walked again).
                    report.generation = pipeline.refresh(dirty=()).generation
    finally:
        lock.release()
    if printer:
        printer.close()
    for path, reason in report.new_unreadable:
        print(f"unreadable: {path}: {reason}", file=sys.stderr)
    if report.deferred:
        print(f"{len(report.deferred)} files are still being written; run again to include "
              "them", file=sys.stderr)
    if report.skipped and not args.quiet:
        for path, why in report.skipped[:5]:
            print(f"skipped: {path}: {why}", file=sys.stderr)
        if len(report.skipped) > 5:
            print(f"skipped: ... and {len(report.skipped) - 5} more", file=sys.stderr)
    print(report.summary())
    if not args.quiet:
        print(f"output: {config.output}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import Daemon
    from .errors import ConfigError
    from .notify import Notifier

    try:
        config = _load(args).config
    except ConfigError as exc:
        # Under systemd: say what is wrong where `systemctl --user status` shows it.
        Notifier.from_env().status(f"config error: {exc}")
        raise
    # The store is reset only once the daemon holds the instance lock (never under a live one).
    before_start = (lambda: reset_store(config)) if args.reset_store else None
    return Daemon(config).run(before_start=before_start)


def cmd_mount(args: argparse.Namespace) -> int:
    import signal

    from .mount import Mount, SnapshotHolder, load_binding
    from .pipeline import StoreView

    config = _load(args).config
    load_binding()  # say what to install before any work
    stop = threading.Event()

    def stopping(signum: int, frame: object) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stopping)
    holder = SnapshotHolder(config.keep_generations, config.generation_grace)
    mount = Mount(args.mountpoint, holder)
    mount.check()  # a refused mount point fails now, not after the clustering
    with StoreView(config) as view:
        print(f"clustering {config.images} from its store...", file=sys.stderr)
        snapshot = view.update()
        assert snapshot is not None
        holder.publish(snapshot)
        mount.start()
        snapshot.warm()  # names and ranks now, not on each folder's first listing
        try:
            print(f"mounted at {mount.mountpoint} ({snapshot.photos:,} photos); Ctrl-C "
                  "unmounts", file=sys.stderr)
            while not stop.wait(_MOUNT_FOLLOW_EVERY) and mount.alive():
                fresh = view.update()
                if fresh is not None:
                    holder.publish(fresh)
                    fresh.warm()
                    log.info("the store changed: now serving %s", fresh.label)
        finally:
            mount.stop()
    print("unmounted", file=sys.stderr)
    return 0


_MOUNT_FOLLOW_EVERY = 2.0  # seconds between two looks at the store's revision


def cmd_status(args: argparse.Namespace) -> int:
    from . import status

    report = status.collect(_load(args).config)
    print(status.to_json(report) if args.json else status.render(report))
    return status.EXIT_CODES[report["state"]]


def cmd_install_service(args: argparse.Namespace) -> int:
    from .service import install_service

    overrides = {"images": args.images, "output": args.output, "state_dir": args.state_dir}
    print(install_service(overrides, now=args.now))
    return 0


def cmd_uninstall_service(args: argparse.Namespace) -> int:
    from .service import uninstall_service

    print(uninstall_service())
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.check is not None:
        load_config(args.check, {})
        print(f"{args.check}: valid")
        return 0
    loaded = _load(args)
    config = loaded.config
    print(f"# config file: {loaded.file or '(none; built-in defaults)'}")
    print(f"# store: {config.store_dir / STORE_NAME}")
    for key in Config.model_fields:
        value = getattr(config, key)
        if key == "algorithms":
            value = ", ".join(f"{a.name}(max {a.max_threshold}, step {a.step})" for a in value)
        elif key == "workers" and not value:
            value = f"0 (one per core: {config.worker_count})"
        print(f"{key} = {value}    # {loaded.sources.get(key, 'default')}")
    return 0


def _raw_stdout() -> None:
    """Paths that are not valid UTF-8 are printed as their original bytes, not a crash."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="surrogateescape")


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    _raw_stdout()
    export(_load(args).config, sys.stdout, algorithm=args.algorithm,
           threshold=args.threshold, fmt=args.format)
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    from . import similar

    result = similar.find_similar(_load(args).config, args.photo, algorithm=args.algorithm,
                                  max_distance=args.max_distance, limit=args.limit or None)
    _raw_stdout()
    print(similar.to_json(result) if args.json else similar.render(result))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .sample import make_sample

    try:
        written = make_sample(args.folder)
    except OSError as exc:
        raise ImgclusterdError(f"cannot write the sample photos into {args.folder}: "
                               f"{exc.strerror or exc}") from exc
    print(f"wrote {len(written)} sample photos into {args.folder.resolve()}")
    return 0



