"""The hash algorithms imgclusterd knows, and how their hashes are stored and named.

An :class:`Algorithm` is one configuration of the compatibility contract, e.g. ``phash_8``:
an ImageHash function (``kind``) at a ``hash_size``, with the threshold sweep
``range(0, max_threshold, step)``. Hashes travel between stages as *packed bits*: the
row-major flattened boolean array ImageHash produces, packed with ``numpy.packbits``
(big-endian bit order), so the hex name in a link equals ``str(imagehash.ImageHash)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "DEFAULT_ALGORITHMS",
    "KINDS",
    "Algorithm",
    "hash_hex",
    "pack_bits",
    "unpack_bits",
]

Kind = Literal["phash", "average_hash", "dhash", "whash", "colorhash"]

#: kind -> the short name used in algorithm names and output folders (as the script did).
KINDS: dict[str, str] = {
    "phash": "phash",
    "average_hash": "avhash",
    "dhash": "dhash",
    "whash": "whash",
    "colorhash": "colorhash",
}
_KIND_BY_SHORT = {short: kind for kind, short in KINDS.items()}


@dataclass(frozen=True, order=True)
class Algorithm:
    """One hash configuration and its threshold sweep. Picklable (sent to pool workers)."""

    kind: str
    hash_size: int
    max_threshold: int
    step: int

    @property
    def name(self) -> str:
        """Folder name in the output tree, e.g. ``avhash_16``."""
        return f"{KINDS[self.kind]}_{self.hash_size}"

    @property
    def bits(self) -> int:
        """Number of bits in one hash (colorhash: 14 bins of ``hash_size`` bits)."""
        if self.kind == "colorhash":
            return 14 * self.hash_size
        return self.hash_size * self.hash_size

    @property
    def thresholds(self) -> range:
        """The script's sweep: ``range(0, max_threshold, step)``; linked when distance <= t."""
        return range(0, self.max_threshold, self.step)

    @classmethod
    def from_name(cls, name: str, max_threshold: int, step: int) -> Algorithm:
        """Parse ``phash_8`` / ``avhash_16`` / ``average_hash_16`` into an Algorithm."""
        short, sep, size = name.rpartition("_")
        kind = _KIND_BY_SHORT.get(short, short if short in KINDS else "")
        if not sep or not kind or not size.isdigit():
            known = ", ".join(sorted(_KIND_BY_SHORT))
            raise ValueError(f"{name!r} is not <kind>_<size> with kind one of {known}")
        return cls(kind=kind, hash_size=int(size), max_threshold=max_threshold, step=step)


def _default(name: str, max_threshold: int, step: int) -> Algorithm:
    return Algorithm.from_name(name, max_threshold, step)


#: The 14 configurations of the one-shot script, in its order.
DEFAULT_ALGORITHMS: tuple[Algorithm, ...] = (
    _default("phash_8", 20, 1),
    _default("avhash_8", 20, 1),
    _default("dhash_8", 20, 1),
    _default("whash_8", 20, 1),
    _default("phash_12", 60, 2),
    _default("avhash_12", 60, 2),
    _default("dhash_12", 60, 2),
    _default("phash_16", 110, 3),
    _default("avhash_16", 110, 3),
    _default("dhash_16", 110, 3),
    _default("whash_16", 110, 3),
    _default("phash_20", 200, 5),
    _default("avhash_20", 200, 5),
    _default("dhash_20", 200, 5),
)


def pack_bits(flags: np.ndarray) -> bytes:
    """ImageHash's boolean array (any shape, row-major) -> packed bytes."""
    return np.packbits(np.asarray(flags, dtype=bool).ravel()).tobytes()


def unpack_bits(packed: bytes, nbits: int) -> np.ndarray:
    """Packed bytes -> flat boolean array of ``nbits`` (inverse of :func:`pack_bits`)."""
    return np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=nbits).astype(bool)


def hash_hex(packed: bytes, nbits: int) -> str:
    """The hex string ``str(imagehash.ImageHash(...))`` gives for the same bits.

    ImageHash reads the bits as one big-endian integer and zero-pads to ceil(nbits/4) digits;
    packbits pads the last byte on the right, so shift that padding away first.
    """
    value = int.from_bytes(packed, "big") >> (len(packed) * 8 - nbits)
    return f"{value:0{(nbits + 3) // 4}x}"
