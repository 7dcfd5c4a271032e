"""Thumbnails: made by the hashing worker from its own decode, content-addressed in the state
folder, written atomically, made later for photos hashed before, removed with their content."""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data

from imgclusterd import hashing
from imgclusterd.algorithms import DEFAULT_ALGORITHMS
from imgclusterd.explorer import DATA_FILE
from imgclusterd.hashing import HashPlan, hash_file, thumbnail_file
from imgclusterd.thumbnails import (
    THUMBNAIL_FOLDER,
    missing_thumbnails,
    prune_thumbnails,
    render_thumbnail,
    thumbnail_digests,
    thumbnail_path,
    write_thumbnail,
)

from .conftest import DaemonProcess, Workspace, wait_for
from .test_catalog import page_data


def big_photo_jpeg(path: Path, name: str = "astronaut", scale: int = 5) -> Path:
    """A real photograph (skimage.data) enlarged to a few megapixels, saved as JPEG."""
    image = Image.fromarray(getattr(data, name)())
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.LANCZOS)
    image.save(path, quality=90)
    return path


def colourfulness(jpeg: bytes) -> float:
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.int16)
    red_green = np.abs(rgb[..., 0] - rgb[..., 1]).mean()
    return float(red_green + np.abs(rgb[..., 1] - rgb[..., 2]).mean())


def store_digests(state: Path) -> set[bytes]:
    """Contents of the photos present (a vanished photo's row is kept a while, ``gone`` set)."""
    db = sqlite3.connect(f"file:{state / 'store.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT digest FROM files WHERE status = 'hashed' AND gone IS NULL"
        ).fetchall()
    finally:
        db.close()
    return {row[0] for row in rows}


def opened(path: Path) -> tuple[tuple[int, int], str]:
    """(size, mode) of an image file, closed again (pytest turns a leaked file into an error)."""
    with Image.open(path) as image:
        return image.size, image.mode


def write_config(ws: Workspace, **extra: object) -> Path:
    lines = [f'images = "{ws.images}"', f'output = "{ws.output}"', f'state_dir = "{ws.state}"',
             "workers = 2", "debounce = 0.2", "max_delay = 2.0"]
    lines += [f"{key} = {str(value).lower() if isinstance(value, bool) else value}"
              for key, value in extra.items()]
    path = ws.root / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# -- rendering ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode", ["RGB", "L", "RGBA", "LA", "P", "PA-transparency", "1", "I;16", "I", "F", "CMYK"]
)
def test_render_any_mode_to_a_small_jpeg(mode):
    rgb = Image.fromarray(data.astronaut()).resize((1024, 768))
    if mode == "PA-transparency":
        image = rgb.convert("P")
        image.info["transparency"] = 0
    elif mode == "I;16":
        image = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
        assert image.mode.startswith("I;16")
    else:
        image = rgb.convert(mode)
    jpeg = render_thumbnail(image, 256)
    thumb = Image.open(io.BytesIO(jpeg))
    assert thumb.format == "JPEG"
    assert thumb.mode in ("RGB", "L")
    assert max(thumb.size) == 256 and thumb.size == (256, 192)
    if mode == "I;16":
        # Scaled to 8 bits, not clipped to white (convert("L") would make it all 255).
        assert 20 < np.asarray(thumb).mean() < 235


def test_render_never_enlarges_and_keeps_thin_images_valid():
    small = Image.new("RGB", (100, 40), "red")
    assert Image.open(io.BytesIO(render_thumbnail(small, 256))).size == (100, 40)
    thin = Image.new("L", (5000, 3), 128)
    assert Image.open(io.BytesIO(render_thumbnail(thin, 256))).size == (256, 1)


def test_transparency_is_flattened_onto_white():
    clear = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    pixels = np.asarray(Image.open(io.BytesIO(render_thumbnail(clear, 64))).convert("L"))
    assert pixels.min() > 240


# -- writing -------------------------------------------------------------------------------------


def test_write_is_atomic_and_content_addressed(tmp_path):
    digest = hashlib.sha256(b"photo").digest()
    path = write_thumbnail(tmp_path, digest, b"jpeg bytes")
    assert path == thumbnail_path(tmp_path, digest)
    assert path.read_bytes() == b"jpeg bytes"
    assert os.listdir(path.parent) == [path.name]  # no temporary left behind
    assert thumbnail_digests(tmp_path) == {digest}


