"""The output writer on real files: layout, names, ownership, reuse, generations, readers."""

from __future__ import annotations

import gc
import os
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgclusterd.errors import AlreadyRunning, OutputError
from imgclusterd.output import (
    FolderPatch,
    Link,
    OutputTree,
    OutputWriter,
    ThresholdFolder,
    ThresholdPatch,
    TreeDelta,
    WriteHooks,
    area_path,
    folder_links,
    link_name,
)
from imgclusterd.output.area import rename_at
from imgclusterd.output.delta import RefCounts
from imgclusterd.output.hooks import (
    ALGORITHM_WRITTEN,
    IDLE_FLUSHED,
    IDLE_SLICE_FLUSHED,
    OBJECT_STAGED,
    SWAP_LINK_MADE,
)
from imgclusterd.output.plan import leaf_digest, plan_tree, plans_alive
from imgclusterd.output.writer import compose_steps, pack_step, unpack_step


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_images(root: Path, count: int, prefix: str = "IMG_") -> list[Link]:
    root.mkdir(parents=True, exist_ok=True)
    links = []
    for i in range(count):
        path = root / f"{prefix}{i:04d}.jpg"
        path.write_bytes(f"image {prefix}{i}".encode())
        links.append(Link(link_name(path.stem, f"{i:016x}", ".jpg"), str(path.absolute())))
    return links


