"""What kind of filesystem a path lives on (from ``/proc/self/mountinfo``).

Two stages care: the watcher (inotify misses changes made by other clients of a network
filesystem, so it polls there) and the store (SQLite's WAL needs shared memory and POSIX locks
that network filesystems do not provide reliably, so the store refuses to live on one).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "NETWORK_FILESYSTEMS",
    "contains",
    "filesystem_type",
    "is_network_filesystem",
    "mounted_at",
]

# Filesystems where inotify misses changes made elsewhere (other clients, the host of a VM).
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre", "gpfs",
    "ncpfs", "coda", "davfs", "virtiofs", "vboxsf", "vmhgfs", "fuse.sshfs", "fuse.rclone",
    "fuse.s3fs", "fuse.gcsfuse", "fuse.glusterfs", "fuse.cephfs", "fuse.vmhgfs-fuse",
})  # fmt: skip


def filesystem_type(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str | None:
    """The type of the filesystem holding ``path`` (e.g. ``ext4``, ``nfs4``, ``fuse.sshfs``).

    Read from ``/proc/self/mountinfo``: the longest mount point that contains ``path``. None when
    that cannot be told (no /proc, or not Linux).
    """
    try:
        target = os.path.realpath(path)
        lines = mountinfo.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for line in lines:
        # "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        mount_point = _unescape_mount(fields[4])
        if contains(mount_point, target) and (best is None or len(mount_point) >= best[0]):
            best = (len(mount_point), tail[0])
    return best[1] if best else None


def mounted_at(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str | None:
    """The type of the filesystem mounted exactly at ``path`` (the last one mounted there), or
    None when nothing is. Never touches ``path`` itself: a FUSE mount whose server died answers
    every stat with ENOTCONN, and this is how such a stale mount is found."""
    target = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))),
                          os.path.basename(os.path.abspath(path)))
    try:
        lines = mountinfo.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if sep and len(fields) >= 5 and tail and _unescape_mount(fields[4]) == target:
            found = tail[0]
    return found


def is_network_filesystem(fstype: str | None) -> bool:
    """True for filesystem types where inotify cannot be trusted (see NETWORK_FILESYSTEMS)."""
    return fstype is not None and fstype.lower() in NETWORK_FILESYSTEMS


def contains(parent: str, path: str) -> bool:
    """``path`` is ``parent`` or inside it (plain string paths, no file system access)."""
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def _unescape_mount(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040 ...).
    if "\\" not in field:
        return field
    out, i = bytearray(), 0
    raw = os.fsencode(field)
    while i < len(raw):
        if raw[i : i + 1] == b"\\" and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))
