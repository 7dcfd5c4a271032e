"""``imgclusterd scan`` end to end, through the real command in a subprocess, on real photos.

The central test recomputes what the one-shot script would write, the plain way (ImageHash on
each file, all pairs, connected components), and compares it folder by folder with the output.
"""

from __future__ import annotations

import os
import re
import shutil
from collections import deque
from pathlib import Path

import imagehash
import pytest
from PIL import Image

from imgclusterd.algorithms import DEFAULT_ALGORITHMS, Algorithm
from imgclusterd.explorer import DATA_FILE, PAGE_FILES

from .conftest import Workspace, run_cli

FUNCTIONS = {
    "phash": imagehash.phash,
    "average_hash": imagehash.average_hash,
    "dhash": imagehash.dhash,
    "whash": imagehash.whash,
}


def script_layout(images: Path, algorithm: Algorithm) -> dict[str, list[tuple[str, frozenset]]]:
    """What the script writes for one algorithm: thr folder -> [(cluster folder, link names)]."""
    files = sorted(
        os.path.relpath(os.path.join(d, f), images)
        for d, _, names in os.walk(images) for f in names
    )
    function = FUNCTIONS[algorithm.kind]
    hashes = {}
    for f in files:
        with Image.open(images / f) as image:
            hashes[f] = function(image, hash_size=algorithm.hash_size)

    def link(f: str) -> str:
        stem, ext = os.path.splitext(os.path.basename(f))
        return f"{stem}_{hashes[f]}{ext}"

    layout = {}
    for t in algorithm.thresholds:
        neighbours: dict[str, set[str]] = {f: set() for f in files}
        for i, a in enumerate(files):
            for b in files[i + 1:]:
                if hashes[a] - hashes[b] <= t:
                    neighbours[a].add(b)
                    neighbours[b].add(a)
        seen: set[str] = set()
        clusters = []
        for f in files:
            if f in seen:
                continue
            component, queue = set(), deque([f])
            seen.add(f)
            while queue:
                node = queue.popleft()
                component.add(node)
                for other in neighbours[node] - seen:
                    seen.add(other)
                    queue.append(other)
            clusters.append(component)
        linked = [c for c in clusters if len(c) > 1]
        unclustered = [f for c in clusters if len(c) == 1 for f in c]
        linked.sort(key=lambda c: (-len(c), min(c)))
        folders = [
            (f"{str(n + 1).zfill(3)}_{len(c)}", frozenset(map(link, c)))
            for n, c in enumerate(linked)
        ]
        folders.append((f"unclustered_{len(unclustered)}", frozenset(map(link, unclustered))))
        layout[f"thr_{str(t).zfill(3)}_unclustered_{len(unclustered)}"] = folders
    return layout


def actual_layout(output: Path, algorithm: Algorithm) -> dict[str, list[tuple[str, frozenset]]]:
    base = output / algorithm.name
    layout = {}
    for thr in os.listdir(base):
        folders = []
        for folder in sorted(os.listdir(base / thr), key=lambda n: (n.startswith("u"), n)):
            folders.append((folder, frozenset(os.listdir(base / thr / folder))))
        layout[thr] = folders
    return layout


def test_output_equals_the_one_shot_scripts(workspace: Workspace) -> None:
    result = workspace.scan()
    assert result.returncode == 0, result.stderr
    assert "44 images, 44 hashed now, 0 unreadable" in result.stdout
    assert workspace.output.is_symlink()
    page = [*PAGE_FILES, DATA_FILE]  # the explorer page beside the algorithm folders
    algorithms = [a.name for a in DEFAULT_ALGORITHMS]
    assert sorted(os.listdir(workspace.output)) == sorted(algorithms + page)
    for algorithm in DEFAULT_ALGORITHMS:
        expected = script_layout(workspace.images, algorithm)
        actual = actual_layout(workspace.output, algorithm)
        assert actual == expected, algorithm.name
    # every link is absolute and resolves to the original photo
    some = workspace.output / "phash_8"
    thr = sorted(os.listdir(some))[-1]
    for folder in os.listdir(some / thr):
        for name in os.listdir(some / thr / folder):
            target = os.readlink(some / thr / folder / name)
            assert os.path.isabs(target)
            assert Path(target).parent.samefile(workspace.images) or \
                Path(target).is_relative_to(workspace.images)
            assert Path(target).resolve().is_file()


