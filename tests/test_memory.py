"""imgclusterd.memory: the heap's free pages go back to the system, in a real process.

A child Python process fragments its C heap the way a refresh does (many mid-sized blocks,
most freed, a few kept alive between them, so glibc's ``free`` cannot shrink the heap from its
top) and reports its resident memory (/proc/self/status) before and after ``give_back``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from imgclusterd.memory import resident_bytes

CHILD = textwrap.dedent(
    """
    import json
    from imgclusterd.memory import give_back

    def rss_mb():
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024

    start = rss_mb()
    # 100 KB blocks: above Python's small-object allocator, below glibc's mmap threshold,
    # so they come from the brk heap; filled, so their pages are really resident.
    blocks = [b"x" * 100_000 for _ in range(2_500)]
    full = rss_mb()
    kept = blocks[::50]  # one live block every 5 MB: the heap cannot shrink from its top
    del blocks
    freed = rss_mb()
    given = give_back("test")
    print(json.dumps({"start": start, "full": full, "freed": freed, "trimmed": rss_mb(),
                      "given_mb": given / 2**20, "kept": len(kept)}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc: Linux")
def test_give_back_returns_a_fragmented_heaps_free_pages_to_the_system() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=120, check=True)
    rss = json.loads(done.stdout)
    grown = rss["full"] - rss["start"]
    assert grown > 200, rss  # ~250 MB were really allocated
    # The precondition: freeing alone left most of it resident (the heap's holes).
    assert rss["freed"] - rss["start"] > 0.8 * grown, rss
    # give_back handed it back: what stays is the 50 live blocks (5 MB) and noise.
    assert rss["trimmed"] - rss["start"] < 0.1 * grown, rss
    assert rss["given_mb"] > 0.8 * grown, rss


def test_resident_bytes_is_this_processs_rss() -> None:
    with open("/proc/self/status") as handle:
        vmrss = next(int(line.split()[1]) * 1024 for line in handle
                     if line.startswith("VmRSS:"))
    assert abs(resident_bytes() - vmrss) < 16 * 2**20


FREEZE_CHILD = textwrap.dedent(
    """
    import gc, json, weakref
    from imgclusterd.memory import give_back

    class Node:
        pass

    survivor = Node()
    survivor.me = survivor  # a cycle: only the collector frees it
    give_back("test")
    frozen = gc.get_freeze_count()
    ref = weakref.ref(survivor)
    del survivor  # garbage now, but frozen: an ordinary full collection skips it
    gc.collect()
    skipped = ref() is not None
    give_back("test")  # the next idle spell looks at it again
    print(json.dumps({"frozen": frozen, "skipped": skipped, "freed": ref() is None}))
    """
)


def test_give_back_freezes_what_survives_and_frees_it_when_it_is_garbage_later() -> None:
    """After give_back, Python's own collections (during refreshes) skip what was alive then
    (a full one walks every object: ~0.3-0.5 s at 20,000 photos); the next give_back still
    frees what became garbage since. In a child process: freezing is process-wide."""
    done = subprocess.run([sys.executable, "-c", FREEZE_CHILD], capture_output=True, text=True,
                          timeout=120, check=True)
    result = json.loads(done.stdout)
    assert result["frozen"] > 1000, result  # the interpreter's and imgclusterd's objects
    assert result["skipped"], result
    assert result["freed"], result