def chain_tree(links: list[Link], algos: tuple[str, ...] = ("phash_8", "dhash_8")) -> OutputTree:
    """A plausible sweep: at threshold t, images are paired off in blocks of t+1."""
    tree: dict[str, list[ThresholdFolder]] = {}
    for a, algo in enumerate(algos):
        sweep = []
        for t in range(0, 6):
            block = t + 1 + a
            clusters = [links[i : i + block] for i in range(0, len(links) // 2, block)]
            clusters = [c for c in clusters if len(c) > 1]
            clusters.sort(key=len, reverse=True)
            taken = {link for c in clusters for link in c}
            unclustered = [link for link in links if link not in taken]
            sweep.append(ThresholdFolder(t, clusters, unclustered))
        tree[algo] = sweep
    return tree


def expected(tree: OutputTree) -> dict[str, dict[str, dict[str, dict[str, str]]]]:
    out: dict[str, dict[str, dict[str, dict[str, str]]]] = {}
    for algo, sweep in tree.items():
        algo_out = out.setdefault(algo, {})
        for folder in sweep:
            u = len(folder.unclustered)
            thr = algo_out[f"thr_{folder.threshold:03d}_unclustered_{u}"] = {}
            for i, cluster in enumerate(folder.clusters, 1):
                thr[f"{i:03d}_{len(cluster)}"] = folder_links(cluster)
            thr[f"unclustered_{u}"] = folder_links(folder.unclustered)
    return out


def read_tree(root: str) -> dict[str, dict[str, dict[str, dict[str, str]]]]:
    """The tree as a reader sees it through plain paths (listdir + readlink)."""
    out: dict[str, dict[str, dict[str, dict[str, str]]]] = {}
    for algo in os.listdir(root):
        algo_path = os.path.join(root, algo)
        if not os.path.isdir(algo_path):
            continue
        out[algo] = {}
        for thr in os.listdir(algo_path):
            thr_path = os.path.join(algo_path, thr)
            if not os.path.isdir(thr_path):
                continue
            out[algo][thr] = {}
            for folder in os.listdir(thr_path):
                folder_path = os.path.join(thr_path, folder)
                out[algo][thr][folder] = {
                    name: os.readlink(os.path.join(folder_path, name))
                    for name in os.listdir(folder_path)
                }
    return out


def snapshot(path: Path) -> list[tuple[str, str, bytes]]:
    """Everything under path (not following symlinks): relative name, kind, content."""
    items: list[tuple[str, str, bytes]] = []
    if path.is_symlink():
        return [(".", "link", os.fsencode(os.readlink(path)))]
    if path.is_file():
        return [(".", "file", path.read_bytes())]
    for dirpath, dirnames, filenames in os.walk(path):
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            rel = str(full.relative_to(path))
            if full.is_symlink():
                items.append((rel, "link", os.fsencode(os.readlink(full))))
            elif full.is_file():
                items.append((rel, "file", full.read_bytes()))
            else:
                items.append((rel, "dir", b""))
    return sorted(items)


# ---------------------------------------------------------------------- names


def test_link_name_is_the_contract() -> None:
    assert link_name("IMG_0001", "ff00", ".jpg") == "IMG_0001_ff00.jpg"
    assert link_name("noext", "ab", "") == "noext_ab"


def test_link_name_caps_at_255_bytes_keeping_hash_and_extension() -> None:
    name = link_name("é" * 300, "0123456789abcdef", ".jpeg")
    assert len(os.fsencode(name)) <= 255
    assert name.endswith("_0123456789abcdef.jpeg")
    assert set(name[: -len("_0123456789abcdef.jpeg")]) == {"é"}  # cut on a character boundary
    raw = os.fsdecode(b"\xff\xfe" * 200)  # non-UTF-8 bytes (surrogateescape)
    name = link_name(raw, "abcd", ".png")
    assert len(os.fsencode(name)) == 255 and name.endswith("_abcd.png")


def test_colliding_names_are_disambiguated_deterministically(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "IMG_0001.jpg", tmp_path / "b" / "IMG_0001.jpg"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(b"same")
    name = link_name("IMG_0001", "00ff", ".jpg")
    links = [Link(name, str(b)), Link(name, str(a))]
    entries = folder_links(links)
    assert entries == {name: str(a), "IMG_0001_00ff_2.jpg": str(b)}
    assert folder_links(list(reversed(links))) == entries
    # exact copies (same name, same target) both appear too
    assert len(folder_links([Link(name, str(a))] * 3)) == 3
    # a numbered name never steals an existing one
    taken = Link("IMG_0001_00ff_2.jpg", str(tmp_path / "other.jpg"))
    entries = folder_links([*links, taken])
    assert len(entries) == 3 and entries["IMG_0001_00ff_2.jpg"] == taken.target


def test_invalid_links_are_refused() -> None:
    with pytest.raises(ValueError):
        folder_links([Link("a/b_00.jpg", "/x.jpg")])
    with pytest.raises(ValueError):
        folder_links([Link("a_00.jpg", "relative.jpg")])


# ---------------------------------------------------------------------- layout


def test_layout_is_exactly_the_scripts(tmp_path: Path) -> None:
    links = make_images(tmp_path / "images", 5)
    tree = {
        "phash_8": [
            ThresholdFolder(0, [], links),
            ThresholdFolder(7, [links[:3], links[3:4] + links[4:]], []),
        ],
        "avhash_16": [ThresholdFolder(12, [links[1:3]], [links[0], links[3], links[4]])],
    }
    output = tmp_path / "data" / "output"
    OutputWriter(output).write(tree)
    assert sorted(os.listdir(output)) == ["avhash_16", "phash_8"]
    assert sorted(os.listdir(output / "phash_8")) == [
        "thr_000_unclustered_5",
        "thr_007_unclustered_0",
    ]
    assert os.listdir(output / "phash_8/thr_000_unclustered_5") == ["unclustered_5"]
    assert sorted(os.listdir(output / "phash_8/thr_007_unclustered_0")) == [
        "001_3",
        "002_2",
        "unclustered_0",
    ]
    assert os.listdir(output / "phash_8/thr_007_unclustered_0/unclustered_0") == []
    assert sorted(os.listdir(output / "avhash_16/thr_012_unclustered_3")) == [
        "001_2",
        "unclustered_3",
    ]
    folder = output / "phash_8/thr_007_unclustered_0/001_3"
    assert sorted(os.listdir(folder)) == sorted(link.name for link in links[:3])
    for link in links[:3]:
        path = folder / link.name
        assert path.is_symlink()
        assert os.readlink(path) == link.target and os.path.isabs(os.readlink(path))
        assert path.read_bytes() == Path(link.target).read_bytes()
    assert read_tree(str(output)) == expected(tree)
    walked = [len(files) for _, _, files in os.walk(output, followlinks=True)]
    assert sum(walked) == 5 + 5 + 5


def test_odd_file_names_survive(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    raw = os.fsdecode(b"caf\xe9 \xff")  # Latin-1 bytes: not UTF-8
    stems = [raw, "with\nnewline", "with space", "x" * 250, "é" * 200]
    links = []
    for i, stem in enumerate(stems):
        path = images / f"{stem[:100]}.jpg"
        path.write_bytes(b"img")
        links.append(Link(link_name(stem, f"{i:04x}", ".jpg"), str(path)))
    tree = {"phash_8": [ThresholdFolder(0, [links[:2]], links[2:])]}
    output = tmp_path / "out"
    OutputWriter(output).write(tree)
    assert read_tree(str(output)) == expected(tree)
    for dirpath, _, files in os.walk(output, followlinks=True):
        for name in files:
            assert len(os.fsencode(name)) <= 255
            assert Path(dirpath, name).read_bytes() == b"img"


def test_extra_files_go_into_the_algorithm_folder(tmp_path: Path) -> None:
    links = make_images(tmp_path / "images", 3)
    tree = {"phash_8": [ThresholdFolder(0, [], links)]}
    output = tmp_path / "out"
    writer = OutputWriter(output)
    writer.write(tree, {"phash_8/hashes.json": b'{"a": 1}', "README.txt": b"hi"})
    assert (output / "phash_8/hashes.json").read_bytes() == b'{"a": 1}'
    assert (output / "README.txt").read_bytes() == b"hi"
    report = writer.write(tree, {"phash_8/hashes.json": b'{"a": 2}', "README.txt": b"hi"})
    assert (output / "phash_8/hashes.json").read_bytes() == b'{"a": 2}'
    assert report.objects_written == 1  # only the algorithm object changed
    with pytest.raises(ValueError):
        writer.write(tree, {"phash_8/thr_000_unclustered_3/x": b""})


def test_root_files_are_part_of_the_generation(tmp_path: Path) -> None:
    """extra_files without a folder land beside the algorithm folders (the explorer page),
    count in the generation digest, and a page change alone is a new generation that
    reuses every folder."""
    links = make_images(tmp_path / "images", 20)
    tree = chain_tree(links)
    output = tmp_path / "out"
    writer = OutputWriter(output, clock=Clock())
    page = {"index.html": b"<html>v1</html>", "data.js": b"var data = 1;"}
    first = writer.write(tree, page)
    assert sorted(os.listdir(output)) == ["data.js", "dhash_8", "index.html", "phash_8"]
    assert (output / "index.html").read_bytes() == b"<html>v1</html>"
    assert (Path(os.path.realpath(output)) / "data.js").read_bytes() == b"var data = 1;"
    assert read_tree(str(output)) == expected(tree)
    same = writer.write(tree, dict(page))
    assert not same.swapped and same.generation == first.generation
    changed = writer.write(tree, {**page, "data.js": b"var data = 2;"})
    assert changed.swapped and changed.generation != first.generation
    assert changed.objects_written == 0  # the tree's folders are all reused
    assert (output / "data.js").read_bytes() == b"var data = 2;"
    assert (output / "index.html").read_bytes() == b"<html>v1</html>"
    without = writer.write(tree)
    assert sorted(os.listdir(output)) == ["dhash_8", "phash_8"]
    assert without.objects_written == 0
    for bad in ({"phash_8": b"x"}, {"..": b"x"}, {"a/b/c": b"x"}, {"": b"x"}):
        with pytest.raises(ValueError):
            writer.write(tree, bad)
    assert os.path.realpath(output).endswith(without.generation)  # refused: nothing swapped


def test_a_pinned_reader_sees_root_files_matching_the_tree_beside_them(tmp_path: Path) -> None:
    """The page and its data are swapped with the tree: a reader that resolves OUTPUT once
    (a browser opening index.html loads data.js from the same resolved folder when it is
    opened through the realpath) never finds a page that describes another tree."""
    rng = random.Random(11)
    links = make_images(tmp_path / "images", 30)
    output = tmp_path / "out"
    writer = OutputWriter(output, keep_generations=2, grace_seconds=5.0)

    def page(tree: OutputTree) -> dict[str, bytes]:
        names = sorted(name for sweep in expected(tree).values() for thr in sweep.values()
                       for folder in thr.values() for name in folder)
        return {"index.html": b"<script src=data.js></script>",
                "data.js": "\n".join(names).encode()}

    writer.write(chain_tree(links[:10]), page(chain_tree(links[:10])))
    stop = threading.Event()
    problems: list[str] = []
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            root = os.path.realpath(output)
            try:
                data = Path(root, "data.js").read_bytes().decode().split("\n")
                tree = read_tree(root)
            except OSError as exc:
                problems.append(repr(exc))
                return
            names = sorted(name for sweep in tree.values() for thr in sweep.values()
                           for folder in thr.values() for name in folder)
            if names != data:
                problems.append(f"{root}: data.js lists {len(data)} links, the tree {len(names)}")
                return
            reads[0] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(60):
            tree = chain_tree(rng.sample(links, rng.randrange(8, 30)))
            writer.write(tree, page(tree))
    finally:
        stop.set()
        thread.join()
    assert not problems, problems
    assert reads[0] > 0


# ---------------------------------------------------------------------- ownership


@pytest.mark.parametrize("kind", ["directory", "file", "foreign symlink", "dangling symlink"])
def test_refuses_an_output_it_did_not_make(tmp_path: Path, kind: str) -> None:
    output = tmp_path / "data" / "output"
    output.parent.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_bytes(b"keep")
    if kind == "directory":  # what the one-shot script left
        (output / "phash_8" / "thr_000_unclustered_1" / "unclustered_1").mkdir(parents=True)
        os.symlink("/etc/hostname", output / "phash_8/thr_000_unclustered_1/unclustered_1/a")
        (output / "notes.txt").write_bytes(b"mine")
    elif kind == "file":
        output.write_bytes(b"a file")
    elif kind == "foreign symlink":
        output.symlink_to(elsewhere)
    else:
        output.symlink_to("nowhere")
    before = snapshot(tmp_path)
    writer = OutputWriter(output)
    with pytest.raises(OutputError, match="move it away, or choose another --output") as info:
        writer.check()
    assert str(output) in str(info.value)
    links = make_images(tmp_path / "images", 2)
    before = snapshot(tmp_path)
    with pytest.raises(OutputError):
        writer.write({"phash_8": [ThresholdFolder(0, [], links)]})
    with pytest.raises(OutputError):
        writer.cleanup()
    assert snapshot(tmp_path) == before
    assert not os.path.lexists(area_path(output))


def test_refuses_an_area_without_our_marker(tmp_path: Path) -> None:
    output = tmp_path / "output"
    area = area_path(output)
    area.mkdir()
    (area / "objects").mkdir()
    (area / "objects" / ("0" * 32)).mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match=str(area)):
        OutputWriter(output).write({})
    with pytest.raises(OutputError):
        OutputWriter(output).cleanup()
    assert snapshot(tmp_path) == before


def test_check_accepts_its_own_output(tmp_path: Path) -> None:
    output = tmp_path / "output"
    writer = OutputWriter(output)
    writer.check()  # nothing there yet: fine, and nothing is created
    assert not os.path.lexists(area_path(output))
    writer.write({"phash_8": [ThresholdFolder(0, [], make_images(tmp_path / "i", 2))]})
    OutputWriter(output).check()
    assert OutputWriter(output).current_generation() == writer.current_generation()


# ---------------------------------------------------------------------- reuse


@pytest.mark.parametrize("lean", [True, False])
def test_a_whole_tree_is_planned_and_built_one_algorithm_at_a_time(tmp_path: Path,
                                                                   lean: bool) -> None:
    """At 100,000 photos the plan of the whole tree was 3.3 GB: the writer plans, builds and
    drops one algorithm's folders before it plans the next. Counted at the writer's hook
    points: while a folder is staged, exactly one algorithm's plan is alive; between two
    algorithms, none. The result is what planning the whole tree at once gives: the same
    generation digest, the same objects, the same tree."""
    links = make_images(tmp_path / "images", 30)
    tree = chain_tree(links, ("ahash_8", "dhash_8", "phash_8"))
    page = {"index.html": b"<html></html>", "dhash_8/hashes.json": b"{}"}
    alive: list[tuple[str, int]] = []

    class Census(WriteHooks):
        def at(self, point: str) -> None:
            if point == ALGORITHM_WRITTEN:
                gc.collect()  # (plans are freed by reference counting; no cycles either)
            alive.append((point, plans_alive()))

    output = tmp_path / "out"
    report = OutputWriter(output, hooks=Census(), lean=lean).write(tree, page)
    staged = [count for point, count in alive if point == OBJECT_STAGED]
    assert staged and max(staged) == 1
    assert [count for point, count in alive if point == ALGORITHM_WRITTEN] == [0, 0, 0]
    whole = plan_tree(tree, page)
    assert report.generation.endswith(whole.digest)
    assert set(os.listdir(area_path(output) / "objects")) == set(whole.objects)
    assert report.objects_written == len(whole.objects)
    assert read_tree(str(output)) == expected(tree)


def test_same_tree_twice_writes_nothing(tmp_path: Path) -> None:
    links = make_images(tmp_path / "images", 40)
    tree = chain_tree(links)
    writer = OutputWriter(tmp_path / "out")
    first = writer.write(tree)
    assert first.objects_written > 0 and first.links_written > 0
    second = OutputWriter(tmp_path / "out").write(chain_tree(links))  # a fresh process, too
    assert second.objects_written == 0 and second.links_written == 0
    assert second.objects_reused == first.objects_written
    assert second.generation == first.generation
    assert read_tree(str(tmp_path / "out")) == expected(tree)


def test_a_small_change_writes_few_objects(tmp_path: Path) -> None:
    links = make_images(tmp_path / "images", 60)
    writer = OutputWriter(tmp_path / "out")
    first = writer.write(chain_tree(links))
    links += make_images(tmp_path / "new", 1, prefix="NEW_")
    second = writer.write(chain_tree(links))
    assert second.objects_reused > 0
    # one unclustered folder and one threshold folder per threshold, one algorithm object each
    assert second.objects_written <= 2 * 12 + 2
    assert second.links_written < first.links_written
    assert read_tree(str(tmp_path / "out")) == expected(chain_tree(links))


def test_refreshes_recycle_retired_objects(tmp_path: Path) -> None:
    clock = Clock()
    links = make_images(tmp_path / "images", 200)
    writer = OutputWriter(tmp_path / "out", grace_seconds=10, clock=clock)
    reports = []
    for k in range(6):
        links += make_images(tmp_path / f"new{k}", 1, prefix=f"NEW{k}_")
        clock.now += 60
        reports.append(writer.write(chain_tree(links)))
        assert read_tree(str(tmp_path / "out")) == expected(chain_tree(links))
    full = reports[0].links_written
    steady = reports[-1]
    assert steady.objects_recycled > 0
    assert steady.links_written < full / 10  # patched, not rewritten
    assert steady.links_removed < full / 10


def test_spares_make_the_next_refresh_a_patch_within_the_grace_period(tmp_path: Path) -> None:
    """Refreshes seconds apart: no generation has retired yet, so nothing can be recycled --
    except the spare copies prepared in between."""
    clock = Clock()
    links = make_images(tmp_path / "images", 200)
    writer = OutputWriter(tmp_path / "out", grace_seconds=600, clock=clock)
    first = writer.write(chain_tree(links))
    reports = [first]
    for k in range(3):
        links += make_images(tmp_path / f"new{k}", 1, prefix=f"NEW{k}_")
        clock.now += 2
        reports.append(writer.write(chain_tree(links)))
        assert read_tree(str(tmp_path / "out")) == expected(chain_tree(links))
        assert writer.prepare_spares(lambda: False) > 0
    rewritten, patched = reports[0], reports[-1]  # (the first write had no spares to patch)
    assert rewritten.objects_recycled == 0
    assert patched.objects_recycled > 0
    assert patched.links_written < rewritten.links_written / 10
    assert len(generations(tmp_path / "out")) == 4  # all within the grace period: all kept


def test_prepare_spares_stops_when_asked_and_resumes(tmp_path: Path) -> None:
    links = make_images(tmp_path / "images", 100)
    writer = OutputWriter(tmp_path / "out")
    writer.write(chain_tree(links))
    writer.write(chain_tree([*links, *make_images(tmp_path / "new", 1, prefix="NEW_")]))
    area = area_path(tmp_path / "out")
    assert writer.prepare_spares(lambda: True) == 0
    assert os.listdir(area / "pool") == [] and os.listdir(area / "tmp") == []
    assert writer.prepare_spares(lambda: False) > 0  # what was asked for is still wanted
    assert os.listdir(area / "pool") and os.listdir(area / "tmp") == []


def test_entries_share_one_inode_per_name_and_target(tmp_path: Path) -> None:
    """Hard links to one symlink inode per (name, target): readers see plain symlinks."""
    links = make_images(tmp_path / "images", 30)
    writer = OutputWriter(tmp_path / "out")
    writer.write(chain_tree(links))
    root = os.path.realpath(tmp_path / "out")
    inodes: dict[tuple[str, str], set[int]] = {}
    entries = 0
    for directory, _, files in os.walk(root, followlinks=True):
        for name in files:
            entries += 1
            path = os.path.join(directory, name)
            st_ = os.lstat(path)
            assert os.path.islink(path) and st_.st_nlink >= 2
            inodes.setdefault((name, os.readlink(path)), set()).add(st_.st_ino)
    assert all(len(found) == 1 for found in inodes.values())
    assert len(inodes) == 30  # one per photo (chain_tree names them alike in both algorithms)
    assert entries > 10 * len(inodes)  # ... listed in many folders
    assert read_tree(str(tmp_path / "out")) == expected(chain_tree(links))


# ---------------------------------------------------------------------- generations


def generations(output: Path) -> list[str]:
    return sorted(os.listdir(area_path(output) / "generations"))


def test_previous_generation_kept_older_ones_collected_after_grace(tmp_path: Path) -> None:
    clock = Clock()
    output = tmp_path / "out"
    writer = OutputWriter(output, keep_generations=2, grace_seconds=30, clock=clock)
    links = make_images(tmp_path / "images", 10)
    names = []
    for k in range(4):
        clock.now += 1
        names.append(writer.write(chain_tree(links[: 5 + k])).generation)
    assert generations(output) == names  # all within grace
    clock.now += 28.5
    writer.cleanup()
    assert generations(output) == names[1:]  # names[0] superseded 30.5 s ago, names[1] 29.5
    clock.now += 100
    writer.cleanup()
    assert generations(output) == names[2:]  # keep-2: current and previous, never fewer
    assert writer.current_generation() == names[-1]
    assert read_tree(str(output)) == expected(chain_tree(links[:8]))
    # the previous generation is still complete
    previous = area_path(output) / "generations" / names[-2]
    assert read_tree(str(previous)) == expected(chain_tree(links[:7]))
    # and nothing unreachable is left in objects/
    objects = set(os.listdir(area_path(output) / "objects"))
    reachable = set()
    for gen in generations(output):
        top = area_path(output) / "generations" / gen
        for dirpath, dirnames, _ in os.walk(top, followlinks=True):
            for d in dirnames:
                reachable.add(os.path.basename(os.path.realpath(os.path.join(dirpath, d))))
    assert objects == reachable


def test_interrupted_build_leftovers_are_cleaned(tmp_path: Path) -> None:
    clock = Clock()
    output = tmp_path / "out"
    writer = OutputWriter(output, clock=clock)
    links = make_images(tmp_path / "images", 30)
    good = writer.write(chain_tree(links)).generation
    area = area_path(output)
    # what a crash at each step of a build leaves behind
    half_object = area / "tmp" / ("obj-" + "a" * 32)
    half_object.mkdir()
    os.symlink(links[0].target, half_object / links[0].name)
    half_recycled = area / "tmp" / ("rec-" + "b" * 32)
    half_recycled.mkdir()
    half_generation = area / "tmp" / "gen-g00000009-1-0123456789abcdef"
    half_generation.mkdir()
    os.symlink("../../objects/" + "c" * 32, half_generation / "phash_8")
    os.symlink(f"{area.name}/generations/g00000009-1-0123456789abcdef", area / "tmp" / "link-x")
    unswapped = area / "generations" / "g00000002-5-0123456789abcdef"
    unswapped.mkdir()
    os.symlink("../../objects/" + "d" * 32, unswapped / "phash_8")
    orphan = area / "objects" / ("e" * 32)  # complete object whose generation never swapped in
    orphan.mkdir()
    os.symlink(links[1].target, orphan / links[1].name)
    stranger = area / "tmp" / "not-ours.txt"
    stranger.write_bytes(b"?")
    writer2 = OutputWriter(output, clock=clock)
    writer2.cleanup()
    assert sorted(os.listdir(area / "tmp")) == ["not-ours.txt"]  # not ours: left alone
    assert generations(output) == [good]
    assert not orphan.exists()
    assert read_tree(str(output)) == expected(chain_tree(links))
    # and a write after a crash works as well
    links += make_images(tmp_path / "more", 2, prefix="M")
    writer2.write(chain_tree(links))
    assert read_tree(str(output)) == expected(chain_tree(links))


def test_a_second_writer_is_refused_while_one_owns_the_output(tmp_path: Path) -> None:
    output = tmp_path / "out"
    links = make_images(tmp_path / "images", 3)
    owner = OutputWriter(output)
    owner.acquire()
    try:
        owner.write({"phash_8": [ThresholdFolder(0, [], links)]})
        with pytest.raises(OutputError, match="another imgclusterd"):
            OutputWriter(output).write({"phash_8": [ThresholdFolder(0, [links], [])]})
        with pytest.raises(AlreadyRunning, match=rf"already running \(pid {os.getpid()}\)"):
            OutputWriter(output).acquire()
    finally:
        owner.release()
    OutputWriter(output).write({"phash_8": [ThresholdFolder(0, [links], [])]})  # free again


# ---------------------------------------------------------------------- damage


def shared_leaf(output: Path, tree: OutputTree) -> tuple[Path, list[str]]:
    """A cluster folder that several thresholds share (one object), and the paths to it."""
    uses: dict[str, list[str]] = {}
    for algo, sweep in expected(tree).items():
        for thr, folders in sweep.items():
            for folder in folders:
                path = os.path.join(algo, thr, folder)
                uses.setdefault(os.path.realpath(output / path), []).append(path)
    real, paths = max(uses.items(), key=lambda item: len(item[1]))
    assert len(paths) > 1
    return Path(real), paths


def test_a_link_deleted_inside_a_shared_folder_is_repaired(tmp_path: Path) -> None:
    links = make_images(tmp_path / "images", 30)
    tree = chain_tree(links)
    output = tmp_path / "out"
    writer = OutputWriter(output, clock=Clock())
    first = writer.write(tree)
    assert not writer.needs_repair()
    leaf, paths = shared_leaf(output, tree)
    victim = sorted(os.listdir(output / paths[0]))[0]
    os.unlink(output / paths[0] / victim)  # through OUTPUT: every threshold sharing it lost it
    os.symlink("/etc/hostname", output / paths[1] / "intruder.jpg")
    (output / paths[1] / "my-notes.txt").write_bytes(b"a user's file")
    assert writer.needs_repair()
    report = writer.write(tree)
    assert report.objects_repaired == 1 and report.objects_written == 0
    assert not report.swapped and report.generation == first.generation
    want = expected(tree)
    for path in paths:
        algo, thr, folder = path.split(os.sep)
        assert os.readlink(output / path / victim) == want[algo][thr][folder][victim]
        assert not os.path.lexists(output / path / "intruder.jpg")
    assert (leaf / "my-notes.txt").read_bytes() == b"a user's file"  # not ours: left alone
    assert not writer.needs_repair()
    (leaf / "my-notes.txt").unlink()
    assert read_tree(str(output)) == want


def test_a_touched_folder_is_compared_not_rewritten(tmp_path: Path) -> None:
    links = make_images(tmp_path / "images", 30)
    tree = chain_tree(links)
    output = tmp_path / "out"
    writer = OutputWriter(output, clock=Clock())
    writer.write(tree)
    leaf, _ = shared_leaf(output, tree)
    os.utime(leaf)  # `touch`: the stamp is gone, the content is intact
    inodes = {entry.name: entry.inode() for entry in os.scandir(leaf)}
    assert writer.needs_repair()
    report = writer.write(tree)
    assert report.objects_repaired == 0 and not report.swapped
    assert {entry.name: entry.inode() for entry in os.scandir(leaf)} == inodes
    assert not writer.needs_repair()


def test_deleted_folders_and_generation_are_rebuilt(tmp_path: Path) -> None:
    links = make_images(tmp_path / "images", 30)
    tree = chain_tree(links)
    output = tmp_path / "out"
    writer = OutputWriter(output, clock=Clock())
    first = writer.write(tree)
    leaf, _ = shared_leaf(output, tree)
    shutil.rmtree(leaf)
    assert writer.needs_repair()
    again = writer.write(tree)
    assert again.objects_written == 1 and again.generation == first.generation
    assert read_tree(str(output)) == expected(tree)
    os.unlink(Path(os.path.realpath(output)) / "phash_8")  # the generation itself damaged
    assert writer.needs_repair()
    fresh = writer.write(tree)
    assert fresh.swapped and fresh.generation != first.generation
    assert fresh.objects_written == 0  # every folder reused
    assert read_tree(str(output)) == expected(tree)
    shutil.rmtree(os.path.realpath(output))  # the current generation deleted
    assert writer.current_generation() is None
    writer.write(tree)
    assert read_tree(str(output)) == expected(tree)


def test_damaged_folders_never_spread_through_recycling(tmp_path: Path) -> None:
    """Retired folders are patched from what we remember of them: a damaged one must be read
    from disk instead, or its hole reappears in the folder made from it."""
    rng = random.Random(5)
    links = make_images(tmp_path / "images", 40)
    output = tmp_path / "out"
    clock = Clock()
    writer = OutputWriter(output, grace_seconds=0, clock=clock, recycle_min=1)
    for round_ in range(12):
        tree = chain_tree(rng.sample(links, rng.randrange(20, 40)))
        clock.now += 1
        writer.write(tree)
        assert read_tree(str(output)) == expected(tree)
        objects = area_path(output) / "objects"
        for digest in rng.sample(sorted(os.listdir(objects)), 6):
            entries = sorted(os.listdir(objects / digest))
            if entries:
                os.unlink(objects / digest / rng.choice(entries))
            os.symlink("/etc/hostname", objects / digest / f"intruder{round_}.jpg")


def test_a_deleted_area_with_output_dangling_is_made_again(tmp_path: Path) -> None:
    links = make_images(tmp_path / "images", 30)
    tree = chain_tree(links)
    output = tmp_path / "out"
    OutputWriter(output).write(tree)
    shutil.rmtree(area_path(output))
    assert os.path.islink(output) and not os.path.exists(output)
    writer = OutputWriter(output)
    writer.check()  # ours, dangling: not "not made by imgclusterd"
    assert writer.current_generation() is None
    writer.write(tree)
    assert read_tree(str(output)) == expected(tree)
    assert not writer.needs_repair()


# ---------------------------------------------------------------------- readers


def test_reader_never_sees_a_partial_tree_during_100_writes(tmp_path: Path) -> None:
    rng = random.Random(7)
    links = make_images(tmp_path / "images", 40)
    output = tmp_path / "out"
    # real clock, short grace: old generations really are collected while the reader walks
    # (with grace_seconds=0 this test fails: the reader's generation vanishes under it)
    writer = OutputWriter(output, keep_generations=2, grace_seconds=5.0)
    writer.write(chain_tree(links[:20]))
    stop = threading.Event()
    errors: list[BaseException] = []
    walks = [0]

    def check_walk() -> None:
        root = os.path.realpath(output)  # what `cd OUTPUT` does: pin one generation
        seen = 0

        def fail(exc: OSError) -> None:
            raise exc

        for dirpath, dirnames, filenames in os.walk(root, onerror=fail, followlinks=True):
            time.sleep(0.002)  # a slow reader (a file manager): one walk spans several swaps
            base = os.path.basename(dirpath)
            if base.startswith("thr_"):
                u = base.rsplit("_", 1)[1]
                assert f"unclustered_{u}" in dirnames, (dirpath, dirnames)
                assert all(d == f"unclustered_{u}" or d[3] == "_" for d in dirnames)
            elif base.startswith("unclustered_") or base[:3].isdigit():
                size = int(base.rsplit("_", 1)[1])
                assert len(filenames) == size, (dirpath, filenames)
                for name in filenames:
                    os.stat(os.path.join(dirpath, name))  # resolves: ENOENT would raise
                seen += 1
        assert seen > 0

    def reader() -> None:
        while not stop.is_set():
            try:
                check_walk()
                walks[0] += 1
            except BaseException as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(100):
            count = rng.randrange(10, 30)
            writer.write(chain_tree(rng.sample(links, count)))
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[0]
    assert walks[0] > 0
    # Once the grace period is over, everything but the newest keep_generations goes.
    time.sleep(writer.grace_seconds + 0.1)
    writer.cleanup()
    assert len(generations(output)) == writer.keep_generations


def test_grace_counts_from_the_swap_not_from_the_name() -> None:
    """A generation is named before its flush (seconds on a busy disk): its predecessor's
    grace period must start when it was swapped in, where the writer knows that."""
    from imgclusterd.output.retention import kept_generations

    names = ["g00000001-1000-" + "a" * 16, "g00000002-2000-" + "b" * 16,
             "g00000003-3000-" + "c" * 16]
    kept, dropped = kept_generations(names, names[2], now=13.0, keep=2, grace_seconds=10)
    assert dropped == names[:1]  # superseded at 2.0 s (its successor's name), 11 s ago
    kept, dropped = kept_generations(names, names[2], now=13.0, keep=2, grace_seconds=10,
                                     swapped_at={names[1]: 5.0})
    assert dropped == [] and kept == names  # swapped in at 5.0 s: 8 s ago


# ---------------------------------------------------------------------- find -L during swaps

FIND_ERROR_RE = re.compile(r"find: '(.*)': (.*)\Z")


def tree_paths(tree: OutputTree) -> set[str]:
    """Every path of a generation, relative to OUTPUT, as `find -L` lists them."""
    paths = set()
    for algo, sweep in expected(tree).items():
        paths.add(algo)
        for thr, folders in sweep.items():
            paths.add(f"{algo}/{thr}")
            for folder, entries in folders.items():
                paths.add(f"{algo}/{thr}/{folder}")
                paths.update(f"{algo}/{thr}/{folder}/{name}" for name in entries)
    return paths


def find_during_swaps(
    tmp_path: Path, root: Callable[[Path], str], grace_seconds: float = 5.0
) -> tuple[list[tuple[str, subprocess.CompletedProcess[str], int]], list[set[str]]]:
    """Real `find -L root(OUTPUT)` walks, one after the other, while the writer swaps in new
    generations (grace 5 s, as readers get by default: 60 s): at least 50 swaps, and until
    several walks spanned two swaps. Returns (root, find's result, swaps during it) per
    walk, and every generation's paths."""
    rng = random.Random(3)
    links = make_images(tmp_path / "images", 60)
    output = tmp_path / "out"
    writer = OutputWriter(output, keep_generations=2, grace_seconds=grace_seconds)
    first = chain_tree(links[:30], ("phash_8", "dhash_8", "avhash_8"))
    writer.write(first)
    generations = [tree_paths(first)]
    walks: list[tuple[str, subprocess.CompletedProcess[str], int]] = []
    stop = threading.Event()
    environment = {**os.environ, "LC_ALL": "C"}

    def sequence() -> int:
        return int(os.readlink(output).rsplit("/g", 1)[1].split("-")[0])

    def walker() -> None:
        while not stop.is_set():
            before = sequence()
            start = root(output)
            # -exec per folder: a slow reader (a file manager, a backup tool), whose walk
            # spans several swaps
            result = subprocess.run(["find", "-L", start, "-print", "-type", "d", "-exec",
                                     "true", ";"],
                                    capture_output=True, text=True, env=environment,
                                    timeout=60)
            walks.append((start, result, sequence() - before))

    thread = threading.Thread(target=walker)
    thread.start()
    try:
        for number in range(400):
            tree = chain_tree(rng.sample(links, rng.randrange(20, 60)),
                              ("phash_8", "dhash_8", "avhash_8"))
            writer.write(tree)
            generations.append(tree_paths(tree))
            if number >= 50 and sum(swaps >= 2 for _, _, swaps in walks) >= 3:
                break
    finally:
        stop.set()
        thread.join()
    # A walk during two swaps is one whose generation was no longer among the newest two
    # before it ended: only the grace period kept it.
    assert sum(swaps >= 2 for _, _, swaps in walks) >= 1, "no walk spanned two swaps"
    return walks, generations


def relative(start: str, line: str) -> str:
    return os.path.relpath(line, start) if line != start else "."


def test_find_in_a_pinned_generation_sees_exactly_one_generation(tmp_path: Path) -> None:
    """`cd OUTPUT` or `find -L "$(realpath OUTPUT)"`: one complete generation, no error,
    however many swaps happen during the walk (within the grace period)."""
    walks, generations = find_during_swaps(tmp_path, lambda out: os.path.realpath(out))
    for start, result, _ in walks:
        assert result.returncode == 0 and result.stderr == "", result.stderr
        listed = {relative(start, line) for line in result.stdout.splitlines()} - {"."}
        assert listed in generations, "a pinned walk saw no single generation"


def test_find_through_output_sees_whole_folders_and_only_vanished_names(tmp_path: Path) -> None:
    """`find -L OUTPUT` re-resolves OUTPUT/... at every step, so across a swap it continues in
    the new generation. What the README promises it, and nothing more: every folder it lists
    is a whole folder of one generation (a cluster folder <CCC>_<size> shows <size> entries,
    each listed or, if the next generation dropped it meanwhile, reported missing), every
    path it prints is one of some generation, and its only errors are "No such file or
    directory" for names the generation after a swap does not have."""
    walks, generations = find_during_swaps(tmp_path, lambda out: str(out))
    every = set().union(*generations)
    for start, result, _ in walks:
        listed = [relative(start, line) for line in result.stdout.splitlines()]
        missing = []
        for line in result.stderr.splitlines():
            match = FIND_ERROR_RE.match(line)
            assert match and match[2] == "No such file or directory", line
            missing.append(relative(start, match[1]))
        assert set(listed) - {"."} <= every, "a path no generation has"
        for path in missing:
            assert path in every and any(path not in g for g in generations), path
        entries: dict[str, set[str]] = {}  # a name may be printed, then found missing
        for path in listed + missing:
            entries.setdefault(os.path.dirname(path), set()).add(path)
        for folder in listed:
            name = os.path.basename(folder)
            if folder.count("/") == 2 and folder not in missing:
                size = int(name.rsplit("_", 1)[1])
                assert len(entries.get(folder, ())) == size, (folder, entries.get(folder))


# ---------------------------------------------------------------------- property


@st.composite
def trees(draw: st.DrawFn, links: list[Link]) -> dict[str, list[ThresholdFolder]]:
    tree = {}
    for algo in draw(st.sets(st.sampled_from(["phash_8", "dhash_8", "whash_16"]), min_size=1)):
        sweep = []
        for t in sorted(draw(st.sets(st.integers(0, 30), min_size=1, max_size=4))):
            chosen = draw(st.lists(st.sampled_from(links), max_size=len(links)))
            labels = draw(st.lists(st.integers(0, 3), min_size=len(chosen), max_size=len(chosen)))
            groups: dict[int, list[Link]] = {}
            for link, label in zip(chosen, labels, strict=True):
                groups.setdefault(label, []).append(link)
            clusters = [g for label, g in sorted(groups.items()) if label and len(g) > 1]
            unclustered = groups.get(0, [])
            sweep.append(ThresholdFolder(t, clusters, unclustered))
        tree[algo] = sweep
    return tree


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_sequence_of_writes_reads_back_exactly(tmp_path: Path, data: st.DataObject) -> None:
    links = make_images(tmp_path / "images", 24)
    # duplicate names on purpose, so collisions and recycling of renamed links are exercised
    links += [Link(links[i].name, links[i + 1].target) for i in range(0, 6)]
    with tempfile.TemporaryDirectory(dir=tmp_path) as scratch:
        clock = Clock()
        # recycle_min=1: recycle everything, the patching is what is tested
        writer = OutputWriter(Path(scratch) / "out", grace_seconds=0, clock=clock, recycle_min=1)
        for _ in range(data.draw(st.integers(1, 5))):
            tree = data.draw(trees(links))
            clock.now += 1
            writer.write(tree)
            assert read_tree(str(Path(scratch) / "out")) == expected(tree)


# ---------------------------------------------------------------------- collection from records


def delta_between(old: OutputTree, new: OutputTree) -> TreeDelta:
    """The delta from ``old`` to ``new`` as the cluster stage would hand it: per changed
    threshold, the clusters gone and each new or changed folder as a patch of a gone one."""
    delta: dict[str, list[ThresholdPatch]] = {}
    for algo, sweep in new.items():
        patches = []
        for before, after in zip(old[algo], sweep, strict=True):
            if before == after:
                continue
            was = [tuple(c) for c in before.clusters]
            now = [tuple(c) for c in after.clusters]
            kept_old, kept_new, i = set(), set(), 0
            for k, cluster in enumerate(now):  # clusters kept as they were, in order
                for j in range(i, len(was)):
                    if was[j] == cluster:
                        kept_old.add(j)
                        kept_new.add(k)
                        i = j + 1
                        break
            gone = [j + 1 for j in range(len(was)) if j not in kept_old]
            free = list(gone)
            folders = []
            for k, cluster in enumerate(now):
                if k in kept_new:
                    continue
                base = next((g for g in free if set(was[g - 1]) & set(cluster)), None)
                base_links = set(was[base - 1]) if base is not None else set()
                if base is not None:
                    free.remove(base)
                folders.append(FolderPatch(k + 1, len(cluster), base,
                                           sorted(set(cluster) - base_links),
                                           sorted(base_links - set(cluster))))  # fmt: skip
            if tuple(before.unclustered) != tuple(after.unclustered):
                u_old, u_new = set(before.unclustered), set(after.unclustered)
                folders.append(FolderPatch(0, len(u_new), 0, sorted(u_new - u_old),
                                           sorted(u_old - u_new)))  # fmt: skip
            patches.append(ThresholdPatch(after.threshold, len(now), gone, folders))
        delta[algo] = patches
    return delta


def mutate(tree: OutputTree, links: list[Link], rng: random.Random) -> OutputTree:
    """One small change, as a refresh after an event makes it: a photo added (unclustered or
    joining a cluster), removed, or moved between folders at some thresholds."""
    present = {link for folder in next(iter(tree.values())) for c in
               [*folder.clusters, folder.unclustered] for link in c}  # fmt: skip
    absent = [link for link in links if link not in present]
    op = rng.choice(["add", "remove", "move"])
    photo = rng.choice(absent) if op == "add" and absent else rng.choice(sorted(present))
    new: dict[str, list[ThresholdFolder]] = {}
    for algo, sweep in tree.items():
        new[algo] = []
        for folder in sweep:
            clusters = [[x for x in c if x != photo] for c in folder.clusters]
            unclustered = [x for x in folder.unclustered if x != photo]
            if op != "remove" or photo not in present:
                if clusters and rng.random() < 0.3:
                    rng.choice(clusters).append(photo)
                else:
                    unclustered.append(photo)
            for c in clusters:
                if len(c) == 1:
                    unclustered += c
            clusters = sorted((c for c in clusters if len(c) > 1), key=len, reverse=True)
            new[algo].append(ThresholdFolder(folder.threshold, clusters, unclustered))
    return new


def reached(output: Path, generation: str) -> set[str]:
    """Every object a generation reaches, read from disk (independently of the writer)."""
    area = area_path(output)
    found: set[str] = set()
    todo = [area / "generations" / generation]
    while todo:
        folder = todo.pop()
        for entry in os.scandir(folder):
            if entry.is_symlink() and os.readlink(entry.path).startswith("../"):
                digest = os.readlink(entry.path).rsplit("/", 1)[1]
                if digest not in found:
                    found.add(digest)
                    todo.append(area / "objects" / digest)
    return found


def plant_orphan(output: Path, links: list[Link]) -> Path:
    """An object no generation reaches and no record mentions (what a crash leaves)."""
    orphan = area_path(output) / "objects" / ("e" * 32)
    orphan.mkdir()
    os.symlink(links[0].target, orphan / links[0].name)
    return orphan


def assert_collected(output: Path) -> None:
    """objects/ holds exactly what the generations on disk reach: nothing reachable was
    collected, nothing unreachable stayed."""
    on_disk = generations(output)
    needed = set().union(*(reached(output, g) for g in on_disk))
    assert set(os.listdir(area_path(output) / "objects")) == needed


def written_chain(
    tmp_path: Path, seed: int, hooks: WriteHooks | None = None, *, grace: float = 0.0,
    lean: bool = False,
) -> tuple[random.Random, list[Link], Path, Clock, OutputWriter, OutputTree]:
    """A writer (grace 0 unless told) on the injected clock that has written a chain tree of 30
    of 40 photos (the start of the record/collection tests)."""
    links = make_images(tmp_path / "images", 40)
    output = tmp_path / "out"
    clock = Clock()
    writer = OutputWriter(output, grace_seconds=grace, clock=clock, recycle_min=4, hooks=hooks,
                          lean=lean)
    tree = chain_tree(links[:30])
    writer.write(tree)
    return random.Random(seed), links, output, clock, writer, tree


def delta_steps(writer: OutputWriter, tree: OutputTree, links: list[Link], rng: random.Random,
                clock: Clock, count: int) -> Iterator[OutputTree]:
    """``count`` random delta writes, one clock second apart; yields each tree written."""
    for _ in range(count):
        new = mutate(tree, links, rng)
        clock.now += 1
        writer.write_delta(delta_between(tree, new))
        tree = new
        yield tree


def test_delta_writes_collect_from_records_without_walking(tmp_path: Path) -> None:
    """After a delta write, garbage is found from the generations' records: exactly what no
    kept generation reaches is collected (an object nothing mentions -- a planted orphan --
    is not even looked at), and a whole-tree write walks and finds the orphan."""
    rng, links, output, clock, writer, tree = written_chain(tmp_path, seed=11)
    orphan = plant_orphan(output, links)
    for _ in range(25):
        new = mutate(tree, links, rng)
        clock.now += 1
        report = writer.write_delta(delta_between(tree, new))
        tree = new
        assert report.planned == "delta"
        assert read_tree(str(output)) == expected(tree)
        assert orphan.exists()  # a delta write's collection does not list objects/
        shutil.rmtree(orphan)
        assert_collected(output)
        orphan = plant_orphan(output, links)
        if rng.random() < 0.3:
            writer.prepare_spares(lambda: False)
        names = generations(output)
        assert sorted(os.listdir(area_path(output) / "records")) == names[-len(names):]
    writer.write(tree)  # the whole tree: collected by a walk, which finds the orphan
    assert not orphan.exists()
    assert_collected(output)


def test_without_records_a_delta_write_collects_by_a_full_walk(tmp_path: Path) -> None:
    """An area written before records existed (or whose records are gone): nothing is
    assumed, the collection walks (and finds a planted orphan)."""
    rng, links, output, clock, writer, tree = written_chain(tmp_path, seed=3)
    for step in range(6):
        new = mutate(tree, links, rng)
        clock.now += 1
        if step == 3:
            shutil.rmtree(area_path(output) / "records")
            (area_path(output) / "records").mkdir()
            orphan = plant_orphan(output, links)
        writer.write_delta(delta_between(tree, new))
        tree = new
        if step == 3:
            assert not orphan.exists()
        assert read_tree(str(output)) == expected(tree)
        assert_collected(output)


class CrashAt(WriteHooks):
    """A crash at one point of a write: nothing after it runs, not even the cleanup."""

    class Crash(BaseException):
        pass

    def __init__(self, point: str) -> None:
        self.point = point

    def at(self, point: str) -> None:
        if point == self.point:
            raise CrashAt.Crash(point)


def test_a_crash_between_the_record_and_the_swap_loses_nothing(tmp_path: Path) -> None:
    """The record of the generation being built is on disk, the generation too, OUTPUT still
    names the previous one: the next process drops both, collects the crash's objects (a
    walk), and goes on collecting from records."""
    crash = CrashAt("none")
    rng, links, output, clock, writer, tree = written_chain(tmp_path, seed=8, hooks=crash)
    tree = list(delta_steps(writer, tree, links, rng, clock, 3))[-1]
    before = generations(output)
    crash.point = SWAP_LINK_MADE
    new = mutate(mutate(tree, links, rng), links, rng)
    clock.now += 1
    with pytest.raises(CrashAt.Crash):
        writer.write_delta(delta_between(tree, new))
    # (before building, the write dropped the generations its swap would have dropped: past
    # their grace, beyond keep_generations counting the new one)
    before = before[-(writer.keep_generations - 1) :]
    assert generations(output)[:-1] == before
    records = area_path(output) / "records"
    assert len(os.listdir(records)) == len(before) + 1  # the unswapped one's record is there
    assert read_tree(str(output)) == expected(tree)
    writer.release()
    # the next process
    writer = OutputWriter(output, grace_seconds=0, clock=clock, recycle_min=4)
    writer.cleanup()
    assert generations(output) == before
    assert sorted(os.listdir(records)) == before
    assert_collected(output)
    writer.write(tree)
    for written in delta_steps(writer, tree, links, rng, clock, 5):
        assert read_tree(str(output)) == expected(written)
        assert_collected(output)


def test_renumbered_entries_are_renamed_in_chains_and_cycles(tmp_path: Path) -> None:
    """A patched threshold folder renames its renumbered entries, one rename each: chains
    from their far end, cycles through a temporary name, nothing clobbered, inodes kept."""
    folder = tmp_path / "thr"
    folder.mkdir()
    for name in ("001_3", "002_2", "003_2", "004_2", "005_2", "006_2", "007_2", "008_2", "010_2"):
        os.symlink(f"../{name}-leaf", folder / name)
    inodes = {name: os.lstat(folder / name).st_ino for name in os.listdir(folder)}
    moved = {
        "002_2": "001_3", "003_2": "002_2", "004_2": "003_2", "009_2": "004_2",  # a chain
        "005_2": "006_2", "006_2": "005_2",  # two entries trading names
        "007_2": "008_2", "008_2": "010_2", "010_2": "007_2",  # a cycle of three
    }  # fmt: skip
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        rename_at(fd, moved)
    finally:
        os.close(fd)
    assert sorted(os.listdir(folder)) == sorted(moved)
    for new, old in moved.items():
        assert os.readlink(folder / new) == f"../{old}-leaf"
        assert os.lstat(folder / new).st_ino == inodes[old]


def _with_unclustered(tree: OutputTree, photo: Link) -> OutputTree:
    """``tree`` with one more photo, unclustered at every threshold (a +1 unlike the rest)."""
    return {
        algo: [ThresholdFolder(f.threshold, f.clusters, [*f.unclustered, photo]) for f in sweep]
        for algo, sweep in tree.items()
    }


def _thirty_of_forty(
    tmp_path: Path,
) -> tuple[list[Link], Path, Clock, OutputWriter, OutputTree, Path, dict[int, str]]:
    """A lean writer (grace 10 s) that wrote a whole tree of 30 of 40 photos: the photos, the
    output, its clock, the writer, the tree, the objects folder and its objects by inode."""
    _, links, output, clock, writer, tree = written_chain(tmp_path, 0, grace=10, lean=True)
    objects = area_path(output) / "objects"
    first = {os.stat(objects / d).st_ino: d for d in os.listdir(objects)}
    return links, output, clock, writer, tree, objects, first


def test_the_second_delta_write_patches_the_folders_its_swap_retires(tmp_path: Path) -> None:
    """The second write after a whole tree (no spares made): the generation before the
    previous one is past its grace and would be dropped after this swap, so it is dropped
    before the build, and its unclustered folders -- retired ancestors of this write's bases
    -- are patched forward (same directory, renamed into place) instead of copied link by
    link (20,000 photos: ~2 million link() calls, a minute)."""
    links, output, clock, writer, tree, objects, first = _thirty_of_forty(tmp_path)
    for photo in links[30:32]:
        clock.now += 20  # an idle gap longer than the grace, no spares made in it
        new = _with_unclustered(tree, photo)
        report = writer.write_delta(delta_between(tree, new))
        tree = new
    assert read_tree(str(output)) == expected(tree)
    reused = [first[os.stat(objects / d).st_ino] for d in os.listdir(objects)
              if os.stat(objects / d).st_ino in first]  # fmt: skip
    unclustered = {
        leaf for sweep in chain_tree(links[:30]).values() for f in sweep
        for leaf in [leaf_digest(folder_links(f.unclustered)).digest]
    }  # fmt: skip
    # every unclustered folder of the first generation became one of the third's
    assert unclustered <= set(reused)
    assert report.objects_recycled >= len(unclustered)
    assert generations(output) == sorted(generations(output))[-2:]
    assert_collected(output)


def test_spares_after_a_whole_tree_are_the_folders_a_photo_changes_biggest_first(
    tmp_path: Path,
) -> None:
    """After a whole-tree write (every folder written), idle time copies only the folders one
    more photo changes -- each threshold's folder, unclustered folder and biggest cluster
    (the one a new photo most likely joins) -- biggest first, not every folder of the tree
    (a second tree, deleted unused at the next write)."""
    _, _, output, _, writer, tree = written_chain(tmp_path, 0, lean=True)
    pool = area_path(output) / "pool"
    calls = iter(range(2))  # one spare, then "an event arrived"
    writer.prepare_spares(lambda: next(calls, 1) > 0)
    sizes = {
        leaf_digest(folder_links(f.unclustered)).digest: len(f.unclustered)
        for sweep in tree.values() for f in sweep
    }  # fmt: skip
    (first,) = os.listdir(pool)
    assert first.split("~")[1] == "u" and sizes[first[:32]] == max(sizes.values())
    writer.prepare_spares(lambda: False)
    slots = {entry.split("~")[1] for entry in os.listdir(pool)}
    assert slots == {"u", "t", "c1"}
    assert {e[:32] for e in os.listdir(pool) if "~u~" in e} == set(sizes)
    biggest = {
        leaf_digest(folder_links(f.clusters[0])).digest
        for sweep in tree.values() for f in sweep if f.clusters and len(f.clusters[0]) >= 4
    }  # fmt: skip
    assert biggest and {e[:32] for e in os.listdir(pool) if "~c1~" in e} == biggest


def test_spares_of_patched_folders_only_within_the_grace(tmp_path: Path) -> None:
    """After a delta write, a spare of a folder it patched helps only a write within the
    grace period of the generation it replaced; a later write patches that generation's
    retired folders (released before it builds). So idle time past the grace makes none:
    at 20,000 photos each would be copies of ~2 million links, deleted unused."""
    links, output, clock, writer, tree, objects, first = _thirty_of_forty(tmp_path)
    writer.prepare_spares(lambda: False)  # after a whole tree: no ancestors, spares made
    pool = area_path(output) / "pool"
    assert os.listdir(pool)
    photos = iter(links[30:])
    clock.now += 20
    new = _with_unclustered(tree, next(photos))
    writer.write_delta(delta_between(tree, new))
    tree = new
    clock.now += 11  # past the grace of the generation it replaced
    before = set(os.listdir(pool))
    assert writer.prepare_spares(lambda: False) == 0
    assert set(os.listdir(pool)) <= before  # (unused pool entries purged, nothing made)
    clock.now += 20
    new = _with_unclustered(tree, next(photos))
    writer.write_delta(delta_between(tree, new))  # patches the retired folders
    tree = new
    assert read_tree(str(output)) == expected(tree)
    reused = {first[st.st_ino] for st in (os.stat(objects / d) for d in os.listdir(objects))
              if st.st_ino in first}  # fmt: skip
    assert {leaf_digest(folder_links(f.unclustered)).digest
            for sweep in chain_tree(links[:30]).values() for f in sweep} <= reused  # fmt: skip
    # within the grace, spares of the folders it patched are made
    clock.now += 1
    assert writer.prepare_spares(lambda: False) > 0
    clock.now += 20
    new = _with_unclustered(tree, next(photos))
    writer.write_delta(delta_between(tree, new))
    assert read_tree(str(output)) == expected(new)
    assert_collected(output)


def _with_clustered(tree: OutputTree, photo: Link) -> OutputTree:
    """``tree`` with one more photo in the first cluster at every threshold that has one
    (the others left as they are): the unclustered folders stay as they are."""
    return {
        algo: [ThresholdFolder(f.threshold, [[*f.clusters[0], photo], *f.clusters[1:]],
                               f.unclustered) if f.clusters else f for f in sweep]
        for algo, sweep in tree.items()
    }  # fmt: skip


def test_a_restart_that_finds_its_tree_makes_the_same_spares(tmp_path: Path) -> None:
    """A restart's whole-tree write reuses the folders the last run left (none written): the
    folders one more photo changes still get their spares in idle time, as after a tree
    written anew, or the first photos after the restart copy them link by link (20,000
    photos: ~4 million links, ~100 s, in the first +1)."""
    _, _, output, clock, _, tree = written_chain(tmp_path, 0, lean=True)
    pool = area_path(output) / "pool"
    assert not os.listdir(pool)
    restarted = OutputWriter(output, grace_seconds=10, clock=clock, recycle_min=4, lean=True)
    report = restarted.write(tree)
    assert report.objects_written == 0, "the tree was written again: nothing to test"
    assert restarted.prepare_spares(lambda: False) > 0
    slots = {entry.split("~")[1] for entry in os.listdir(pool)}
    assert slots == {"u", "t", "c1"}


def _joined_biggest(tree: OutputTree, photo: Link) -> OutputTree:
    """``photo`` joins each threshold's biggest cluster where it has 4 or more photos (the
    folders of which idle time makes spares after a whole tree)."""
    return {
        algo: [ThresholdFolder(f.threshold, [[*f.clusters[0], photo], *f.clusters[1:]],
                               f.unclustered)
               if f.clusters and len(f.clusters[0]) >= 4 else f for f in sweep]
        for algo, sweep in tree.items()
    }  # fmt: skip


def test_spares_idle_time_could_not_make_stay_wanted_while_their_folder_lives(
    tmp_path: Path,
) -> None:
    """Idle time after a whole tree is cut short by the next photo (20,000 photos: ~4 million
    links of spares, the photo after 20 s). The spares not made yet, of folders that write
    left alone, are made in the idle time after it, so a later photo joining such a folder
    (the biggest cluster of a threshold) patches a spare instead of copying it."""
    links, output, clock, writer, tree, _, _ = _thirty_of_forty(tmp_path)
    assert writer.prepare_spares(lambda: True) == 0  # the next photo came at once
    pool = area_path(output) / "pool"

    photos = iter(links[30:])
    clock.now += 20
    new = _with_unclustered(tree, next(photos))  # the biggest clusters stay
    writer.write_delta(delta_between(tree, new))
    tree = new
    clock.now += 20  # past the grace: no spares of the folders it patched
    writer.prepare_spares(lambda: False)
    assert any("~c1~" in entry for entry in os.listdir(pool))
    clock.now += 20
    new = _joined_biggest(tree, next(photos))
    report = writer.write_delta(delta_between(tree, new))
    assert read_tree(str(output)) == expected(new)
    assert report.links_copied == 0
    assert_collected(output)


def test_a_spare_of_a_live_folder_waits_for_the_write_that_changes_it(tmp_path: Path) -> None:
    """The spares idle time makes after a whole tree include each threshold's biggest cluster
    (the one a new photo most likely joins). A write that does not change such a folder
    leaves its spare unused; it stays in ``pool/`` through the idle purge while its folder
    is in the tree, so the later photo that joins that cluster patches the spare instead of
    copying the folder link by link (a real library of 20,000 photos: one component of most
    photos at the loose thresholds, ~20,000-200,000 links copied per +1 in the first drops
    after a restart)."""
    links, output, clock, writer, tree, _, _ = _thirty_of_forty(tmp_path)
    writer.prepare_spares(lambda: False)
    pool = area_path(output) / "pool"
    spares = {entry for entry in os.listdir(pool) if "~c1~" in entry}
    assert spares, "no spare of a biggest cluster: the test would not test anything"

    photos = iter(links[30:])
    for change in (_with_unclustered, _joined_biggest):
        clock.now += 20  # past the grace: no spares of the patched folders
        writer.prepare_spares(lambda: False)  # the idle purge of unused pool entries
        if change is _joined_biggest:
            assert spares <= set(os.listdir(pool))  # not purged: their folders are live
        new = change(tree, next(photos))
        report = writer.write_delta(delta_between(tree, new))
        tree = new
        assert read_tree(str(output)) == expected(tree)
    assert report.links_copied == 0
    assert not spares & set(os.listdir(pool))  # used
    assert_collected(output)


@pytest.mark.parametrize("changes", [
    (_with_unclustered, _with_clustered, _with_clustered, _with_unclustered),
    (_with_clustered, _with_unclustered, _with_unclustered, _with_clustered),
], ids=["unclustered", "cluster"])
def test_a_folder_left_alone_for_two_writes_is_patched_not_copied(
    tmp_path: Path, changes: tuple[Callable[[OutputTree, Link], OutputTree], ...],
) -> None:
    """A retired unclustered (or cluster) folder that two delta writes in a row did not use
    (their photos joined clusters, or stayed unclustered) stays in ``pool/`` through the
    idle purge while the folder it is the ancestor of is live: the next photo left
    unclustered (or joining that cluster) patches it forward instead of copying the current
    folder link by link (20,000 photos: up to ~50,000 links per +1)."""
    links, output, clock, writer, tree, _, _ = _thirty_of_forty(tmp_path)
    photos = iter(links[30:])
    for change in changes:
        clock.now += 20  # past the grace: no spares of patched folders in the idle time
        writer.prepare_spares(lambda: False)
        new = change(tree, next(photos))
        report = writer.write_delta(delta_between(tree, new))
        tree = new
        assert read_tree(str(output)) == expected(tree)
    assert report.links_copied == 0
    assert report.objects_recycled >= sum(len(sweep) for sweep in tree.values())
    assert_collected(output)
    clock.now += 20  # kept ancestors are still only one per live folder
    writer.prepare_spares(lambda: False)
    pooled = [entry.split("~") for entry in os.listdir(area_path(output) / "pool")]
    slots = [(algo, slot, t) for _, slot, t, algo in pooled if slot in ("u", "t")]
    assert len(slots) == len(set(slots))


def test_spares_within_the_grace_copy_threshold_folders_first(tmp_path: Path) -> None:
    """After a delta write, the spares of the folders it patched (made within the grace of
    the generation it replaced) start with the threshold folders: a later refresh patches
    the rest from retired ancestors at the cost of their few changed links, but a threshold
    folder from an ancestor renames each renumbered entry twice."""
    links, output, clock, writer, tree, _, _ = _thirty_of_forty(tmp_path)
    writer.prepare_spares(lambda: False)  # after the whole tree
    clock.now += 20
    new = _with_unclustered(tree, links[30])
    writer.write_delta(delta_between(tree, new))
    pool = area_path(output) / "pool"
    before = set(os.listdir(pool))
    clock.now += 1
    wanted = writer._pool.spare_wanted  # (private: the spares asked for, with their sizes)
    assert max(wanted, key=lambda item: item[2])[1][1] == "u"  # the biggest is not a "t"
    calls = iter(range(2))  # one spare, then "an event arrived"
    writer.prepare_spares(lambda: next(calls, 1) > 0)
    (made,) = set(os.listdir(pool)) - before
    assert made.split("~")[1] == "t"


class Recorder(WriteHooks):
    """The hook points reached, in order."""

    def __init__(self) -> None:
        self.points: list[str] = []

    def at(self, point: str) -> None:
        self.points.append(point)


def test_idle_work_is_flushed_before_the_next_refresh(tmp_path: Path) -> None:
    """Idle work (spares made, unused pool entries deleted) dirties the file system; it is
    flushed at its end, so the next refresh's flush before its swap holds only its own
    writes (~0.5 s of a +1 at 5,000 photos was the idle purge's unlinks). Not when stopped
    (an event is waiting), nor when there was nothing to do."""
    hooks = Recorder()
    writer = written_chain(tmp_path, 0, hooks, lean=True)[4]
    hooks.points.clear()
    assert writer.prepare_spares(lambda: True) == 0
    assert IDLE_FLUSHED not in hooks.points
    calls = iter(range(3))  # some spares made, then "an event arrived"
    assert writer.prepare_spares(lambda: next(calls, 9) > 1) > 0
    assert IDLE_FLUSHED not in hooks.points
    assert writer.prepare_spares(lambda: False) > 0
    assert hooks.points[-1] == IDLE_FLUSHED
    hooks.points.clear()
    assert writer.prepare_spares(lambda: False) == 0  # nothing left to do: no flush
    assert IDLE_FLUSHED not in hooks.points


def test_idle_work_is_flushed_in_slices_so_an_event_finds_little_to_flush(
    tmp_path: Path,
) -> None:
    """Idle work an event interrupts skips its final flush, and the refresh's flush before
    its swap wrote out all of it (a whole idle gap of spares and purged pool entries). So it
    is also flushed every ``idle_flush_every`` seconds of it: interrupted after some spares,
    what they dirtied was flushed already."""
    hooks = Recorder()
    writer = written_chain(tmp_path, 0, hooks, lean=True)[4]
    writer.idle_flush_every = 0.0  # a flush after every step of idle work
    hooks.points.clear()
    calls = iter(range(3))  # some spares made, then "an event arrived"
    assert writer.prepare_spares(lambda: next(calls, 9) > 1) > 0
    assert IDLE_SLICE_FLUSHED in hooks.points
    assert IDLE_FLUSHED not in hooks.points  # (stopped: not the end of the idle work)
    writer.idle_flush_every = None  # only at the end, as before
    hooks.points.clear()
    calls = iter(range(3))
    assert writer.prepare_spares(lambda: next(calls, 9) > 1) > 0
    assert IDLE_SLICE_FLUSHED not in hooks.points


def test_idle_time_makes_threshold_spares_before_it_purges(tmp_path: Path) -> None:
    """Spares of the folders a delta write patched are worth something only within the grace
    of the generation it replaced; the purge of unused pool entries can wait. So idle time
    within that grace makes the threshold folders' spares first: a purge of ~500,000 links
    at 20,000 photos took the whole grace, and the next refresh renamed every renumbered
    entry twice (a retired ancestor two patches back instead of a spare)."""
    links, output, clock, writer, tree, _, _ = _thirty_of_forty(tmp_path)
    photos = iter(links[30:])
    for _ in range(3):
        clock.now += 1
        writer.prepare_spares(lambda: False)  # spares: the next write leaves ancestors unused
        clock.now += 20
        new = _with_unclustered(tree, next(photos))
        writer.write_delta(delta_between(tree, new))
        tree = new
    pool = area_path(output) / "pool"
    before = set(os.listdir(pool))
    assert writer._purge_later  # (private: what the idle purge would delete)
    clock.now += 1  # within the grace of the generation the last write replaced
    calls = iter(range(2))  # one step of idle work, then "an event arrived"
    assert writer.prepare_spares(lambda: next(calls, 1) > 0) > 0
    assert before <= set(os.listdir(pool))  # nothing purged yet
    (made,) = set(os.listdir(pool)) - before
    assert made.split("~")[1] == "t"


def _apply_step(folder: dict[str, str], step: tuple) -> None:  # type: ignore[type-arg]
    """What the writer's steps do to a folder's entries (name -> target)."""
    gone, new, moved = step
    for name in gone:
        del folder[name]
    taken = {new_name: folder.pop(old_name) for new_name, old_name in moved.items()}
    assert not taken.keys() & folder.keys()
    folder.update(taken)
    for name, target in new.items():
        assert name not in folder
        folder[name] = target


def test_a_packed_lineage_step_is_the_step_again() -> None:
    """The writer keeps its patches' steps packed in one bytes object each (memory): unpacked,
    each is the same names, links and renames in the same order, whatever the names hold
    (non-UTF-8 bytes as surrogates, empty parts, separators of other formats)."""
    rng = random.Random(11)
    alphabet = ["a", "0", "_", ",", " ", "é", "写", "\udcff", "\udc80", "../", "\n"]

    def name() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 9)))

    for _ in range(300):
        step = (
            tuple(name() for _ in range(rng.randrange(0, 4))),
            {name(): "../" + name() for _ in range(rng.randrange(0, 4))},
            {name(): name() for _ in range(rng.randrange(0, 4))},
        )
        packed = pack_step(step)
        assert isinstance(packed, bytes)
        again = unpack_step(packed)
        assert again == step
        assert [list(part) for part in again] == [list(part) for part in step]  # order too


