"""Refreshes after the first patch the output from the cluster delta; the tree they leave must
be exactly a clean scan's, whatever changed (added, deleted, renamed, copied under the same
name, rewritten with other content, several at once), whichever way the changed folders were
built (spare, retired ancestor, copy)."""

from __future__ import annotations

import gc
import os
import shutil
from pathlib import Path

import pytest

from imgclusterd.config import load_config
from imgclusterd.output import ThresholdFolder, WriteHooks, set_default_hooks
from imgclusterd.output.hooks import ALGORITHM_WRITTEN, OBJECT_STAGED
from imgclusterd.output.plan import plans_alive
from imgclusterd.pipeline import Pipeline

from .conftest import Workspace, wait_for
from .test_bad_input import encode, put, smooth, write_config


def tree(output: Path) -> dict[tuple[str, ...], list[tuple[str, str]]]:
    """Every folder of the current generation and its links (name, target)."""
    root = os.path.realpath(output)
    found = {}
    for algo in sorted(os.listdir(root)):
        if not os.path.isdir(os.path.join(root, algo)):
            continue  # the explorer page's files
        for thr in sorted(os.listdir(os.path.join(root, algo))):
            for leaf in sorted(os.listdir(os.path.join(root, algo, thr))):
                folder = os.path.join(root, algo, thr, leaf)
                found[(algo, thr, leaf)] = sorted(
                    (name, os.readlink(os.path.join(folder, name))) for name in os.listdir(folder)
                )
    return found


def clean_scan(ws: Workspace, name: str) -> dict[tuple[str, ...], list[tuple[str, str]]]:
    root = ws.root / name
    root.mkdir()
    config = write_config(root / "cfg.toml", ws.images, root / "output", root / "state")
    with Pipeline(load_config(config).config) as pipeline:
        pipeline.refresh()
    return tree(root / "output")


def photo(folder: Path, name: str, seed: int) -> Path:
    return put(folder, name, encode(smooth(seed), "JPEG", quality=90), mtime=None)


def test_patched_refreshes_equal_a_clean_scan(workspace: Workspace) -> None:
    ws = workspace
    # grace 0: generations retire at once, so later refreshes recycle retired ancestors
    config = load_config(write_config(ws.root / "cfg.toml", ws.images, ws.output, ws.state,
                                      generation_grace=0.0)).config  # fmt: skip
    steps = [
        lambda: photo(ws.images / "new", "a.jpg", 1),
        lambda: photo(ws.images / "new", "b.jpg", 2),
        # an exact copy under the same name elsewhere: the folder numbers the names (_2)
        lambda: shutil.copy(ws.images / "new" / "a.jpg", ws.images / "copies" / "a.jpg"),
        lambda: (ws.images / "new" / "b.jpg").unlink(),
        lambda: os.rename(ws.images / "new" / "a.jpg", ws.images / "new" / "z-renamed.jpg"),
        # same path, other content: its hashes change
        lambda: photo(ws.images / "copies", "a.jpg", 3),
        lambda: [photo(ws.images / "burst", f"{n}.jpg", 10 + n) for n in range(5)],
        lambda: shutil.rmtree(ws.images / "burst"),
    ]
    (ws.images / "copies").mkdir()
    with Pipeline(config) as pipeline:
        first = pipeline.refresh()
        assert first.output is not None and first.output.planned == "tree"
        for number, step in enumerate(steps):
            step()
            if number % 3 == 1:  # sometimes the idle-time spares exist, sometimes not
                pipeline.writer.prepare_spares(lambda: False)
            report = pipeline.refresh()
            assert report.output is not None
            assert report.output.planned == "delta", f"step {number} planned the whole tree"
            # unchanged folders are neither planned nor counted: far fewer than the tree's
            assert report.output.objects_written < first.output.objects_written / 2
            if number == 3:
                assert tree(ws.output) == clean_scan(ws, "clean-mid")
        patched = tree(ws.output)
    ws.snapshot()
    assert patched == clean_scan(ws, "clean-end")