def test_prune_removes_unneeded_and_stale_temporaries_only(tmp_path):
    keep, drop = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
    write_thumbnail(tmp_path, keep, b"x")
    gone = write_thumbnail(tmp_path, drop, b"y")
    stale = gone.with_name(f".{gone.name}.123.tmp")
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fresh = thumbnail_path(tmp_path, keep).with_name(".fresh.jpg.456.tmp")
    fresh.write_bytes(b"being written")
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not ours")
    assert prune_thumbnails(tmp_path, {keep}) == 1
    assert thumbnail_digests(tmp_path) == {keep}
    assert not stale.exists() and not gone.parent.exists()
    assert fresh.exists() and foreign.exists()  # a worker may be writing; not ours
    assert missing_thumbnails(tmp_path, {keep: "a.jpg", drop: "b.jpg"}) == [(drop, "b.jpg")]


# -- in the hashing worker ---------------------------------------------------------------------


@pytest.mark.parametrize("decode", ["exact", "fast"])
def test_hash_file_writes_the_thumbnail_from_its_one_read(tmp_path, monkeypatch, decode):
    photo = big_photo_jpeg(tmp_path / "astronaut.jpg")
    folder = tmp_path / "thumbs"
    plan = HashPlan(DEFAULT_ALGORITHMS, decode=decode, thumbnail_folder=str(folder))
    reads: list[str] = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):  # a spy: the real open does the work
        if os.fspath(file) == str(photo):
            reads.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    result = hash_file(str(photo), plan)
    monkeypatch.undo()
    assert result.error is None and result.thumbnail
    assert len(reads) == 1, "the photo was read more than once"
    thumb = thumbnail_path(folder, hashlib.sha256(photo.read_bytes()).digest())
    size, mode = opened(thumb)
    assert max(size) == 256 and mode == "RGB"
    # In colour in both modes (fast mode decodes JPEGs in grey unless a thumbnail is wanted).
    assert colourfulness(thumb.read_bytes()) > 10


@pytest.mark.parametrize("decode", ["exact", "fast"])
@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_thumbnails_do_not_change_a_single_hash_bit(tmp_path, decode, name):
    """Fast mode decodes YCbCr instead of grey when a thumbnail is wanted: same bits."""
    photo = big_photo_jpeg(tmp_path / f"{name}.jpg", name)
    without = hash_file(str(photo), HashPlan(DEFAULT_ALGORITHMS, decode=decode))
    with_thumbs = hash_file(
        str(photo),
        HashPlan(DEFAULT_ALGORITHMS, decode=decode, thumbnail_folder=str(tmp_path / "t")),
    )
    assert with_thumbs.thumbnail
    assert with_thumbs.hashes == without.hashes
    # Stronger than equal hashes: the grey pixels every hash starts from are the same.
    raw = photo.read_bytes()
    grey = hashing._decode(raw, HashPlan(DEFAULT_ALGORITHMS, decode=decode)).convert("L")
    colour = hashing._decode(
        raw, HashPlan(DEFAULT_ALGORITHMS, decode=decode, thumbnail_folder=str(tmp_path / "t"))
    )
    assert np.array_equal(np.asarray(colour.convert("L")), np.asarray(grey))


def test_a_thumbnail_that_cannot_be_written_never_fails_the_hashing(tmp_path):
    photo = big_photo_jpeg(tmp_path / "a.jpg", scale=1)
    blocker = tmp_path / "thumbs"
    blocker.write_text("a file where the folder should be")
    result = hash_file(str(photo), HashPlan(DEFAULT_ALGORITHMS, thumbnail_folder=str(blocker)))
    assert result.error is None and len(result.hashes) == len(DEFAULT_ALGORITHMS)
    assert not result.thumbnail


def test_thumbnail_file_for_an_old_photo(tmp_path):
    photo = big_photo_jpeg(tmp_path / "old.jpg")
    folder = tmp_path / "thumbs"
    result = thumbnail_file(str(photo), HashPlan(DEFAULT_ALGORITHMS, thumbnail_folder=str(folder)))
    assert result.thumbnail and result.hashes == {}
    digest = hashlib.sha256(photo.read_bytes()).digest()
    assert max(opened(thumbnail_path(folder, digest))[0]) == 256
    (tmp_path / "bad.jpg").write_bytes(b"not a photo")
    bad = thumbnail_file(str(tmp_path / "bad.jpg"), HashPlan((), thumbnail_folder=str(folder)))
    assert not bad.thumbnail and bad.error