def test_second_scan_is_a_no_op(workspace: Workspace) -> None:
    first = workspace.scan()
    assert first.returncode == 0, first.stderr
    target = os.readlink(workspace.output)
    second = workspace.scan()
    assert second.returncode == 0, second.stderr
    assert "0 hashed now" in second.stdout
    assert os.readlink(workspace.output) == target  # no new generation


def _hashed_now(stdout: str) -> int:
    match = re.search(r"(\d+) hashed now", stdout)
    assert match, stdout
    return int(match.group(1))


def test_rename_copy_change_and_delete(workspace: Workspace) -> None:
    assert workspace.scan().returncode == 0
    images = workspace.images
    (images / "moved").mkdir()
    os.rename(images / "scene01.jpg", images / "moved" / "renamed.jpg")
    shutil.copy2(images / "scene02.jpg", images / "scene02_copy.jpg")
    (images / "scene03_small.png").unlink()
    with Image.open(images / "scene04.jpg") as image:
        image.rotate(90, expand=True).save(images / "scene04.jpg", quality=90)
    workspace.snapshot()
    result = workspace.scan("-v")
    assert result.returncode == 0, result.stderr
    assert _hashed_now(result.stdout) == 1  # only the changed photo is decoded
    assert "renamed.jpg" in result.stderr and "not re-hashed" in result.stderr
    links = {
        name
        for d, _, names in os.walk(workspace.output / "dhash_8", followlinks=True)
        for name in names
    }
    assert any(n.startswith("renamed_") for n in links)
    assert not any(n.startswith("scene01_") and n.endswith(".jpg") and "copy" not in n
                   and "crop" not in n and "bright" not in n for n in links)
    assert any(n.startswith("scene02_copy_") for n in links)
    assert not any(n.startswith("scene03_small_") for n in links)


def test_copy_then_delete_is_not_rehashed(workspace: Workspace) -> None:
    # A copy to a new inode followed by deleting the original (what a move across filesystems
    # does): the old row vanishes in the same refresh, yet its digest must still be matched.
    assert workspace.scan().returncode == 0
    images = workspace.images
    shutil.copy2(images / "scene02.jpg", images / "scene02_elsewhere.jpg")
    (images / "scene02.jpg").unlink()
    workspace.snapshot()
    result = workspace.scan("-v")
    assert result.returncode == 0, result.stderr
    assert _hashed_now(result.stdout) == 0
    assert "scene02_elsewhere.jpg as a copy of scene02.jpg" in result.stderr
    links = {
        name
        for d, _, names in os.walk(workspace.output / "dhash_8", followlinks=True)
        for name in names
    }
    assert any(n.startswith("scene02_elsewhere_") for n in links)
    assert not any(re.match(r"scene02_[0-9a-f]+\.jpg$", n) for n in links)
    again = workspace.scan()
    assert _hashed_now(again.stdout) == 0  # one row for the photo, nothing left to retry


def test_same_name_in_subfolders_and_exact_copies_all_appear(workspace: Workspace) -> None:
    images = workspace.images
    for sub in ("a", "b"):
        (images / sub).mkdir()
        shutil.copy2(images / "scene05.jpg", images / sub / "IMG_0001.jpg")
    workspace.snapshot()
    assert workspace.scan().returncode == 0
    thr = next(iter(sorted(os.listdir(workspace.output / "phash_8"))))
    names = [n for d, _, ns in os.walk(workspace.output / "phash_8" / thr, followlinks=True)
             for n in ns if n.startswith("IMG_0001_")]
    assert len(names) == 2 and len(set(names)) == 2