def test_a_new_process_plans_the_whole_tree_then_patches(workspace: Workspace) -> None:
    """The model of the tree lives in the process that wrote it: a new one (a restart) plans
    the whole tree once, then patches again."""
    ws = workspace
    config = load_config(write_config(ws.root / "cfg.toml", ws.images, ws.output,
                                      ws.state)).config  # fmt: skip
    with Pipeline(config) as pipeline:
        pipeline.refresh()
    photo(ws.images, "later.jpg", 7)
    with Pipeline(config) as pipeline:
        assert not pipeline.writer.can_patch()
        report = pipeline.refresh()
        assert report.output is not None and report.output.planned == "tree"
        photo(ws.images, "later2.jpg", 8)
        report = pipeline.refresh()
        assert report.output is not None and report.output.planned == "delta"
        patched = tree(ws.output)
    ws.snapshot()
    assert patched == clean_scan(ws, "clean")


def test_status_warns_when_the_tree_is_too_big_to_refresh_cheaply(tmp_path: Path) -> None:
    from imgclusterd.status import TREE_LINKS_CHEAP, tree_warning

    config = load_config(write_config(tmp_path / "cfg.toml", tmp_path / "images",
                                      tmp_path / "output", tmp_path / "state")).config  # fmt: skip
    folders = sum(len(a.thresholds) for a in config.algorithm_set)
    assert tree_warning(config, TREE_LINKS_CHEAP // folders) is None
    warning = tree_warning(config, 10 * TREE_LINKS_CHEAP // folders)
    assert warning is not None
    assert f"{10 * TREE_LINKS_CHEAP // folders:,} photos x {folders} threshold folders" in warning
    assert 'output_mode = "mount"' in warning  # the way out that keeps the layout
    mounted = config.model_copy(update={"output_mode": "mount"})
    assert tree_warning(mounted, 10 * TREE_LINKS_CHEAP // folders) is None  # no tree written


def leaves_of(output: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    """(algo, threshold folder, leaf folder) -> its links (name -> target), through OUTPUT."""
    return {key: dict(links) for key, links in tree(output).items()}


def test_a_delta_refresh_checks_only_the_folders_it_builds_on(workspace: Workspace) -> None:
    """A refresh after a few events does not stat the whole tree for damage: a damaged folder
    the delta does not build on stays as it is until the next full refresh (start-up, rescan,
    SIGHUP) repairs it; a damaged folder it does build on is never copied forward -- the
    whole tree is written instead, which repairs it."""
    ws = workspace
    config = load_config(write_config(ws.root / "cfg.toml", ws.images, ws.output,
                                      ws.state)).config  # fmt: skip
    with Pipeline(config) as pipeline:
        pipeline.refresh()
        leaves = leaves_of(ws.output)
        photos = sorted({target for links in leaves.values() for target in links.values()})
        gone, later = photos[0], photos[1]
        # damage a cluster folder that holds neither photo: no delta below touches it
        cluster, victim = next(
            (key, min(links)) for key, links in sorted(leaves.items())
            if not key[2].startswith("unclustered") and gone not in links.values()
            and later not in links.values()
        )
        os.unlink(ws.output.joinpath(*cluster, victim))
        os.unlink(gone)
        report = pipeline.refresh(dirty=[gone])
        assert report.output is not None and report.output.planned == "delta"
        assert not os.path.lexists(ws.output.joinpath(*cluster, victim))  # not looked at
        # damage the unclustered folder the next delta patches (`later` leaves it)
        leaves = leaves_of(ws.output)
        base = next(key for key, links in sorted(leaves.items())
                    if key[2].startswith("unclustered") and later in links.values())
        other = min(name for name, target in leaves[base].items() if target != later)
        os.unlink(ws.output.joinpath(*base, other))
        moved = ws.root / "aside.jpg"
        os.rename(later, moved)
        report = pipeline.refresh(dirty=[later])
        assert report.output is not None and report.output.planned == "tree"  # refused
        os.rename(moved, later)
        report = pipeline.refresh()  # a full refresh: everything damaged is repaired
        assert os.path.lexists(ws.output.joinpath(*cluster, victim))
        patched = tree(ws.output)
    ws.snapshot()
    assert patched == clean_scan(ws, "clean-end")


def test_a_whole_tree_refresh_holds_one_algorithm_at_a_time(workspace: Workspace) -> None:
    """The pipeline hands the writer each algorithm's folders when it asks for them, so a
    whole-tree refresh never holds two algorithms' folders or plans (the tree of 14 was 3.3 GB
    at 100,000 photos). Counted at the writer's hook points, by the objects alive."""
    ws = workspace
    config = load_config(write_config(ws.root / "cfg.toml", ws.images, ws.output,
                                      ws.state)).config  # fmt: skip
    seen: list[tuple[str, int, int]] = []

    class Census(WriteHooks):
        def at(self, point: str) -> None:
            gc.collect()
            folders = sum(isinstance(o, ThresholdFolder) for o in gc.get_objects())
            seen.append((point, plans_alive(), folders))

    previous = set_default_hooks(Census())
    try:
        with Pipeline(config) as pipeline:
            report = pipeline.refresh()
            algorithms = len(pipeline.algorithms)
    finally:
        set_default_hooks(previous)
    assert report.output is not None and report.output.planned == "tree"
    assert algorithms > 1
    staged = [(plans, folders) for point, plans, folders in seen if point == OBJECT_STAGED]
    assert staged and {plans for plans, _ in staged} == {1}
    # an algorithm's folders are made for its plan and gone once it is planned (made all at
    # once, every algorithm's would be alive here)
    assert {folders for _, folders in staged} == {0}
    between = [(plans, folders) for point, plans, folders in seen if point == ALGORITHM_WRITTEN]
    assert between == [(0, 0)] * algorithms


def test_idle_pipeline_stops_its_hashing_workers_and_hashes_again_later(
    workspace: Workspace,
) -> None:
    """The hashing workers and their fork server count in the daemon's idle memory (~140 MB
    at 20,000 photos): once unused for a while they are stopped, and the next photo starts
    them again."""
    ws = workspace
    config = load_config(write_config(ws.root / "cfg.toml", ws.images, ws.output,
                                      ws.state)).config  # fmt: skip
    with Pipeline(config) as pipeline:
        pipeline.refresh()
        workers = pipeline.pool.worker_pids()
        assert workers
        assert not pipeline.release_idle_pool(3600.0)  # just used: kept
        assert pipeline.release_idle_pool(0.0)
        assert not pipeline.release_idle_pool(0.0)  # nothing left to stop
        wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in workers),
                 "hashing workers gone")
        photo(ws.images, "later.jpg", 9)
        report = pipeline.refresh()
        assert report.hashed == 1
        patched = tree(ws.output)
    ws.snapshot()
    assert patched == clean_scan(ws, "clean")


@pytest.mark.parametrize("error", [ValueError, KeyError])
def test_a_refused_cluster_delta_writes_the_whole_tree(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    error: type[Exception],
) -> None:
    """If the cluster stage cannot make a delta from what the output last received (it raises
    ValueError on a stale numbering, KeyError on a lookup in it: a bug), the refresh plans
    the whole tree instead of failing, and the result is a clean scan's. The fault is
    injected by replacing ``tree_patches`` (the bug it stands for cannot be provoked from
    outside)."""
    import imgclusterd.pipeline as pipeline_module

    ws = workspace
    config = load_config(write_config(ws.root / "cfg.toml", ws.images, ws.output,
                                      ws.state)).config  # fmt: skip

    def refuse(*args: object, **kwargs: object) -> None:
        raise error("phash_8: the numbering is stale")

    with Pipeline(config) as pipeline:
        pipeline.refresh()
        photo(ws.images, "later.jpg", 7)
        monkeypatch.setattr(pipeline_module, "tree_patches", refuse)
        with caplog.at_level("WARNING", logger="imgclusterd"):
            report = pipeline.refresh()
        assert report.output is not None and report.output.planned == "tree"
        assert "cluster delta refused" in caplog.text
        monkeypatch.undo()
        photo(ws.images, "later2.jpg", 8)
        report = pipeline.refresh()  # and the next refresh patches again
        assert report.output is not None and report.output.planned == "delta"
        result = tree(ws.output)
    ws.snapshot()
    assert result == clean_scan(ws, "clean")
