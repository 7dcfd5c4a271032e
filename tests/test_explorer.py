"""The explorer page, in a real headless Chromium (Debian's ``chromium``), opened via ``file://``.

Each case scans a real folder with the real CLI, opens the generation's ``index.html`` straight
from disk and compares what the page shows with the tree written beside it: the number, sizes,
numbering and members of the clusters at several thresholds, the links to the originals, the
slider, the deep link, the filter, the algorithm switch. Every page load must leave the console
free of errors. Photos' names that try to be markup or script must stay text.

The browser is driven with Playwright's Python package against the system browser
(``executable_path``): no browser is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import imagehash
import numpy as np
import pytest
from PIL import Image

from imgclusterd.algorithms import Algorithm
from imgclusterd.cluster import ClusterIndex
from imgclusterd.explorer import DATA_FILE, ExplorerAlgorithm, ExplorerPhoto, page_files
from imgclusterd.thumbnails import THUMBNAIL_FOLDER, thumbnail_path

from .conftest import Workspace, run_cli

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
# Quiet, reproducible, offline: no first-run UI, no background requests, no QUIC, no GPU.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
DOCS = Path(__file__).resolve().parent.parent / "docs"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (.ci/run installs it)"
)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Chromium for the module, with a fresh profile folder of its own."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    with playwright.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            os.fspath(profile),
            executable_path=os.fspath(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1200, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


class Browser:
    """One tab, with every console error, page error and dialog recorded."""

    def __init__(self, context: Any) -> None:
        self.page = context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        self.page.on("dialog", self._dialog)

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"console {message.type}: {message.text}")

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, index: Path, algorithm: str | None = None, threshold: int | None = None
             ) -> None:
        url = index.as_uri() + (f"#{algorithm}/{threshold}" if algorithm else "")
        self.page.goto("about:blank")  # a fresh document, not a same-document hash change
        self.page.goto(url)
        self.page.wait_for_selector("html[data-ready=true]")
        if algorithm is not None:
            self.wait_shown(algorithm, threshold)

    def wait_shown(self, algorithm: str, threshold: int | None) -> None:
        self.page.wait_for_function(
            "([a, t]) => document.getElementById('algorithm').value === a &&"
            " document.getElementById('threshold-value').textContent === String(t) &&"
            " document.getElementById('clusters').dataset.complete === 'true'",
            arg=[algorithm, threshold],
        )

    def clusters(self) -> list[tuple[str, list[bytes]]]:
        """(heading, member paths) of every cluster shown, in page order. Rows fill in as they
        come near the view, so each one is scrolled to first, as a person would."""
        page = self.page
        page.evaluate(
            """async () => {
                const frame = () => new Promise(r => requestAnimationFrame(() =>
                    requestAnimationFrame(r)));
                for (const row of document.querySelectorAll('.cluster, .unclustered')) {
                    row.scrollIntoView();
                    await frame();
                }
                window.scrollTo(0, 0);
            }"""
        )
        page.wait_for_function(
            "[...document.querySelectorAll('[data-cluster-size]')].every(e =>"
            " e.querySelectorAll('.thumb').length ==="
            " Math.min(Number(e.dataset.clusterSize), 60))"
        )
        rows = page.eval_on_selector_all(
            "[data-cluster-size]",
            "els => els.map(e => [e.querySelector('h2').textContent,"
            " [...e.querySelectorAll('.thumb')].map(a => a.href)])",
        )
        return [(heading, [href_path(h) for h in hrefs]) for heading, hrefs in rows]

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def browser(browser_context: Any) -> Iterator[Browser]:
    tab = Browser(browser_context)
    yield tab
    tab.close()
    assert tab.errors == [], "the page logged errors"
    assert tab.dialogs == [], "something opened a dialog (script injected?)"


def href_path(href: str) -> bytes:
    parts = urlsplit(href)
    assert parts.scheme == "file", href
    return unquote_to_bytes(parts.path)


def tree(output: Path, algorithm: str, threshold: int) -> tuple[list[tuple[str, list[bytes]]],
                                                                 list[bytes]]:
    """The tree's clusters at one threshold: (folder name, sorted targets) by number, and the
    unclustered targets."""
    [folder] = [p for p in (output / algorithm).iterdir()
                if p.name.startswith(f"thr_{threshold:03d}_")]
    clusters, unclustered = [], []
    for entry in sorted(folder.iterdir()):
        targets = sorted(os.fsencode(os.readlink(link)) for link in entry.iterdir())
        if entry.name.startswith("unclustered_"):
            unclustered = targets
        else:
            clusters.append((entry.name, targets))
    return clusters, unclustered


def assert_matches_tree(browser: Browser, output: Path, algorithm: str, threshold: int) -> int:
    expected, _ = tree(output, algorithm, threshold)
    shown = browser.clusters()
    assert len(shown) == len(expected), f"{algorithm} at {threshold}"
    for (heading, members), (folder, targets) in zip(shown, expected, strict=True):
        number, size = folder.split("_")
        assert heading == f"#{number} {size} photos"
        assert sorted(members) == targets  # every member, by the exact bytes of its path
    return len(expected)


def scan(root: Path, images: Path, *args: str) -> Path:
    result = run_cli("scan", "--images", str(images), "--output", str(root / "output"),
                     "--state-dir", str(root / "state"), *args, cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "output" / "index.html"


# --------------------------------------------------------------------------- the sample folder


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory, sample_source: Path) -> Iterator[Workspace]:
    """The sample folder scanned once for the module (thumbnails on, the default)."""
    ws = Workspace(tmp_path_factory.mktemp("explorer"))
    ws.images.parent.mkdir(parents=True)
    shutil.copytree(sample_source, ws.images)
    ws.state.mkdir()
    ws.snapshot()
    result = ws.scan()
    assert result.returncode == 0, result.stderr
    yield ws
    ws.assert_unchanged()


def test_clusters_equal_the_trees_at_three_thresholds(sample: Workspace,
                                                      browser: Browser) -> None:
    workspace = sample
    index = workspace.output / "index.html"
    counts = []
    for threshold in (0, 6, 12):
        browser.open(index, "phash_8", threshold)
        counts.append(assert_matches_tree(browser, workspace.output, "phash_8", threshold))
    assert len(set(counts)) > 1 or counts[0] > 0  # the thresholds were worth comparing
    # The algorithm switch: dhash_16 keeps the threshold when its sweep has it (0, 3, 6, ...).
    browser.page.select_option("#algorithm", "dhash_16")
    browser.wait_shown("dhash_16", 12)
    assert browser.page.evaluate("location.hash") == "#dhash_16/12"
    assert_matches_tree(browser, workspace.output, "dhash_16", 12)


def test_slider_changes_clusters_and_deep_link(sample: Workspace, browser: Browser) -> None:
    workspace = sample
    index = workspace.output / "index.html"
    browser.open(index, "phash_8", 0)
    before = browser.page.locator("[data-cluster-size]").count()
    slider = browser.page.locator("#threshold")
    slider.focus()
    for _ in range(8):
        browser.page.keyboard.press("ArrowRight")
    browser.wait_shown("phash_8", 8)
    assert browser.page.evaluate("location.hash") == "#phash_8/8"
    after = assert_matches_tree(browser, workspace.output, "phash_8", 8)
    unclustered = len(tree(workspace.output, "phash_8", 0)[1])
    assert (after, len(tree(workspace.output, "phash_8", 8)[1])) != (before, unclustered)
    # The summary and the sweep legend agree with the tree too.
    summary = browser.page.text_content("#summary")
    assert f"{after} clusters, {len(tree(workspace.output, 'phash_8', 8)[1])} unclustered" \
        in summary
    assert browser.page.text_content("#n-clusters") == str(after)


def test_thumbnail_opens_original_and_hover_shows_name_and_distance(
        sample: Workspace, browser: Browser) -> None:
    workspace = sample
    browser.open(workspace.output / "index.html", "phash_8", 6)
    first = browser.page.locator("[data-cluster-size]").first
    thumb = first.locator(".thumb").first
    target = href_path(thumb.get_attribute("href") or "")
    members = [href_path(a) for a in first.locator(".thumb").evaluate_all(
        "els => els.map(a => a.href)")]
    hashes = {}
    for path in members:
        with Image.open(os.fsdecode(path)) as image:
            hashes[path] = imagehash.phash(image, hash_size=8)
    nearest = min(hashes[target] - hashes[other] for other in members if other != target)
    name = os.path.relpath(os.fsdecode(target), workspace.images)
    assert thumb.get_attribute("title") == f"{name}\ndistance to nearest member: {nearest}"
    caption = thumb.locator(".caption")
    assert not caption.is_visible()
    thumb.hover()
    assert caption.is_visible()
    assert caption.text_content() == f"{os.path.basename(name)} · d {nearest}"
    with browser.page.expect_navigation():
        thumb.click()
    assert href_path(browser.page.url) == target
    with Image.open(os.fsdecode(target)) as image:
        width = image.width
    assert browser.page.evaluate("document.images[0].naturalWidth") == width


def test_filter_by_name(sample: Workspace, browser: Browser) -> None:
    workspace = sample
    browser.open(workspace.output / "index.html", "phash_8", 6)
    browser.page.fill("#filter", "SCENE03_")
    browser.page.wait_for_function("document.getElementById('summary').textContent"
                                   ".includes('Filter')")
    expected, _ = tree(workspace.output, "phash_8", 6)
    wanted = [(folder, targets) for folder, targets in expected
              if any(b"/scene03_" in t for t in targets)]
    shown = browser.clusters()
    assert [h for h, _ in shown] == [f"#{f.split('_')[0]} {f.split('_')[1]} photos"
                                     for f, _ in wanted]
    assert len(shown) < len(expected)
    matched = browser.page.eval_on_selector_all(".thumb.match", "els => els.map(a => a.href)")
    assert matched and all(b"/scene03_" in href_path(h) for h in matched)
    # In each row the matching photos come first (visible even in a cluster of thousands).
    for flags in browser.page.eval_on_selector_all(
            "[data-cluster-size]",
            "els => els.map(e => [...e.querySelectorAll('.thumb')].map(a =>"
            " a.classList.contains('match')))"):
        assert flags[0] and flags == sorted(flags, reverse=True)


def test_thumbnails_from_the_state_folder(sample: Workspace, browser: Browser) -> None:
    """Each thumbnail is thumbnail_path(<state>/thumbnails, digest of the photo) and loads.
    The README's screenshot is taken here (IMGCLUSTERD_SCREENSHOT=1 writes it into docs/)."""
    folder = sample.state / THUMBNAIL_FOLDER
    browser.open(sample.output / "index.html", "phash_8", 6)
    browser.clusters()  # every row rendered
    thumbs = browser.page.eval_on_selector_all(
        ".thumb", "els => els.map(a => [a.href, a.querySelector('img') ?"
        " a.querySelector('img').src : null])")
    assert len(thumbs) == len(list(sample.images.rglob("*.*")))
    for href, src in thumbs:
        photo = Path(os.fsdecode(href_path(href)))
        thumb = thumbnail_path(folder, hashlib.sha256(photo.read_bytes()).digest())
        assert thumb.is_file()
        assert href_path(src) == os.fsencode(thumb)
    browser.page.wait_for_function(
        "[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    shot = browser.page.screenshot(full_page=False)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("IMGCLUSTERD_SCREENSHOT"):  # refresh the README's picture
        DOCS.mkdir(exist_ok=True)
        (DOCS / "explorer.png").write_bytes(shot)


# --------------------------------------------------------------------------- edge cases


def test_empty_library(tmp_path: Path, browser: Browser) -> None:
    images = tmp_path / "images"
    images.mkdir()
    index = scan(tmp_path, images)
    browser.open(index, "phash_8", 3)
    assert browser.page.locator("[data-cluster-size]").count() == 0
    assert browser.page.locator(".thumb").count() == 0
    assert "No photos yet" in browser.page.text_content("#summary")


def test_single_photo_without_thumbnails(tmp_path: Path, sample_source: Path,
                                         browser: Browser) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(sample_source / "scene01.jpg", images / "only.jpg")
    config = tmp_path / "config.toml"
    config.write_text("thumbnails = false\n")
    index = scan(tmp_path, images, "--config", str(config))
    browser.open(index, "phash_8", 19)
    assert browser.page.locator("[data-cluster-size]").count() == 0
    only = browser.page.locator(".unclustered .thumb")
    assert only.count() == 1
    assert href_path(only.get_attribute("href") or "") == os.fsencode(images / "only.jpg")
    assert only.get_attribute("title") == "only.jpg\nunclustered"
    # No thumbnail: a placeholder with the name, and no image request that could fail.
    assert only.locator("img").count() == 0
    assert only.locator(".placeholder").text_content() == "only.jpg"


HOSTILE = [
    b'quote"double\'single.jpg',
    b"<script>alert(1)<\\script>.jpg",
    b"<img src=x onerror=alert(2)>.jpg",
    b"new\nline.jpg",
    b"caf\xe9 \xff.jpg",  # not UTF-8
    b"%41 #frag ?q=1&amp;.jpg",
    b"<div><h1>big<\\h1>.png",
]


def test_hostile_file_names_stay_text(tmp_path: Path, sample_source: Path,
                                      browser: Browser) -> None:
    images = tmp_path / "images"
    images.mkdir()
    # Exact copies of one photo: all in one cluster at every threshold.
    source = (sample_source / "scene02.jpg").read_bytes()
    paths = []
    for name in HOSTILE:
        path = os.path.join(os.fsencode(images), name)
        with open(path, "wb") as f:
            f.write(source)
        paths.append(path)
    index = scan(tmp_path, images)
    browser.open(index, "phash_8", 0)
    [(heading, members)] = browser.clusters()
    assert heading == f"#001 {len(HOSTILE)} photos"
    assert sorted(members) == sorted(paths)  # each link is the exact bytes of its file
    titles = browser.page.eval_on_selector_all(".thumb", "els => els.map(a => a.title)")
    expected = sorted(n.decode("utf-8", "replace") + "\ndistance to nearest member: 0"
                      for n in HOSTILE)
    assert sorted(titles) == expected
    # Nothing became markup: only the page's two scripts, no injected elements or handlers.
    page = browser.page
    assert page.locator("script").count() == 2
    assert page.locator("h1").count() == 1
    assert page.locator("img[src=x], [onerror]").count() == 0
    assert page.evaluate("document.querySelector('[data-cluster-size] .thumbs').children.length"
                         ) == len(HOSTILE)
    # The non-UTF-8 name opens the right file.
    odd = page.locator(".thumb", has_text="caf\ufffd")
    with page.expect_navigation():
        odd.click()
    assert href_path(page.url) == os.path.join(os.fsencode(images), b"caf\xe9 \xff.jpg")
    assert page.evaluate("document.images[0].naturalWidth") > 0
    data = (tmp_path / "output" / DATA_FILE).read_bytes()
    assert b"<" not in data.split(b"\n", 1)[1]  # names are escaped in the data file too


# --------------------------------------------------------------------------- the generator


def test_ties_are_numbered_as_the_tree_with_a_subset_algorithm(tmp_path: Path,
                                                              browser: Browser) -> None:
    """Many equal-size clusters (ties broken by the smallest path, which is not the insertion
    order here), and a second algorithm that knows only some photos: the page's clusters equal
    cluster.sweep's at every threshold. Built with page_files alone, no pipeline."""
    rng = np.random.default_rng(7)
    n = 120
    base = rng.integers(0, 256, size=(n // 3, 8), dtype=np.uint8)
    packed = np.repeat(base, 3, axis=0)
    flips = rng.integers(0, 64, size=n)
    for i, bit in enumerate(flips):  # a few bits apart: clusters of 1..3 at low thresholds
        if i % 3:
            packed[i, bit // 8] ^= np.uint8(1 << (bit % 8))
    names = [f"p{int(k):04d}.jpg" for k in rng.permutation(n)]  # path order != vertex order
    algorithm = Algorithm.from_name("phash_8", 20, 1)
    full: ClusterIndex[str] = ClusterIndex(limit=19, nbytes=8)
    full.update({name: packed[i].tobytes() for i, name in enumerate(names)})
    part: ClusterIndex[str] = ClusterIndex(limit=19, nbytes=8)
    part.update({name: packed[i].tobytes() for i, name in enumerate(names) if i % 4})
    images = tmp_path / "images"
    photos = [ExplorerPhoto(path=name, target=os.fspath(images / name)) for name in names]
    where = {name: i for i, name in enumerate(names)}
    full_keys, part_keys = full.keys(), part.keys()  # vertex order (not a dict)
    files = page_files(photos, [
        ExplorerAlgorithm("phash_8", algorithm.thresholds, full.forest,
                          [where[k] for k in full_keys]),
        ExplorerAlgorithm("dhash_8", algorithm.thresholds, part.forest,
                          [where[k] for k in part_keys]),
    ])
    site = tmp_path / "site"
    site.mkdir()
    for name, content in files.items():
        (site / name).write_bytes(content)
    for name, index in (("phash_8", full), ("dhash_8", part)):
        for threshold, partition in zip((1, 3, 9), index.sweep([1, 3, 9]), strict=True):
            browser.open(site / "index.html", name, threshold)
            shown = browser.clusters()
            assert len(shown) == len(partition.clusters)
            for number, ((heading, members), cluster) in enumerate(
                    zip(shown, partition.clusters, strict=True), 1):
                assert heading == f"#{number:03d} {len(cluster)} photos"
                assert members == [os.fsencode(images / k) for k in cluster]
            alone = browser.page.eval_on_selector_all(".unclustered .thumb",
                                                      "els => els.length")
            assert alone == min(60, len(partition.unclustered))


def test_many_clusters_all_arrive(tmp_path: Path, browser: Browser) -> None:
    """Above a few hundred clusters the rows after the first ones are built in background
    chunks (the slider stays responsive): all of them still arrive, in the tree's order."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, size=(700, 8), dtype=np.uint8)
    packed = np.repeat(base, 2, axis=0)  # 700 exact pairs
    names = [f"p{i:05d}.jpg" for i in range(len(packed))]
    index: ClusterIndex[str] = ClusterIndex(limit=19, nbytes=8)
    index.update({name: packed[i].tobytes() for i, name in enumerate(names)})
    images = tmp_path / "images"
    photos = [ExplorerPhoto(path=name, target=os.fspath(images / name)) for name in names]
    thresholds = Algorithm.from_name("phash_8", 20, 1).thresholds
    vertices = [int(key[1:6]) for key in index.keys()]  # noqa: SIM118 (a method, not a dict)
    files = page_files(photos, [ExplorerAlgorithm("phash_8", thresholds, index.forest, vertices)])
    site = tmp_path / "site"
    site.mkdir()
    for name, content in files.items():
        (site / name).write_bytes(content)
    for threshold, partition in zip((0, 19), index.sweep([0, 19]), strict=True):
        browser.open(site / "index.html", "phash_8", threshold)
        shown = browser.page.eval_on_selector_all(
            "[data-cluster-size]",
            "els => els.map(e => [e.dataset.cluster, e.dataset.clusterSize])")
        assert len(partition.clusters) > 200
        assert shown == [[str(i), str(len(c))] for i, c in enumerate(partition.clusters, 1)]


def test_data_file_grows_linearly_under_100_bytes_per_photo_per_algorithm() -> None:
    """The 14 default algorithms over one shared photo list: the budget the page is designed
    for (benchmarks/bench_explorer.py measures it at 20,000 photos with real forests)."""
    from imgclusterd.algorithms import DEFAULT_ALGORITHMS
    from imgclusterd.cluster import Forest

    def size(n: int) -> int:
        rng = np.random.default_rng(n)
        photos = [ExplorerPhoto(path=f"2024/trip {i % 9}/IMG_{i:05d}.jpg",
                                target=f"/home/me/Pictures/2024/trip {i % 9}/IMG_{i:05d}.jpg",
                                thumbnail=f"/home/me/.local/state/t/{i % 256:02x}/{i:064x}.jpg")
                  for i in range(n)]
        algorithms = []
        for algorithm in DEFAULT_ALGORITHMS:
            w = np.sort(rng.integers(0, algorithm.max_threshold, n - 1)).astype(np.uint16)
            forest = Forest(n, np.arange(n - 1, dtype=np.int32),
                            rng.integers(0, n, n - 1).astype(np.int32), w)
            algorithms.append(ExplorerAlgorithm(algorithm.name, algorithm.thresholds, forest,
                                                range(n)))
        return len(page_files(photos, algorithms)[DATA_FILE])

    small, large = size(1000), size(4000)
    assert large / (4000 * len(DEFAULT_ALGORITHMS)) < 100
    assert 3.6 < large / small < 4.4



def test_data_file_from_kept_entries_is_the_data_file_made_afresh() -> None:
    """The daemon writes the page at every refresh from entries kept as escaped JSON text
    (``PageMemo``): with photos added and removed between two writes, and names that need
    escaping (quotes, ``<``, ``&``, backslash, non-ASCII, undecodable bytes), the file is
    byte for byte the one made without a memo, and reads back as the photos' names."""
    from imgclusterd.cluster import Forest
    from imgclusterd.explorer import PageMemo, data_script

    odd = ["it's <b>&amp;</b>.jpg", 'back\\slash "q".jpg', "caf\u00e9 \u2028.jpg",
           b"raw\xff.jpg".decode("utf-8", "surrogateescape"), "plain.jpg"]
    photos = [ExplorerPhoto(path=f"f{i % 3}/{i}-{odd[i % len(odd)]}",
                            target=f"/lib/f{i % 3}/{i}-{odd[i % len(odd)]}",
                            thumbnail=f"/state/t/{i:04x}.jpg" if i % 4 else None,
                            flat=i % 7 == 0)
              for i in range(40)]  # fmt: skip

    def algorithms(n: int) -> list[ExplorerAlgorithm]:
        forest = Forest(n, np.arange(n - 1, dtype=np.int32),
                        np.arange(1, n, dtype=np.int32), np.arange(n - 1, dtype=np.uint16))
        return [ExplorerAlgorithm("phash_8", range(0, 20), forest, range(n))]

    memo = PageMemo()
    for shown in (photos[:30], photos[5:], photos[5:]):  # added, removed, unchanged
        kept = data_script(shown, algorithms(len(shown)), memo, root="/lib")
        assert kept == data_script(shown, algorithms(len(shown)), None, root="/lib")
    text = kept.decode("ascii").split("JSON.parse('", 1)[1].rsplit("');", 1)[0]
    import json

    data = json.loads(text.replace("\\'", "'").replace("\\\\", "\\"))
    expected = sorted(p.path for p in photos[5:])
    assert data["names"] == [os.fsencode(p).decode("utf-8", "replace") for p in expected]
    assert len(data["thumbs"]) == len(expected) and "<" not in text and "&" not in text


def test_kept_path_order_follows_additions_removals_and_new_objects() -> None:
    """The memo keeps the photos in path order between writes and puts the new ones in their
    places instead of sorting again: over random writes (photos added, removed, replaced by
    a new object for the same path as when a thumbnail appears, bursts past the insertion
    limit, the thumbnails' folder moving, a photo or a path given twice) every file equals
    the one made without a memo, and every small change after the first page was made by
    insertions (none sorted afresh)."""
    import random

    from imgclusterd.cluster import Forest
    from imgclusterd.explorer import PageMemo, data_script

    rng = random.Random(7)

    def photo(i: int, thumbs: str = "/state/t") -> ExplorerPhoto:
        accent = "caf\u00e9 " if i % 11 == 0 else ""
        path = f"f{i % 5}/{accent}{i:05d}.jpg"
        return ExplorerPhoto(path=path, target=f"/lib/{path}",
                             thumbnail=f"{thumbs}/{i % 7}/{i:05x}.jpg" if i % 3 else None,
                             flat=i % 13 == 0)  # fmt: skip

    def algorithms(n: int) -> list[ExplorerAlgorithm]:
        forest = Forest(n, np.arange(n - 1, dtype=np.int32), np.arange(1, n, dtype=np.int32),
                        (np.arange(n - 1) % 20).astype(np.uint16))  # fmt: skip
        order = list(range(n))
        rng.shuffle(order)  # forest vertex -> photo: any order
        return [ExplorerAlgorithm("phash_8", range(0, 20), forest, order)]

    def same(photos: list[ExplorerPhoto], memo: PageMemo) -> bool:
        forests = algorithms(len(photos))
        return data_script(photos, forests, memo, root="/lib") == data_script(
            photos, forests, None, root="/lib")

    folder = "/state/t"
    shown = {i: photo(i, folder) for i in rng.sample(range(5000), 300)}
    memo = PageMemo()
    inserted = 0
    for step in range(48):
        kind = step % 8
        if kind in (0, 1, 2):  # a few added
            for i in rng.sample(range(5000), rng.randint(1, 3)):
                shown.setdefault(i, photo(i, folder))
        elif kind == 3:  # a few removed
            for i in rng.sample(sorted(shown), 2):
                del shown[i]
        elif kind == 4:  # a new object for the same photo (its thumbnail appeared)
            i = rng.choice(sorted(shown))
            shown[i] = ExplorerPhoto(shown[i].path, shown[i].target, f"{folder}/0/{i:05x}.jpg")
        elif kind == 5:  # a burst: made afresh
            for i in rng.sample(range(5000), 200):
                shown.setdefault(i, photo(i, folder))
        elif kind == 6 and step == 22:  # the thumbnails' folder moved: every entry again
            folder = "/elsewhere/t"
            shown = {i: photo(i, folder) for i in shown}
        photos = list(shown.values())
        rng.shuffle(photos)
        afresh = memo.afresh
        assert same(photos, memo), step
        assert [p.path for p in memo.ranked] == sorted(p.path for p in photos)
        if step and kind in (0, 1, 2, 3, 4):
            inserted += memo.afresh == afresh
    assert inserted == 5 * 6 - 1  # (every small change but the first page's)

    # A path given twice (two objects), a photo given twice: the same file as without a
    # memo, and no kept order after the path twice (the order of equals is the input's).
    first = next(iter(shown.values()))
    assert same([*shown.values(), ExplorerPhoto(first.path, first.target)], memo)
    assert not memo.ordered
    assert same(list(shown.values()), memo) and memo.ordered
    assert same([*shown.values(), first], memo)
    assert same(list(shown.values()), memo)
    # The last thumbnail gone, and an empty page.
    assert same([p for p in shown.values() if p.thumbnail is None], memo)
    assert same([], memo) and same(list(shown.values()), memo)


def _page_data(output: Path) -> dict[str, Any]:
    import json

    text = (output / DATA_FILE).read_text().split("JSON.parse('", 1)[1].rsplit("');", 1)[0]
    return json.loads(text.replace("\\'", "'").replace("\\\\", "\\"))


def test_page_appears_and_catches_up_with_thumbnails_without_photo_changes(
        tmp_path: Path, sample_source: Path) -> None:
    """An output written without the page (explorer = false, or before the page existed) gets
    it on the next scan although no photo changed; thumbnails made by the background pass for
    photos hashed before are in the page the same scan writes."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("scene01.jpg", "scene01_bright.jpg"):
        shutil.copy(sample_source / name, images / name)
    config = tmp_path / "config.toml"
    config.write_text("explorer = false\nthumbnails = false\n")
    scan(tmp_path, images, "--config", str(config))
    assert not (tmp_path / "output" / "index.html").exists()
    config.write_text("thumbnails = false\n")
    scan(tmp_path, images, "--config", str(config))
    assert (tmp_path / "output" / "index.html").is_file()
    assert "thumbs" not in _page_data(tmp_path / "output")
    config.write_text("")  # thumbnails on: made by the background pass (already hashed)
    scan(tmp_path, images, "--config", str(config))
    thumbs = _page_data(tmp_path / "output")["thumbs"]
    assert len(thumbs) == 2 and all(thumbs)


def test_flat_images_are_flagged(tmp_path: Path, browser: Browser) -> None:
    """Near-constant images (the store's flat flag) carry a mark and say so on hover: they
    match each other whatever they show."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (320, 240), (250, 250, 250)).save(images / "blank_a.png")
    Image.new("RGB", (320, 240), (20, 20, 20)).save(images / "blank_b.png")
    index = scan(tmp_path, images)
    browser.open(index, "phash_8", 0)
    browser.clusters()
    thumbs = browser.page.locator(".thumb")
    assert thumbs.count() == 2
    for thumb in thumbs.all():
        assert "flat" in (thumb.get_attribute("class") or "").split()
        assert (thumb.get_attribute("title") or "").endswith("\nnear-constant (flat) image")
