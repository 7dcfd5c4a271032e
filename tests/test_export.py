"""`imgclusterd export` and `imgclusterd similar`: real photos, real store, the real command in
a subprocess; the export is checked against the output tree the scan wrote."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imagehash
import pytest
from PIL import Image

from imgclusterd.thumbnails import THUMBNAIL_FOLDER, thumbnail_digests

from .conftest import DaemonProcess, Workspace, run_cli, wait_for

EX_USAGE, EX_NOINPUT, EX_IOERR = 64, 66, 74


def cli(ws: Workspace, *args: str) -> Any:
    return run_cli(*args, "--state-dir", str(ws.state), cwd=ws.root)


def export_json(ws: Workspace, *args: str) -> dict[str, Any]:
    result = cli(ws, "export", *args)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def tree(output: Path) -> dict[str, dict[str, list[tuple[str, frozenset[str]]]]]:
    """algorithm -> threshold folder -> [(cluster folder, {link targets})], clusters sorted."""
    result: dict[str, dict[str, list[tuple[str, frozenset[str]]]]] = {}
    for algo in sorted(p for p in output.iterdir() if p.is_dir()):
        result[algo.name] = {}
        for thr in sorted(algo.iterdir()):
            clusters = [
                (c.name, frozenset(os.readlink(link) for link in c.iterdir()))
                for c in sorted(thr.iterdir())
                if not c.name.startswith("unclustered_")
            ]
            result[algo.name][thr.name] = clusters
    return result


def exported_tree(data: dict[str, Any]) -> dict[str, dict[str, list[tuple[str, frozenset[str]]]]]:
    return {
        algo["name"]: {
            thr["folder"]: [
                (c["folder"], frozenset(m["path"] for m in c["members"])) for c in thr["clusters"]
            ]
            for thr in algo["thresholds"]
        }
        for algo in data["algorithms"]
    }


def store_facts(ws: Workspace) -> tuple[int, str]:
    db = sqlite3.connect(f"file:{ws.state / 'store.sqlite'}?mode=ro", uri=True)
    try:
        count = db.execute("SELECT count(*) FROM files").fetchone()[0]
        revision = db.execute("SELECT value FROM state WHERE key = 'revision'").fetchone()[0]
    finally:
        db.close()
    return count, revision


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory, sample_source: Path) -> Iterator[Workspace]:
    """One scanned sample folder shared by the tests that only read (a scan takes ~10 s)."""
    ws = Workspace(tmp_path_factory.mktemp("scanned"))
    ws.images.parent.mkdir(parents=True)
    shutil.copytree(sample_source, ws.images)
    ws.state.mkdir()
    ws.snapshot()
    result = ws.scan("-q")
    assert result.returncode == 0, result.stderr
    yield ws
    ws.assert_unchanged()


# -- export ------------------------------------------------------------------------------------


def test_export_equals_the_output_tree_at_every_algorithm_and_threshold(scanned):
    data = export_json(scanned)
    assert data["format"] == "imgclusterd-export" and data["version"] == 1
    assert data["photos"] == 44 and data["decode"] == "exact"
    assert data["images"] == str(scanned.images)
    assert [a["name"] for a in data["algorithms"]][:2] == ["phash_8", "avhash_8"]
    assert len(data["algorithms"]) == 14
    # Same threshold folders (names carry U), same cluster folders (numbers and sizes), same
    # members (the links' targets), for all 14 algorithms and every threshold of each sweep.
    assert exported_tree(data) == tree(scanned.output)
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in scanned.images.rglob("*.*")}
    for algo in data["algorithms"]:
        for thr in algo["thresholds"]:
            assert thr["unclustered"] + sum(c["size"] for c in thr["clusters"]) == 44
            for cluster in thr["clusters"]:
                assert cluster["size"] == len(cluster["members"])
                for member in cluster["members"]:
                    assert member["digest"] == digests[Path(member["path"])]
                    link = re.escape(f"_{member['hash']}")
                    assert len(member["hash"]) == (algo["bits"] + 3) // 4
                    assert re.search(link, "".join(os.listdir(
                        scanned.output / algo["name"] / thr["folder"] / cluster["folder"])))


def test_export_one_threshold_and_csv(scanned):
    data = export_json(scanned, "--algorithm", "phash_12", "--threshold", "10")
    (algo,) = data["algorithms"]
    (thr,) = algo["thresholds"]
    assert algo["name"] == "phash_12" and thr["threshold"] == 10
    assert exported_tree(data)["phash_12"][thr["folder"]] == tree(scanned.output)["phash_12"][
        thr["folder"]
    ]
    result = cli(scanned, "export", "--algorithm", "phash_12", "--threshold", "10",
                 "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == [
        "algorithm", "threshold", "cluster", "size", "path", "hash", "digest", "flat"
    ]
    expected = [
        ["phash_12", "10", str(c["number"]), str(c["size"]), m["path"], m["hash"], m["digest"],
         str(int(m["flat"]))]
        for c in thr["clusters"] for m in c["members"]
    ]
    assert rows[1:] == expected and expected


def test_threshold_without_algorithm_takes_the_sweeps_that_hold_it(scanned):
    data = export_json(scanned, "--threshold", "4")
    # Steps 1 (size 8) and 2 (size 12) hold 4; steps 3 and 5 (sizes 16, 20) do not.
    assert [a["name"] for a in data["algorithms"]] == [
        "phash_8", "avhash_8", "dhash_8", "whash_8", "phash_12", "avhash_12", "dhash_12"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--algorithm", "phash_9"], "unknown algorithm 'phash_9'; configured: phash_8, "),
        (["--algorithm", "phash_16", "--threshold", "4"],
         "threshold 4 is not in phash_16's sweep (phash_16: 0, 3, ..., 108)"),
        (["--threshold", "300"], "threshold 300 is not in any configured algorithm's sweep"),
        (["--decode", "fast"], "the store holds hashes made with decode = exact, not 'fast'"),
    ],
)
def test_export_errors_name_the_valid_values(scanned, args, message):
    result = cli(scanned, "export", *args)
    assert result.returncode == EX_USAGE
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_export_and_similar_before_any_scan(workspace):
    for args in (["export"], ["similar", str(workspace.images / "scene01.jpg")]):
        result = cli(workspace, *args)
        assert result.returncode == EX_IOERR
        assert "no store for" in result.stderr and "imgclusterd scan" in result.stderr
    assert not (workspace.state / "store.sqlite").exists()  # read-only: nothing created


def test_odd_file_names_survive_json_and_csv(tmp_path, sample_source):
    ws = Workspace(tmp_path)
    ws.images.mkdir(parents=True)
    ws.state.mkdir()
    odd = ['quote"and\'apos.jpg', "new\nline.jpg", "<script>alert(1)<\\script>.jpg"]
    source = sample_source / "scene01.jpg"
    for name in odd:
        shutil.copy(source, ws.images / name)
    raw = os.fsencode(ws.images) + b"/latin1-\xe9t\xe9.jpg"
    shutil.copy(source, raw)
    ws.snapshot()
    assert ws.scan("-q").returncode == 0
    data = export_json(ws, "--algorithm", "phash_8", "--threshold", "0")
    (cluster,) = data["algorithms"][0]["thresholds"][0]["clusters"]
    paths = {os.fsencode(m["path"]) for m in cluster["members"]}
    assert paths == {os.fsencode(ws.images / n) for n in odd} | {raw}
    result = subprocess.run(
        [sys.executable, "-m", "imgclusterd", "export", "--state-dir", str(ws.state),
         "--format", "csv", "--algorithm", "phash_8", "--threshold", "0"],
        cwd=ws.root, capture_output=True, check=True,
    )  # bytes: the CSV carries a non-UTF-8 name as its raw bytes
    rows = list(csv.reader(io.StringIO(result.stdout.decode(errors="surrogateescape"))))
    assert {os.fsencode(r[4]) for r in rows[1:]} == paths
    ws.assert_unchanged()


def test_a_single_photo_has_no_clusters(tmp_path, sample_source):
    ws = Workspace(tmp_path)
    ws.images.mkdir(parents=True)
    ws.state.mkdir()
    shutil.copy(sample_source / "scene01.jpg", ws.images)
    assert ws.scan("-q").returncode == 0
    data = export_json(ws, "--algorithm", "dhash_8")
    thresholds = data["algorithms"][0]["thresholds"]
    assert [t["threshold"] for t in thresholds] == list(range(20))
    assert all(t["clusters"] == [] and t["unclustered"] == 1 for t in thresholds)


def test_flat_images_are_marked(tmp_path, sample_source):
    ws = Workspace(tmp_path)
    ws.images.mkdir(parents=True)
    ws.state.mkdir()
    shutil.copy(sample_source / "scene01.jpg", ws.images)
    shutil.copy(sample_source / "scene01_copy_q60.jpg", ws.images)
    Image.new("RGB", (640, 480), "white").save(ws.images / "blank_white.png")
    Image.new("RGB", (800, 600), (200, 30, 30)).save(ws.images / "all_red.jpg")
    ws.snapshot()
    assert ws.scan("-q").returncode == 0
    data = export_json(ws, "--algorithm", "phash_8", "--threshold", "0")
    flat = {Path(m["path"]).name: m["flat"]
            for c in data["algorithms"][0]["thresholds"][0]["clusters"] for m in c["members"]}
    assert flat == {"blank_white.png": True, "all_red.jpg": True,
                    "scene01.jpg": False, "scene01_copy_q60.jpg": False}
    result = run_cli("similar", str(ws.images / "all_red.jpg"), "--json", "--state-dir",
                     str(ws.state), cwd=ws.root)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["flat"] is True
    assert {Path(m["path"]).name for m in found["matches"] if m["flat"]} == {
        "blank_white.png", "all_red.jpg"
    }
    ws.assert_unchanged()


# -- similar -------------------------------------------------------------------------------------


def test_similar_for_a_photo_outside_the_folder(scanned, tmp_path):
    outside = tmp_path / "elsewhere" / "query.jpg"
    outside.parent.mkdir()
    with Image.open(scanned.images / "scene03.jpg") as original:
        original.resize((500, 375)).save(outside, quality=70)
    before = store_facts(scanned)
    result = cli(scanned, "similar", str(outside), "--json", "--limit", "0")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["algorithm"] == "phash_8" and data["max_distance"] == 19
    assert data["indexed"] == 44
    matches = data["matches"]
    assert [Path(m["path"]).name.startswith("scene03") for m in matches[:4]] == [True] * 4
    keys = [(m["distance"], m["path"]) for m in matches]
    assert keys == sorted(keys)  # nearest first, then by path
    # Distances are ImageHash's own, for the query and every listed photo.
    with Image.open(outside) as image:
        query = imagehash.phash(image)
    assert data["hash"] == str(query)
    for m in matches:
        with Image.open(m["path"]) as image:
            assert m["distance"] == query - imagehash.phash(image)
        assert not m["identical"]
    assert all(m["distance"] <= 19 for m in matches)
    # Nothing stored: no row, no revision bump, no thumbnail for the query's content.
    assert store_facts(scanned) == before
    digest = hashlib.sha256(outside.read_bytes()).digest()
    assert digest not in thumbnail_digests(scanned.state / THUMBNAIL_FOLDER)
    assert data["digest"] == digest.hex()


def test_similar_text_limits_and_identical_file(scanned):
    photo = scanned.images / "scene05.jpg"
    result = cli(scanned, "similar", str(photo), "--algorithm", "dhash_16",
                 "--max-distance", "0")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{photo}: dhash_16 ")
    assert f"   0  {photo}  (identical file)" in lines
    assert all(line.startswith("   0  ") for line in lines[1:])
    limited = cli(scanned, "similar", str(photo), "--limit", "2", "--json")
    assert len(json.loads(limited.stdout)["matches"]) == 2


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.jpg", "no such file"),
        (lambda d: (d / "text.jpg", (d / "text.jpg").write_text("not a photo"))[0],
         "cannot hash it: not an image"),
        (lambda d: (d / "empty.jpg", (d / "empty.jpg").write_bytes(b""))[0],
         "cannot hash it: empty file"),
        (lambda d: d, "cannot hash it: not a regular file"),
    ],
)
def test_similar_unreadable_photo_is_one_line(scanned, tmp_path, make, message):
    photo = make(tmp_path)
    result = cli(scanned, "similar", str(photo))
    assert result.returncode == EX_NOINPUT
    assert result.stderr == f"imgclusterd: error: {photo}: {message}\n"


def test_similar_unknown_algorithm(scanned):
    result = cli(scanned, "similar", str(scanned.images / "scene01.jpg"), "--algorithm", "x_8")
    assert result.returncode == EX_USAGE and "configured: phash_8, avhash_8" in result.stderr


def test_export_and_similar_while_the_daemon_runs(workspace):
    scanned = workspace
    assert scanned.scan("-q").returncode == 0
    expected = export_json(scanned, "--algorithm", "avhash_8")
    config = scanned.root / "config.toml"
    config.write_text(f'images = "{scanned.images}"\noutput = "{scanned.output}"\n'
                      f'state_dir = "{scanned.state}"\nworkers = 1\ndebounce = 0.2\n')
    daemon = DaemonProcess(scanned, config).start()
    try:
        wait_for(lambda: daemon.status()["phase"] == "idle", "the daemon to be idle")
        during = export_json(scanned, "--algorithm", "avhash_8")
        result = cli(scanned, "similar", str(scanned.images / "scene02.jpg"), "--json")
        daemon.assert_alive()
    finally:
        if daemon.proc is not None:
            daemon.proc.terminate()
            daemon.proc.wait(timeout=60)
    assert daemon.proc.returncode == 0, daemon.log()
    assert during["algorithms"] == expected["algorithms"]
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["matches"][0]["identical"]
