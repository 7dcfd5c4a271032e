"""Bad input: every kind of file a photo folder collects over the years, through the real CLI.

Each case ends with a clear recorded reason (the store's ``reason``, ``status``, and the scan's
``unreadable: PATH: REASON`` line) or a correct hash (the link name's hex equals ImageHash's own
hash of the image as Pillow decodes it) -- never a crash, never a stuck process. In every case
the images folder is byte-for-byte unchanged and nothing was written inside it.

Most cases share one scan of one folder holding all the bad files (module fixture ``bad``): one
process start instead of forty. Files are given an mtime an hour old, because a file that fails
to decode while freshly modified is deferred (it may still be being copied), not recorded.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageOps

from imgclusterd.store import STORE_NAME, FileRecord, Store

from .conftest import Workspace, run_cli, tree_digest

ALGORITHMS = (("phash_8", 20, 1), ("dhash_8", 20, 1))
PIXEL_LIMIT = 1_000_000  # max_image_pixels in the shared scan: the bomb has 1.1 M
OLD = time.time() - 3600  # mtime for bad files: long settled, so recorded, not deferred


# -- helpers shared with test_faults -----------------------------------------------------------


def write_config(path: Path, images: Path, output: Path, state: Path, **extra: Any) -> Path:
    """A TOML config with the small algorithm set (two hashes, 20 thresholds each)."""
    values: dict[str, Any] = {
        "images": str(images), "output": str(output), "state_dir": str(state), "workers": 2,
    }
    values.update(extra)
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    for name, top, step in ALGORITHMS:
        lines += ["[[algorithms]]", f'name = "{name}"', f"max_threshold = {top}", f"step = {step}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def smooth(seed: int, size: tuple[int, int] = (256, 192)) -> Image.Image:
    """A distinct smooth RGB image (coarse structure, like a photo to a perceptual hash)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BICUBIC)


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def put(folder: Path, name: str | bytes, data: bytes, mtime: float | None = OLD) -> Path:
    """Write a file (``name`` may be bytes: not every name is UTF-8), optionally backdated."""
    path = os.path.join(os.fsencode(folder), os.fsencode(name))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return Path(os.fsdecode(path))


def store_records(state: Path) -> dict[str, FileRecord]:
    with Store.open(state / STORE_NAME, readonly=True) as store:
        return store.files()


def output_links(output: Path) -> dict[str, str]:
    """Every link of the output tree: path relative to OUTPUT -> target (one generation)."""
    root = os.path.realpath(output)
    links: dict[str, str] = {}
    for directory, _, files in os.walk(root, followlinks=True):
        for name in files:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                links[os.path.relpath(path, root)] = os.readlink(path)
    return links


def threshold_folders(output: Path, algorithm: str) -> dict[str, dict[str, str]]:
    """thr folder name -> {link name: target} over all its cluster/unclustered folders."""
    root = Path(os.path.realpath(output)) / algorithm
    result = {}
    for thr in sorted(os.listdir(root)):
        links: dict[str, str] = {}
        for sub in os.listdir(root / thr):
            for name in os.listdir(root / thr / sub):
                links[f"{sub}/{name}"] = os.readlink(root / thr / sub / name)
        result[thr] = links
    return result


def assert_every_image_once(output: Path, images: set[str]) -> None:
    """At every algorithm and threshold, each image is linked exactly once."""
    for name, _, _ in ALGORITHMS:
        for thr, links in threshold_folders(output, name).items():
            targets = sorted(links.values())
            assert len(targets) == len(set(targets)), f"{name}/{thr}: an image linked twice"
            assert set(targets) == images, f"{name}/{thr}: not every image is linked"


def expected_hex(path: Path, exif_transpose: bool = True) -> str:
    """ImageHash's own phash_8 of the image as Pillow decodes it (first frame)."""
    import pillow_heif

    pillow_heif.register_heif_opener()  # HEIC opens in Pillow once registered
    with Image.open(path) as image:
        image.load()
        if exif_transpose:
            image = ImageOps.exif_transpose(image)
        if image.mode == "I;16":
            # The documented rule: 16-bit greyscale is hashed from its high byte (ImageHash's
            # convert("L") alone clips it to a white page).
            image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
        return str(imagehash.phash(image, hash_size=8))


