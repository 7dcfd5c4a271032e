"""The hashing stage: exact mode equals ImageHash bit for bit; bad files give reasons."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import imagehash
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps, features
from skimage import data

from imgclusterd import hashing
from imgclusterd.algorithms import DEFAULT_ALGORITHMS, Algorithm, pack_bits
from imgclusterd.hashing import FileFacts, HashPlan, HashResult, file_digest, hash_file, hash_image

COLORHASH = Algorithm("colorhash", 3, 10, 1)
ALGORITHMS = (*DEFAULT_ALGORITHMS, COLORHASH, Algorithm("whash", 32, 300, 10))
PLAN = HashPlan(ALGORITHMS)
FUNCTIONS = {
    "phash": imagehash.phash,
    "average_hash": imagehash.average_hash,
    "dhash": imagehash.dhash,
    "whash": imagehash.whash,
}
PHOTOS = ["astronaut", "coffee", "chelsea", "camera", "rocket", "immunohistochemistry"]


def imagehash_reference(image: Image.Image, algorithms=ALGORITHMS) -> dict[str, bytes]:
    """What ImageHash's own functions give, one call per algorithm, as the script did."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's palette-transparency notice
        for algo in algorithms:
            if algo.kind == "colorhash":
                value = imagehash.colorhash(image, binbits=algo.hash_size)
            else:
                value = FUNCTIONS[algo.kind](image, hash_size=algo.hash_size)
            out[algo.name] = pack_bits(value.hash)
    return out


def reference_for_file(path: Path, exif_transpose: bool = True) -> dict[str, bytes]:
    with Image.open(path) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened) if exif_transpose else opened.copy()
    return imagehash_reference(image)


def photo(name: str, size: tuple[int, int] | None = None) -> Image.Image:
    image = Image.fromarray(getattr(data, name)())
    return image.resize(size, Image.Resampling.LANCZOS) if size else image


# --- exact mode == ImageHash ----------------------------------------------------------------


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize(
    "size", [None, (1200, 900), (640, 480), (300, 97), (97, 300), (33, 31), (20, 15), (5, 3)]
)
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exact_matches_imagehash_on_photos(tmp_path, name, size, fmt):
    path = tmp_path / f"{name}.{fmt.lower()}"
    photo(name, size).save(path, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    result = hash_file(str(path), PLAN)
    assert result.error is None and not result.unstable
    assert result.hashes == reference_for_file(path)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (640, 480), (120, 50, 30)),
        Image.new("L", (64, 64), 0),
        Image.new("L", (7, 300), 255),
        Image.new("RGB", (1, 1), (1, 2, 3)),
        Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (100, 1))),  # gradient
        Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (256, 1)).T.copy()),
        Image.fromarray((np.indices((512, 512)).sum(axis=0) % 2 * 255).astype(np.uint8)),
        Image.fromarray(np.kron(np.eye(4, dtype=np.uint8) * 200, np.ones((64, 64), np.uint8))),
    ],
    ids=["flat-rgb", "black", "white-strip", "one-pixel", "h-gradient", "v-gradient",
         "checker", "blocks"],
)
def test_exact_matches_imagehash_on_synthetic_images(image):
    """Flat and blocky images tie at the whash median: the pywt fallback must kick in."""
    assert hash_image(image, PLAN) == imagehash_reference(image)


def _mode_images() -> dict[str, tuple[Image.Image, str]]:
    rgb = photo("coffee", (320, 213))
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(np.linspace(0, 255, 320 * 213).reshape(213, 320).astype("u1")))
    palette = rgb.quantize(64)
    palette.info["transparency"] = bytes([0, 128] + [255] * 62)  # per-entry alpha (tRNS)
    wide = (np.asarray(photo("camera", (300, 200))).astype(np.uint16) * 257).astype("<u2")
    images = {
        "cmyk": (rgb.convert("CMYK"), "JPEG"),
        "palette-trns": (palette, "PNG"),
        "rgba": (rgba, "PNG"),
        "la": (rgba.convert("LA"), "PNG"),
        "l": (rgb.convert("L"), "JPEG"),
        "1": (rgb.convert("1"), "PNG"),
        "tiff": (rgb, "TIFF"),
        "gif": (rgb.quantize(32), "GIF"),
    }
    if features.check("webp"):
        images["webp"] = (rgb, "WEBP")
    assert Image.fromarray(wide).mode == "I;16"
    return images


