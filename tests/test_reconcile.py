"""The walk and the reconcile plan, on real folders."""

from __future__ import annotations

import os
from pathlib import Path

from imgclusterd.reconcile import plan, walk
from imgclusterd.store import FileRecord

EXTS = (".jpg", ".png")


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_walk_is_recursive_and_skips_temporary_and_other_files(tmp_path: Path) -> None:
    for name in ["a.jpg", "B.PNG", "sub/deep/c.jpg", "notes.txt", ".hidden.jpg",
                 "d.jpg.part", "e.tmp", ".thumbs/f.jpg", "g.jpg.crdownload"]:
        _touch(tmp_path / name)
    listing = walk(tmp_path, EXTS)
    assert sorted(listing.files) == ["B.PNG", "a.jpg", "sub/deep/c.jpg"]


def test_symlinks_not_followed_by_default_and_loops_walked_once(tmp_path: Path) -> None:
    root = tmp_path / "images"
    outside = _touch(tmp_path / "outside/o.jpg")
    _touch(root / "in/a.jpg")
    os.symlink(outside, root / "link.jpg")
    os.symlink(root / "in", root / "dirlink")
    os.symlink(root, root / "in/loop")
    listing = walk(root, EXTS)
    assert sorted(listing.files) == ["in/a.jpg"]
    assert {p for p, _ in listing.skipped} == {"link.jpg", "dirlink", "in/loop"}
    followed = walk(root, EXTS, follow_symlinks=True)
    assert "link.jpg" in followed.files and "in/a.jpg" in followed.files
    assert len(followed.files) == 2  # the loop and the second link to "in" add nothing


def test_excluded_folders_are_not_entered(tmp_path: Path) -> None:
    _touch(tmp_path / "a.jpg")
    _touch(tmp_path / "out/b.jpg")
    assert sorted(walk(tmp_path, EXTS, exclude=[tmp_path / "out"]).files) == ["a.jpg"]


def _record(file_id: int, path: str, facts: tuple[int, int, int, int], status: str = "hashed"
            ) -> FileRecord:
    return FileRecord(file_id, path, *facts, b"d", status, None, "exact")


def test_plan_decides_each_case() -> None:
    known = {
        "same.jpg": _record(1, "same.jpg", (1, 1, 1, 1)),
        "changed.jpg": _record(2, "changed.jpg", (1, 1, 2, 1)),
        "old_name.jpg": _record(3, "old_name.jpg", (5, 5, 3, 1)),
        "gone.jpg": _record(4, "gone.jpg", (1, 1, 4, 1)),
        "bad.jpg": _record(5, "bad.jpg", (1, 1, 5, 1), "unreadable"),
        "incomplete.jpg": _record(6, "incomplete.jpg", (1, 1, 6, 1)),
    }
    disk = {
        "same.jpg": (1, 1, 1, 1),
        "changed.jpg": (2, 9, 2, 1),
        "new_name.jpg": (5, 5, 3, 1),
        "bad.jpg": (1, 1, 5, 1),
        "incomplete.jpg": (1, 1, 6, 1),
        "new.jpg": (7, 7, 7, 1),
    }
    result = plan(disk, known, complete={1, 2, 3, 4}, decode="exact")
    assert result.unchanged == 1 and result.unreadable == 1
    assert result.moved == [("old_name.jpg", "new_name.jpg")]
    assert result.removed == ["gone.jpg"]
    assert result.to_hash == ["changed.jpg", "incomplete.jpg", "new.jpg"]
    # switching decode mode re-hashes everything hashed
    assert len(plan(disk, known, complete={1, 2, 3, 4}, decode="fast").to_hash) == 4