def link_hex(output: Path, target: Path, algorithm: str = "phash_8") -> str:
    """The hex in the name of the link to ``target`` at threshold 0."""
    root = Path(os.path.realpath(output)) / algorithm
    thr0 = next(d for d in os.listdir(root) if d.startswith("thr_000_"))
    for directory, _, files in os.walk(root / thr0, followlinks=True):
        for name in files:
            if os.readlink(os.path.join(directory, name)) == os.fspath(target):
                stem = os.path.splitext(name)[0]
                return stem.rsplit("_", 1)[1]
    raise AssertionError(f"no link to {target} in {algorithm}/{thr0}")


def crafted_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels, with a tiny IDAT: a few hundred
    bytes that would need gigabytes if decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(
        b"IEND", b"")


def heif_like(brand: bytes) -> bytes:
    """An ISO-BMFF file starting with an ``ftyp`` box of ``brand`` (HEIC/AVIF's signature)."""
    ftyp = b"ftyp" + brand + b"\0\0\0\0" + b"mif1" + brand
    return struct.pack(">I", 4 + len(ftyp)) + ftyp + b"\0\0\0\x08free" + os.urandom(512)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("imgclusterd: error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


# -- the shared bad folder ---------------------------------------------------------------------


@dataclass
class Bad:
    root: Path
    images: Path
    output: Path
    state: Path
    outside: Path
    result: subprocess.CompletedProcess[str]
    records: dict[str, FileRecord]
    expected_tree: dict[str, tuple[str, int, int]]


HASHED_FORMATS = {
    "cmyk.jpg", "deep16.png", "palette_transparent.png", "rgba.png", "grey.png",
    "animated.gif", "photo.tiff", "photo.webp", "png_named.jpg", "iphone.heic", "pixel.avif",
}
UNREADABLE = {
    "zero.jpg": "empty file",
    "truncated.jpg": "truncated image",
    "truncated.png": "truncated image",
    "text.jpg": "not an image",
    "bomb.png": "decompression bomb",
    "huge_tiny.png": "decompression bomb",
    "phone.heic": "corrupt image: not a readable HEIC file",
    "phone.avif": "corrupt image: not a readable AVIF file",
}
NON_UTF8 = os.fsdecode(b"caf\xe9 \xff.jpg")
ODD_NAMES = [NON_UTF8, "new\nline.jpg", "with  spaces .jpg", "l" * 246 + ".jpg"]
SAME_NAME = [f"trip{i}/IMG_0001.jpg" for i in range(6)]


def build_bad_folder(images: Path, outside: Path) -> None:
    seed = iter(range(100, 10_000))
    for number in range(4):  # some ordinary photos, so clusters are not all empty
        put(images, f"ok{number}.jpg", encode(smooth(next(seed)), "JPEG", quality=92))
    jpeg = encode(smooth(next(seed)), "JPEG", quality=92)
    png = encode(smooth(next(seed)), "PNG")
    put(images, "zero.jpg", b"")
    put(images, "truncated.jpg", jpeg[: len(jpeg) // 2])
    put(images, "truncated.png", png[: len(png) // 2])
    put(images, "text.jpg", b"this is a shopping list, not a photo\n" * 20)
    put(images, "png_named.jpg", encode(smooth(next(seed)), "PNG"))
    put(images, "bomb.png", encode(Image.new("L", (1100, 1000), 7), "PNG"))
    put(images, "huge_tiny.png", crafted_png(200_000, 200_000))
    put(images, "cmyk.jpg", encode(smooth(next(seed)).convert("CMYK"), "JPEG"))
    deep = (np.asarray(smooth(next(seed)).convert("L"), dtype=np.uint16) * 257)
    deep_image = Image.fromarray(deep)
    assert deep_image.mode == "I;16", deep_image.mode
    put(images, "deep16.png", encode(deep_image, "PNG"))
    palette = smooth(next(seed)).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    put(images, "palette_transparent.png", encode(palette, "PNG", transparency=0))
    rgba = smooth(next(seed)).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    put(images, "rgba.png", encode(rgba, "PNG"))
    put(images, "grey.png", encode(smooth(next(seed)).convert("L"), "PNG"))
    frames = [smooth(next(seed)).convert("P") for _ in range(3)]
    put(images, "animated.gif", encode(frames[0], "GIF", save_all=True,
                                       append_images=frames[1:], duration=100, loop=0))
    put(images, "photo.tiff", encode(smooth(next(seed)), "TIFF"))
    put(images, "photo.webp", encode(smooth(next(seed)), "WEBP", lossless=True))
    put(images, "phone.heic", heif_like(b"heic"))
    put(images, "phone.avif", heif_like(b"avif"))
    # Real ones, as phones write them (HEIC through pillow-heif, AVIF through Pillow).
    import pillow_heif

    heic = io.BytesIO()
    pillow_heif.from_pillow(smooth(next(seed))).save(heic, quality=90)
    put(images, "iphone.heic", heic.getvalue())
    put(images, "pixel.avif", encode(smooth(next(seed)), "AVIF", quality=90))
    # The same photo twice: upright, and stored rotated with EXIF orientation 6 ("rotate 90
    # clockwise to display"). Lossless PNG, so only the orientation differs.
    upright = smooth(next(seed), (240, 160))
    exif = Image.Exif()
    exif[0x0112] = 6
    put(images, "upright.png", encode(upright, "PNG"))
    put(images, "rotated.png", encode(upright.transpose(Image.Transpose.ROTATE_90), "PNG",
                                      exif=exif))
    for name in ODD_NAMES:
        put(images, name, encode(smooth(next(seed)), "JPEG", quality=92))
    copy = encode(smooth(next(seed)), "JPEG", quality=92)
    for number, name in enumerate(SAME_NAME):  # two exact copies, four different photos
        data = copy if number < 2 else encode(smooth(next(seed)), "JPEG", quality=92)
        put(images, name, data)
    # Symlinks: to a file outside, to a folder outside, and two loops.
    outside.mkdir()
    put(outside, "outside.jpg", encode(smooth(next(seed)), "JPEG", quality=92))
    put(outside / "album", "inalbum.jpg", encode(smooth(next(seed)), "JPEG", quality=92))
    os.symlink(outside / "outside.jpg", images / "link_to_file.jpg")
    os.symlink(outside / "album", images / "link_to_dir")
    os.symlink(".", images / "loop_self")
    os.symlink("..", images / "trip0" / "loop_up")


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bad]:
    root = tmp_path_factory.mktemp("bad")
    images, output, state = root / "data" / "images", root / "data" / "output", root / "state"
    images.mkdir(parents=True)
    outside = root / "outside"
    build_bad_folder(images, outside)
    before = tree_digest(images)
    config = write_config(root / "cfg.toml", images, output, state,
                          max_image_pixels=PIXEL_LIMIT)
    result = run_cli("scan", "--config", str(config), cwd=root, timeout=300)
    assert result.returncode == 0, result.stderr
    yield Bad(root, images, output, state, outside, result, store_records(state), before)
    assert tree_digest(images) == before, "the images folder was modified"


# -- the cases ---------------------------------------------------------------------------------


def test_images_folder_untouched_by_bad_input(bad: Bad) -> None:
    assert tree_digest(bad.images) == bad.expected_tree
    assert "Traceback" not in bad.result.stderr


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_unreadable_file_has_a_clear_reason(bad: Bad, name: str) -> None:
    record = bad.records[name]
    assert record.status == "unreadable"
    assert record.reason is not None and UNREADABLE[name] in record.reason, record.reason
    assert f"unreadable: {name}: {record.reason}" in bad.result.stderr
    assert not any(t.endswith("/" + name) for t in output_links(bad.output).values())


def test_damaged_heif_is_corrupt_real_heif_is_hashed(bad: Bad) -> None:
    """pillow-heif is a dependency: a real HEIC/AVIF hashes, a damaged one is corrupt (not
    "unsupported", which would send the user to install something they have)."""
    for name in ("phone.heic", "phone.avif"):
        reason = bad.records[name].reason or ""
        assert reason.startswith("corrupt image") and "unsupported" not in reason, reason
    for name in ("iphone.heic", "pixel.avif"):
        assert bad.records[name].status == "hashed", bad.records[name].reason


def test_decompression_bomb_names_the_limit(bad: Bad) -> None:
    assert bad.records["bomb.png"].reason == (
        f"decompression bomb (1100000 pixels > limit {PIXEL_LIMIT})")
    # 4e10 pixels announced in a few hundred bytes: refused from the header, never decoded.
    assert "40000000000 pixels" in (bad.records["huge_tiny.png"].reason or "")


@pytest.mark.parametrize("name", sorted(HASHED_FORMATS))
def test_every_format_is_hashed_correctly(bad: Bad, name: str) -> None:
    record = bad.records[name]
    assert record.status == "hashed", record.reason
    assert link_hex(bad.output, bad.images / name) == expected_hex(bad.images / name)


def test_exif_orientation_gives_the_same_hash(bad: Bad) -> None:
    upright = link_hex(bad.output, bad.images / "upright.png")
    rotated = link_hex(bad.output, bad.images / "rotated.png")
    assert upright == rotated == expected_hex(bad.images / "upright.png")
    # And the test means something: without the transpose the hashes differ.
    assert expected_hex(bad.images / "rotated.png", exif_transpose=False) != upright


def test_odd_file_names_are_indexed_with_unique_links(bad: Bad) -> None:
    for name in ODD_NAMES + SAME_NAME:
        assert bad.records[name].status == "hashed", name
    hashed = {os.path.join(bad.images, p) for p, r in bad.records.items() if r.status == "hashed"}
    assert_every_image_once(bad.output, hashed)
    # The six IMG_0001.jpg (two of them exact copies) all appear in the unclustered folder at
    # threshold 0, or in a cluster: six distinct link names in all.
    links = output_links(bad.output)
    same = {path for path, target in links.items()
            if target.endswith("/IMG_0001.jpg") and "/thr_000_" in "/" + path}
    phash_same = {p for p in same if p.startswith("phash_8/")}
    assert len(phash_same) == len(SAME_NAME)
    long_link = next(p for p, t in links.items() if t.endswith("l" * 246 + ".jpg"))
    assert len(os.fsencode(os.path.basename(long_link))) <= 255


def test_symlinks_not_followed_by_default(bad: Bad) -> None:
    for name in ("link_to_file.jpg", "link_to_dir/inalbum.jpg"):
        assert name not in bad.records
    assert not any(p.startswith(("loop_self/", "trip0/loop_up/")) for p in bad.records)
    targets = set(output_links(bad.output).values())
    assert not any("link_to" in t or "loop_" in t for t in targets)
    assert not any(t.startswith(os.fspath(bad.outside)) for t in targets)


def test_status_reports_unreadable_counts(bad: Bad) -> None:
    config = bad.root / "cfg.toml"
    result = run_cli("status", "--config", str(config), "--json", cwd=bad.root, timeout=120)
    report = json.loads(result.stdout)
    assert report["counts"]["unreadable"] == len(UNREADABLE)
    assert report["unreadable_examples"], report


def test_unreadable_files_are_not_retried_until_changed(bad: Bad) -> None:
    result = run_cli("scan", "--config", str(bad.root / "cfg.toml"), cwd=bad.root,
                     timeout=300)
    assert result.returncode == 0, result.stderr
    assert " 0 hashed now" in result.stdout
    assert "unreadable:" not in result.stderr


# -- cases with their own folder ---------------------------------------------------------------


def test_follow_symlinks_walks_each_folder_once(tmp_path: Path) -> None:
    images, outside = tmp_path / "images", tmp_path / "outside"
    images.mkdir()
    put(images, "a.jpg", encode(smooth(1), "JPEG"))
    put(images, "sub/b.jpg", encode(smooth(2), "JPEG"))
    put(outside, "outside.jpg", encode(smooth(3), "JPEG"))
    put(outside / "album", "inalbum.jpg", encode(smooth(4), "JPEG"))
    os.symlink(outside / "outside.jpg", images / "link_to_file.jpg")
    os.symlink(outside / "album", images / "link_to_dir")
    os.symlink(".", images / "loop_self")
    os.symlink("..", images / "sub" / "loop_up")
    os.symlink(images / "sub", images / "sub_again")
    before = tree_digest(images)
    config = write_config(tmp_path / "cfg.toml", images, tmp_path / "out", tmp_path / "st",
                          follow_symlinks=True)
    result = run_cli("scan", "--config", str(config), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    records = store_records(tmp_path / "st")
    # Outside file and folder reached once each; the loops and the second way into sub/ add
    # nothing: every photo is listed once, under its real path when it has one.
    assert sorted(records) == ["a.jpg", "link_to_dir/inalbum.jpg", "link_to_file.jpg",
                               "sub/b.jpg"]
    assert all(r.status == "hashed" for r in records.values())
    assert tree_digest(images) == before


def test_file_without_read_permission(tmp_path: Path) -> None:
    """Root reads every file, so the scan runs as root *without* the capabilities that
    override file permissions (dropped from the bounding set with setpriv). Not ``nobody``:
    here the interpreter lives under /root (0700), so an unprivileged user cannot start the
    hashing workers at all."""
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to drop CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH")
    images = tmp_path / "images"
    images.mkdir()
    put(images, "fine.jpg", encode(smooth(5), "JPEG"))
    secret = put(images, "secret.jpg", encode(smooth(6), "JPEG"))
    os.chmod(secret, 0)
    os.utime(secret, (OLD, OLD))
    config = write_config(tmp_path / "cfg.toml", images, tmp_path / "out", tmp_path / "st")
    before = tree_digest(images)
    drop = "-dac_override,-dac_read_search"
    command = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}",
               sys.executable, "-m", "imgclusterd", "scan", "--config", str(config)]
    if subprocess.run([*command[:3], "cat", os.fspath(secret)],
                      capture_output=True).returncode == 0:
        pytest.skip("dropping the capabilities did not take effect here")
    for attempt in range(2):  # the second scan must not retry (or re-report) the file
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        reported = "unreadable: secret.jpg: permission denied" in result.stderr
        assert reported == (attempt == 0), result.stderr
        assert "still being written" not in result.stderr
    records = store_records(tmp_path / "st")
    assert records["secret.jpg"].status == "unreadable"
    assert records["secret.jpg"].reason == "permission denied"
    assert records["fine.jpg"].status == "hashed"
    assert tree_digest(images) == before


def test_file_deleted_between_listing_and_hashing(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process: the listing is taken, then the file disappears before a worker reads it
    (the window is too short to hit from outside)."""
    from imgclusterd import pipeline as pipeline_module
    from imgclusterd.config import load_config

    images = tmp_path / "images"
    images.mkdir()
    put(images, "stays.jpg", encode(smooth(7), "JPEG"))
    doomed = put(images, "doomed.jpg", encode(smooth(8), "JPEG"))
    config = load_config(write_config(tmp_path / "cfg.toml", images, tmp_path / "out",
                                      tmp_path / "st", workers=1)).config
    real_walk = pipeline_module.reconcile.walk

    def walk_then_delete(*args: Any, **kwargs: Any) -> Any:
        listing = real_walk(*args, **kwargs)
        if doomed.exists():
            doomed.unlink()
        return listing

    monkeypatch.setattr(pipeline_module.reconcile, "walk", walk_then_delete)
    with pipeline_module.Pipeline(config) as pipeline:
        report = pipeline.refresh()
    assert report.new_unreadable == []
    assert sorted(store_records(tmp_path / "st")) == ["stays.jpg"]
    assert set(output_links(tmp_path / "out").values()) == {os.fspath(images / "stays.jpg")}


def test_file_growing_while_hashed_is_not_unreadable(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for number in range(6):
        put(images, f"p{number}.jpg", encode(smooth(20 + number), "JPEG"), mtime=None)
    big = encode(smooth(30, (1600, 1200)), "PNG")
    growing = images / "growing.png"
    config = write_config(tmp_path / "cfg.toml", images, tmp_path / "out", tmp_path / "st")
    done = threading.Event()

    def copy_slowly() -> None:  # like a slow network copy: chunks with pauses
        with open(growing, "wb") as f:
            for start in range(0, len(big), 16384):
                f.write(big[start:start + 16384])
                f.flush()
                time.sleep(0.02)
        done.set()

    put(images, "growing.png", big[:16384], mtime=None)
    writer = threading.Thread(target=copy_slowly)
    writer.start()
    try:
        result = run_cli("scan", "--config", str(config), cwd=tmp_path, timeout=300)
    finally:
        writer.join()
    assert result.returncode == 0, result.stderr
    records = store_records(tmp_path / "st")
    assert "growing.png" not in records or records["growing.png"].status == "hashed", \
        records["growing.png"].reason
    assert "unreadable: growing.png" not in result.stderr
    assert done.is_set()
    again = run_cli("scan", "--config", str(config), cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr
    assert store_records(tmp_path / "st")["growing.png"].status == "hashed"


@pytest.mark.parametrize("where", ["output", "state_dir"])
def test_output_or_state_inside_images_is_refused(workspace: Workspace, where: str) -> None:
    inside = workspace.images / "nested" / "here"
    args = ["--output", str(inside)] if where == "output" else ["--state-dir", str(inside)]
    result = run_cli("scan", *(["--state-dir", str(workspace.state)] if where == "output"
                               else []), *args, cwd=workspace.root)
    assert result.returncode == 78
    line = one_error_line(result)
    assert f"{where}:" in line and "inside the images folder" in line
    # the workspace fixture asserts nothing was written inside the images folder


CONFIG_ERRORS = [
    ("syntax", 'images = "data/images\nworkers = 2\n', "not valid TOML", 78),
    ("unknown key", "colour = 3\n", "colour: unknown key", 78),
    ("wrong type", 'workers = "two"\n', "workers:", 78),
    ("negative", "debounce = -1\n", "debounce:", 78),
    ("negative pixels", "max_image_pixels = -5\n", "max_image_pixels:", 78),
    ("bad algorithm", '[[algorithms]]\nname = "phash_8"\nmax_threshold = -3\n',
     "algorithms[0].max_threshold:", 78),
    ("wrong type bool", 'follow_symlinks = "sometimes"\n', "follow_symlinks:", 78),
    ("missing images", 'images = "no/such/folder"\n', "images folder", 66),
]


@pytest.mark.parametrize(("case", "text", "expected", "code"), CONFIG_ERRORS,
                         ids=[c[0] for c in CONFIG_ERRORS])
def test_config_error_is_one_line_naming_the_key(workspace: Workspace, case: str, text: str,
                                                 expected: str, code: int) -> None:
    config = workspace.root / "bad.toml"
    config.write_text(text)
    state = workspace.root / "never-created"
    result = run_cli("scan", "--config", str(config), "--state-dir", str(state),
                     cwd=workspace.root)
    assert result.returncode == code, result.stderr
    assert expected in one_error_line(result)
    assert not state.exists(), "a bad config must not leave a store behind"


def test_missing_config_file_names_the_option(workspace: Workspace) -> None:
    result = run_cli("scan", "--config", str(workspace.root / "nope.toml"), cwd=workspace.root)
    assert result.returncode == 78
    assert "--config" in one_error_line(result) or "nope.toml" in result.stderr


def test_store_on_a_network_filesystem_is_refused(workspace: Workspace,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Faked: no NFS/CIFS server can be mounted on these machines, so the filesystem type the
    pipeline reads from /proc/self/mountinfo is replaced for the state dir only."""
    from imgclusterd import pipeline as pipeline_module
    from imgclusterd.config import load_config
    from imgclusterd.errors import ConfigError

    real = pipeline_module.filesystem_type
    state = workspace.state

    def fake(path: Path) -> str | None:
        return "nfs4" if Path(path) == state else real(path)

    monkeypatch.setattr(pipeline_module, "filesystem_type", fake)
    config = load_config(None, {"images": workspace.images, "output": workspace.output,
                                "state_dir": state}, environ={}, cwd=workspace.root).config
    with pytest.raises(ConfigError, match=r"state_dir: .* network filesystem \(nfs4\)"):
        pipeline_module.Pipeline(config)
    assert not (state / "store.sqlite").exists()


def test_file_over_the_size_limit_is_not_read(tmp_path: Path) -> None:
    """Memory per worker is bounded: a file above ``max_file_mb`` gets a reason, unread."""
    images = tmp_path / "images"
    images.mkdir()
    put(images, "fine.jpg", encode(smooth(7), "JPEG"))
    big = Image.effect_noise((1100, 1100), 80).convert("RGB")  # incompressible: > 1 MB as PNG
    put(images, "huge.png", encode(big, "PNG"))
    assert (images / "huge.png").stat().st_size > 2**20
    config = write_config(tmp_path / "cfg.toml", images, tmp_path / "out", tmp_path / "st",
                          max_file_mb=1)
    before = tree_digest(images)
    result = run_cli("scan", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "unreadable: huge.png: too large to hash" in result.stderr
    assert "max_file_mb = 1" in result.stderr
    records = store_records(tmp_path / "st")
    assert records["huge.png"].status == "unreadable" and records["fine.jpg"].status == "hashed"
    assert tree_digest(images) == before