def _bits_apart(a: dict[str, bytes], b: dict[str, bytes]) -> dict[str, int]:
    return {name: int(np.unpackbits(np.frombuffer(a[name], np.uint8)
                                    ^ np.frombuffer(b[name], np.uint8)).sum()) for name in a}


@pytest.mark.parametrize("decode", ["exact", "fast"])
def test_16_bit_png_hashes_like_its_8_bit_twin(tmp_path, decode):
    """Pillow's convert("L") clips 16-bit values at 255: a 16-bit photo hashed as a white page,
    the same as a 1x1 PNG. Its high byte is the photo (v * 257 >> 8 == v)."""
    eight = photo("camera", (1600, 1200))
    wide = Image.fromarray((np.asarray(eight).astype(np.uint16) * 257).astype("<u2"))
    assert wide.mode == "I;16"
    deep, twin, blank = tmp_path / "deep.png", tmp_path / "twin.png", tmp_path / "blank.png"
    wide.save(deep)
    eight.save(twin)
    Image.new("L", (1, 1), 255).save(blank)
    plan = HashPlan(ALGORITHMS, decode=decode)
    result = hash_file(str(deep), plan)
    assert result.error is None and not result.flat
    assert result.hashes == hash_file(str(twin), plan).hashes
    if decode == "exact":
        assert result.hashes == imagehash_reference(eight)
    apart = _bits_apart(result.hashes, hash_file(str(blank), plan).hashes)
    assert min(apart[a.name] for a in DEFAULT_ALGORITHMS) > 10, apart


def _transparent_twins() -> dict[str, tuple[Image.Image, Image.Image]]:
    """Images with alpha, and their opaque twins: the same colour channels, no alpha."""
    rgb = photo("astronaut", (1600, 1200))
    half = np.full((1200, 1600), 255, np.uint8)
    half[:, :800] = 0  # the left half fully transparent (its colours still stored)
    gradient = np.tile(np.linspace(0, 255, 1600).astype(np.uint8), (1200, 1))
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(half))
    faded = rgb.copy()
    faded.putalpha(Image.fromarray(gradient))
    grey = rgb.convert("L")
    la = Image.merge("LA", (grey, Image.fromarray(half)))
    opaque_palette = rgb.quantize(64)
    palette = opaque_palette.copy()
    palette.info["transparency"] = bytes([0] * 32 + [255] * 32)
    return {
        "rgba-half": (rgba, rgb),
        "rgba-gradient": (faded, rgb),
        "la": (la, grey),
        "palette-trns": (palette, opaque_palette),
    }


@pytest.mark.parametrize("case", ["rgba-half", "rgba-gradient", "la", "palette-trns"])
@pytest.mark.parametrize("decode", ["exact", "fast"])
def test_transparent_png_hashes_like_its_opaque_twin(tmp_path, case, decode):
    """Fast mode's reduce() premultiplied alpha: a transparent PNG was 14-26 bits from its
    opaque twin (0 in exact mode, where ImageHash ignores alpha). Alpha is now dropped first
    in both modes."""
    image, twin = _transparent_twins()[case]
    transparent, opaque = tmp_path / "transparent.png", tmp_path / "opaque.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image.save(transparent)
    twin.save(opaque)
    plan = HashPlan(ALGORITHMS, decode=decode)
    result = hash_file(str(transparent), plan)
    assert result.error is None
    assert result.hashes == hash_file(str(opaque), plan).hashes, \
        _bits_apart(result.hashes, hash_file(str(opaque), plan).hashes)
    if decode == "exact":
        assert result.hashes == reference_for_file(transparent)  # the script's hashes


@pytest.mark.parametrize("decode", ["exact", "fast"])
def test_near_constant_images_are_flagged_flat(tmp_path, decode):
    plan = HashPlan(ALGORITHMS, decode=decode)
    rng = np.random.default_rng(3)
    noise = np.clip(128 + rng.normal(0, 0.4, (900, 1200)), 0, 255).astype(np.uint8)
    flat = {
        "colour.png": Image.new("RGB", (1200, 900), (120, 50, 30)),
        "colour.jpg": Image.new("RGB", (1200, 900), (30, 200, 90)),
        "dot.png": Image.new("L", (1, 1), 255),
        "black.png": Image.new("L", (64, 64), 0),
        "faint-noise.png": Image.fromarray(noise),
        "transparent.png": Image.new("RGBA", (300, 200), (0, 0, 0, 0)),
    }
    informative = {
        "photo.jpg": photo("chelsea", (1200, 900)),
        "moon.png": photo("moon"),
        "dim.png": Image.fromarray((np.asarray(photo("astronaut").convert("L")) // 20)
                                   .astype(np.uint8)),
        "gradient.png": Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (100, 1))),
    }
    for group, expected in ((flat, True), (informative, False)):
        for name, image in group.items():
            path = tmp_path / name
            image.save(path)
            result = hash_file(str(path), plan)
            assert result.error is None and result.flat is expected, name


