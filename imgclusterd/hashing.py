"""The per-image hashing stage: one file in, its facts, content digest and every hash out.

Runs inside pool workers and is pure: it knows nothing of the store or the output tree.
A file is read once into memory, stat'ed before and after (a file that changed meanwhile is
*unstable*: retried later, never recorded as unreadable), decoded once, and every configured
algorithm is computed from that one decode.

``decode="exact"`` (the default) gives ImageHash's hashes bit for bit, faster: one shared
``convert("L")``, one Lanczos resize per distinct target size, and the wavelet hash computed
from exact integer block sums (see :func:`_whash_exact`). ``decode="fast"`` decodes JPEGs at a
reduced DCT scale and shrinks other images with ``reduce()`` first; hashes may differ by a few
bits (measured by ``benchmarks/bench_hashing.py``).

Both modes first :func:`normalise` the decoded image, and exact mode is ImageHash on the
normalised image: 16-bit images keep their high byte (Pillow's ``convert("L")`` clips them at
255, so a 16-bit photo hashed as a white page), and alpha is dropped -- the colour channels as
stored are hashed, which is what ImageHash (and the one-shot script) does for RGBA, LA and
transparent palettes, while fast mode's ``reduce()`` used to premultiply alpha first. An image
whose hashing input is near-constant is *flat* (:data:`FLAT_CONTRAST`): its hashes carry
almost no information and it matches other flat images at threshold 0.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import imagehash
import numpy as np
import scipy.fftpack
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError, features

from imgclusterd.algorithms import Algorithm, pack_bits
from imgclusterd.thumbnails import render_thumbnail, thumbnail_path, write_thumbnail

__all__ = [
    "FLAT_CONTRAST",
    "PILLOW_DEFAULT_MAX_PIXELS",
    "FileFacts",
    "HashPlan",
    "HashResult",
    "file_digest",
    "hash_file",
    "hash_image",
    "normalise",
    "register_heif",
    "thumbnail_file",
]

logger = logging.getLogger(__name__)

#: Pillow's own decompression-bomb limit (``Image.MAX_IMAGE_PIXELS`` as shipped).
PILLOW_DEFAULT_MAX_PIXELS = 89_478_485

#: ISO-BMFF brands of HEIF/AVIF files, which Pillow opens only with the pillow-heif plugin.
_HEIF_BRANDS = {
    b"heic": "HEIC", b"heix": "HEIC", b"heim": "HEIC", b"heis": "HEIC", b"hevc": "HEIC",
    b"hevx": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF",
}

#: Fast mode keeps the image's smaller side at least this many times the largest resize
#: target (phash_20: 80 px -> 320 px, i.e. 1/8 DCT scale for a 12 MP JPEG). At 2x the
#: hashes drift about twice as far; 8x halves the drift again for twice the time.
_FAST_OVERSAMPLE = 4

#: Modes Image.reduce() accepts (it refuses e.g. I;16 and P).
_REDUCIBLE = {"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "I", "F"}

#: 16-bit integer modes (PNG and TIFF greyscale): hashed from their high byte.
_WIDE = {"I;16", "I;16L", "I;16B", "I;16N"}

#: Alpha modes and the colour mode their alpha is dropped to.
_WITHOUT_ALPHA = {"RGBA": "RGB", "RGBa": "RGB", "LA": "L", "La": "L", "PA": "RGB"}

#: An image is *flat* when the standard deviation of its 32x32 grey version (phash_8's
#: input, Lanczos) is below this many grey levels (of 255): flat colours, blank pages, a
#: 16-bit image read as 8 bits by clipping. Ordinary photos measure 10-110; a page of JPEG
#: noise on one colour 0-0.5.
FLAT_CONTRAST = 1.0
_FLAT_SIDE = 32

_heif_registered: bool | None = None
_thumbnail_warned = False


@dataclass(frozen=True)
class HashPlan:
    """What to compute for every file. Picklable: sent to pool workers with each task."""

    algorithms: tuple[Algorithm, ...]
    decode: Literal["exact", "fast"] = "exact"
    exif_transpose: bool = True
    max_image_pixels: int | None = PILLOW_DEFAULT_MAX_PIXELS  # None disables the bomb check
    max_file_bytes: int | None = None  # larger files are not read (memory per worker)
    # Where the worker writes each photo's thumbnail (thumbnails.thumbnail_path), and the
    # longest side; None: no thumbnails.
    thumbnail_folder: str | None = None
    thumbnail_size: int = 256

    def __post_init__(self) -> None:
        # Fail at configuration time, not once per file inside a worker.
        if self.decode not in ("exact", "fast"):
            raise ValueError(f"decode must be 'exact' or 'fast', not {self.decode!r}")
        for algo in self.algorithms:
            if algo.hash_size < 2:
                raise ValueError(f"{algo.name}: hash_size must be at least 2")
            if algo.kind == "whash" and algo.hash_size & (algo.hash_size - 1):
                raise ValueError(f"{algo.name}: whash needs a power-of-two hash_size")


@dataclass(frozen=True)
class FileFacts:
    """The stat facts that tell whether a file changed since it was hashed."""

    size: int
    mtime_ns: int
    inode: int
    device: int
    ctime_ns: int = 0  # a replaced file of the same size and mtime still has a new ctime

    @classmethod
    def from_stat(cls, st: os.stat_result) -> FileFacts:
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino, device=st.st_dev,
                   ctime_ns=st.st_ctime_ns)


@dataclass
class HashResult:
    """What a worker returns for one path; ``error`` and ``unstable`` exclude ``hashes``."""

    path: str
    facts: FileFacts | None
    digest: bytes | None
    hashes: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None
    unstable: bool = False
    thumbnail: bool = False  # the photo's thumbnail exists now (made now or already there)
    flat: bool = False  # near-constant image: its hashes carry almost no information


class _Unreadable(Exception):
    """A file that cannot be hashed; the message is the short reason for the user."""


def register_heif() -> bool:
    """Register pillow-heif's opener once; True when HEIC opens (pillow-heif is a dependency,
    so False means a broken installation: such files are then reported as unsupported)."""
    global _heif_registered
    if _heif_registered is None:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
            _heif_registered = True
        except Exception:  # not installed, or a broken build: report such files as unsupported
            _heif_registered = False
    return _heif_registered


def file_digest(path: str) -> bytes:
    """sha256 of a file's content (the reconcile stage's identity for renames and copies)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def hash_file(path: str, plan: HashPlan) -> HashResult:
    """Read, decode and hash one file. Never raises for a bad, changing or vanished file."""
    read = _read(path, plan.max_file_bytes)
    if isinstance(read, HashResult):
        return read
    before, data = read
    return _hash_read(path, plan, before, data)