# -- through the real command and daemon -------------------------------------------------------


def test_scan_makes_one_thumbnail_per_content_in_the_state_folder(workspace):
    shutil.copy(workspace.images / "scene01.jpg", workspace.images / "singles" / "copy.jpg")
    workspace.snapshot()
    result = workspace.scan("-q")
    assert result.returncode == 0, result.stderr
    folder = workspace.state / THUMBNAIL_FOLDER
    digests = store_digests(workspace.state)
    assert len(digests) == 44  # 45 photos, one an exact copy
    assert thumbnail_digests(folder) == digests
    for digest in digests:
        assert max(opened(thumbnail_path(folder, digest))[0]) == 256
    assert not list(folder.rglob("*.tmp"))
    # workspace teardown: the images folder is byte-for-byte unchanged


def test_thumbnails_off_then_on_makes_them_for_photos_hashed_before(workspace):
    off = write_config(workspace, thumbnails=False)
    assert workspace.scan("--config", str(off), "-q").returncode == 0
    folder = workspace.state / THUMBNAIL_FOLDER
    assert not folder.exists()
    on = write_config(workspace, thumbnails=True, thumbnail_size=64)
    result = workspace.scan("--config", str(on), "-q")
    assert result.returncode == 0, result.stderr
    assert " 0 hashed now" in result.stdout  # not re-hashed: the background pass made them
    assert thumbnail_digests(folder) == store_digests(workspace.state)
    assert max(opened(next(folder.rglob("*.jpg")))[0]) == 64
    # and the page shows them: the scan wrote it again once they were made
    page = page_data({DATA_FILE: (workspace.output / DATA_FILE).read_bytes()})
    assert sum(1 for thumb in page.get("thumbs", []) if thumb) == 44


def test_thumbnail_goes_when_no_photo_has_its_content(workspace):
    images = workspace.images
    shutil.copy(images / "scene02.jpg", images / "singles" / "scene02_again.jpg")
    workspace.snapshot()
    assert workspace.scan("-q").returncode == 0
    folder = workspace.state / THUMBNAIL_FOLDER
    gone = hashlib.sha256((images / "scene01.jpg").read_bytes()).digest()
    copied = hashlib.sha256((images / "scene02.jpg").read_bytes()).digest()
    assert {gone, copied} <= thumbnail_digests(folder)
    (images / "scene01.jpg").unlink()
    (images / "scene02.jpg").unlink()  # its copy stays: so does the thumbnail
    workspace.snapshot()
    assert workspace.scan("-q").returncode == 0
    have = thumbnail_digests(folder)
    assert gone not in have and copied in have
    assert have == store_digests(workspace.state)


def test_daemon_makes_missing_thumbnails_in_idle_time(workspace):
    off = write_config(workspace, thumbnails=False)
    assert workspace.scan("--config", str(off), "-q").returncode == 0
    daemon = DaemonProcess(workspace, write_config(workspace, thumbnails=True)).start()
    try:
        folder = workspace.state / THUMBNAIL_FOLDER
        expected = store_digests(workspace.state)
        wait_for(lambda: thumbnail_digests(folder) == expected, "the idle thumbnail pass")
        daemon.assert_alive()

        # The page is written again with them, by a refresh that walks nothing: the images
        # folder did not change (a rescan for it took ~20 s at 100,000 photos).
        def page_shows_them() -> dict[str, Any] | None:
            daemon.assert_alive()
            try:
                page = page_data({DATA_FILE: (workspace.output / DATA_FILE).read_bytes()})
            except FileNotFoundError:
                return None  # the first generation is not there yet
            if sum(1 for thumb in page.get("thumbs", []) if thumb) != 44:
                return None
            return daemon.status()

        status = wait_for(page_shows_them, "the page with the thumbnails")
        wait_for(lambda: daemon.status()["phase"] == "idle", "idle again after the pass")
        assert daemon.status()["last_refresh"]["full"] is False, status
    finally:
        if daemon.proc is not None:
            daemon.proc.terminate()
            daemon.proc.wait(timeout=60)
    assert daemon.proc.returncode == 0, daemon.log()
    assert "made 44 thumbnails" in daemon.log()