@pytest.mark.parametrize("mode", list(_mode_images()))
def test_exact_matches_imagehash_for_every_mode(tmp_path, mode):
    """Alpha is dropped before hashing, as ImageHash's convert("L") drops it: still ImageHash
    on the file itself, i.e. the one-shot script's hashes."""
    image, fmt = _mode_images()[mode]
    path = tmp_path / f"image.{fmt.lower()}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image.save(path, fmt)
    result = hash_file(str(path), PLAN)
    assert result.error is None
    assert result.hashes == reference_for_file(path)


def test_animated_gif_hashes_its_first_frame(tmp_path):
    frames = [photo("chelsea", (120, 90)), photo("rocket", (120, 90)), photo("coffee", (120, 90))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as anim:
        assert anim.n_frames == 3
        first = anim.convert("RGB")
    result = hash_file(str(path), PLAN)
    assert result.error is None
    assert result.hashes == reference_for_file(path)
    assert result.hashes == imagehash_reference(first)


def test_exif_orientation_is_applied(tmp_path):
    upright = photo("astronaut", (300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": exif_transpose turns it back
    tagged, physical = tmp_path / "tagged.png", tmp_path / "physical.png"
    upright.save(tagged, exif=exif)
    upright.transpose(Image.Transpose.ROTATE_270).save(physical)

    assert hash_file(str(tagged), PLAN).hashes == hash_file(str(physical), PLAN).hashes
    as_stored = hash_file(str(tagged), HashPlan(ALGORITHMS, exif_transpose=False)).hashes
    assert as_stored == imagehash_reference(upright)
    assert as_stored != hash_file(str(physical), PLAN).hashes

    jpeg = tmp_path / "tagged.jpg"
    upright.save(jpeg, quality=90, exif=exif)
    assert hash_file(str(jpeg), PLAN).hashes == reference_for_file(jpeg)
    with Image.open(jpeg) as opened:
        rotated = opened.transpose(Image.Transpose.ROTATE_270)
    assert hash_file(str(jpeg), PLAN).hashes == imagehash_reference(rotated)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.integers(1, 90),
    height=st.integers(1, 90),
    levels=st.integers(1, 256),
    seed=st.integers(0, 2**32 - 1),
    mode=st.sampled_from(["L", "RGB"]),
)
def test_exact_matches_imagehash_on_random_images(width, height, levels, seed, mode):
    """Few grey levels make many ties in the whash block sums; any size may need upscaling."""
    rng = np.random.default_rng(seed)
    shape = (height, width) if mode == "L" else (height, width, 3)
    values = (rng.integers(0, levels, shape) * (255 // max(1, levels - 1))).astype(np.uint8)
    image = Image.fromarray(values)
    assert hash_image(image, PLAN) == imagehash_reference(image)


def test_whash_shortcut_agrees_with_pywt_without_ties():
    rng = np.random.default_rng(7)
    for side, size in [(256, 8), (256, 16), (64, 8), (16, 16), (2048, 8)]:
        px = rng.integers(0, 256, (side, side)).astype(np.uint8)
        assert np.array_equal(hashing._whash_exact(px, size), hashing._whash_pywt(px, size))


# --- hash_file: facts, digests and reasons --------------------------------------------------


def _jpeg_bytes(size=(200, 150)) -> bytes:
    buffer = io.BytesIO()
    photo("chelsea", size).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _png_bytes(size=(200, 150)) -> bytes:
    buffer = io.BytesIO()
    photo("chelsea", size).save(buffer, "PNG")
    return buffer.getvalue()


def test_good_file_facts_and_digest(tmp_path):
    path = tmp_path / "cat.jpg"
    path.write_bytes(_jpeg_bytes())
    result = hash_file(str(path), PLAN)
    assert result.path == str(path)
    assert result.facts == FileFacts.from_stat(os.stat(path))
    assert result.digest == file_digest(str(path))
    assert set(result.hashes) == {a.name for a in ALGORITHMS}
    for algo in ALGORITHMS:
        assert len(result.hashes[algo.name]) == (algo.bits + 7) // 8


def test_file_changed_during_hashing_is_unstable(tmp_path):
    path = tmp_path / "copying.jpg"
    content = _jpeg_bytes()
    path.write_bytes(content[: len(content) // 2])
    read = hashing._read(str(path))
    assert not isinstance(read, HashResult)
    before, data_read = read
    with path.open("ab") as f:  # the copy goes on between our read and our second stat
        f.write(content[len(content) // 2 :])
    result = hashing._hash_read(str(path), PLAN, before, data_read)
    assert result.unstable and result.error is None and result.hashes == {}
    assert hash_file(str(path), PLAN).hashes == reference_for_file(path)


def test_file_replaced_by_rename_during_hashing_is_unstable(tmp_path):
    path, other = tmp_path / "a.jpg", tmp_path / "b.jpg"
    path.write_bytes(_jpeg_bytes())
    other.write_bytes(_jpeg_bytes())
    read = hashing._read(str(path))
    assert not isinstance(read, HashResult)
    os.replace(other, path)  # same size, maybe same mtime: the inode tells
    assert hashing._hash_read(str(path), PLAN, *read).unstable


def test_file_rewritten_from_a_thread_is_never_recorded_wrongly(tmp_path):
    """A writer rewriting the file nonstop: each result is unstable, or matches its digest."""
    import threading

    path = tmp_path / "busy.png"
    contents = [_png_bytes((200, 150)), _png_bytes((90, 60))]
    path.write_bytes(contents[0])
    stop = threading.Event()

    def rewrite():
        i = 0
        while not stop.is_set():
            with path.open("wb") as f:
                f.write(contents[i % 2][:1000])
                f.write(contents[i % 2][1000:])
            i += 1

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        results = [hash_file(str(path), PLAN) for _ in range(40)]
    finally:
        stop.set()
        writer.join()
    import hashlib

    digests = {hashlib.sha256(c).digest() for c in contents}
    for result in results:
        if result.unstable:
            assert result.hashes == {} and result.error is None
        elif result.hashes:
            assert result.digest in digests  # a torn read is never hashed as a photo


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"hello, I am text pretending to be a photo\n" * 10, "not an image"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 100,
         "corrupt image: not a readable HEIC file"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 100,
         "corrupt image: not a readable AVIF file"),
        (_jpeg_bytes()[:3000], "truncated image"),
        (_png_bytes()[:3000], "truncated image"),
    ],
    ids=["empty", "text", "heic", "avif", "truncated-jpeg", "truncated-png"],
)
def test_unreadable_files_get_a_reason(tmp_path, content, reason):
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    result = hash_file(str(path), PLAN)
    assert result.error == reason
    assert result.hashes == {} and not result.unstable
    assert result.facts == FileFacts.from_stat(os.stat(path))
    assert result.digest == file_digest(str(path))  # unreadable files keep their identity


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_hash_out_of_the_box(tmp_path, fmt):
    """Real files written here (HEIC by pillow-heif, AVIF by Pillow), hashed with no extra:
    exact mode is ImageHash on the decoded image, and the lossy copy stays near the original."""
    import pillow_heif

    original = photo("astronaut", (640, 480))
    path = tmp_path / f"phone.{'heic' if fmt == 'HEIF' else 'avif'}"
    if fmt == "HEIF":
        pillow_heif.from_pillow(original).save(path, quality=90)
    else:
        original.save(path, "AVIF", quality=90)
    assert path.read_bytes()[4:12] == (b"ftypheic" if fmt == "HEIF" else b"ftypavif")
    result = hash_file(str(path), PLAN)
    assert result.error is None, result.error
    assert result.hashes == reference_for_file(path)
    fast = hash_file(str(path), HashPlan(ALGORITHMS, decode="fast"))
    assert fast.error is None and fast.hashes.keys() == result.hashes.keys()
    source = hash_image(original, PLAN)
    for algo in DEFAULT_ALGORITHMS:
        a = np.unpackbits(np.frombuffer(source[algo.name], np.uint8))
        b = np.unpackbits(np.frombuffer(result.hashes[algo.name], np.uint8))
        assert np.count_nonzero(a != b) <= algo.bits // 8, algo.name


def test_heif_is_unsupported_not_corrupt_when_its_decoder_is_missing(tmp_path, monkeypatch):
    """A broken pillow-heif installation cannot be made for real here: pretend it failed to
    load (the flag register_heif() caches) and check the reason names what is missing."""
    monkeypatch.setattr(hashing, "_heif_registered", False)
    path = tmp_path / "photo.heic"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 100)
    assert hash_file(str(path), PLAN).error == "unsupported format HEIC (needs pillow-heif)"


def test_content_decides_not_the_extension(tmp_path):
    path = tmp_path / "really-a-png.jpg"
    path.write_bytes(_png_bytes())
    assert hash_file(str(path), PLAN).hashes == reference_for_file(path)


def _png_header_only(width: int, height: int) -> bytes:
    """A valid-looking PNG that claims huge dimensions, in a few dozen bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize(
    ("width", "height"), [(12000, 10000), (20000, 20000)], ids=["warning-zone", "error-zone"]
)
def test_decompression_bomb_is_an_error(tmp_path, width, height):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(width, height))
    result = hash_file(str(path), PLAN)
    assert result.error == (
        f"decompression bomb ({width * height} pixels > limit {hashing.PILLOW_DEFAULT_MAX_PIXELS})"
    )


def test_bomb_limit_comes_from_the_plan(tmp_path):
    path = tmp_path / "small.png"
    path.write_bytes(_png_bytes((40, 40)))
    strict = HashPlan(DEFAULT_ALGORITHMS, max_image_pixels=1000)
    assert hash_file(str(path), strict).error == "decompression bomb (1600 pixels > limit 1000)"
    relaxed = HashPlan(DEFAULT_ALGORITHMS, max_image_pixels=None)
    assert hash_file(str(path), relaxed).error is None
    assert hash_file(str(path), PLAN).error is None


def test_vanished_file(tmp_path):
    result = hash_file(str(tmp_path / "gone.jpg"), PLAN)
    assert result == HashResult(str(tmp_path / "gone.jpg"), None, None, {}, error="vanished")


def test_directory_is_not_a_regular_file(tmp_path):
    assert hash_file(str(tmp_path), PLAN).error == "not a regular file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied(tmp_path):
    path = tmp_path / "secret.jpg"
    path.write_bytes(_jpeg_bytes())
    path.chmod(0)
    try:
        assert hash_file(str(path), PLAN).error == "permission denied"
    finally:
        path.chmod(0o644)


def test_plan_rejects_what_imagehash_would_assert_on():
    with pytest.raises(ValueError, match="power-of-two"):
        HashPlan((Algorithm("whash", 12, 60, 2),))
    with pytest.raises(ValueError, match="decode"):
        HashPlan(DEFAULT_ALGORITHMS, decode="quick")  # type: ignore[arg-type]


# --- fast mode ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_fast_mode_stays_close_to_exact(tmp_path, fmt):
    """Fast mode trades a few bits: far below every algorithm's largest threshold."""
    fast = HashPlan(ALGORITHMS, decode="fast")
    for name in ["astronaut", "coffee", "chelsea"]:
        path = tmp_path / f"{name}.{fmt.lower()}"
        photo(name, (2400, 1800)).save(path, fmt)
        exact, quick = hash_file(str(path), PLAN), hash_file(str(path), fast)
        assert quick.error is None and quick.digest == exact.digest
        for algo in ALGORITHMS:
            a = np.unpackbits(np.frombuffer(exact.hashes[algo.name], np.uint8))
            b = np.unpackbits(np.frombuffer(quick.hashes[algo.name], np.uint8))
            assert np.count_nonzero(a != b) <= algo.bits // 8, algo.name


def test_fast_mode_handles_small_and_odd_images(tmp_path):
    fast = HashPlan(ALGORITHMS, decode="fast")
    for mode, (image, fmt) in _mode_images().items():
        path = tmp_path / f"{mode}.{fmt.lower()}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.save(path, fmt)
        result = hash_file(str(path), fast)
        assert result.error is None and len(result.hashes) == len(ALGORITHMS), mode
    tiny = tmp_path / "tiny.jpg"
    photo("rocket", (5, 3)).save(tiny)
    assert hash_file(str(tiny), fast).error is None