def _read(path: str, max_bytes: int | None = None) -> tuple[os.stat_result, bytes] | HashResult:
    """Step 1: stat, then read the whole file into memory (one read: decode and digest agree)."""
    try:
        before = os.stat(path)
        if not stat.S_ISREG(before.st_mode):
            return HashResult(path, FileFacts.from_stat(before), None, error="not a regular file")
        if max_bytes is not None and before.st_size > max_bytes:
            # Bounded memory per worker: the file is never read, so it gets no digest.
            return HashResult(
                path, FileFacts.from_stat(before), None,
                error=f"too large to hash ({before.st_size / 2**20:,.0f} MB; the limit is "
                f"max_file_mb = {max_bytes // 2**20})",
            )  # fmt: skip
        with open(path, "rb") as f:
            return before, f.read()
    except OSError as exc:
        return HashResult(path, None, None, error=_os_reason(exc))


def _hash_read(path: str, plan: HashPlan, before: os.stat_result, data: bytes) -> HashResult:
    """Step 2: stat again (a file that changed is unstable), digest, decode and hash."""
    try:
        after = os.stat(path)
    except OSError as exc:
        return HashResult(path, None, None, error=_os_reason(exc))
    facts = FileFacts.from_stat(before)
    if facts != FileFacts.from_stat(after) or len(data) != before.st_size:
        # Still being written, or replaced: the caller retries once it is quiet.
        return HashResult(path, facts, None, unstable=True)
    digest = hashlib.sha256(data).digest()
    if not data:
        return HashResult(path, facts, digest, error="empty file")
    try:
        image = _decode(data, plan)
        hashes, flat = _hash_measured(image, plan)
    except _Unreadable as exc:
        return HashResult(path, facts, digest, error=str(exc))
    except MemoryError:
        return HashResult(path, facts, digest, error="out of memory while decoding")
    except Exception as exc:  # a Pillow bug or an exotic file must not kill the batch
        logger.debug("hashing %s failed", path, exc_info=True)
        return HashResult(path, facts, digest, error=f"cannot decode: {_describe(exc)}")
    thumbnail = _thumbnail(image, digest, plan, path)
    return HashResult(path, facts, digest, hashes, thumbnail=thumbnail, flat=flat)