def test_composed_steps_do_what_the_steps_do_one_after_the_other() -> None:
    """A folder brought forward through several patches is patched once: the composed step
    (entries renumbered at each patch renamed once) leaves exactly the same entries, and
    never renames an entry more than once."""
    rng = random.Random(5)
    for _ in range(400):
        start = {f"{i:03d}_x": f"t{i}" for i in range(rng.randrange(0, 12))}
        folder, steps, fresh = dict(start), [], 0
        for _ in range(rng.randrange(1, 5)):
            names = sorted(folder)
            gone = rng.sample(names, rng.randrange(0, len(names) + 1) // 2)
            rest = [n for n in names if n not in gone]
            movers = rng.sample(rest, rng.randrange(0, len(rest) + 1))
            # destinations: the movers' own names shuffled, freed names, or new ones
            pool = movers + gone + [f"n{fresh + k}" for k in range(len(movers))]
            fresh += len(movers)
            targets = rng.sample(pool, len(movers))
            moved = {dst: src for src, dst in zip(movers, targets, strict=True) if src != dst}
            taken = (set(rest) - set(moved.values())) | set(moved)
            new = {}
            for _ in range(rng.randrange(0, 3)):
                fresh += 1
                name = rng.choice([*gone, f"a{fresh}"])
                if name not in taken:
                    new[name] = f"added{fresh}"
                    taken.add(name)
            step = (tuple(gone), new, moved)
            _apply_step(folder, step)
            steps.append(step)
        composed = compose_steps(steps)
        once = dict(start)
        _apply_step(once, composed)
        assert once == folder
        assert len(composed[2]) <= len(start)


def test_entry_hashes_are_the_fsencode_formula_for_any_name() -> None:
    """Leaf and threshold digests name folders on disk: the entry hash, computed with one
    ``str.encode`` instead of two ``os.fsencode`` calls, is byte for byte the defined one --
    for undecodable bytes (surrogate escapes), non-ASCII and plain names alike."""
    import hashlib

    from imgclusterd.output.plan import LeafSum, add_links

    def defined(name: str, target: str) -> int:  # the digest's definition, as first written
        data = os.fsencode(name) + b"\0" + os.fsencode(target)
        return int.from_bytes(hashlib.blake2b(data, digest_size=16).digest(), "big")

    links = {
        "IMG_0001_00ff00ff00ff00ff.jpg": "/photos/IMG_0001.jpg",
        "caf\u00e9_0123456789abcdef.jpg": "/photos/caf\u00e9 \u65e5\u672c.jpg",
        "bad\udcff\udc80_0123456789abcdef.jpg": "/photos/bad\udcff\udc80.jpg",
        "001_5": "../" + "a" * 32,
        "unclustered_0": "/\udce9",
    }
    total = sum(defined(name, target) for name, target in links.items()) % 2**128
    assert leaf_digest(links) == LeafSum(len(links), total)
    assert leaf_digest(links).digest == LeafSum(len(links), total).digest
    # taking entries away is the same sum with the other sign
    some = list(links.items())[:2]
    rest = (total - sum(defined(n, t) for n, t in some)) % 2**128
    assert add_links(leaf_digest(links), some, -1) == LeafSum(len(links) - 2, rest)
    # a name no file system can hold fails as it did (a lone surrogate that is no escape)
    with pytest.raises(UnicodeEncodeError):
        defined("x\ud800", "/t")
    with pytest.raises(UnicodeEncodeError):
        leaf_digest({"x\ud800": "/t"})


def test_a_single_step_composes_to_what_the_general_case_gives() -> None:
    """compose_steps returns a single step without following its entries one by one: the
    same entries, in the same order, as the general case (made to run by an empty second
    step), for steps that rename, unlink, add, and reuse names in every way."""
    rng = random.Random(11)
    for _ in range(600):
        names = [f"{i:03d}_x" for i in range(rng.randrange(0, 10))]
        gone = rng.sample(names, rng.randrange(0, len(names) + 1) // 2)
        # sources may repeat or be unlinked too (the general case then raises)
        sources = rng.sample(names, rng.randrange(0, len(names) + 1))
        if sources and rng.random() < 0.2:
            sources.append(rng.choice(names))
        moved = {f"{rng.randrange(0, 14):03d}_x": src for src in sources}
        new = {f"{rng.randrange(0, 14):03d}_x": f"t{k}" for k in range(rng.randrange(0, 3))}
        step = (tuple(gone), new, moved)
        try:
            general = compose_steps([step, ((), {}, {})])
        except FileNotFoundError:
            with pytest.raises(FileNotFoundError):
                compose_steps([step])
            continue
        single = compose_steps([step])
        assert [list(part) for part in single] == [list(part) for part in general]
        assert [list(dict(p).values()) for p in single[1:]] == [
            list(dict(p).values()) for p in general[1:]
        ]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.integers(0, 40), st.integers(-2, 5), max_size=12), max_size=12
    ),
    st.lists(st.integers(0, 40), max_size=30),
)
def test_reference_counts_follow_every_update_as_a_dict_would(
    updates: list[dict[int, int]], first: list[int]
) -> None:
    """The writer's compact reference counts (sorted digest arrays) against a plain dict:
    after each update every digest's count is the same, forgotten ones read as 0."""

    def digest(i: int) -> str:
        return f"{i * 2654435761 % 2**32:08x}" * 4  # 32 hex digits, not in number order

    refs = RefCounts(digest(i) for i in first)
    model: dict[str, int] = {}
    for i in first:
        model[digest(i)] = model.get(digest(i), 0) + 1
    for update in updates:
        counts = {digest(i): n for i, n in update.items()}
        refs.set_counts(counts)
        for key, n in counts.items():
            if n > 0:
                model[key] = n
            else:
                model.pop(key, None)
        assert len(refs) == len(model)
        every = [digest(i) for i in range(41)]
        assert refs.counts(every) == [model.get(key, 0) for key in every]
    refs.clear()
    assert len(refs) == 0 and refs.counts([digest(0)]) == [0]


