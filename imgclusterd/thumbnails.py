"""Thumbnails of the photos, content-addressed by the photo's digest in the state folder.

``<state_dir>/thumbnails/<xx>/<digest hex>.jpg`` where ``xx`` is the first two hex digits: two
copies of one photo share one thumbnail, and a renamed photo keeps it. The explorer page links
to these files by absolute path.

A thumbnail is made by the hashing worker from the image it has just decoded (no second read of
the photo): :func:`render_thumbnail` turns it into JPEG bytes and :func:`write_thumbnail` puts
them in place atomically (a temporary file in the same folder, then ``os.replace``), so a
reader never sees half a thumbnail. It is a cache: a missing one is made again (for photos
hashed before thumbnails existed, by a background pass over :func:`missing_thumbnails`), and
one whose digest no photo has any more is removed by :func:`prune_thumbnails`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "THUMBNAIL_FOLDER",
    "THUMBNAIL_QUALITY",
    "missing_thumbnails",
    "prune_thumbnails",
    "render_thumbnail",
    "thumbnail_digests",
    "thumbnail_path",
    "write_thumbnail",
]

logger = logging.getLogger(__name__)

THUMBNAIL_FOLDER = "thumbnails"  # inside the store's state folder
THUMBNAIL_QUALITY = 80  # JPEG quality: ~10-20 KB at 256 px, no visible blocking at that size

_SUFFIX = ".jpg"
_TMP_SUFFIX = ".tmp"
#: A temporary file older than this is a leftover of a killed worker (writing one takes ms).
_STALE_TMP_SECONDS = 600.0


def thumbnail_path(folder: Path, digest: bytes) -> Path:
    """Where the thumbnail of the photo with this content digest lives inside ``folder``."""
    hexdigest = digest.hex()
    return folder / hexdigest[:2] / f"{hexdigest}{_SUFFIX}"


def render_thumbnail(image: Image.Image, size: int) -> bytes:
    """JPEG bytes of ``image`` with its longest side ``size`` px (never enlarged), in RGB or
    grey; transparency is flattened onto white and 16-bit or float pixels scaled to 8 bits."""
    if size < 1:
        raise ValueError(f"thumbnail size must be at least 1, not {size}")
    image = _resizable(image)
    width, height = image.size
    scale = min(1.0, size / max(width, height, 1))
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if target != image.size:
        # reducing_gap: a cheap box reduce() first, then Lanczos on a few times the target;
        # at 12 MP that is ~15 ms instead of ~150 ms for Lanczos all the way.
        image = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGB" if image.mode == "RGBA" else "L", image.size, "white")
        background.paste(image, mask=image.getchannel("A"))
        image = background
    elif image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=THUMBNAIL_QUALITY)
    return out.getvalue()


def write_thumbnail(folder: Path, digest: bytes, data: bytes) -> Path:
    """Put ``data`` at :func:`thumbnail_path` atomically; return that path."""
    path = thumbnail_path(folder, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process: two workers may render the same content (two copies in one batch).
    tmp = path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        # No fsync: a thumbnail is a cache, and one lost to a power cut is made again.
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def thumbnail_digests(folder: Path) -> set[bytes]:
    """Digests that have a (non-empty) thumbnail in ``folder``."""
    found: set[bytes] = set()
    try:
        subfolders = list(os.scandir(folder))
    except FileNotFoundError:
        return found
    for sub in subfolders:
        if not sub.is_dir(follow_symlinks=False) or len(sub.name) != 2:
            continue
        with os.scandir(sub.path) as entries:
            for entry in entries:
                digest = _digest_of(entry.name)
                if digest is not None and entry.stat(follow_symlinks=False).st_size > 0:
                    found.add(digest)
    return found


def missing_thumbnails(folder: Path, photos: Mapping[bytes, str]) -> list[tuple[bytes, str]]:
    """``(digest, path)`` of the photos (digest -> one path) without a thumbnail, by path."""
    have = thumbnail_digests(folder)
    return sorted(((d, p) for d, p in photos.items() if d not in have), key=lambda x: x[1])


def prune_thumbnails(folder: Path, keep: Iterable[bytes], now: float | None = None) -> int:
    """Remove the thumbnails whose digest is not in ``keep`` (no photo has that content any
    more) and temporaries left by killed workers; return how many thumbnails went."""
    keep = set(keep)
    now = time.time() if now is None else now
    removed = 0
    try:
        subfolders = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for sub in subfolders:
        if not sub.is_dir(follow_symlinks=False) or len(sub.name) != 2:
            continue  # not ours: leave it alone
        with os.scandir(sub.path) as entries:
            names = [(e.name, e.path) for e in entries]
        for name, path in names:
            digest = _digest_of(name)
            try:
                if digest is not None:
                    if digest not in keep:
                        os.unlink(path)
                        removed += 1
                elif (
                    name.startswith(".")
                    and name.endswith(_TMP_SUFFIX)
                    and now - os.lstat(path).st_mtime > _STALE_TMP_SECONDS
                ):
                    os.unlink(path)
            except FileNotFoundError:
                pass  # a worker replaced or removed it meanwhile
        with contextlib.suppress(OSError):
            os.rmdir(sub.path)  # only succeeds when empty
    return removed


def _digest_of(name: str) -> bytes | None:
    """The digest a thumbnail file name stands for, or None for anything else."""
    if not name.endswith(_SUFFIX) or len(name) != 64 + len(_SUFFIX):
        return None
    try:
        return bytes.fromhex(name[:64])
    except ValueError:
        return None


def _resizable(image: Image.Image) -> Image.Image:
    """``image`` in a mode that resizes well and ends as JPEG (L, LA, RGB, RGBA, CMYK, YCbCr)."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK", "YCbCr"):
        return image
    if mode == "P" or mode == "PA":
        # Resizing a palette image would pick nearest pixels; expand the palette first.
        has_alpha = mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if has_alpha else "RGB")
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I") or mode == "F":
        # 16-bit (I;16*), 32-bit int or float: convert("L") would clip everything above 255.
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(np.min(pixels)), float(np.max(pixels))
        if mode.startswith("I;16"):
            low, high = 0.0, 65535.0
        span = (high - low) or 1.0
        return Image.fromarray(((pixels - low) * (255.0 / span)).astype(np.uint8))
    return image.convert("RGBA" if "A" in mode else "RGB")