def thumbnail_file(path: str, plan: HashPlan) -> HashResult:
    """Only the thumbnail, for a photo hashed before thumbnails existed (``hashes`` empty).

    A second read of the photo is unavoidable here, but not a full decode: a JPEG is decoded
    at the smallest DCT scale that still covers the thumbnail, whatever ``plan.decode`` is.
    The thumbnail goes under the digest of what was read, so it is right even if the file
    changed since it was hashed.
    """
    read = _read(path, plan.max_file_bytes)
    if isinstance(read, HashResult):
        return read
    before, data = read
    facts, digest = FileFacts.from_stat(before), hashlib.sha256(data).digest()
    register_heif()
    Image.MAX_IMAGE_PIXELS = plan.max_image_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image: Image.Image = Image.open(io.BytesIO(data))
            if image.format == "JPEG":
                image.draft("RGB", (plan.thumbnail_size, plan.thumbnail_size))
            image.load()
            if plan.exif_transpose:
                ImageOps.exif_transpose(image, in_place=True)
    except Exception as exc:  # the hashing pass records reasons; here it is only a skip
        return HashResult(path, facts, digest, error=f"cannot decode: {_describe(exc)}")
    return HashResult(path, facts, digest, thumbnail=_thumbnail(image, digest, plan, path))


def _thumbnail(image: Image.Image, digest: bytes, plan: HashPlan, path: str) -> bool:
    """Write the thumbnail of a decoded photo unless it exists; never fails the hashing."""
    if plan.thumbnail_folder is None:
        return False
    folder = Path(plan.thumbnail_folder)
    if thumbnail_path(folder, digest).exists():
        return True  # a copy of a known photo, or re-hashed in another decode mode
    try:
        write_thumbnail(folder, digest, render_thumbnail(image, plan.thumbnail_size))
    except Exception as exc:  # a full disk or an odd mode: the photo is still hashed
        global _thumbnail_warned
        # Once per worker: a full or read-only state folder would otherwise log every photo.
        log = logger.debug if _thumbnail_warned else logger.warning
        _thumbnail_warned = True
        log("no thumbnail for %s: %s", path, _describe(exc))
        return False
    return True


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "vanished"  # listed, then gone: the caller treats it as deleted
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "not a regular file"
    return f"cannot read: {exc.strerror or exc}"


def hash_image(image: Image.Image, plan: HashPlan) -> dict[str, bytes]:
    """Every algorithm of ``plan`` on an already decoded (and transposed) image."""
    return _hash_measured(image, plan)[0]


def normalise(image: Image.Image) -> Image.Image:
    """The image hashing sees (see the module doc): 16-bit greyscale reduced to its high byte
    (as 8-bit displays and Pillow's own 16-bit RGB decoding do), alpha dropped. Anything else
    is returned as it is, so ordinary images hash exactly as ImageHash hashes them."""
    if image.mode in _WIDE or image.mode == "I":
        wide = np.asarray(image).astype(np.int64)
        # Mode I holds 16-bit PNGs in older Pillows; one within 0..255 is 8-bit data.
        if image.mode in _WIDE or wide.max(initial=0) > 255:
            return Image.fromarray((wide.clip(0, 65535) >> 8).astype(np.uint8), "L")
    if image.mode in _WITHOUT_ALPHA:
        return image.convert(_WITHOUT_ALPHA[image.mode])
    if image.mode == "P" and "transparency" in image.info:
        return image.convert("RGB")  # not RGBA: fast mode's reduce() would weigh by alpha
    return image


def _hash_measured(image: Image.Image, plan: HashPlan) -> tuple[dict[str, bytes], bool]:
    """The hashes and whether the image is flat (see FLAT_CONTRAST)."""
    with warnings.catch_warnings():
        # e.g. "Palette images with Transparency expressed in bytes": harmless for hashing,
        # and a worker has nobody to show warnings to.
        warnings.simplefilter("ignore")
        image = normalise(image)
        if plan.decode == "fast":
            return _hash_fast(image, plan.algorithms)
        return _hash_exact(image, plan.algorithms)


# --- decoding -----------------------------------------------------------------------------


