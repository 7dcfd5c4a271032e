"""A refresh that looks only at the paths the watcher reported (``Pipeline.refresh(dirty=...)``)
and the daemon that hands it its batches. In-process pipelines on real folders, real SQLite,
real hashing workers; the daemon test runs the real daemon in a subprocess.

What a dirty refresh may list is counted through the pipeline's explicit ``on_folder`` hook
(called for every folder a refresh lists); its result is compared with a fresh full scan of the
same folder into another store and output.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgclusterd.config import Config, load_config
from imgclusterd.errors import ImagesFolderError
from imgclusterd.pipeline import Pipeline
from imgclusterd.store import STORE_NAME, Store

from .conftest import DaemonProcess, Workspace, wait_for
from .test_bad_input import encode, output_links, put, smooth, write_config


def make_library(images: Path) -> None:
    for folder, first in (("a", 0), ("b", 10), ("c/deep", 20)):
        for n in range(4):
            put(images / folder, f"p{first + n:02d}.jpg", encode(smooth(first + n), "JPEG"))


def config_at(root: Path, images: Path, label: str, **extra: object) -> Config:
    path = write_config(root / f"{label}.toml", images, root / label / "output",
                        root / label / "state", workers=1, **extra)
    return load_config(path).config


def store_view(config: Config) -> dict[str, tuple[object, ...]]:
    """What the store knows per path (the row ids differ between two stores)."""
    with Store.open(config.store_dir / STORE_NAME, readonly=True) as store:
        return {p: (r.size, r.mtime_ns, r.inode, r.digest, r.status, r.decode)
                for p, r in store.files().items()}


def full_scan(root: Path, images: Path, label: str) -> tuple[dict[str, tuple[object, ...]],
                                                             dict[str, str]]:
    config = config_at(root, images, label)
    with Pipeline(config) as pipeline:
        pipeline.refresh()
    return store_view(config), output_links(config.output)


@pytest.fixture
def library(tmp_path: Path) -> Iterator[tuple[Path, Pipeline, list[str]]]:
    """An indexed library and its pipeline (kept open, as the daemon keeps it); the list
    collects every folder a refresh lists."""
    images = tmp_path / "images"
    make_library(images)
    pipeline = Pipeline(config_at(tmp_path, images, "daemon"))
    listed: list[str] = []
    pipeline.on_folder = listed.append
    pipeline.refresh()
    assert len(listed) == 5  # the full walk: images, a, b, c, c/deep
    listed.clear()
    yield images, pipeline, listed
    pipeline.close()


def test_dirty_refresh_lists_no_folder_and_equals_a_full_scan(
        tmp_path: Path, library: tuple[Path, Pipeline, list[str]]) -> None:
    images, pipeline, listed = library
    new = put(images / "a", "new.jpg", encode(smooth(99), "JPEG"))
    (images / "b" / "p10.jpg").unlink()
    os.rename(images / "c/deep/p20.jpg", images / "a/p20_renamed.jpg")
    put(images / "b", "p11.jpg", encode(smooth(77), "JPEG"))  # new content, same name
    dirty = [str(new), str(images / "b/p10.jpg"), str(images / "c/deep/p20.jpg"),
             str(images / "a/p20_renamed.jpg"), "b/p11.jpg"]  # relative paths work too
    report = pipeline.refresh(dirty=dirty)
    assert listed == [], "a refresh of changed paths listed folders"
    assert not report.full
    assert (report.hashed, report.moved, report.removed) == (2, 1, 1)
    assert store_view(pipeline.config) == full_scan(tmp_path, images, "clean")[0]
    assert output_links(pipeline.config.output) == full_scan(tmp_path, images, "clean2")[1]


def test_dirty_folder_is_walked_alone(tmp_path: Path,
                                      library: tuple[Path, Pipeline, list[str]]) -> None:
    images, pipeline, listed = library
    for n in range(3):
        put(images / "card" / "DCIM", f"img{n}.jpg", encode(smooth(200 + n), "JPEG"))
    report = pipeline.refresh(dirty=[str(images / "card")])
    assert sorted(os.path.relpath(p, images) for p in listed) == ["card", "card/DCIM"]
    assert report.hashed == 3
    # A folder that left: everything the store knew under it goes, nothing else is listed.
    shutil.rmtree(images / "c")
    listed.clear()
    report = pipeline.refresh(dirty=[str(images / "c")])
    assert listed == [] and report.removed == 4
    assert store_view(pipeline.config) == full_scan(tmp_path, images, "clean")[0]


def test_move_whose_departure_is_reported_later_is_a_move(
        tmp_path: Path, library: tuple[Path, Pipeline, list[str]]) -> None:
    """A photo moved into a folder just made: watchdog reports the folder at once but the
    photo's departure ~0.5 s later (a move's first half waits to be paired, and the new folder
    is not watched yet), so a refresh can walk the folder first. It is a move there and then,
    not a copy for one refresh and a removal in the next (seen in CI with debounce 0.3 s)."""
    images, pipeline, _ = library
    (images / "trip").mkdir()
    os.rename(images / "a" / "p00.jpg", images / "trip" / "renamed.jpg")
    report = pipeline.refresh(dirty=[str(images / "trip")])
    assert (report.moved, report.copies, report.images) == (1, 0, 12)
    late = pipeline.refresh(dirty=[str(images / "a" / "p00.jpg")])
    assert (late.moved, late.removed, late.changed) == (0, 0, False)
    assert store_view(pipeline.config) == full_scan(tmp_path, images, "clean")[0]


@pytest.mark.parametrize("left", [2, 0])
def test_most_photos_gone_through_events_looks_at_the_whole_folder(
        tmp_path: Path, library: tuple[Path, Pipeline, list[str]], left: int) -> None:
    """Photos moved away one by one (or a folder of most of them deleted) arrive as events;
    before holding them as vanished the refresh looks at the whole folder, as a rescan would:
    it may be empty (a drive's photos gone: wait, remove nothing)."""
    images, pipeline, listed = library
    away = tmp_path / "away"
    away.mkdir()
    photos = sorted(images.rglob("*.jpg"))[: len(list(images.rglob("*.jpg"))) - left]
    for photo in photos:
        os.rename(photo, away / photo.name)
    dirty = [str(photo) for photo in photos]
    if left:
        report = pipeline.refresh(dirty=dirty)
        assert report.full and listed, "the refresh looked only at the reported paths"
        assert report.held == len(photos) == 10  # held as vanished, not removed
        assert len(store_view(pipeline.config)) == 12
    else:
        with pytest.raises(ImagesFolderError, match="is empty but 12 photos are known"):
            pipeline.refresh(dirty=dirty)
        assert len(store_view(pipeline.config)) == 12


def test_events_outside_the_folder_and_temporary_names_are_ignored(
        library: tuple[Path, Pipeline, list[str]]) -> None:
    images, pipeline, listed = library
    put(images / "a", "x.jpg.part", encode(smooth(5), "JPEG"))
    report = pipeline.refresh(dirty=["/elsewhere/p.jpg", str(images / "a/x.jpg.part"),
                                     "../escape.jpg"])
    assert (report.hashed, report.removed, listed) == (0, 0, [])


def test_daemon_hands_its_batches_to_a_dirty_refresh(workspace: Workspace) -> None:
    """The real daemon: start-up walks, a new photo is a refresh of the changed paths only,
    and SIGHUP walks again (its log says which; status' last_refresh.full says it too)."""
    ws = workspace
    config = write_config(ws.root / "cfg.toml", ws.images, ws.output, ws.state,
                          debounce=0.3, max_delay=2.0, poll_interval=0.3, watcher="polling")
    daemon = DaemonProcess(ws, config).start()
    try:
        def last() -> dict[str, object] | None:
            daemon.assert_alive()
            st = daemon.status()
            return st["last_refresh"] if st["phase"] == "idle" else None

        first = wait_for(last, "the start-up refresh")
        assert first["full"] is True
        photo = put(ws.images / "singles", "arrived.jpg", encode(smooth(4242), "JPEG"))
        ws.snapshot()
        wait_for(lambda: any(t == str(photo) for t in output_links(ws.output).values()),
                 "the new photo in the output")
        second = wait_for(lambda: (lambda r: r if r and r["finished"] != first["finished"]
                                   else None)(last()), "the refresh of the new photo")
        assert second["full"] is False
        assert "looked at the changed paths" in daemon.log()
        # A new album (a folder event): that folder is walked, not the whole tree.
        album = [put(ws.images / "2026 Rome" / "day 1", f"r{n}.jpg",
                     encode(smooth(4300 + n), "JPEG")) for n in range(2)]
        ws.snapshot()
        wait_for(lambda: {str(p) for p in album} <= set(output_links(ws.output).values()),
                 "the album in the output")
        third = wait_for(lambda: (lambda r: r if r and r["finished"] != second["finished"]
                                  else None)(last()), "the refresh of the album")
        assert third["full"] is False
        daemon.proc.send_signal(1)  # SIGHUP: a full rescan
        wait_for(lambda: (lambda r: r if r and r["finished"] != third["finished"]
                          else None)(last()), "the rescan after SIGHUP")
        assert last()["full"] is True
    finally:
        daemon.proc.terminate()
        assert daemon.proc.wait(60) == 0
