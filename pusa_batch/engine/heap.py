"""Freed memory handed back to the system while a long run goes on.

The driver frees about as much as it allocates (manifest chunks, results, index parts), but
glibc's malloc keeps freed blocks in its arenas and Arrow's allocator keeps its pages, so its RSS
read as growth of about 1 KB per item (B13) of which little stayed alive: with both given back at
each mark, a 40,000-item run's RSS was flat. RSS is what a container's memory limit counts, so
the driver gives them back every few seconds (a trim takes about 1 ms).

What a trim cannot give back is memory held in pieces: glibc gives each thread that allocates
an arena of its own (up to 8 per core), and blocks that outlive their neighbours pin whole pages
in each; Arrow's mimalloc keeps segments per thread too. So the `run` command's process keeps one
heap (`keep_one_heap`, its first call): one glibc arena, and Arrow allocating from it. B13 (10M
rows, 100,000 items, with Ray) then read 16 B per item of growth instead of 533, at the same
rate; one arena alone still read 314.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library has none (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library this process already runs on
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def one_malloc_arena() -> bool:
    """Tell glibc to make no more arenas: threads that first allocate after this share the ones
    made so far (only the main one, when nothing has started a thread yet); whether it took. For
    a process of ours only (the `run` command's): it changes malloc for the whole process."""
    mallopt = _mallopt()
    return mallopt is not None and mallopt(M_ARENA_MAX, 1) == 1


ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"  # read by Arrow once, at its first allocation


def keep_one_heap() -> None:
    """One malloc arena for every thread, and Arrow allocating from malloc (not from mimalloc),
    so that `release_freed_memory` reaches all of the process's free memory. Call it first thing
    in a process of ours: it changes malloc for the whole process, and the Arrow setting goes
    through the environment (children inherit it). A user's own ARROW_DEFAULT_MEMORY_POOL wins."""
    one_malloc_arena()
    if ARROW_POOL_ENV in os.environ:
        return
    os.environ[ARROW_POOL_ENV] = "system"
    arrow = sys.modules.get("pyarrow")
    if arrow is not None:  # imported already: Arrow's own default may be set; pyarrow's is not
        arrow.set_memory_pool(arrow.system_memory_pool())


def release_freed_memory() -> None:
    """Give malloc's free pages and Arrow's unused ones back to the system; live memory stays."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    arrow = sys.modules.get("pyarrow")  # never imported for this alone
    if arrow is not None:
        arrow.default_memory_pool().release_unused()