def _decode(data: bytes, plan: HashPlan) -> Image.Image:
    """Open and fully decode ``data`` (first frame), or raise _Unreadable with the reason."""
    register_heif()
    # Pillow reads the limit from a module global; workers run one file at a time.
    Image.MAX_IMAGE_PIXELS = plan.max_image_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated photo is unreadable, not grey
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Pillow only warns between 1x and 2x the limit; the plan's limit is the limit.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image: Image.Image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise _Unreadable(_unsupported_reason(data) or "not an image") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _Unreadable(_bomb_reason(str(exc), plan.max_image_pixels)) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise _Unreadable(_corrupt_reason(exc)) from None
        pixels = max(1, image.width) * max(1, image.height)
        if plan.max_image_pixels is not None and pixels > plan.max_image_pixels:
            raise _Unreadable(_bomb_reason(f"({pixels} pixels)", plan.max_image_pixels))
        if plan.decode == "fast" and image.format == "JPEG":
            _draft_for(image, plan.algorithms, colour=plan.thumbnail_folder is not None)
        try:
            image.load()
            if plan.exif_transpose:
                # In place: the usual upright photo would otherwise be copied (~60 ms at 12 MP).
                ImageOps.exif_transpose(image, in_place=True)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _Unreadable(_bomb_reason(str(exc), plan.max_image_pixels)) from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
            raise _Unreadable(_corrupt_reason(exc)) from None
    return image


def _unsupported_reason(data: bytes) -> str | None:
    """Name a HEIF-family file Pillow could not identify: damaged when its decoder is here,
    unsupported when it is not (HEIC/HEIF: pillow-heif; AVIF: Pillow's own plugin, built into
    its wheels since 11.2 -- pillow-heif 1.x no longer decodes AVIF)."""
    if data[4:8] == b"ftyp":
        brands = [data[8:12]] + [data[i : i + 4] for i in range(16, min(len(data), 64), 4)]
        for brand in brands:
            if brand in _HEIF_BRANDS:
                kind = _HEIF_BRANDS[brand]
                readable = features.check("avif") if kind == "AVIF" else register_heif()
                if readable:
                    return f"corrupt image: not a readable {kind} file"
                needs = "a Pillow built with AVIF" if kind == "AVIF" else "pillow-heif"
                return f"unsupported format {kind} (needs {needs})"
    return None


def _bomb_reason(message: str, limit: int | None) -> str:
    match = re.search(r"\((\d+) pixels\)", message)
    pixels = match.group(1) if match else "too many"
    return f"decompression bomb ({pixels} pixels > limit {limit})"


def _corrupt_reason(exc: BaseException) -> str:
    text = str(exc).lower()
    if "truncated" in text or isinstance(exc, EOFError) or "broken data stream" in text:
        return "truncated image"
    return f"corrupt image: {_describe(exc)}"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


# --- exact: ImageHash bit for bit -----------------------------------------------------------


def _hash_exact(
    image: Image.Image, algorithms: tuple[Algorithm, ...]
) -> tuple[dict[str, bytes], bool]:
    gray: Image.Image | None = None
    resized: dict[tuple[int, int], np.ndarray] = {}

    def pixels(size: tuple[int, int]) -> np.ndarray:
        # ImageHash does image.convert("L").resize(size, LANCZOS) per call; both steps are
        # deterministic, so one convert and one resize per distinct size give the same bits.
        nonlocal gray
        if size not in resized:
            if gray is None:
                gray = image.convert("L")
            resized[size] = np.asarray(gray.resize(size, Image.Resampling.LANCZOS))
        return resized[size]

    out: dict[str, bytes] = {}
    for algo in algorithms:
        n = algo.hash_size
        if algo.kind == "average_hash":
            px = pixels((n, n))
            bits = px > np.mean(px)
        elif algo.kind == "phash":
            bits = _phash_bits(pixels((4 * n, 4 * n)), n)
        elif algo.kind == "dhash":
            px = pixels((n + 1, n))
            bits = px[:, 1:] > px[:, :-1]
        elif algo.kind == "whash":
            scale = _whash_scale(image.size, n)
            bits = _whash_exact(pixels((scale, scale)), n)
        elif algo.kind == "colorhash":
            bits = imagehash.colorhash(image, binbits=n).hash
        else:
            raise ValueError(f"unknown algorithm kind {algo.kind!r}")
        out[algo.name] = pack_bits(bits)
    # phash_8's resize, already made in the default set: flatness costs nothing there.
    flat = float(np.std(pixels((_FLAT_SIDE, _FLAT_SIDE)))) < FLAT_CONTRAST
    return out, flat