def test_unreadable_files_are_reported_and_skipped(workspace: Workspace) -> None:
    images = workspace.images
    (images / "notes.jpg").write_text("this is not a photo")
    (images / "empty.png").write_bytes(b"")
    data = (images / "scene06.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(data[: len(data) // 3])
    old = 1_600_000_000
    for name in ("notes.jpg", "empty.png", "truncated.jpg"):
        os.utime(images / name, (old, old))  # settled long ago: not "still being written"
    workspace.snapshot()
    result = workspace.scan()
    assert result.returncode == 0, result.stderr
    assert "3 unreadable" in result.stdout
    for name in ("notes.jpg", "empty.png", "truncated.jpg"):
        assert re.search(rf"unreadable: {name}: \S", result.stderr), result.stderr
    again = workspace.scan()
    assert "0 hashed now" in again.stdout  # not retried until they change


def test_flat_images_are_flagged_and_a_16_bit_photo_is_not_one(workspace: Workspace) -> None:
    """A 16-bit PNG used to hash as a blank page (the same hash as any flat image, so in
    their cluster at threshold 0). Now it hashes as its photo, and the truly flat images are
    recorded as flat: counted and named by status."""
    import json

    import numpy as np

    images = workspace.images
    Image.new("RGB", (640, 480), (200, 30, 30)).save(images / "red.png")
    Image.new("L", (1, 1), 255).save(images / "dot.png")
    with Image.open(images / "scene06.jpg") as photo:
        grey = np.asarray(photo.convert("L"), dtype=np.uint16)
    Image.fromarray((grey * 257).astype("<u2")).save(images / "deep16.png")
    workspace.snapshot()
    assert workspace.scan().returncode == 0
    result = run_cli("status", "--json", "--state-dir", str(workspace.state),
                     cwd=workspace.root)
    st = json.loads(result.stdout)
    assert st["counts"]["flat"] == 2, st["counts"]
    warning = next(w for w in st["warnings"] if "flat" in w)
    assert "dot.png" in warning and "red.png" in warning and "deep16" not in warning
    thr0 = next(iter(sorted(os.listdir(workspace.output / "phash_8"))))
    together = [sorted(names) for d, _, names in
                os.walk(workspace.output / "phash_8" / thr0, followlinks=True)
                if any(n.startswith("dot_") for n in names)
                and not os.path.basename(d).startswith("unclustered")]
    assert together and not any(n.startswith("deep16_") for n in together[0]), together
    assert any(n.startswith("red_") for n in together[0]), together  # flat: same hash


def test_foreign_output_is_refused_and_untouched(workspace: Workspace) -> None:
    workspace.output.mkdir()
    (workspace.output / "keep.txt").write_text("the script's output")
    result = workspace.scan()
    assert result.returncode != 0
    assert (result.stderr.count("\n") == 1 and "not made by imgclusterd" in result.stderr.lower()) \
        or "imgclusterd did not" in result.stderr.lower() or "refus" in result.stderr.lower()
    assert (workspace.output / "keep.txt").read_text() == "the script's output"
    assert os.listdir(workspace.output) == ["keep.txt"]


def test_missing_images_folder_and_bad_config_are_one_line_errors(tmp_path: Path) -> None:
    missing = run_cli("scan", "--images", "nope", "--state-dir", "st", cwd=tmp_path)
    assert missing.returncode != 0
    assert missing.stderr.count("\n") == 1 and "nope" in missing.stderr
    config = tmp_path / "bad.toml"
    config.write_text("workers = -3\n")
    bad = run_cli("scan", "--config", str(config), cwd=tmp_path)
    assert bad.returncode == 78
    assert bad.stderr.count("\n") == 1 and "workers" in bad.stderr


def _commands() -> list[str]:
    """Every subcommand the parser knows, so a new command is covered without editing here."""
    import argparse

    from imgclusterd.cli import build_parser

    actions = build_parser()._actions
    sub = next(a for a in actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def test_the_command_list_is_complete() -> None:
    assert {"scan", "run", "status", "export", "similar", "sample"} <= set(_commands())


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help(tmp_path: Path, command: str) -> None:
    result = run_cli(command, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "usage: imgclusterd" in result.stdout


def test_sample_into_an_impossible_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    result = run_cli("sample", str(tmp_path / "a_file" / "photos"), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"imgclusterd: error: cannot write the sample photos into "
        f"{tmp_path / 'a_file' / 'photos'}: Not a directory"
    ]
