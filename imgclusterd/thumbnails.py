"""Thumbnails of the photos, content-addressed by the photo's digest in the state folder.

``<state_dir>/thumbnails/<xx>/<digest hex>.jpg`` where ``xx`` is the first two hex digits: two
copies of one photo share one thumbnail, and a renamed photo keeps it. The explorer page links
to these files by absolute path.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["THUMBNAIL_FOLDER", "thumbnail_path"]

THUMBNAIL_FOLDER = "thumbnails"  # inside the store's state folder


def thumbnail_path(folder: Path, digest: bytes) -> Path:
    """Where the thumbnail of the photo with this content digest lives inside ``folder``."""
    hexdigest = digest.hex()
    return folder / hexdigest[:2] / f"{hexdigest}.jpg"