def _phash_bits(px: np.ndarray, n: int) -> np.ndarray:
    # The very calls ImageHash makes, so the floating point is identical.
    dct = scipy.fftpack.dct(scipy.fftpack.dct(px, axis=0), axis=1)
    low = dct[:n, :n]
    return np.asarray(low > np.median(low))


def _whash_scale(size: tuple[int, int], hash_size: int) -> int:
    """ImageHash's default ``image_scale``, with its own float log2 (so the same rounding)."""
    return max(2 ** int(np.log2(min(size))), hash_size)


def _whash_exact(px: np.ndarray, hash_size: int) -> np.ndarray:
    """``imagehash.whash`` (haar, remove_max_haar_ll) from the image_scale-square pixels.

    Zeroing the top-level Haar LL subtracts the global mean, and the Haar LL at level k is
    a positive multiple of the block sum, so the hash is ``block_sum > median(block_sums)``
    (both sides shifted by the same constant). Integer block sums make that exact; only
    when the two middle sums are equal (a tie at the median, e.g. flat images) can pywt's
    rounding decide either way, and then we run ImageHash's own code on the same pixels.
    """
    side = px.shape[0]
    block = side // hash_size
    sums = px.reshape(hash_size, block, hash_size, block).sum(axis=(1, 3), dtype=np.int64)
    ordered = np.sort(sums, axis=None)
    half = ordered.size // 2
    if ordered.size % 2 or ordered[half - 1] == ordered[half]:
        return _whash_pywt(px, hash_size)
    # median = (a + b) / 2 with a < b; compare doubled to stay in integers.
    return np.asarray(2 * sums > ordered[half - 1] + ordered[half])


def _whash_pywt(px: np.ndarray, hash_size: int) -> np.ndarray:
    """ImageHash's whash body (default args) after its resize; the tie fallback."""
    import pywt

    ll_max_level = int(np.log2(px.shape[0]))
    dwt_level = ll_max_level - int(np.log2(hash_size))
    pixels = px / 255.0
    coeffs = list(pywt.wavedec2(pixels, "haar", level=ll_max_level))
    coeffs[0] *= 0
    pixels = pywt.waverec2(coeffs, "haar")
    low = pywt.wavedec2(pixels, "haar", level=dwt_level)[0]
    return np.asarray(low > np.median(low))


# --- fast: reduced decode --------------------------------------------------------------------


def _target_side(algo: Algorithm) -> int:
    """The largest side of the resize an algorithm starts from (whash: its blocks, 4 px)."""
    n = algo.hash_size
    return {"phash": 4 * n, "dhash": n + 1, "whash": 4 * n, "colorhash": 16}.get(algo.kind, n)


def _fast_side(algorithms: tuple[Algorithm, ...]) -> int:
    """The smallest side fast mode keeps: _FAST_OVERSAMPLE x the largest resize target."""
    return max(_FAST_OVERSAMPLE * _target_side(a) for a in algorithms)


def _draft_for(
    image: Image.Image, algorithms: tuple[Algorithm, ...], colour: bool = False
) -> None:
    """Ask libjpeg for the coarsest DCT scale (1/2..1/8) that keeps ``_fast_side``.

    Grey ("L") is cheapest. ``colour`` (a thumbnail is wanted) asks for YCbCr instead: its Y
    plane is the very plane libjpeg returns for "L", and convert("L") of YCbCr copies it, so
    the hashes are the same bits either way (tested).
    """
    need = _fast_side(algorithms)
    mode = "YCbCr" if colour else "L"
    if any(a.kind == "colorhash" for a in algorithms):
        mode = "RGB"
    image.draft(mode, (need, need))


def _hash_fast(
    image: Image.Image, algorithms: tuple[Algorithm, ...]
) -> tuple[dict[str, bytes], bool]:
    """The exact computation on a smaller image: a JPEG arrives drafted, others are reduced.

    One box ``reduce()`` for everything, then each algorithm's own Lanczos resize: reducing
    further per hash size saved little and drifted by twice as many bits (benchmarked).
    """
    factor = min(image.size) // _fast_side(algorithms)
    if factor > 1:
        if image.mode not in _REDUCIBLE:
            colour = any(a.kind == "colorhash" for a in algorithms)
            image = image.convert("RGB" if colour else "L")
        image = image.reduce(factor)
    return _hash_exact(image, algorithms)
