"""The driver gives freed memory back to the system: freed heap pages go back, live blocks stay;
and it keeps one heap (one malloc arena, Arrow allocating from it), so that all of it can."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

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


ARENAS_SEEN_BY_FOUR_THREADS = """
import ctypes, sys, tempfile, threading
from pusa_batch.engine.heap import keep_one_heap
if sys.argv[1] == "one heap":
    keep_one_heap()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
all_hold, held = threading.Barrier(5), []
def allocate():
    held.append([bytearray(1024) for _ in range(2000)])  # from malloc: blocks above 512 B
    all_hold.wait()
    all_hold.wait()
threads = [threading.Thread(target=allocate) for _ in range(4)]
for thread in threads:
    thread.start()
all_hold.wait()  # four threads alive, each holding its blocks
with tempfile.NamedTemporaryFile(suffix=".xml") as report:
    stream = libc.fopen(report.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    arenas = open(report.name).read().count("<heap nr=")
all_hold.wait()
import pyarrow
print(arenas, pyarrow.default_memory_pool().backend_name)
"""


def arenas_and_arrow_pool(mode: str) -> tuple[int, str]:
    said = subprocess.run(
        [sys.executable, "-c", ARENAS_SEEN_BY_FOUR_THREADS, mode],
        capture_output=True,
        text=True,
        check=True,
    )
    arenas, pool = said.stdout.split()
    return int(arenas), pool


@pytest.mark.skipif(not sys.platform.startswith("linux") or not glibc(), reason="glibc's malloc")
def test_with_one_heap_threads_allocate_from_one_arena_and_arrow_from_it_too():
    assert arenas_and_arrow_pool("one heap") == (1, "system")


@pytest.mark.skipif(not sys.platform.startswith("linux") or not glibc(), reason="glibc's malloc")
def test_without_it_each_thread_gets_an_arena_of_its_own():
    arenas, _ = arenas_and_arrow_pool("as started")
    assert arenas == 1 + 4


RUN_COMMAND_UNTIL_ONE_HEAP = """
import sys
from pathlib import Path
import pusa_batch.engine.heap as heap
def first_thing():
    print("pyarrow" in sys.modules, "ray" in sys.modules)
    raise SystemExit(0)
heap.keep_one_heap = first_thing
sys.argv = ["pusa-batch", "run", "manifests/demo.csv", "-o", sys.argv[1], "--pipeline",
            "pipelines/tiny.toml"]
from pusa_batch.cli.main import main
main()
print("never called")
"""


def test_the_run_command_keeps_one_heap_before_arrow_or_ray_is_imported(tmp_path):
    root = Path(__file__).resolve().parent.parent
    said = subprocess.run(
        [sys.executable, "-c", RUN_COMMAND_UNTIL_ONE_HEAP, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=root,
        check=True,
    )
    assert said.stdout.split() == ["False", "False"], said.stdout + said.stderr