def test_the_lineage_keeps_only_patches_a_later_patch_can_reach(tmp_path: Path) -> None:
    """The writer remembers each patch's steps so that a retired ancestor in ``pool/`` can be
    brought forward; it forgets those no later patch can follow (folders gone from the tree,
    ancestors behind one already in ``pool/``), so that many writes do not pile up steps
    (100,000 photos: ~100,000 renamed entries per write), and still patches without
    copying."""
    links, output, clock, writer, tree, _, _ = _thirty_of_forty(tmp_path)
    sizes = []
    for i, photo in enumerate(links[30:]):
        clock.now += 20  # past the grace: the generation before is retired into pool/
        writer.prepare_spares(lambda: False)
        new = (_with_unclustered if i % 2 else _with_clustered)(tree, photo)
        report = writer.write_delta(delta_between(tree, new))
        tree = new
        assert read_tree(str(output)) == expected(tree)
        sizes.append(len(writer._lineage))  # (private: the remembered patches)
    assert report.links_copied == 0
    folders = sum(len(f.clusters) + 1 for sweep in tree.values() for f in sweep)
    assert max(sizes[4:]) <= max(sizes[:4]), sizes  # bounded, not one write's worth more each
    assert sizes[-1] <= 2 * folders, (sizes, folders)


def test_a_compacted_model_patches_as_the_full_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's model keeps each algorithm's distinct leaves in a table that deltas only
    append to, and compacts it once it doubled: the writes after a compaction give the same
    folders as before (the delta plans read sizes, leaves and their digests from it)."""
    from imgclusterd.output import plan

    monkeypatch.setattr(plan, "_COMPACT_MIN", 0)  # compacted as soon as a table doubles
    links, output, clock, writer, tree, _, _ = _thirty_of_forty(tmp_path)
    model = writer._model  # (private: the model the delta plans start from)
    assert model is not None
    tables = {algo: sweep[0].table for algo, sweep in model.algorithms.items()}
    for i, photo in enumerate(links[30:]):
        clock.now += 20
        writer.prepare_spares(lambda: False)
        new = (_with_unclustered if i % 3 == 2 else _with_clustered)(tree, photo)
        writer.write_delta(delta_between(tree, new))
        tree = new
        assert read_tree(str(output)) == expected(tree)
    model = writer._model
    assert model is not None
    compacted = [algo for algo, sweep in model.algorithms.items()
                 if sweep[0].table is not tables[algo]]  # fmt: skip
    assert compacted, "no table was compacted: the test did not test it"
    for sweep in model.algorithms.values():
        assert len({id(m.table) for m in sweep}) == 1  # one table per algorithm
        used = np.unique(np.concatenate([m.leaves for m in sweep]))
        assert sweep[0].table.n <= 2 * len(used) + 16  # garbage rows do not pile up


@pytest.mark.parametrize("in_idle", [False, True], ids=["scan", "daemon"])
def test_a_whole_tree_write_leaves_the_old_pool_to_idle_time_in_the_daemon(
    tmp_path: Path, in_idle: bool
) -> None:
    """The first write after a start finds the last run's pool (spares, retired folders).
    A one-shot scan purges it before it returns; the daemon (``purge_in_idle``) swaps the
    new generation in first and purges in idle time (at 100,000 photos the purge held the
    first refresh up by up to 686 s)."""
    rng, links, output, clock, writer, first = written_chain(tmp_path, 3)
    tree = list(delta_steps(writer, first, links, rng, clock, 3))[-1]
    writer.prepare_spares(lambda: False)  # spares of what the last write changed
    pool = area_path(output) / "pool"
    before = set(os.listdir(pool))
    assert before, "nothing pooled: the test would not test anything"
    restarted = OutputWriter(output, grace_seconds=0.0, clock=clock, recycle_min=4)
    restarted.purge_in_idle = in_idle
    clock.now += 1
    tree = mutate(tree, links, rng)
    restarted.write(tree)
    left = set(os.listdir(pool)) & before
    if not in_idle:
        assert not left
        return
    assert left  # not purged by the write
    assert restarted.prepare_spares(lambda: True) == 0  # an event waiting: nothing done
    assert set(os.listdir(pool)) & before == left
    restarted.prepare_spares(lambda: False)
    # purged, but for spares of folders the new tree still holds (kept for the write that
    # changes them, see test_a_spare_of_a_live_folder_waits_for_the_write_that_changes_it)
    live = set(plan_tree(tree).objects)
    kept = set(os.listdir(pool)) & before
    assert kept < left
    assert all(entry[:32] in live for entry in kept)
    assert_collected(output)


def test_patches_staged_in_two_threads_give_the_same_trees(tmp_path: Path) -> None:
    """Delta writes whose patches are staged by two threads (``stage_parallel_min=0``: every
    write with two patches or more splits them) write exactly the tree, keep exactly what
    the generations reach, and name each new photo link's shared inode once although both
    threads may place it at the same moment (``LinkStore._create``)."""
    links = make_images(tmp_path / "images", 40)
    output = tmp_path / "out"
    clock = Clock()
    writer = OutputWriter(output, grace_seconds=0, clock=clock, recycle_min=1,
                          stage_parallel_min=0)  # fmt: skip
    tree = chain_tree(links[:30])
    writer.write(tree)
    rng = random.Random(5)
    threaded = 0
    for k in range(20):
        new = mutate(tree, links, rng)
        clock.now += 1
        report = writer.write_delta(delta_between(tree, new))
        tree = new
        threaded += report.patches_threaded
        assert report.planned == "delta"
        assert read_tree(str(output)) == expected(tree)
        assert_collected(output)
        if k % 3 == 0:
            writer.prepare_spares(lambda: False)
    assert threaded > 0  # the second thread did stage patches
    assert not [t for t in threading.enumerate() if t.name.startswith("imgclusterd-stage")]


@pytest.mark.parametrize("failing", ["this thread", "other thread"])
def test_a_patch_failing_to_stage_fails_the_write_and_leaves_no_thread(
    tmp_path: Path, failing: str
) -> None:
    """An error while staging a patch, in either thread, is raised (the write fails, the
    old generation stays); the other thread is gone by then and has finished its jobs."""
    from imgclusterd.output.area import symlink_at
    from imgclusterd.output.staging import PatchJob, split, stage_patches

    sizes = [50, 50, 50, 60] if failing == "this thread" else [60, 50, 50, 55]
    jobs = []
    for i, size in enumerate(sizes):
        folder = tmp_path / f"f{i}"
        folder.mkdir()
        for n in range(size):
            os.symlink(f"../t{n}", folder / f"{n + 1:03d}_2")
        moved = {f"{n + 2:03d}_2": f"{n + 1:03d}_2" for n in range(size)}  # all renumbered
        if i == 3:
            moved["999_2"] = "nothing_here"  # not in the folder: staging it fails
        jobs.append(PatchJob(f"d{i}", folder, True, ((), {}, moved), tmp_path / "no-base",
                             ((), {}, {}), symlink_at))  # fmt: skip
    mine, other = split(jobs, parallel_min=0)
    assert (jobs[3] in mine) == (failing == "this thread")
    with pytest.raises(FileNotFoundError):  # (the fallback has no base to copy either)
        stage_patches(jobs, parallel_min=0)
    assert not [t for t in threading.enumerate() if t.name.startswith("imgclusterd-stage")]
    healthy = other if failing == "this thread" else mine  # the group without the failure
    for job in healthy:  # staged in full (every entry renumbered) before the error was raised
        assert sorted(os.listdir(job.staging))[0] == "002_2"
