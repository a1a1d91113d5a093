"""The driver gives freed memory back to the system: freed heap pages go back, live blocks stay."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from pusa_batch.engine.heap import release_freed_memory


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except AttributeError:
        return False
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux") or not glibc(), reason="glibc's malloc")
def test_freed_heap_blocks_go_back_to_the_system_and_live_ones_stay():
    blocks = [bytearray(4096) for _ in range(40_000)]  # 160 MB from malloc, not Python's arenas
    kept = blocks[::64]  # a few live blocks pin the heap, as the driver's own objects do
    del blocks
    before = rss_bytes()
    release_freed_memory()
    after = rss_bytes()
    assert before - after > 100 * 2**20, (before, after)
    assert all(len(block) == 4096 for block in kept)


def test_it_imports_nothing_to_do_so():
    code = (
        "import sys; from pusa_batch.engine.heap import release_freed_memory; "
        "release_freed_memory(); print('pyarrow' in sys.modules, 'torch' in sys.modules)"
    )
    said = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert said.stdout.split() == ["False", "False"], said.stderr
